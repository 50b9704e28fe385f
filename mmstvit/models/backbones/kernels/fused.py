# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Folding for inference (the arithmetic :meth:`STViT.switch_to_deploy` uses
to build its fused modules) and the inference-only oneDNN calls: a
convolution with GELU as its post-op (:func:`conv_gelu`), a 1x1 convolution
that accumulates into a tensor in place (:func:`add_conv1x1_`)."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

#: oneDNN's fused convolutions (a private op: ``deploy`` falls back to the
#: plain convolution where a torch release lacks it).
HAS_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops, 'mkldnn') and hasattr(torch.ops.mkldnn,
                                     '_convolution_pointwise')


def conv_gelu(x: torch.Tensor, weight: torch.Tensor,
              bias: Optional[torch.Tensor], stride: int = 1,
              padding: int = 0, onednn: bool = False) -> torch.Tensor:
    """``gelu(conv2d(x))``; ``onednn``: one oneDNN call with GELU (erf) as
    its post-op (float32 CPU inference)."""
    if onednn:
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, [padding] * 2, [stride] * 2, [1, 1], 1, 'gelu',
            [], 'none')
    return F.gelu(F.conv2d(x, weight, bias, stride, padding))


def add_conv1x1_(acc: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 bias: Optional[torch.Tensor],
                 onednn: bool = False) -> torch.Tensor:
    """``acc += conv1x1(x)`` in place (inference; ``acc`` must be a tensor
    the caller owns); ``onednn``: the convolution accumulates into ``acc``
    itself (one oneDNN call, no new map)."""
    if onednn:
        return torch.ops.mkldnn._convolution_pointwise_(
            acc, x, weight, bias, [0, 0], [1, 1], [1, 1], 1, 'add', 1.0,
            None, [], None)
    return acc.add_(F.conv2d(x, weight, bias))


def bn_scale_shift(bn: _BatchNorm) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(x) == x * scale + shift`` for
    a BatchNorm in eval mode (running statistics)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = bn.weight * scale
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift + bn.bias
    return scale, shift


def fold_bn_after(conv: nn.Conv2d, bn: _BatchNorm):
    """(weight, bias) of one convolution computing ``bn(conv(x))`` for an
    eval-mode ``bn`` (its running statistics)."""
    scale, shift = bn_scale_shift(bn)
    bias = conv.bias if conv.bias is not None else \
        torch.zeros_like(shift)
    return (conv.weight * scale.view(-1, 1, 1, 1), bias * scale + shift)


def fold_bn_before(bn: _BatchNorm, conv: nn.Conv2d):
    """(weight, bias) of one 1x1 convolution computing ``conv(bn(x))`` for
    an eval-mode ``bn`` (exact for a 1x1 kernel: no padding)."""
    scale, shift = bn_scale_shift(bn)
    bias = conv.bias if conv.bias is not None else \
        torch.zeros(conv.out_channels, device=shift.device, dtype=shift.dtype)
    return (conv.weight * scale.view(1, -1, 1, 1),
            bias + conv.weight.flatten(1) @ shift)


def fold_residual(conv: nn.Conv2d) -> torch.Tensor:
    """The weight of one depthwise convolution computing ``x + conv(x)``: 1
    added at the kernel's centre tap (exact)."""
    w = conv.weight.detach().clone()
    kh, kw = w.shape[-2:]
    w[:, :, kh // 2, kw // 2] += 1
    return w


def fold_scale(weight: torch.Tensor, bias: Optional[torch.Tensor],
               gamma: Optional[torch.Tensor]):
    """(weight, bias) of a convolution followed by the per-channel layer
    scale ``gamma`` ((1, C, 1, 1), or None: unchanged)."""
    if gamma is None:
        return weight, bias
    g = gamma.reshape(-1)
    return (weight * g.view(-1, 1, 1, 1),
            bias * g if bias is not None else None)
