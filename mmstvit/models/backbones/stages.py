# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""STViT's block and stage, and the stages of a backbone
(:func:`build_stages`): the residuals, layer scale, drop path and
activation checkpointing around super token attention
(:mod:`.stoken_attention`) and the convolutional parts (:mod:`.modules`).
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn

from . import ablation, deploy, kernels
from .modules import ConvBN, ConvFFN, DropPath, DWConv, LayerNorm2d
from .stoken_attention import FusedStokenAttention, StokenAttention

__all__ = ['STViTBlock', 'STViTStage', 'build_stages']


class STViTBlock(nn.Module):
    """CPE -> LN -> super token attention -> BN -> ConvFFN, with residuals,
    as the paper writes it (``pos_embed``, ``ffn``, ``rel_pos_grid``:
    :mod:`.ablation`). The block owns the residuals, the layer scale
    (``gamma_1``, ``gamma_2``) and the drop path; its branches map
    (B, dim, H, W) to (B, dim, H, W). :meth:`switch_to_deploy` rewrites it
    for inference once (RepVGG's ``deploy`` flag)."""

    deploy = False

    def __init__(self, dim: int, num_heads: int, stoken_size, n_iter: int = 1,
                 mlp_ratio: float = 4., qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop: float = 0.,
                 attn_drop: float = 0., drop_path: float = 0.,
                 layer_scale: bool = False, init_values: float = 1e-6,
                 pos_embed: Optional[str] = 'cpe', ffn: str = 'conv',
                 rel_pos_grid=None):
        super().__init__()
        self.pos_embed = DWConv(dim, 3) if pos_embed == 'cpe' else None
        self.norm1 = LayerNorm2d(dim)
        self.attn = StokenAttention(
            dim, stoken_size, n_iter=n_iter, num_heads=num_heads,
            qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
            proj_drop=drop, rel_pos_grid=rel_pos_grid)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else \
            nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp2 = ConvFFN(dim, int(dim * mlp_ratio), drop,
                            **ablation.ffn_kwargs(ffn))
        self.layer_scale = layer_scale
        if layer_scale:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(1, dim, 1, 1))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(1, dim, 1, 1))

    def forward(self, x):
        if self.deploy:
            return self.forward_deploy(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed(x)  # CPE
        x = x + self.drop_path(self.scaled(1, self.attn(self.norm1(x))))
        x = x + self.drop_path(self.scaled(2, self.mlp2(self.norm2(x))))
        return x

    def scaled(self, i: int, y: torch.Tensor) -> torch.Tensor:
        """``gamma_i * y`` (layer scale), or ``y``."""
        return getattr(self, f'gamma_{i}') * y if self.layer_scale else y

    def forward_deploy(self, x):
        """The three residual lines after :meth:`switch_to_deploy`, each sum
        accumulated into ``x`` (in place where ``kernels.inplace``)."""
        if self.pos_embed is not None:
            x = self.pos_embed(x)  # x + DWConv(x) as one convolution
        x = self.attn(self.norm1(x), x)  # x + gamma_1 * STA(LN(x))
        return self.mlp2(x, x)  # x + gamma_2 * ConvFFN(BN(x)), BN folded

    def switch_to_deploy(self) -> None:
        """Replaces the CPE, ``attn`` and ``norm2``/``mlp2`` by fused
        modules (:mod:`.deploy`), deleting the folded ones (``norm2``,
        ``gamma_*``, ``drop_path``); eval mode only."""
        g1, g2 = (self.gamma_1, self.gamma_2) if self.layer_scale else \
            (None, None)
        self.pos_embed = deploy.fuse_cpe(self.pos_embed)
        self.attn = FusedStokenAttention(self.attn, g1)
        self.mlp2 = deploy.FusedConvFFN(self.norm2, self.mlp2, g2)
        del self.norm2, self.drop_path
        if self.layer_scale:
            del self.gamma_1, self.gamma_2
            self.layer_scale = False
        self.deploy = True


class STViTStage(nn.Module):
    """``layers.i``: blocks, then (except the last stage) a downsample.

    ``forward`` runs the blocks and returns the stage's features (what the
    backbone outputs for this stage, so a forward hook on ``layers[i]`` sees
    them); the backbone applies ``downsample`` to them to feed the next
    stage, as in the paper where the downsample ends the stage. With
    ``with_cp`` each block is recomputed in backward, its BatchNorm
    statistics updated once (:func:`~.kernels.keep_buffers_on_recompute`).
    """

    def __init__(self, depth: int, dim: int, out_dim: Optional[int],
                 block_cfg: dict, drop_paths: Sequence[float],
                 with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.blocks = nn.ModuleList([
            STViTBlock(dim, drop_path=drop_paths[j], **block_cfg)
            for j in range(depth)
        ])
        self.downsample = ConvBN(dim, out_dim) if out_dim else None

    def forward(self, x):
        for blk in self.blocks:
            if self.with_cp and self.training and torch.is_grad_enabled():
                x = kernels.recompute(blk, x, buffers_of=blk, random=True)
            else:
                x = blk(x)
        return x


def build_stages(arch_settings: dict, stoken_size: Sequence, n_iter: Sequence,
                 rel_pos_grids: Sequence, drop_path_rate: float,
                 with_cp: bool = False, **block_cfg) -> nn.ModuleList:
    """The backbone's ``layers``: one :class:`STViTStage` per stage of
    ``arch_settings`` (``embed_dims``, ``depths``, ``num_heads``,
    ``layer_scale``: one entry each), stage i downsampling to
    ``embed_dims[i + 1]`` except the last. Drop path rises linearly from 0
    to ``drop_path_rate`` over all blocks. ``stoken_size``, ``n_iter`` and
    ``rel_pos_grids`` hold one entry per stage; ``block_cfg`` holds the
    :class:`STViTBlock` arguments shared by every block (``mlp_ratio``,
    ``qkv_bias``, ``qk_scale``, ``drop``, ``attn_drop``, ``init_values``,
    ``pos_embed``, ``ffn``)."""
    dims = arch_settings['embed_dims']
    depths = arch_settings['depths']
    num_stages = len(depths)
    total = sum(depths)
    dpr = [
        x.item() for x in torch.linspace(0, drop_path_rate, total)
    ] if total > 1 else [drop_path_rate] * total
    layers = nn.ModuleList()
    start = 0
    for i in range(num_stages):
        stage_cfg = dict(
            block_cfg, num_heads=arch_settings['num_heads'][i],
            stoken_size=stoken_size[i], n_iter=n_iter[i],
            layer_scale=bool(arch_settings['layer_scale'][i]),
            rel_pos_grid=rel_pos_grids[i])
        layers.append(
            STViTStage(
                depths[i], dims[i],
                dims[i + 1] if i < num_stages - 1 else None, stage_cfg,
                dpr[start:start + depths[i]], with_cp=with_cp))
        start += depths[i]
    return layers
