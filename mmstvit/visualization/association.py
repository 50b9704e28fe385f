# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The maths of the pictures, at feature resolution: where each pixel's
super token is (:func:`hard_assignment`, :func:`initial_assignment`) and
where a pixel attends (:func:`pixel_attention`), plus the geometry of the
stages (strides, feature sizes, the 3x3 neighbour table). Pure functions of
tensors; no files, no drawing."""
from typing import Dict, Tuple, Union

import torch


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------


def stage_stride(stage: int) -> int:
    """Image pixels per feature pixel at ``stage`` (4, 8, 16, 32)."""
    return 4 * 2**stage


def feature_size(height: int, width: int, stage: int) -> Tuple[int, int]:
    """Size of the stage's feature map for an ``height x width`` input.

    The stem's and downsamples' 3x3 stride-2 convolutions (padding 1) map
    n to ceil(n / 2), so stage i has ceil(n / 4 / 2**i) pixels per side.
    """
    s = stage_stride(stage)
    return -(-height // s), -(-width // s)


def min_image_size(stoken_size: Tuple[int, int], stage: int
                   ) -> Tuple[int, int]:
    """Smallest input (height, width) whose stage map holds one super token.
    """
    s = stage_stride(stage)
    return (stoken_size[0] - 1) * s + 1, (stoken_size[1] - 1) * s + 1


def neighbour_table(hh: int, ww: int, device=None):
    """Global ids of each cell's 3x3 neighbours and whether they exist.

    Returns ``(ids, valid)``, both (hh*ww, 9): neighbour k of cell
    n = i*ww + j is super token (i + di, j + dj) with k = (di+1)*3 + (dj+1);
    ``ids`` is clamped into the grid where ``valid`` is False.
    """
    i = torch.arange(hh, device=device).view(hh, 1, 1)
    j = torch.arange(ww, device=device).view(1, ww, 1)
    k = torch.arange(9, device=device).view(1, 1, 9)
    r, c = i + k // 3 - 1, j + k % 3 - 1
    valid = (r >= 0) & (r < hh) & (c >= 0) & (c < ww)
    ids = r.clamp(0, hh - 1) * ww + c.clamp(0, ww - 1)
    return ids.reshape(hh * ww, 9), valid.reshape(hh * ww, 9)


def cells_to_pixels(t: torch.Tensor, grid, size) -> torch.Tensor:
    """(..., n, P) per-cell pixel values -> (..., H0, W0) feature map.

    Cells are row-major (n = i*ww + j), the P = sh*sw pixels of a cell too
    (p = a*sw + b); the right/bottom padding is cropped.
    """
    hh, ww, H, W, H0, W0 = grid
    sh, sw = size
    lead = t.shape[:-2]
    t = t.reshape(*lead, hh, ww, sh, sw)
    nd = len(lead)
    t = t.permute(*range(nd), nd, nd + 2, nd + 1, nd + 3)
    return t.reshape(*lead, H, W)[..., :H0, :W0]


# ---------------------------------------------------------------------------
# the maths, at feature resolution
# ---------------------------------------------------------------------------


def hard_assignment(assoc: torch.Tensor, grid,
                    size) -> Dict[str, torch.Tensor]:
    """Gives every pixel to the super token it associates with most.

    Args:
        assoc: (B, n, P, 9) association of ``StokenAttention.associate``.
        grid: its ``(hh, ww, H, W, H0, W0)``.
        size: the super token size ``(sh, sw)``.

    Returns:
        dict of (B, H0, W0) long tensors at feature resolution: ``rows`` and
        ``cols`` (the super token's grid position), ``ids`` (rows*ww + cols)
        and ``k`` (the neighbour index, 4 = own cell). Neighbours outside
        the grid (zero vectors in the model, not super tokens) are never
        chosen.
    """
    hh, ww = grid[:2]
    _, valid = neighbour_table(hh, ww, assoc.device)
    logits = assoc.masked_fill(~valid[None, :, None, :], float('-inf'))
    k = logits.argmax(-1)  # (B, n, P)
    i = torch.arange(hh, device=assoc.device).repeat_interleave(ww)
    j = torch.arange(ww, device=assoc.device).repeat(hh)
    rows = i.view(1, -1, 1) + k // 3 - 1
    cols = j.view(1, -1, 1) + k % 3 - 1
    out = dict(rows=rows, cols=cols, ids=rows * ww + cols, k=k)
    return {key: cells_to_pixels(v, grid, size) for key, v in out.items()}


def initial_assignment(grid, size,
                       batch: int = 1) -> Dict[str, torch.Tensor]:
    """The initial grid as an assignment: every pixel to its own cell."""
    hh, ww, H, W, H0, W0 = grid
    sh, sw = size
    rows = (torch.arange(H0) // sh).view(H0, 1).expand(H0, W0)
    cols = (torch.arange(W0) // sw).view(1, W0).expand(H0, W0)
    out = dict(rows=rows, cols=cols, ids=rows * ww + cols,
               k=torch.full((H0, W0), 4))
    return {key: v.expand(batch, H0, W0).clone() for key, v in out.items()}


def _select_head(weights: torch.Tensor, head: Union[str, int]):
    """(B, heads, ...) -> (B, ...): the mean over heads or one head."""
    if head == 'mean':
        return weights.mean(1)
    return weights[:, int(head)]


def pixel_attention(attn, x: torch.Tensor, queries: torch.Tensor,
                    head: Union[str, int] = 'mean') -> Dict[str, torch.Tensor]:
    """Attention of query pixels over all pixels of one block's input.

    For a block with super tokens, pixel p reaches the super tokens around
    its cell through its association Q_p, they attend to each other, and
    every super token is the association-weighted mean of its pixels, so the
    weight of pixel q in p's output is::

        A(p, q) = sum_k sum_k' Q_p[k] Attn(S_n(p,k), S_n(q,k')) Q_q[k']
                  / Z_n(q,k')

    with Z_m = sum_q Q_q[m] the column sum the model divides by in its super
    token update. For every query, A sums to the association mass on in-grid
    neighbours (the model's out-of-grid neighbours are zero vectors), so
    Q_p is renormalised over in-grid neighbours, and the mass on the
    right/bottom padding pixels (zero vectors too) is dropped with another
    renormalisation: the returned maps are distributions over the stage's
    feature map (non-negative, sum 1). With super token size 1 it is the
    plain token attention (the softmax row of p).

    Args:
        attn: the block's ``StokenAttention``.
        x: (1, C, H0, W0) the attention's input (the block's norm1 output).
        queries: (Q, 2) long (row, col) feature-map coordinates.
        head: ``'mean'`` (average over heads) or a head index.

    Returns:
        dict with ``maps`` (Q, H0, W0) and ``mass`` (Q,): the raw sum over the
        feature map before the final renormalisation (1 up to rounding with
        size 1 or when there is no padding; slightly less otherwise).
    """
    if x.shape[0] != 1:
        raise ValueError('pixel_attention takes one image')
    queries = torch.as_tensor(queries, dtype=torch.long, device=x.device)
    if not attn.uses_super_tokens:
        return _token_attention(attn.stoken_refine, x, queries, head)
    return _super_token_attention(attn, x, queries, head)


def _token_attention(mod, x, queries, head):
    """:func:`pixel_attention` of plain token attention: the softmax rows
    of the queries."""
    W0 = x.shape[-1]
    idx = queries[:, 0] * W0 + queries[:, 1]
    # only the query rows of the softmax: an N x N map would not fit in
    # memory for large images
    q, k, _ = mod.qkv_heads(x)  # (1, heads, N, d)
    w = ((q[:, :, idx] @ k.transpose(-1, -2)) * mod.scale).softmax(-1)
    maps = _select_head(w, head)[0].reshape(-1, *x.shape[-2:])
    return dict(maps=maps, mass=maps.sum((1, 2)))


def _super_token_attention(attn, x, queries, head):
    """:func:`pixel_attention` through the association (super tokens)."""
    mod = attn.stoken_refine
    sampling = attn.associate(x)
    hh, ww, H, W, _, _ = grid = sampling.grid
    sh, sw = attn.stoken_size
    assoc = sampling.assoc[0]  # (n, P, 9)
    A = _select_head(mod.attention_weights(sampling.stokens),
                     head)[0]  # (n, n)
    ids, valid = neighbour_table(hh, ww, x.device)
    vmask = valid.to(assoc.dtype)

    # query side: Q_p over its in-grid neighbours, then through Attn
    cell = (queries[:, 0] // sh) * ww + queries[:, 1] // sw
    pix = (queries[:, 0] % sh) * sw + queries[:, 1] % sw
    qw = assoc[cell, pix] * vmask[cell]  # (Q, 9)
    qw = qw / qw.sum(-1, keepdim=True)
    to_tokens = torch.einsum('qk,qkm->qm', qw, A[ids[cell]])  # (Q, n)

    # key side: the association normalised per super token, Z_m = the sum
    # of all associations with super token m (the model's column sum)
    colsum = torch.zeros(hh * ww, dtype=assoc.dtype, device=x.device)
    colsum.index_add_(0, ids.reshape(-1), (assoc.sum(1) * vmask).reshape(-1))
    qhat = assoc * vmask[:, None, :] / (colsum[ids][:, None, :] + 1e-12)
    back = to_tokens[:, ids] * vmask  # (Q, n, 9)
    full = torch.einsum('qnk,npk->qnp', back, qhat)  # (Q, n, P)
    maps = cells_to_pixels(full, grid, (sh, sw))
    mass = maps.sum((1, 2))
    return dict(maps=maps / mass.view(-1, 1, 1), mass=mass)
