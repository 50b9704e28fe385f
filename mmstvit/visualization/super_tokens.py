# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What an STViT sees: its super tokens and its attention, drawn on images.

Two pictures from the paper are rebuilt here for any STViT model, with
random weights or trained ones:

* super tokens (paper Fig. "(a) input, (b) initial super tokens, (c) learned
  super tokens"): the initial grid of s x s cells of a stage, and the learned
  partition obtained by giving every pixel to the super token it associates
  with most strongly;
* early-stage attention maps (paper Fig. "attention maps from the third
  layer"): where one pixel of a stage attends, with the super token attention
  mapped back to pixels through the association.

The functions are split in three layers: model and image handling
(:func:`build_stvit_from_config`, :func:`read_image`, :func:`preprocess`,
:func:`capture_attention_inputs`), the maths at feature resolution
(:func:`hard_assignment`, :func:`initial_assignment`,
:func:`pixel_attention`), and drawing (:func:`render_partition`,
:func:`render_heatmap`, :func:`montage`). :func:`visualize_super_tokens` and
:func:`visualize_attention` tie them together for the command-line tools
``tools/visualize_super_tokens.py`` and ``tools/visualize_attention.py``.

Conventions: stages are numbered from 0 (stage 2 is the paper's "third
layer"); a stage-i feature pixel covers ``4 * 2**i`` image pixels (the stem
has stride 4 and each downsample halves the map; a map of an image whose
size is no multiple of the stride is ``ceil(size / stride)`` wide, its last
pixel covering the image's remainder). Every error a user can cause raises
:class:`VisualizationError` with a one-line message.
"""
import math
import os
import os.path as osp
import pickle
import sys
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

# ImageNet statistics (RGB, 0-255), the mmpretrain/mmdet/mmseg default.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

#: Longest side the network sees by default; larger images are resized for
#: the forward pass and the pictures are drawn back at the input size.
DEFAULT_MAX_SIZE = 1024

# 16 well separated colours. A super token (r, c) gets colour
# PALETTE[(r % 4) * 4 + c % 4]: two super tokens whose regions can touch are
# at most 3 rows and 3 columns apart (each pixel belongs to one of the 3x3
# super tokens around its own cell, and touching pixels lie in the same or
# adjacent cells), so they always differ in (r % 4, c % 4) and therefore in
# colour. The order below is shuffled so that the 4 x 4 tiling does not look
# like stripes.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
    (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
    (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
    (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128),
], dtype=np.uint8)
_PALETTE_ORDER = np.array([0, 5, 2, 9, 13, 3, 12, 7, 4, 11, 1, 14, 8, 15, 6,
                           10])


def _log_stderr(msg: str):
    print(msg, file=sys.stderr)


class VisualizationError(Exception):
    """A problem with the user's input, reported as one line."""


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
    _, C, H0, W0 = x.shape
    queries = torch.as_tensor(queries, dtype=torch.long, device=x.device)
    mod = attn.stoken_refine
    if not attn.uses_super_tokens:
        idx = queries[:, 0] * W0 + queries[:, 1]
        # only the query rows of the softmax: an N x N map would not fit in
        # memory for large images
        q, k, _ = mod.qkv_heads(x)  # (1, heads, N, d)
        w = ((q[:, :, idx] @ k.transpose(-1, -2)) * mod.scale).softmax(-1)
        maps = _select_head(w, head)[0].reshape(-1, H0, W0)
        return dict(maps=maps, mass=maps.sum((1, 2)))

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


# ---------------------------------------------------------------------------
# model, config and image
# ---------------------------------------------------------------------------


def _load_config(config):
    from mmstvit.builder import ConfigError, config_name, load_config
    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise VisualizationError(str(e)) from e
    return cfg, config_name(cfg)


def _preprocessor_stats(cfg) -> Tuple[tuple, tuple, bool]:
    """(mean, std, model_sees_rgb) from the config's data preprocessor.

    mmdet/mmseg/mmpretrain keep it in ``model.data_preprocessor`` or at the
    top level (mmpretrain). Images are loaded as BGR by those toolboxes and
    flipped to RGB when ``bgr_to_rgb``/``to_rgb`` is set; mean and std are
    in the model's channel order. No preprocessor: ImageNet RGB statistics.
    """
    dp = None
    model = cfg.get('model', None) or {}
    for cand in (model.get('data_preprocessor', None),
                 cfg.get('data_preprocessor', None)):
        if isinstance(cand, dict):
            dp = cand
            break
    if dp is None or dp.get('mean', None) is None:
        return IMAGENET_MEAN, IMAGENET_STD, True
    mean = tuple(float(v) for v in dp['mean'])
    std = tuple(float(v) for v in dp.get('std', None) or (1., 1., 1.))
    swap = bool(dp.get('bgr_to_rgb', False) or dp.get('rgb_to_bgr', False)
                or dp.get('to_rgb', False))
    return mean, std, swap


class LoadedModel:
    """An STViT backbone in eval mode with its normalisation."""

    def __init__(self, backbone, mean, std, rgb, config_name, device):
        self.backbone = backbone
        self.mean = mean
        self.std = std
        self.rgb = rgb
        self.config_name = config_name
        self.device = torch.device(device)

    @property
    def stoken_sizes(self) -> List[Tuple[int, int]]:
        return [tuple(layer.blocks[0].attn.stoken_size)
                for layer in self.backbone.layers]

    @property
    def num_stages(self) -> int:
        return len(self.backbone.layers)


def build_stvit_from_config(config, checkpoint: Optional[str] = None,
                            device: str = 'cpu') -> LoadedModel:
    """Builds the STViT backbone of an mmdet/mmseg/mmpretrain config.

    Only the backbone is built (the tools need nothing else), with its
    ``init_cfg`` dropped. ``checkpoint`` may be one of our mm checkpoints
    (``state_dict`` with ``backbone.`` keys, from any of the toolboxes) or
    the authors' ImageNet file (``model`` with their key names).
    """
    from mmstvit.builder import ConfigError, build_backbone

    cfg, name = _load_config(config)
    try:
        backbone = build_backbone(cfg)
    except ConfigError as e:
        raise VisualizationError(str(e)) from e
    if checkpoint is not None:
        load_weights(backbone, checkpoint)
    try:
        backbone.eval().to(device)
    except (RuntimeError, AssertionError, ValueError) as e:
        msg = ' '.join(str(e).split())
        raise VisualizationError(f'cannot use device {device}: {msg}') from e
    mean, std, rgb = _preprocessor_stats(cfg)
    return LoadedModel(backbone, mean, std, rgb, name, device)


def load_weights(backbone, checkpoint: str) -> dict:
    """Loads an mm checkpoint or the authors' file into ``backbone`` with
    the project's one loader (weights-only, strict)."""
    from mmstvit.utils.checkpoint import (CheckpointMismatchError,
                                          load_stvit_state_dict)
    if not osp.isfile(str(checkpoint)):
        raise VisualizationError(
            f'cannot load checkpoint {checkpoint}: no such file')
    try:
        return load_stvit_state_dict(backbone, str(checkpoint))
    except CheckpointMismatchError as e:
        msg = ' '.join(str(e).split())
        raise VisualizationError(
            f'cannot load checkpoint {checkpoint}: it holds another model '
            f'than the config builds: {msg}') from e
    except (ValueError, KeyError, pickle.UnpicklingError) as e:
        msg = ' '.join(str(e).split())
        raise VisualizationError(
            f'cannot load checkpoint {checkpoint}: {msg}') from e


def read_image(path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, EXIF orientation applied."""
    from PIL import Image, ImageOps
    path = str(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            arr = np.asarray(im.convert('RGB'))
    except FileNotFoundError:
        raise VisualizationError(
            f'cannot read image {path}: no such file') from None
    except Exception as e:
        msg = ' '.join(str(e).split())
        raise VisualizationError(
            f'cannot read image {path}: {msg}') from None
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise VisualizationError(f'cannot read image {path}: it is empty')
    return arr


def preprocess(image: np.ndarray, model: LoadedModel,
               max_size: Optional[int] = DEFAULT_MAX_SIZE):
    """(H, W, 3) RGB uint8 -> normalised (1, 3, h, w) tensor and (h, w).

    The image is resized (keeping its aspect ratio) only if its longest side
    exceeds ``max_size``; it is never padded (the backbone takes any size).
    """
    H, W = image.shape[:2]
    h, w = _net_size(H, W, max_size)
    t = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    t = t[None].float()
    if (h, w) != (H, W):
        t = F.interpolate(t, size=(h, w), mode='bilinear', align_corners=False,
                          antialias=True)
    if not model.rgb:
        t = t.flip(1)
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    return ((t - mean) / std).to(model.device), (h, w)


class _Captured(Exception):
    """Stops the forward pass once every requested input is captured."""


def capture_attention_inputs(backbone, x: torch.Tensor,
                             blocks: Sequence[Tuple[int, int]]
                             ) -> Dict[Tuple[int, int], torch.Tensor]:
    """Runs ``backbone`` on ``x`` and returns the input of each block's
    super token attention (the block's ``norm1`` output), keyed by
    ``(stage, block)``, via forward pre-hooks on ``blk.attn``. The forward
    stops after the last requested block."""
    wanted = set(blocks)
    got = {}

    def make_hook(key):

        def hook(module, args):
            got[key] = args[0].detach()
            if wanted.issubset(got):
                raise _Captured

        return hook

    handles = [
        backbone.layers[i].blocks[j].attn.register_forward_pre_hook(
            make_hook((i, j))) for i, j in wanted
    ]
    try:
        with torch.no_grad():
            backbone(x)
    except _Captured:
        pass
    finally:
        for h in handles:
            h.remove()
    return got


# ---------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------


def token_colours(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(H, W) super token positions -> (H, W, 3) uint8 colours, such that
    any two super tokens whose regions can touch get different colours."""
    idx = (np.asarray(rows) % 4) * 4 + np.asarray(cols) % 4
    return PALETTE[_PALETTE_ORDER[idx]]


def to_image_grid(fmap: np.ndarray, stride: int, net_size, out_size,
                  ) -> np.ndarray:
    """A feature-resolution map -> the input image's pixel grid (nearest):
    each feature pixel covers ``stride`` x ``stride`` network-input pixels
    (cropped at the right/bottom), then the network input is scaled to the
    picture's size if it was resized."""
    up = np.repeat(np.repeat(fmap, stride, 0), stride, 1)
    up = up[:net_size[0], :net_size[1]]
    if tuple(net_size) != tuple(out_size):
        ri = (np.arange(out_size[0]) * net_size[0] // out_size[0])
        ci = (np.arange(out_size[1]) * net_size[1] // out_size[1])
        up = up[ri][:, ci]
    return up


def boundaries(ids: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels where the id changes (to the right or below), thickened."""
    edge = np.zeros(ids.shape, dtype=bool)
    dx = ids[:, 1:] != ids[:, :-1]
    dy = ids[1:, :] != ids[:-1, :]
    edge[:, 1:] |= dx
    edge[1:, :] |= dy
    for _ in range(max(0, width - 1)):
        grown = edge.copy()
        grown[:, :-1] |= edge[:, 1:]
        grown[:-1, :] |= edge[1:, :]
        edge = grown
    return edge


def line_width(size) -> int:
    return max(1, round(min(size) / 300))


def render_partition(image: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                     alpha: float = 0.45) -> np.ndarray:
    """Colours each region (rows/cols at image resolution) over the image
    and outlines the region boundaries in white."""
    colours = token_colours(rows, cols).astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + colours * alpha
    ids = rows.astype(np.int64) * 100003 + cols
    edge = boundaries(ids, line_width(image.shape[:2]))
    out[edge] = 255.
    return out.clip(0, 255).astype(np.uint8)


def _colormap(values: np.ndarray, name: str = 'turbo') -> np.ndarray:
    import matplotlib
    cmap = matplotlib.colormaps[name]
    return (cmap(values)[..., :3] * 255).astype(np.float32)


def render_heatmap(image: np.ndarray, heat: np.ndarray,
                   point: Optional[Tuple[float, float]] = None
                   ) -> np.ndarray:
    """Blends a heat map in [0, 1] (image resolution) over a dimmed image;
    the alpha grows with the value so the picture stays readable. ``point``
    is (x, y), marked with a ring and a cross."""
    from PIL import Image, ImageDraw
    heat = np.clip(heat, 0., 1.)
    alpha = (0.15 + 0.6 * heat)[..., None]
    base = image.astype(np.float32) * 0.8
    out = base * (1 - alpha) + _colormap(heat) * alpha
    pic = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    if point is not None:
        draw = ImageDraw.Draw(pic)
        x, y = point
        r = max(4, round(min(image.shape[:2]) / 40))
        lw = max(1, r // 3)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=(0, 0, 0),
                     width=lw + 2)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=(255, 255, 255),
                     width=lw)
        c = max(2, r // 2)
        for colour, width in (((0, 0, 0), lw + 2), ((255, 255, 255), lw)):
            draw.line([x - c, y, x + c, y], fill=colour, width=width)
            draw.line([x, y - c, x, y + c], fill=colour, width=width)
    return np.asarray(pic)


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> List[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels."""
    lines, line = [], ''
    for word in text.split():
        cand = f'{line} {word}' if line else word
        if line and font.getlength(cand) > width:
            lines.append(line)
            line = word
        else:
            line = cand
    return lines + ([line] if line else [])


def montage(tiles: Sequence[np.ndarray], labels: Sequence[str],
            ncols: int, title: Optional[str] = None,
            tile_width: int = 320, pad: int = 6) -> np.ndarray:
    """Tiles (all the same size) in a grid, a caption under each and an
    optional title line on top."""
    from PIL import Image, ImageDraw
    h, w = tiles[0].shape[:2]
    tw = min(tile_width, w)
    th = max(1, round(h * tw / w))
    fs = max(11, min(16, tw // 18))
    cap = fs + 8
    nrows = -(-len(tiles) // ncols)
    W = ncols * tw + (ncols + 1) * pad
    font = _font(fs)
    lines = _wrap(title, font, W - 2 * pad) if title else []
    top = len(lines) * (fs + 4) + (4 if lines else 0)
    H = top + nrows * (th + cap) + (nrows + 1) * pad
    canvas = Image.new('RGB', (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for n, line in enumerate(lines):
        draw.text((pad + 2, pad + n * (fs + 4)), line, fill=(0, 0, 0),
                  font=font)
    for n, (tile, label) in enumerate(zip(tiles, labels)):
        r, c = divmod(n, ncols)
        x0 = pad + c * (tw + pad)
        y0 = top + pad + r * (th + cap + pad)
        canvas.paste(Image.fromarray(tile).resize((tw, th), Image.LANCZOS),
                     (x0, y0))
        draw.text((x0 + 2, y0 + th + 3), label, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def save_png(array: np.ndarray, path: str) -> str:
    from PIL import Image
    Image.fromarray(array).save(path, compress_level=3)
    return path


# ---------------------------------------------------------------------------
# the two visualisations
# ---------------------------------------------------------------------------


def _check_stage(stage: int, model: LoadedModel):
    n = model.num_stages
    if not -n <= stage < n:
        raise VisualizationError(
            f'--stage {stage} is out of range: this STViT has {n} stages '
            f'(0-{n - 1})')
    return stage % n


def _check_block(block: Optional[int], stage: int, model: LoadedModel):
    depth = len(model.backbone.layers[stage].blocks)
    if block is None:
        return depth - 1
    if not -depth <= block < depth:
        raise VisualizationError(
            f'--block {block} is out of range: stage {stage} has {depth} '
            f'block{"s" if depth > 1 else ""} (0-{depth - 1})')
    return block % depth


def _check_fits(stage: int, model: LoadedModel, net_size, scaled: bool):
    size = model.stoken_sizes[stage]
    fh, fw = feature_size(*net_size, stage)
    if fh >= size[0] and fw >= size[1]:
        return None
    mh, mw = min_image_size(size, stage)
    what = 'the image' + (' as resized for the network' if scaled else '')
    return (f'{what} ({net_size[1]}x{net_size[0]} pixels, width x height) '
            f'is too small for stage {stage}: its {fw}x{fh} feature map is '
            f'smaller than one {size[1]}x{size[0]} super token; the minimum '
            f'is {mw}x{mh} pixels')


def _stem(image_path) -> str:
    return osp.splitext(osp.basename(str(image_path)))[0]


def _prepare(config, image, checkpoint, device, model):
    if model is None:
        model = build_stvit_from_config(config, checkpoint, device)
    picture = image if isinstance(image, np.ndarray) else read_image(image)
    return model, picture


def super_token_maps(model: LoadedModel, picture: np.ndarray,
                     stages: Sequence[int], blocks: Dict[int, int],
                     max_size: Optional[int] = DEFAULT_MAX_SIZE):
    """Hard assignments (learned and initial) at feature resolution for the
    last-block-or-chosen block of each stage, keyed by stage."""
    x, net_size = preprocess(picture, model, max_size)
    feats = capture_attention_inputs(model.backbone, x,
                                     [(i, blocks[i]) for i in stages])
    out = {}
    with torch.no_grad():
        for i in stages:
            attn = model.backbone.layers[i].blocks[blocks[i]].attn
            sampling = attn.associate(feats[(i, blocks[i])])
            learned = hard_assignment(sampling.assoc, sampling.grid,
                                      attn.stoken_size)
            initial = initial_assignment(sampling.grid, attn.stoken_size)
            out[i] = dict(learned={k: v[0].cpu() for k, v in learned.items()},
                          initial={k: v[0].cpu() for k, v in initial.items()},
                          grid=sampling.grid, stoken_size=attn.stoken_size,
                          assoc=sampling.assoc[0].cpu())
    return out, net_size


def visualize_super_tokens(config, image, out_dir: str,
                           checkpoint: Optional[str] = None,
                           stage: Optional[int] = None,
                           block: Optional[int] = None,
                           device: str = 'cpu',
                           max_size: Optional[int] = DEFAULT_MAX_SIZE,
                           model: Optional[LoadedModel] = None,
                           log=_log_stderr) -> List[str]:
    """Draws the initial and the learned super tokens of each stage with
    super token size > 1 (or of ``stage``) over ``image``.

    The learned super tokens are those of block ``block`` of the stage (by
    default its last block): each pixel of the stage's feature map is given
    to the neighbouring super token with the largest association and
    coloured by it. Writes ``<stem>_stage<i>_initial.png`` and
    ``<stem>_stage<i>_learned.png`` (the input image's size) into
    ``out_dir`` and returns their paths.
    """
    model, picture = _prepare(config, image, checkpoint, device, model)
    sizes = model.stoken_sizes
    with_st = [i for i, s in enumerate(sizes) if s[0] > 1 or s[1] > 1]
    desc = ', '.join(f'{i} ({sizes[i][0]}x{sizes[i][1]})' for i in with_st)
    if stage is not None:
        stage = _check_stage(stage, model)
        if stage not in with_st:
            raise VisualizationError(
                f'stage {stage} has super token size 1x1 (plain attention, '
                f'no super tokens to draw); stages with super tokens: '
                f'{desc or "none"}')
        stages = [stage]
    else:
        if not with_st:
            raise VisualizationError(
                f'no stage of the STViT in {model.config_name} has super '
                f'tokens (stoken_size {[s[0] for s in sizes]})')
        stages = with_st
    blocks = {i: _check_block(block, i, model) for i in stages}

    H, W = picture.shape[:2]
    net = _net_size(H, W, max_size)
    problems = {i: _check_fits(i, model, net, net != (H, W)) for i in stages}
    fit = [i for i in stages if problems[i] is None]
    if not fit:
        raise VisualizationError(problems[stages[-1]] if len(stages) == 1
                                 else '; '.join(problems.values()))
    for i in stages:
        if problems[i] is not None:
            log(f'skipping stage {i}: {problems[i]}')

    maps, net_size = super_token_maps(model, picture, fit, blocks, max_size)
    os.makedirs(out_dir, exist_ok=True)
    stem = _stem(image if not isinstance(image, np.ndarray) else 'image')
    paths = []
    for i in fit:
        stride = stage_stride(i)
        for kind in ('initial', 'learned'):
            a = maps[i][kind]
            rows = to_image_grid(a['rows'].numpy(), stride, net_size, (H, W))
            cols = to_image_grid(a['cols'].numpy(), stride, net_size, (H, W))
            pic = render_partition(picture, rows, cols,
                                   alpha=0.3 if kind == 'initial' else 0.45)
            paths.append(save_png(
                pic, osp.join(out_dir, f'{stem}_stage{i}_{kind}.png')))
    return paths


def _net_size(H, W, max_size):
    if max_size and max(H, W) > max_size:
        r = max_size / max(H, W)
        return max(1, round(H * r)), max(1, round(W * r))
    return H, W


def default_points(H: int, W: int, n: int = 3) -> List[Tuple[int, int]]:
    """An n x n grid of (x, y) points at the centres of equal bins."""
    return [(int((c + 0.5) * W / n), int((r + 0.5) * H / n))
            for r in range(n) for c in range(n)]


def visualize_attention(config, image, out_dir: str,
                        checkpoint: Optional[str] = None,
                        points: Optional[Sequence[Tuple[float, float]]] = None,
                        grid: int = 3, stage: int = 2,
                        block: Optional[int] = None,
                        head: Union[str, int] = 'mean',
                        device: str = 'cpu',
                        max_size: Optional[int] = DEFAULT_MAX_SIZE,
                        model: Optional[LoadedModel] = None,
                        return_maps: bool = False):
    """Attention maps of query points (x, y in image pixels; default an
    ``grid`` x ``grid`` grid) at block ``block`` (default the last) of
    ``stage`` (default 2, the paper's "third layer"), mapped back to pixels
    through the association (:func:`pixel_attention`).

    Writes ``<stem>_attn_stage<i>_p<k>.png`` per point (the input's size)
    and ``<stem>_attn_stage<i>_grid.png`` (a montage), returns their paths,
    and with ``return_maps`` also the raw maps at feature resolution.
    """
    model, picture = _prepare(config, image, checkpoint, device, model)
    stage = _check_stage(stage, model)
    block = _check_block(block, stage, model)
    attn = model.backbone.layers[stage].blocks[block].attn
    heads = attn.stoken_refine.num_heads
    if head != 'mean':
        try:
            head = int(head)
        except (TypeError, ValueError):
            raise VisualizationError(
                f"--head must be 'mean' or a head index, got {head!r}"
            ) from None
        if not 0 <= head < heads:
            raise VisualizationError(
                f'--head {head} is out of range: stage {stage} has {heads} '
                f'head{"s" if heads > 1 else ""} (0-{heads - 1})')
    H, W = picture.shape[:2]
    net = _net_size(H, W, max_size)
    problem = _check_fits(stage, model, net, net != (H, W))
    if problem:
        raise VisualizationError(problem)
    default_grid = points is None or len(points) == 0
    if default_grid:
        if grid < 1:
            raise VisualizationError(f'--grid must be >= 1, got {grid}')
        points = default_points(H, W, grid)
    for px, py in points:
        if not (0 <= px < W and 0 <= py < H):
            raise VisualizationError(
                f'point ({px}, {py}) is outside the {W}x{H} image (x in '
                f'0..{W - 1}, y in 0..{H - 1})')

    x, net_size = preprocess(picture, model, max_size)
    feat = capture_attention_inputs(model.backbone, x,
                                    [(stage, block)])[(stage, block)]
    stride = stage_stride(stage)
    fh, fw = feat.shape[-2:]
    sy, sx = net_size[0] / H, net_size[1] / W
    queries = [(min(fh - 1, int(py * sy) // stride),
                min(fw - 1, int(px * sx) // stride)) for px, py in points]
    with torch.no_grad():
        res = pixel_attention(attn, feat, torch.tensor(queries), head)
    maps = res['maps'].cpu()

    # display: bilinear upsampling of the feature map to pixel centres,
    # each map divided by its own maximum (0 stays 'no attention')
    up = F.interpolate(maps[None], size=(fh * stride, fw * stride),
                       mode='bilinear', align_corners=False)[0]
    up = up[:, :net_size[0], :net_size[1]]
    if tuple(net_size) != (H, W):
        up = F.interpolate(up[None], size=(H, W), mode='bilinear',
                           align_corners=False)[0]
    up = up / up.flatten(1).max(1).values.clamp_min(1e-30).view(-1, 1, 1)

    os.makedirs(out_dir, exist_ok=True)
    stem = _stem(image if not isinstance(image, np.ndarray) else 'image')
    paths, tiles, labels = [], [], []
    for n, (pt, heat) in enumerate(zip(points, up.numpy())):
        pic = render_heatmap(picture, heat, pt)
        paths.append(save_png(
            pic, osp.join(out_dir, f'{stem}_attn_stage{stage}_p{n}.png')))
        tiles.append(pic)
        labels.append(f'({int(pt[0])}, {int(pt[1])})')
    # default grid: the tiles sit where their points are
    ncols = grid if default_grid else math.ceil(math.sqrt(len(points)))
    title = (f'{stem}: attention of stage {stage}, block {block}, '
             f'head {head} (super token size {attn.stoken_size[0]}x'
             f'{attn.stoken_size[1]}); each map divided by its maximum; '
             f'captions: query point (x,y)')
    paths.append(save_png(
        montage(tiles, labels, ncols, title),
        osp.join(out_dir, f'{stem}_attn_stage{stage}_grid.png')))
    if return_maps:
        return paths, dict(maps=maps, mass=res['mass'].cpu(),
                           queries=queries, points=list(points))
    return paths
