# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The components of the paper's ablation ("Ablations of STViT", Huang et
al., CVPR 2023), as switches of :class:`~.stvit.STViT` whose defaults are
STViT as published (the authors' state-dict keys unchanged).

* ``stem``: ``'conv'`` (STViT's four 3x3 convs, :class:`~.modules.ConvStem`)
  or ``'patch'`` (the baseline's patch embedding, :class:`PatchEmbed`).
* ``pos_embed``: ``'cpe'`` (STViT's x + DWConv3x3(x) before every block),
  ``None`` (the rows before "+ CPE"), ``'ape'``
  (:class:`AbsolutePositionEmbedding`) or ``'rpe'``
  (:class:`RelativePositionBias`), with ``pretrain_img_size`` (224) and
  ``rel_pos_grid`` sizing their tables.
* ``ffn``: ``'conv'`` (STViT's ConvFFN, fc2(h + DWConv(h))),
  ``'conv_no_shortcut'`` (fc2(DWConv(h))) or ``'mlp'`` (fc2(h)).

The "Projection" row is the classifier's tail, not the backbone's:
``STViTClsHead(projection=None)`` drops the 1x1 projection to 1024.

What the paper leaves open is chosen as the field does it, and checked
against the paper's parameter and FLOP counts (``configs/ablations/``,
``tests/test_ablations.py``):

* ``'patch'``: Swin's patch embedding (non-overlapping 4x4 convolution,
  LayerNorm), the map padded right/bottom to a multiple of 4, so that the
  stage sizes are the conv stem's. It gives the paper's baseline count
  (24.1M, 3.97G at 224; an overlapping 7x7 stride-4 stem would give
  3.99G), with STViT's 3x3 stride-2 downsamples (Swin's patch merging
  would count 1.1M fewer).
* ``'ape'``: Swin's absolute position embedding: one learned table
  (1, C, 56, 56) for a ``pretrain_img_size`` of 224, added to the stem's
  output and resized bicubically to other map sizes (mmdet's Swin). The
  parameter, ``ape.absolute_pos_embed``, has the name the authors'
  ``no_weight_decay()`` lists.
* ``'rpe'``: a relative position bias in every attention over the super
  tokens (or the tokens, where the super token size is 1): a learned table
  per head and block over the offsets of a ``G_h x G_w`` grid (Swin's
  ``relative_position_bias_table``, the keyword of the authors'
  ``no_weight_decay_keywords()``), with ``G`` the super token grid of the
  pretraining size (7, 7, 14, 7 for STViT-S at 224). On other grids the
  offsets are clipped to the table (Shaw et al.'s relative positions):
  the learned offsets keep their meaning and no interpolation is needed.

None of these modules branches on the kernel plan: each is plain ops that
every plan (and precision) runs the same way.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .modules import ConvStem, LayerNorm2d, _pair

STEMS = ('conv', 'patch')
POS_EMBEDS = ('cpe', 'ape', 'rpe', None)
FFNS = ('conv', 'conv_no_shortcut', 'mlp')


def check_choice(name: str, value, choices) -> None:
    """``ValueError`` naming the choices when ``value`` is not one."""
    if value not in choices:
        raise ValueError(f'STViT: {name} must be one of {list(choices)}, '
                         f'got {value!r}')


def ffn_kwargs(ffn: str) -> dict:
    """``ConvFFN`` arguments of an ``ffn`` choice."""
    check_choice('ffn', ffn, FFNS)
    return dict(dwconv=ffn != 'mlp', shortcut=ffn == 'conv')


class PatchEmbed(nn.Module):
    """``patch_embed`` of the ablation's baseline (STA-4stage): a
    non-overlapping ``patch_size`` convolution and LayerNorm, as Swin's; the
    input is zero-padded right/bottom to a multiple of ``patch_size``."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int = 4):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, patch_size)
        self.norm = LayerNorm2d(embed_dim)

    def forward(self, x):
        H, W = int(x.shape[2]), int(x.shape[3])
        p = self.patch_size
        if H % p or W % p:
            x = F.pad(x, (0, (-W) % p, 0, (-H) % p))
        return self.norm(self.proj(x))


def build_stem(stem: str, in_channels: int, embed_dim: int) -> nn.Module:
    check_choice('stem', stem, STEMS)
    if stem == 'patch':
        return PatchEmbed(in_channels, embed_dim)
    return ConvStem(in_channels, embed_dim)


class AbsolutePositionEmbedding(nn.Module):
    """x + a learned (1, C, h, w) table, resized bicubically to the map's
    size where it differs (mmdet's Swin ``absolute_pos_embed``)."""

    def __init__(self, dim: int, size):
        super().__init__()
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, dim,
                                                           *_pair(size)))
        nn.init.trunc_normal_(self.absolute_pos_embed, std=.02)

    def forward(self, x):
        pe = self.absolute_pos_embed
        size = (int(x.shape[2]), int(x.shape[3]))
        if tuple(pe.shape[2:]) != size:
            pe = F.interpolate(pe, size=size, mode='bicubic',
                               align_corners=False)
        return x + pe.to(x.dtype)


def build_ape(pos_embed: Optional[str], dim: int,
              pretrain_img_size) -> nn.Module:
    """The absolute position embedding added after the stem (stride 4), or
    an ``nn.Identity`` for the other ``pos_embed`` choices."""
    check_choice('pos_embed', pos_embed, POS_EMBEDS)
    if pos_embed != 'ape':
        return nn.Identity()
    h, w = _pair(pretrain_img_size)
    return AbsolutePositionEmbedding(dim, (math.ceil(h / 4),
                                           math.ceil(w / 4)))


class RelativePositionBias(nn.Module):
    """The (heads, h*w, h*w) bias of a learned per-head table over the
    relative offsets of a ``grid`` (``(2*G_h - 1) * (2*G_w - 1)`` rows,
    Swin's layout); tokens are numbered row-major, offsets beyond the table
    clipped to its border."""

    def __init__(self, num_heads: int, grid):
        super().__init__()
        self.grid = _pair(grid)
        gh, gw = self.grid
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * gh - 1) * (2 * gw - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)

    def index(self, h: int, w: int, device=None) -> torch.Tensor:
        """(h*w, h*w) table rows of every (query, key) pair."""
        gh, gw = self.grid

        def offsets(n, g):
            r = torch.arange(n, device=device)
            return (r[:, None] - r[None, :]).clamp(-(g - 1), g - 1) + g - 1

        dy, dx = offsets(h, gh), offsets(w, gw)
        idx = dy[:, None, :, None] * (2 * gw - 1) + dx[None, :, None, :]
        return idx.reshape(h * w, h * w)

    def forward(self, h: int, w: int) -> torch.Tensor:
        table = self.relative_position_bias_table
        idx = self.index(h, w, table.device)
        return table[idx.reshape(-1)].view(h * w, h * w, -1).permute(2, 0, 1)

    def extra_repr(self):
        return f'grid={self.grid}'


def rpe_grids(pos_embed: Optional[str], rel_pos_grid, pretrain_img_size,
              stoken_sizes: Sequence[Tuple[int, int]]) -> list:
    """Per stage: the grid of each block's :class:`RelativePositionBias`, or
    None without ``pos_embed='rpe'``. ``rel_pos_grid`` (an int or pair per
    stage) sets them; by default the super token grid of a
    ``pretrain_img_size`` input with this backbone's ``stoken_sizes``."""
    n = len(stoken_sizes)
    if pos_embed != 'rpe':
        if rel_pos_grid is not None:
            raise ValueError("STViT: rel_pos_grid is only used with "
                             "pos_embed='rpe'")
        return [None] * n
    if rel_pos_grid is not None:
        grids = list(rel_pos_grid)
        if len(grids) != n:
            raise ValueError(f'STViT: rel_pos_grid needs one entry per stage '
                             f'({n}), got {rel_pos_grid!r}')
        return [_pair(g) for g in grids]
    size, grids = _pair(pretrain_img_size), []
    for i, (sh, sw) in enumerate(stoken_sizes):
        h, w = (math.ceil(s / 4) for s in size)
        for _ in range(i):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        grids.append((math.ceil(h / sh), math.ceil(w / sw)))
    return grids
