# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The modules of a deployed STViT: what :meth:`STViT.switch_to_deploy`
puts in place of the trained ones (mmpretrain's RepVGG / timm's FastViT
``reparameterize`` idiom: fused modules are built once from the trained
ones, which are deleted; every module of the deployed model runs).

* :class:`FusedConv2d`: a convolution with a BatchNorm and/or layer scale
  folded into its weight and bias, GELU as its post-op, and, given an
  accumulator, the residual sum into it in place (oneDNN calls while the
  plan says ``onednn``).
* :class:`ChannelAffine`: an eval-mode BatchNorm as a per-channel affine
  map applied in place (the stem's BatchNorms follow a GELU and a padded
  convolution, where they cannot fold).
* :class:`FusedConvFFN`, :class:`FusedMultiheadConvAttention` (and
  :class:`~.stoken_attention.FusedStokenAttention`): the block's branches with their
  norm (``norm2``) and layer scale folded in, adding their result into the
  block's map (``forward(x, acc)`` returns ``acc + branch(x)``, in place
  where ``kernels.inplace``).

Outputs equal the ``fast`` plan's in eval within float rounding
(``tests/test_fast_paths.py``).
"""
from typing import Optional

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .kernels import (add_conv1x1_, bn_scale_shift, conv_gelu,
                      fold_bn_after, fold_bn_before, fold_residual,
                      fold_scale)
from .modules import (ConvFFN, ConvStem, DWConv, MultiheadConvAttention,
                      Planned)


def _running_stats(bn: nn.Module, where: str) -> _BatchNorm:
    if not isinstance(bn, _BatchNorm) or not bn.track_running_stats:
        raise TypeError(
            f'STViT.switch_to_deploy: {where} must be a BatchNorm with '
            f'running statistics to fold, got {type(bn).__name__}')
    return bn


class FusedConv2d(Planned, nn.Conv2d):
    """A convolution built from a trained one with new ``weight`` and
    ``bias`` (folded). ``gelu``: GELU follows it (oneDNN's post-op where
    ``kernels.onednn``). ``forward(x, acc)``: ``acc + conv(x)`` for a 1x1
    kernel, accumulated into ``acc`` in place where ``kernels.inplace``
    (oneDNN's sum post-op where ``kernels.onednn``): pass only an ``acc``
    you own."""

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor,
                 bias: Optional[torch.Tensor], gelu: bool = False):
        super().__init__(conv.in_channels, conv.out_channels,
                         conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, bias is not None,
                         device=weight.device, dtype=weight.dtype)
        self.gelu = gelu
        with torch.no_grad():
            self.weight.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias)
        self.requires_grad_(False)

    def forward(self, x, acc: Optional[torch.Tensor] = None):
        k = self.kernels
        if acc is not None:
            if k.inplace:
                return add_conv1x1_(acc, x, self.weight, self.bias, k.onednn)
            return acc + self._conv_forward(x, self.weight, self.bias)
        if self.gelu:
            return conv_gelu(x, self.weight, self.bias, self.stride[0],
                             self.padding[0], k.onednn)
        return self._conv_forward(x, self.weight, self.bias)

    def extra_repr(self):
        return super().extra_repr() + (', gelu=True' if self.gelu else '')


class ChannelAffine(Planned, nn.Module):
    """``x * scale + shift`` per channel: an eval-mode BatchNorm (in place
    where ``kernels.inplace``; pass only an ``x`` you own)."""

    def __init__(self, bn: _BatchNorm):
        super().__init__()
        scale, shift = bn_scale_shift(_running_stats(bn, 'a stem norm'))
        self.register_buffer('scale', scale.detach().view(1, -1, 1, 1))
        self.register_buffer('shift', shift.detach().view(1, -1, 1, 1))

    def forward(self, x):
        if self.kernels.inplace:
            return x.mul_(self.scale).add_(self.shift)
        return x * self.scale + self.shift


def fuse_stem(stem: nn.Module) -> nn.Module:
    """The conv stem as Sequential(conv+GELU, affine) x 4; another stem
    (the ablation's patch embedding) as it is."""
    if not isinstance(stem, ConvStem):
        return stem
    layers, fused = list(stem.proj), []
    with torch.no_grad():
        for conv, bn in zip(layers[0::3], layers[2::3]):
            fused += [FusedConv2d(conv, conv.weight, conv.bias, gelu=True),
                      ChannelAffine(bn)]
    return nn.Sequential(*fused)


def fuse_conv_bn(conv_bn: nn.Module) -> FusedConv2d:
    """The downsample (``ConvBN``) as one convolution, its BN folded."""
    conv, bn = conv_bn.proj
    with torch.no_grad():
        w, b = fold_bn_after(conv, _running_stats(bn, 'a downsample norm'))
        return FusedConv2d(conv, w, b)


def fuse_cpe(pos_embed: Optional[DWConv]) -> Optional[FusedConv2d]:
    """``x + pos_embed(x)`` as one depthwise convolution (the residual at
    the kernel's centre tap)."""
    if pos_embed is None:
        return None
    conv = pos_embed.conv
    with torch.no_grad():
        return FusedConv2d(conv, fold_residual(conv), conv.bias)


class FusedConvFFN(nn.Module):
    """``acc + gamma * ConvFFN(BN(x))`` with the BatchNorm folded into
    ``fc1`` (1x1: exact), GELU ``fc1``'s post-op, the shortcut folded into
    the depthwise ``conv`` and layer scale into ``fc2``, which adds into
    ``acc``."""

    def __init__(self, norm: nn.Module, ffn: ConvFFN,
                 gamma: Optional[torch.Tensor]):
        super().__init__()
        bn = _running_stats(norm, 'norm2')
        with torch.no_grad():
            self.fc1 = FusedConv2d(ffn.fc1, *fold_bn_before(bn, ffn.fc1),
                                   gelu=True)
            self.conv = None
            if ffn.conv is not None:
                dw = ffn.conv.conv
                w = fold_residual(dw) if ffn.shortcut else dw.weight
                self.conv = FusedConv2d(dw, w, dw.bias)
            self.fc2 = FusedConv2d(
                ffn.fc2, *fold_scale(ffn.fc2.weight, ffn.fc2.bias, gamma))

    def forward(self, x, acc):
        h = self.fc1(x)
        if self.conv is not None:
            h = self.conv(h)
        return self.fc2(h, acc)


class FusedMultiheadConvAttention(MultiheadConvAttention):
    """``stoken_refine`` for inference: the same ``qkv`` (and position
    bias), no dropout, layer scale folded into ``proj``; given ``acc``,
    ``proj`` adds into it."""

    def __init__(self, attn: MultiheadConvAttention,
                 gamma: Optional[torch.Tensor]):
        nn.Module.__init__(self)
        for name in ('dim', 'num_heads', 'head_dim', 'scale', 'kernels'):
            setattr(self, name, getattr(attn, name))
        self.qkv = attn.qkv
        self.attn_drop = None
        self.rpe = attn.rpe
        with torch.no_grad():
            self.proj = FusedConv2d(
                attn.proj, *fold_scale(attn.proj.weight, attn.proj.bias,
                                       gamma))

    def forward(self, x, acc: Optional[torch.Tensor] = None):
        return self.proj(self.attend(x), acc)
