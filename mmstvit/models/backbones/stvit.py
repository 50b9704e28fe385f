# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Super Token Vision Transformer (STViT) backbone.

Huang et al., "Vision Transformer with Super Token Sampling", CVPR 2023.

This file is the model, written as the paper's maths. How it runs fast is in
:mod:`.kernels`; which kernels run is the model's plan
(:class:`~.kernels.Kernels`), fixed when it is built and changed only by
:meth:`STViT.set_kernels`, :func:`~.kernels.use_kernels` or
:meth:`STViT.switch_to_deploy` (see ``docs/architecture.md``). Module and
parameter names follow the authors' ``models/stvit.py`` so that their
ImageNet checkpoints load as they are.

The network (per block, ``x`` an NCHW map)::

    x = x + DWConv(x)                                  pos_embed  (CPE)
    x = x + gamma_1 * STA(LN(x))                       norm1, attn
    x = x + gamma_2 * ConvFFN(BN(x))                   norm2, mlp2

and super token attention ``STA`` (:class:`StokenAttention`) for a super
token size s: with pixels X, super tokens S (one per s x s cell) and the
association Q of each pixel with the 3x3 super tokens around its cell,

    (1) Q = Softmax(X S^T / sqrt(C))          over the 9 neighbours
    (2) S = Q^T X / column sums of Q           super token update
    (3) S = MHSA(S)                            stoken_refine
    (4) X = Q S                                token upsampling
"""
import contextlib
import dataclasses
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from . import ablation, deploy, kernels
from .kernels import Kernels, store_channels_last
from .modules import (ConvBN, ConvFFN, ConvStem, DropPath, DWConv,
                      IdentityKernel, LayerNorm2d, MultiheadConvAttention,
                      Planned, _pair, check_frozen_stages, parse_arch,
                      parse_out_indices, per_stage, pretrained_init_cfg)

__all__ = [
    'STViT', 'STViTStage', 'STViTBlock', 'StokenAttention', 'StokenGrid',
    'SuperTokenSampling', 'FusedStokenAttention', 'ConvStem', 'ConvFFN',
    'ConvBN', 'DWConv', 'MultiheadConvAttention', 'LayerNorm2d', 'DropPath',
    'IdentityKernel', 'Planned'
]


class StokenGrid(NamedTuple):
    """Sizes of a super token grid: ``hh x ww`` super tokens over the map
    padded to ``H x W`` from its original ``H0 x W0``."""
    hh: int
    ww: int
    H: int
    W: int
    H0: int
    W0: int

    @property
    def padded(self) -> bool:
        return self.H != self.H0 or self.W != self.W0


class SuperTokenSampling(NamedTuple):
    """The results of super token sampling (equations 1 and 2), with
    n = hh*ww super tokens and P = sh*sw pixels per cell.

    Attributes:
        pixels: (B, n, P, C), the (padded) map cell by cell.
        assoc: (B, n, P, 9), each pixel's softmax association with the 3x3
            super tokens around its cell (row-major, centre at index 4).
        assoc_sum: (B, 1, hh, ww), the association's column sums.
        stokens: (B, C, hh, ww), the super tokens.
        grid: the :class:`StokenGrid`.
    """
    pixels: torch.Tensor
    assoc: torch.Tensor
    assoc_sum: torch.Tensor
    stokens: torch.Tensor
    grid: StokenGrid


class StokenAttention(Planned, nn.Module):
    """Super token attention: sampling, self-attention, upsampling.

    For a super token size ``s`` (a pair) the map is padded right/bottom to a
    multiple of ``s``; each s x s cell starts as the mean of its pixels; every
    pixel is associated with the 3x3 super tokens around its cell by a softmax
    of dot products scaled by ``C**-0.5``; ``n_iter`` refinement steps run
    without gradient; the super tokens are the association-weighted means of
    their pixels; multi-head self-attention mixes them; and each pixel is
    rebuilt from its 3x3 super tokens with the same association. With
    ``s == (1, 1)`` this is plain global self-attention. Sampling runs in
    float32 in every precision (its normaliser sums up to 9 s^2 weights).
    """

    def __init__(self, dim: int, stoken_size, n_iter: int = 1,
                 num_heads: int = 8, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.,
                 proj_drop: float = 0., rel_pos_grid=None):
        super().__init__()
        self.dim = dim
        self.stoken_size = _pair(stoken_size)
        if min(self.stoken_size) < 1:
            raise ValueError(f'super token size must be >= 1, got '
                             f'{self.stoken_size}')
        self.n_iter = int(n_iter)
        if self.n_iter < 1:
            raise ValueError(f'n_iter must be >= 1, got {n_iter}')
        self.scale = dim**-0.5
        self.unfold = IdentityKernel()
        self.fold = IdentityKernel()
        self.stoken_refine = MultiheadConvAttention(
            dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop,
            ablation.RelativePositionBias(num_heads, rel_pos_grid)
            if rel_pos_grid else None)

    @property
    def uses_super_tokens(self) -> bool:
        """False for a super token size of 1: plain global attention."""
        return self.stoken_size[0] > 1 or self.stoken_size[1] > 1

    # -- equations (1) and (2): super token sampling ------------------------
    def associate(self, x: torch.Tensor) -> SuperTokenSampling:
        """Runs super token sampling on ``x`` (B, C, H0, W0) and returns its
        results (:class:`SuperTokenSampling`)."""
        B, C, H0, W0 = x.shape
        # plain ints: the shapes below stay static for tracers and exporters
        H0, W0 = int(H0), int(W0)
        sh, sw = self.stoken_size
        pad_b, pad_r = (-H0) % sh, (-W0) % sw
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        H, W = H0 + pad_b, W0 + pad_r
        hh, ww = H // sh, W // sw
        n, P = hh * ww, sh * sw
        how = self.kernels.neighbourhoods

        # initial grid: the mean of each cell, (B, C, hh, ww) (the authors
        # pool adaptively to (hh, ww): on the padded map the same means, and
        # this form exports to ONNX for any input size)
        stokens = F.avg_pool2d(x, (sh, sw))
        pixels = x.reshape(B, C, hh, sh, ww, sw).permute(0, 2, 4, 3, 5, 1)
        pixels = pixels.reshape(B, n, P, C)

        with torch.no_grad():
            for it in range(self.n_iter):
                # (1) Q = softmax(X S^T / sqrt(C)) over the 3x3 neighbours
                neigh = kernels.neighbours(stokens, how, self._kernel(self.unfold))
                assoc = ((pixels @ neigh) * self.scale).softmax(-1)
                assoc_sum = kernels.scatter_to_neighbours(
                    assoc.sum(2).unsqueeze(-2), hh, ww, how,
                    self._kernel(self.fold))  # (B, 1, hh, ww)
                if it < self.n_iter - 1:
                    stokens = self._update(pixels, assoc, assoc_sum, hh, ww)
        stokens = self._update(pixels, assoc, assoc_sum, hh, ww)
        return SuperTokenSampling(pixels, assoc, assoc_sum, stokens,
                                  StokenGrid(hh, ww, H, W, H0, W0))

    def _update(self, pixels, assoc, assoc_sum, hh, ww):
        """(2) S = Q^T X / column sums: association-weighted means."""
        # (B, n, C, 9): what each cell's pixels send to its 9 neighbours
        sent = pixels.transpose(-1, -2) @ assoc
        return kernels.scatter_to_neighbours(
            sent, hh, ww, self.kernels.neighbourhoods,
            self._kernel(self.fold)) / (assoc_sum + 1e-12)

    # -- equation (4): token upsampling --------------------------------------
    def upsample(self, assoc: torch.Tensor, stokens: torch.Tensor,
                 grid: StokenGrid) -> torch.Tensor:
        """X = Q S, cropped to the input size."""
        out = kernels.upsample(assoc, stokens, self.stoken_size, grid.hh,
                               grid.ww, self.kernels.neighbourhoods,
                               self._kernel(self.fold))
        if grid.padded:
            out = out[:, :, :grid.H0, :grid.W0]
        return out

    def sample_and_refine(self, x: torch.Tensor):
        """Equations (1)-(3): ``(assoc, stokens, grid)``, the association
        and the refined super tokens in the dtype of ``x`` (sampling in
        float32)."""
        with torch.autocast(x.device.type, enabled=False):
            sampling = self.associate(x.float())  # (1) and (2)
        stokens = self.stoken_refine(sampling.stokens.to(x.dtype))  # (3)
        return sampling.assoc.to(stokens.dtype), stokens, sampling.grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """STA(x): (B, C, H, W) -> (B, C, H, W)."""
        if not self.uses_super_tokens:
            return self.stoken_refine(x)
        assoc, stokens, grid = self.sample_and_refine(x)
        return self.upsample(assoc, stokens, grid)  # (4)

    @staticmethod
    def _kernel(holder: Optional[IdentityKernel]):
        return None if holder is None else holder.weights


class FusedStokenAttention(StokenAttention):
    """Super token attention for inference (:meth:`STViT.switch_to_deploy`):
    ``acc + gamma * STA(x)`` with layer scale folded into
    ``stoken_refine.proj`` (per channel, it commutes with the upsampling),
    the upsampled map added into ``acc`` in place where
    ``kernels.inplace``; the identity kernels are kept only for the
    ``'conv'`` neighbourhoods."""

    def __init__(self, trained: StokenAttention,
                 gamma: Optional[torch.Tensor]):
        nn.Module.__init__(self)
        for name in ('dim', 'stoken_size', 'n_iter', 'scale', 'kernels'):
            setattr(self, name, getattr(trained, name))
        conv = trained.kernels.neighbourhoods == 'conv'
        self.unfold = trained.unfold if conv else None
        self.fold = trained.fold if conv else None
        self.stoken_refine = deploy.FusedMultiheadConvAttention(
            trained.stoken_refine, gamma)

    def forward(self, x, acc):
        if not self.uses_super_tokens:
            return self.stoken_refine(x, acc)
        assoc, stokens, grid = self.sample_and_refine(x)
        if self.kernels.inplace and not grid.padded:
            return kernels.upsample_add_(acc, assoc, stokens,
                                         self.stoken_size, grid.hh, grid.ww,
                                         self.kernels.neighbourhoods)
        return acc + self.upsample(assoc, stokens, grid)


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


# ---------------------------------------------------------------------------
# the backbone
# ---------------------------------------------------------------------------


def _after_load(module: nn.Module, incompatible_keys) -> None:
    """Post-hook of ``load_state_dict``: with ``assign=True`` the file's
    tensors replace the parameters; lay them out channels last again and
    re-decide a deployed model's oneDNN kernels for their dtype."""
    if module.channels_last:
        kernels.store_channels_last(module)
    module._redeploy()


def _registry_decorator():
    """Registers into mmengine's root MODELS (children find it by parent)."""
    from mmengine.registry import MODELS
    return MODELS.register_module(force=True)


@_registry_decorator()
class STViT(Planned, BaseModule):
    """Super Token Vision Transformer backbone.

    Args:
        arch (str | dict): ``'small'``/``'s'``, ``'base'``/``'b'``,
            ``'large'``/``'l'``, or a dict with keys ``embed_dims``,
            ``depths``, ``num_heads`` and optionally ``layer_scale``
            (per-stage bools).
        in_channels (int): Input channels. Defaults to 3.
        stoken_size (int | Sequence): Super token size per stage (an int or
            a pair each). Defaults to ``(16, 8, 2, 1)``, the dense-prediction
            setting of the paper; ImageNet uses ``(8, 4, 1, 1)``.
        n_iter (int | Sequence[int]): Association refinement steps per
            stage. Defaults to 1.
        mlp_ratio (float): ConvFFN hidden ratio. Defaults to 4.
        qkv_bias (bool): Defaults to True.
        qk_scale (float, optional): Defaults to ``head_dim ** -0.5``.
        drop_rate (float): Dropout after projections. Defaults to 0.
        attn_drop_rate (float): Attention dropout. Defaults to 0.
        drop_path_rate (float): Stochastic depth, linearly increasing over
            all blocks. Defaults to 0.1.
        layer_scale_init_value (float): Initial layer-scale gamma for the
            stages where the arch turns it on. Defaults to 1e-6.
        out_indices (Sequence[int]): Stages whose outputs (before their
            downsample; strides 4, 8, 16, 32) are returned. Defaults to
            ``(0, 1, 2, 3)``.
        frozen_stages (int): -1 freezes nothing, 0 the stem, k the stem and
            stages 0..k-1 (with their downsamples). Defaults to -1.
        norm_eval (bool): Keep every BatchNorm in eval mode while training.
            Defaults to False.
        with_cp (bool): Activation checkpointing per block; outputs,
            gradients and BatchNorm statistics are those without it.
            Defaults to False.
        channels_last (bool): Run the network in channels-last memory
            format (faster convolutions on CPU and tensor cores); outputs
            are returned NCHW-contiguous either way. Its convolution
            weights are then stored channels last too, as their gradients
            come, so that DistributedDataParallel copies no gradient into
            its buckets (:func:`~.kernels.store_channels_last`). Defaults
            to True.
        stem, pos_embed, ffn, pretrain_img_size, rel_pos_grid: The
            components the paper's ablation varies (:mod:`.ablation`); the
            defaults, ``'conv'``, ``'cpe'``, ``'conv'``, 224, None, are STViT.
        kernels (str | Kernels): The kernel plan: ``'fast'`` (default),
            ``'plain'`` or ``'reference'`` (:mod:`.kernels`). Fixed here;
            change it with :meth:`set_kernels` or :meth:`switch_to_deploy`.
        pretrained (str, optional): Deprecated, use ``init_cfg``.
        init_cfg (dict, optional): ``dict(type='Pretrained',
            checkpoint=PATH, prefix=None)`` loads the authors' ImageNet file
            as it is, or any mm checkpoint of an STViT model.

    Shapes: input (B, in_channels, H, W), any H, W >= 1; output a tuple of
    (B, embed_dims[i], ceil(H / 2**(i+2)), ceil(W / 2**(i+2))) maps for
    ``i`` in ``out_indices``, in the input's dtype (or autocast's).
    """

    arch_zoo = {
        **dict.fromkeys(['s', 'small'], {
            'embed_dims': [64, 128, 320, 512],
            'depths': [3, 5, 9, 3],
            'num_heads': [1, 2, 5, 8],
            'layer_scale': [False, False, False, False],
        }),
        **dict.fromkeys(['b', 'base'], {
            'embed_dims': [96, 192, 384, 512],
            'depths': [4, 6, 14, 6],
            'num_heads': [2, 3, 6, 8],
            'layer_scale': [False, False, True, True],
        }),
        **dict.fromkeys(['l', 'large'], {
            'embed_dims': [96, 192, 448, 640],
            'depths': [4, 7, 19, 8],
            'num_heads': [2, 3, 7, 10],
            'layer_scale': [False, False, True, True],
        }),
    }
    arch_names = ('small', 'base', 'large')

    def __init__(self,
                 arch: Union[str, dict] = 'small',
                 in_channels: int = 3,
                 stoken_size=(16, 8, 2, 1),
                 n_iter: Union[int, Sequence[int]] = 1,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 layer_scale_init_value: float = 1e-6,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 channels_last: bool = True,
                 stem: str = 'conv', pos_embed: Optional[str] = 'cpe',
                 ffn: str = 'conv', pretrain_img_size=224, rel_pos_grid=None,
                 kernels: Union[str, Kernels] = 'fast',
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(init_cfg=pretrained_init_cfg(pretrained, init_cfg))

        self.arch_settings = parse_arch(arch, self.arch_zoo, self.arch_names)
        self.arch = arch if isinstance(arch, str) else 'custom'
        dims = self.arch_settings['embed_dims']
        depths = self.arch_settings['depths']
        heads = self.arch_settings['num_heads']
        layer_scale = self.arch_settings['layer_scale']
        num_stages = len(depths)
        self.num_stages = num_stages
        self.embed_dims = list(dims)

        self.stoken_size = [_pair(s) for s in per_stage(
            stoken_size, 'stoken_size', num_stages)]
        self.n_iter = [int(v) for v in per_stage(n_iter, 'n_iter',
                                                       num_stages)]

        self.out_indices = parse_out_indices(out_indices, num_stages)
        self.frozen_stages = check_frozen_stages(frozen_stages, num_stages)
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.channels_last = channels_last

        self.patch_embed = ablation.build_stem(stem, in_channels, dims[0])
        self.ape = ablation.build_ape(pos_embed, dims[0], pretrain_img_size)
        self.pos_drop = nn.Dropout(drop_rate)
        rpe_grids = ablation.rpe_grids(pos_embed, rel_pos_grid,
                                       pretrain_img_size, self.stoken_size)
        total = sum(depths)
        dpr = [
            x.item() for x in torch.linspace(0, drop_path_rate, total)
        ] if total > 1 else [drop_path_rate] * total
        self.layers = nn.ModuleList()
        start = 0
        for i in range(num_stages):
            block_cfg = dict(
                num_heads=heads[i], stoken_size=self.stoken_size[i],
                n_iter=self.n_iter[i], mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                attn_drop=attn_drop_rate, layer_scale=bool(layer_scale[i]),
                init_values=layer_scale_init_value, pos_embed=pos_embed,
                ffn=ffn, rel_pos_grid=rpe_grids[i])
            self.layers.append(
                STViTStage(
                    depths[i], dims[i],
                    dims[i + 1] if i < num_stages - 1 else None, block_cfg,
                    dpr[start:start + depths[i]], with_cp=with_cp))
            start += depths[i]
        self._freeze_stages()
        if channels_last:
            store_channels_last(self)
        # load_state_dict(assign=True) puts the file's tensors in place
        self.register_load_state_dict_post_hook(_after_load)
        self.set_kernels(kernels)

    # -- training-mode behaviour --------------------------------------------
    def _frozen_modules(self):
        if self.frozen_stages >= 0:
            yield self.patch_embed
            yield self.ape
        for i in range(min(self.frozen_stages, self.num_stages)):
            yield self.layers[i]

    def _freeze_stages(self):
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        if mode and self.deployed:
            raise RuntimeError(
                'STViT: this backbone was switched to deploy (inference '
                'only); build it again (and load its weights) to train it')
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # -- the kernel plan -----------------------------------------------------
    def set_kernels(self, plan: Union[str, Kernels]) -> 'STViT':
        """Runs the whole backbone with ``plan`` from now on: ``'fast'``,
        ``'plain'``, ``'reference'`` or a :class:`~.kernels.Kernels`
        (``ValueError`` otherwise); an inference-only plan (``inplace``,
        ``onednn``) switches to deploy (:meth:`switch_to_deploy`). A
        deployed backbone keeps its plan (``RuntimeError``: build it again).
        Returns ``self``."""
        plan = kernels.resolve(plan)
        if self.deployed:
            if plan != self.kernels:
                raise RuntimeError(
                    'STViT: a deployed backbone keeps its kernels; build it '
                    f'again to run {plan}')
            return self
        if plan.inference_only:
            return self.switch_to_deploy(plan)
        self._set_plan(plan)
        return self

    def _set_plan(self, plan: Kernels) -> None:
        for m in self.modules():
            if isinstance(m, Planned):
                m.kernels = plan

    @property
    def deployed(self) -> bool:
        """True after :meth:`switch_to_deploy` (inference only)."""
        return self.kernels.inference_only

    def switch_to_deploy(self, plan: Optional[Kernels] = None) -> 'STViT':
        """Rewrites the backbone for inference once (mmpretrain's
        ``switch_to_deploy``, timm's ``reparameterize``): fused modules
        (:mod:`.deploy`: BatchNorm, layer scale and the CPE's residual
        folded into convolutions, residual sums accumulated in place, and,
        while the parameters are float32 on a CPU, oneDNN convolutions with
        GELU or the sum as a post-op, decided now and again when the model
        moves: ``.to``, ``.half()``) replace the trained ones, which are
        deleted; eval mode, no gradients. ``plan``: the deploy plan
        (default ``kernels.deploy_plan`` for this model). Outputs equal the
        ``fast`` plan's in eval within float rounding. ``train()`` then
        raises: build the model again to train it. Returns ``self``."""
        if self.deployed:
            return self
        if plan is None:
            plan = kernels.deploy_plan(True)
        self._deploy_onednn = plan.onednn  # asked for; served while it can
        plan = dataclasses.replace(
            plan, onednn=plan.onednn and kernels.onednn_serves(self))
        if not plan.inference_only:
            raise ValueError(f'STViT.switch_to_deploy: {plan} is not an '
                             'inference plan (kernels.deploy_plan)')
        self.eval()
        self.requires_grad_(False)
        self._set_plan(plan)  # what the fused modules keep (identity kernels)
        self.patch_embed = deploy.fuse_stem(self.patch_embed)
        for stage in self.layers:
            for blk in stage.blocks:
                blk.switch_to_deploy()
            if stage.downsample is not None:
                stage.downsample = deploy.fuse_conv_bn(stage.downsample)
        self._set_plan(plan)
        if self.channels_last:
            store_channels_last(self)
        return self

    def _redeploy(self) -> None:
        if self.deployed:  # the same plan; oneDNN where it serves now
            self._set_plan(dataclasses.replace(
                self.kernels,
                onednn=self._deploy_onednn and kernels.onednn_serves(self)))

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._redeploy()  # a moved or cast deployed model: its kernels
        return self

    def extra_repr(self) -> str:
        return f'arch={self.arch!r}, kernels={self.kernels}'

    def init_weights(self):
        """``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` loads an
        official or mm checkpoint strictly (every backbone tensor, with its
        shape); ``strict=False`` allows a partial load, ``prefix`` picks the
        keys of a sub-module, ``which='model_ema'`` the authors' EMA weights
        and ``unsafe_load=True`` unpickles a trusted file beyond the
        allow-list (see :mod:`mmstvit.weights`)."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            from mmstvit.weights import load_stvit_state_dict
            known = {'type', 'checkpoint', 'prefix', 'map_location',
                     'strict', 'which', 'unsafe_load'}
            unknown = sorted(set(cfg) - known)
            if unknown:
                raise KeyError(
                    f'STViT: init_cfg has unknown keys {unknown}; '
                    f'Pretrained takes {sorted(known)}')
            if not cfg.get('checkpoint'):
                raise ValueError("STViT: init_cfg=dict(type='Pretrained') "
                                 'needs checkpoint=PATH')
            load_stvit_state_dict(
                self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                map_location=cfg.get('map_location', 'cpu'),
                which=cfg.get('which'), strict=cfg.get('strict', True),
                unsafe=cfg.get('unsafe_load', False))
            self._is_init = True
            return
        # The authors initialise only Linear and LayerNorm layers explicitly
        # (the backbone has no Linear; LayerNorm defaults already match), so
        # PyTorch's default initialisation is theirs.
        super().init_weights()

    # -- forward ---------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if x.dim() != 4:
            raise ValueError(f'STViT expects an NCHW batch, got a tensor of '
                             f'shape {tuple(x.shape)}')
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f'STViT got an empty image of size '
                             f'{x.shape[2]}x{x.shape[3]}')
        if self.deployed and torch.is_grad_enabled() and \
                x.requires_grad:
            raise RuntimeError(
                'STViT: a deployed backbone computes no gradients; build it '
                'again without switch_to_deploy() to differentiate it')
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # oneDNN's kernels run float32: autocast does not apply to them
        with torch.autocast(x.device.type, enabled=False) if \
                self.kernels.onednn else contextlib.nullcontext():
            x = self.pos_drop(self.ape(self.patch_embed(x)))
            outs = []
            for i, stage in enumerate(self.layers):
                x = stage(x)
                if i in self.out_indices:
                    outs.append(x.contiguous())
                if stage.downsample is not None:
                    x = stage.downsample(x)
        return tuple(outs)

    # -- layer-wise learning-rate decay --------------------------------------
    def get_layer_depth(self, param_name: str, prefix: str = '',
                        decay_type: str = 'layer_wise') -> Tuple[int, int]:
        """``(depth, num_layers)`` of a parameter for layer-wise (or
        ``decay_type='stage_wise'``) learning-rate decay, mmpretrain's
        convention; see :func:`mmstvit.engine.layer_decay.stvit_layer_depth`.
        """
        from mmstvit.engine.layer_decay import stvit_layer_depth
        return stvit_layer_depth(self.arch_settings['depths'], param_name,
                                 prefix, decay_type)
