# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""3x3 neighbourhoods of the super token grid: :func:`gather3x3` /
:func:`scatter3x3` (strided slices; the operators ``mmstvit::gather3x3`` /
``mmstvit::scatter3x3`` where the plan says ``neighbourhoods='operator'``,
opaque to ``torch.compile``) beside the authors' identity-kernel
convolutions :func:`unfold3x3` / :func:`fold3x3` (``'conv'``, the
``reference`` plan), and token upsampling built on them."""
from typing import Tuple

import torch
import torch.nn.functional as F

#: ``torch.library.custom_op`` (torch >= 2.4) makes the 3x3 neighbourhood
#: kernels operators; on an older torch the plan runs the same slices inline.
HAS_OPERATORS = hasattr(torch.library, 'custom_op')


def unfold3x3(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, 9, h*w): every cell's 3x3 neighbourhood (zeros
    off the grid), as the authors compute it: a convolution with their
    (9, 1, 3, 3) identity ``kernel``."""
    B, C, h, w = x.shape
    y = F.conv2d(x.reshape(B * C, 1, h, w), kernel.to(x.dtype), padding=1)
    return y.reshape(B, C, 9, h * w)


def fold3x3(cols: torch.Tensor, size: Tuple[int, int],
            kernel: torch.Tensor) -> torch.Tensor:
    """(B, C*9, h*w) -> (B, C, h, w): adjoint of :func:`unfold3x3` (the
    authors' transposed convolution); each cell receives the sum of what its
    3x3 neighbours sent to it."""
    B, C9, _ = cols.shape
    y = F.conv_transpose2d(
        cols.reshape(B * (C9 // 9), 9, *size), kernel.to(cols.dtype),
        padding=1)
    return y.reshape(B, C9 // 9, *size)


_OFFSETS = [(i, j) for i in range(3) for j in range(3)]


def _gather3x3(t: torch.Tensor) -> torch.Tensor:
    B, h, w, C = t.shape
    tp = F.pad(t, (0, 0, 1, 1, 1, 1))
    out = torch.stack([tp[:, i:i + h, j:j + w] for i, j in _OFFSETS], 3)
    return out.reshape(B, h * w, 9, C)


def _scatter3x3(sent: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """In place into one padded buffer (the operator's body)."""
    B, C = sent.shape[0], sent.shape[-1]
    sent = sent.reshape(B, h, w, 9, C)
    out = sent.new_zeros(B, h + 2, w + 2, C)
    for k, (i, j) in enumerate(_OFFSETS):
        out[:, i:i + h, j:j + w] += sent[:, :, :, k]
    return out[:, 1:h + 1, 1:w + 1]


def _scatter3x3_out_of_place(sent: torch.Tensor, h: int,
                             w: int) -> torch.Tensor:
    """Shifted copies added, no in-place update (exporters, tracers)."""
    B, C = sent.shape[0], sent.shape[-1]
    sent = sent.reshape(B, h, w, 9, C)
    out = sum(
        F.pad(sent[:, :, :, k], (0, 0, j, 2 - j, i, 2 - i))
        for k, (i, j) in enumerate(_OFFSETS))
    return out[:, 1:h + 1, 1:w + 1]


# The operators: opaque to torch.compile, each the other's gradient. Inductor
# would otherwise fuse the padded slices of every gather/scatter into its
# generated C++, and that code generation (nested masked loads) ran for more
# than 20 minutes on 2 cores for STViT-S; as operators they cost no code
# generation. Eager calls pay the dispatcher (microseconds per call). The
# scatter copies its result out of the padded buffer, so the operator
# returns a fresh contiguous tensor as its fake twin promises.
def _register_neighbourhood_operators() -> None:

    @torch.library.custom_op('mmstvit::gather3x3', mutates_args=())
    def gather_op(t: torch.Tensor) -> torch.Tensor:
        return _gather3x3(t)

    @gather_op.register_fake
    def _(t):
        B, h, w, C = t.shape
        return t.new_empty(B, h * w, 9, C)

    @torch.library.custom_op('mmstvit::scatter3x3', mutates_args=())
    def scatter_op(sent: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return _scatter3x3(sent, h, w).contiguous()

    @scatter_op.register_fake
    def _(sent, h, w):
        return sent.new_empty(sent.shape[0], h, w, sent.shape[-1])

    def gather_setup(ctx, inputs, output):
        ctx.h, ctx.w = inputs[0].shape[1:3]

    def gather_backward(ctx, grad):
        return torch.ops.mmstvit.scatter3x3(grad, ctx.h, ctx.w)

    def scatter_backward(ctx, grad):
        return torch.ops.mmstvit.gather3x3(grad), None, None

    gather_op.register_autograd(gather_backward, setup_context=gather_setup)
    scatter_op.register_autograd(
        scatter_backward, setup_context=lambda ctx, inputs, output: None)


if HAS_OPERATORS:
    _register_neighbourhood_operators()


def gather3x3(t: torch.Tensor, how: str = 'slices') -> torch.Tensor:
    """(B, h, w, C) -> (B, h*w, 9, C): each cell's 3x3 neighbours (zeros off
    the grid), neighbour k = (di+1)*3 + (dj+1) as in :func:`unfold3x3`.

    Nine strided slices of the padded grid: several times faster than im2col
    for the small super token grids, channels last. ``how='operator'`` runs
    them inside ``mmstvit::gather3x3``.
    """
    if how == 'operator':
        return torch.ops.mmstvit.gather3x3(t)
    return _gather3x3(t)


def scatter3x3(sent: torch.Tensor, h: int, w: int,
               how: str = 'slices') -> torch.Tensor:
    """(B, h*w, 9, C) -> (B, h, w, C): adjoint of :func:`gather3x3`; every
    cell receives the sum of what its 3x3 neighbours sent to it.
    ``how='operator'`` runs ``mmstvit::scatter3x3`` (in place inside),
    ``'slices'`` adds shifted copies (no in-place update, exportable)."""
    if how == 'operator':
        return torch.ops.mmstvit.scatter3x3(sent, h, w)
    return _scatter3x3_out_of_place(sent, h, w)


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C), a free view for channels-last maps."""
    return x.permute(0, 2, 3, 1)


def neighbours(stokens: torch.Tensor, how: str,
               kernel: torch.Tensor) -> torch.Tensor:
    """(B, C, hh, ww) -> (B, n, C, 9): the 3x3 super tokens of each cell;
    ``how='conv'``: the authors' identity-kernel convolution with
    ``kernel``."""
    if how == 'conv':
        return unfold3x3(stokens, kernel).permute(0, 3, 1, 2)
    return gather3x3(nhwc(stokens), how).transpose(-1, -2)


def scatter_to_neighbours(sent: torch.Tensor, hh: int, ww: int, how: str,
                          kernel: torch.Tensor) -> torch.Tensor:
    """(B, n, C, 9) -> (B, C, hh, ww): what each cell sent to each of its
    3x3 neighbours, summed at the receiving super token; ``how='conv'``:
    the authors' transposed identity-kernel convolution."""
    B, n, C, _ = sent.shape
    if how == 'conv':
        cols = sent.permute(0, 2, 3, 1).reshape(B, C * 9, n)
        return fold3x3(cols, (hh, ww), kernel)
    return scatter3x3(sent.transpose(-1, -2), hh, ww, how).permute(0, 3, 1, 2)


def upsample(assoc: torch.Tensor, stokens: torch.Tensor,
             stoken_size: Tuple[int, int], hh: int, ww: int, how: str,
             kernel: torch.Tensor) -> torch.Tensor:
    """Token upsampling X = Q S: the (B, C, hh*sh, ww*sw) map from the
    (B, n, P, 9) association and the (B, C, hh, ww) super tokens, channels
    last; ``how='conv'``: as the authors write it (an identity-kernel
    convolution, a (B, n, C, 9) @ (B, n, 9, P) product, NCHW)."""
    B, C = stokens.shape[:2]
    sh, sw = stoken_size
    if how == 'conv':
        neigh = unfold3x3(stokens, kernel).permute(0, 3, 1, 2)
        out = neigh @ assoc.transpose(-1, -2)  # (B, n, C, P)
        out = out.reshape(B, hh, ww, C, sh, sw).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(B, C, hh * sh, ww * sw)
    out = _upsampled_cells(assoc, stokens, stoken_size, hh, ww, how)
    return out.reshape(B, hh * sh, ww * sw, C).permute(0, 3, 1, 2)


def upsample_add_(identity: torch.Tensor, assoc: torch.Tensor,
                  stokens: torch.Tensor, stoken_size: Tuple[int, int],
                  hh: int, ww: int, how: str) -> torch.Tensor:
    """``identity + upsample(...)`` for inference, the cells added into the
    channels-last ``identity`` in place (no new map); ``identity`` must be
    a tensor the caller owns, of the unpadded grid's size."""
    out = _upsampled_cells(assoc, stokens, stoken_size, hh, ww, how)
    nhwc(identity).view(out.shape).add_(out)
    return identity


def _upsampled_cells(assoc, stokens, stoken_size, hh, ww, how):
    """X = Q S cell by cell, channels last: (B, hh, sh, ww, sw, C)."""
    B, C = stokens.shape[:2]
    sh, sw = stoken_size
    out = assoc @ gather3x3(nhwc(stokens), how)  # (B, n, P, C)
    return out.view(B, hh, ww, sh, sw, C).transpose(2, 3)
