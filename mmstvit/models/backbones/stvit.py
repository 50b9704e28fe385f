# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Super Token Vision Transformer (STViT) backbone.

Huang et al., "Vision Transformer with Super Token Sampling", CVPR 2023.

The model is written as the paper's maths, in four files: this one (the
backbone: arguments, stages, freezing, kernel plan, deploy, loading,
forward), :mod:`.stages` (block and stage), :mod:`.stoken_attention` (super
token attention) and :mod:`.modules` (the convolutional parts and the
attention over super tokens). How it runs fast is in :mod:`.kernels`; which
kernels run is the model's plan (:class:`~.kernels.Kernels`), fixed when it
is built and changed only by :meth:`STViT.set_kernels`,
:func:`~.kernels.use_kernels` or :meth:`STViT.switch_to_deploy` (see
``docs/architecture.md``). Module and parameter names follow the authors'
``models/stvit.py`` so that their ImageNet checkpoints load as they are.
Every building block is importable from here as before.

The network (per block, ``x`` an NCHW map)::

    x = x + DWConv(x)                                  pos_embed  (CPE)
    x = x + gamma_1 * STA(LN(x))                       norm1, attn
    x = x + gamma_2 * ConvFFN(BN(x))                   norm2, mlp2

with super token attention ``STA`` (:class:`StokenAttention`, the paper's
equations 1-4: sampling, self-attention over super tokens, upsampling).
"""
import contextlib
import dataclasses
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from . import ablation, deploy, kernels
from .kernels import Kernels, store_channels_last
from .modules import (ConvBN, ConvFFN, ConvStem, DropPath, DWConv,
                      IdentityKernel, LayerNorm2d, MultiheadConvAttention,
                      Planned, _pair, check_frozen_stages, parse_arch,
                      parse_out_indices, per_stage, pretrained_init_cfg)
from .stages import STViTBlock, STViTStage, build_stages
from .stoken_attention import (FusedStokenAttention, StokenAttention,
                               StokenGrid, SuperTokenSampling)

__all__ = [
    'STViT', 'STViTStage', 'STViTBlock', 'StokenAttention', 'StokenGrid',
    'SuperTokenSampling', 'FusedStokenAttention', 'ConvStem', 'ConvFFN',
    'ConvBN', 'DWConv', 'MultiheadConvAttention', 'LayerNorm2d', 'DropPath',
    'IdentityKernel', 'Planned'
]


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
        self._set_arch(arch, stoken_size, n_iter)
        self.out_indices = parse_out_indices(out_indices, self.num_stages)
        self.frozen_stages = check_frozen_stages(frozen_stages,
                                                 self.num_stages)
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.channels_last = channels_last

        dim0 = self.embed_dims[0]
        self.patch_embed = ablation.build_stem(stem, in_channels, dim0)
        self.ape = ablation.build_ape(pos_embed, dim0, pretrain_img_size)
        self.pos_drop = nn.Dropout(drop_rate)
        rpe_grids = ablation.rpe_grids(pos_embed, rel_pos_grid,
                                       pretrain_img_size, self.stoken_size)
        self.layers = build_stages(
            self.arch_settings, self.stoken_size, self.n_iter, rpe_grids,
            drop_path_rate, with_cp, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
            init_values=layer_scale_init_value, pos_embed=pos_embed, ffn=ffn)
        self._freeze_stages()
        if channels_last:
            store_channels_last(self)
        # load_state_dict(assign=True) puts the file's tensors in place
        self.register_load_state_dict_post_hook(_after_load)
        self.set_kernels(kernels)

    def _set_arch(self, arch, stoken_size, n_iter) -> None:
        """The arch and the per-stage arguments, checked: ``arch_settings``
        (a dict of per-stage lists), ``arch`` (its name or ``'custom'``),
        ``num_stages``, ``embed_dims``, ``stoken_size`` (pairs) and
        ``n_iter`` (ints), one entry per stage."""
        self.arch_settings = parse_arch(arch, self.arch_zoo, self.arch_names)
        self.arch = arch if isinstance(arch, str) else 'custom'
        self.num_stages = len(self.arch_settings['depths'])
        self.embed_dims = list(self.arch_settings['embed_dims'])
        self.stoken_size = [_pair(s) for s in per_stage(
            stoken_size, 'stoken_size', self.num_stages)]
        self.n_iter = [int(v) for v in per_stage(n_iter, 'n_iter',
                                                 self.num_stages)]

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
