# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The STViT backbone's kernels: how :mod:`.stvit` runs fast.

Every kernel computes what a few plain ops compute, and each sits beside its
plain twin; which one runs is a flag of the model's kernel plan
(:class:`~.execution.Kernels`), passed in by the calling module. No function
here inspects tracers, devices or dtypes to choose; the one runtime question,
the autocast dtype, is asked the way ``torch.amp.custom_fwd`` asks it.
``tests/test_fast_paths.py`` compares every plan with the plain one.

* 3x3 neighbourhoods of the super token grid: :func:`gather3x3` /
  :func:`scatter3x3` (strided slices; the operators ``mmstvit::gather3x3`` /
  ``mmstvit::scatter3x3`` in the ``fast`` plan, so ``torch.compile`` sees
  them as opaque) beside the authors' identity-kernel convolutions
  :func:`unfold3x3` / :func:`fold3x3` (the ``reference`` plan).
* Folding: BatchNorm into convolutions (:func:`bn_scale_shift`,
  :func:`conv_bn_folded`, :func:`bn_conv_gelu`), layer scale into
  projections (:func:`project_residual`).
* Memory-lean training: :class:`GELUDepthwiseConv` and :class:`GELUBatchNorm`,
  autograd functions that recompute GELU in backward instead of storing it,
  correct under autocast (bf16, fp16) and in half precision.
* Inference only (``deploy``): oneDNN's fused convolutions
  (:func:`conv_gelu`, :func:`add_conv1x1_`) and residual sums in place.
* Parameter layout: :func:`store_channels_last` (convolution weights laid
  out as their channels-last gradients come, and every gradient handed over
  in its parameter's layout, so DDP's buckets match them).
* ``with_cp``: :func:`keep_buffers_on_recompute`, so that activation
  checkpointing leaves BatchNorm statistics as one forward leaves them.

Adding a kernel: write it here beside the plain ops it replaces, add a flag
to :class:`~.execution.Kernels` (off in ``plain``), branch on it in the
module, and let ``tests/test_fast_paths.py``'s matrix compare the two.
"""
import contextlib
import weakref
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from . import execution
from .execution import Kernels

# ---------------------------------------------------------------------------
# 3x3 neighbourhoods of a grid
# ---------------------------------------------------------------------------


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


if execution.HAS_OPERATORS:
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


# ---------------------------------------------------------------------------
# folding, projections, oneDNN inference kernels
# ---------------------------------------------------------------------------


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


def project_residual(x: torch.Tensor, proj: nn.Conv2d, drop: nn.Module,
                     use: Kernels, identity: Optional[torch.Tensor] = None,
                     gamma: Optional[torch.Tensor] = None,
                     drop_path: Optional[nn.Module] = None) -> torch.Tensor:
    """``identity + drop_path(gamma * drop(proj(x)))`` for a 1x1 ``proj``,
    without the terms that are not given.

    ``use.fold_norm``: layer scale ``gamma`` ((1, C, 1, 1)) is folded into
    ``proj``'s weight and bias (per channel, it commutes with dropout and
    drop path). ``use.inplace`` (inference): ``proj`` accumulates into
    ``identity`` in place; pass only an ``identity`` you own.
    """
    w, b = proj.weight, proj.bias
    if gamma is not None and use.fold_norm:
        w = w * gamma.view(-1, 1, 1, 1)
        b = b * gamma.view(-1) if b is not None else None
        gamma = None
    if use.inplace and identity is not None:
        return add_conv1x1_(identity, x, w, b, use.onednn)
    y = drop(F.conv2d(x, w, b))
    if gamma is not None:
        y = gamma * y
    if drop_path is not None:
        y = drop_path(y)
    return y if identity is None else identity + y


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


def conv_bn_folded(x: torch.Tensor, conv: nn.Conv2d,
                   bn: _BatchNorm) -> torch.Tensor:
    """``bn(conv(x))`` for an eval-mode ``bn``, as one convolution with the
    BatchNorm folded into its weight and bias (exact up to rounding)."""
    scale, shift = bn_scale_shift(bn)
    w = conv.weight * scale.view(-1, 1, 1, 1)
    b = conv.bias * scale + shift
    return F.conv2d(x, w, b, conv.stride, conv.padding)


def bn_conv_gelu(x: torch.Tensor, bn: _BatchNorm, conv: nn.Conv2d,
                 drop: nn.Module, onednn: bool = False) -> torch.Tensor:
    """``drop(gelu(conv(bn(x))))`` for an eval-mode ``bn`` and a 1x1
    ``conv``: the BatchNorm folded into the convolution (its input side)."""
    scale, shift = bn_scale_shift(bn)
    w = conv.weight * scale.view(1, -1, 1, 1)
    b = conv.bias + (conv.weight.flatten(1) @ shift)
    return drop(conv_gelu(x, w, b, onednn=onednn))


def stem_conv_gelu_bn_(x: torch.Tensor, conv: nn.Conv2d, bn: _BatchNorm,
                       onednn: bool) -> torch.Tensor:
    """``bn(gelu(conv(x)))`` for inference with an eval-mode ``bn``: conv
    and GELU (one oneDNN call where ``onednn``), then the BatchNorm's affine
    map in place on that fresh output."""
    x = conv_gelu(x, conv.weight, conv.bias, conv.stride[0],
                  conv.padding[0], onednn)
    scale, shift = bn_scale_shift(bn)
    return x.mul_(scale.view(1, -1, 1, 1)).add_(shift.view(1, -1, 1, 1))


# ---------------------------------------------------------------------------
# parameter layout (DDP)
# ---------------------------------------------------------------------------


def channels_last_strides(shape) -> Tuple[int, ...]:
    """The strides of a dense channels-last (N, C, H, W) tensor of
    ``shape``, including those of size-1 dimensions."""
    n, c, h, w = shape
    return (h * w * c, 1, w * c, c)


def relayout(t: torch.Tensor, strides: Tuple[int, ...]) -> torch.Tensor:
    """``t`` with exactly ``strides``: a free view when only the strides of
    size-1 dimensions differ (the same memory), a copy otherwise."""
    if t.stride() == strides:
        return t
    if all(a == b or n == 1 for a, b, n in zip(t.stride(), strides, t.shape)):
        return t.as_strided(t.shape, strides)
    out = torch.empty_strided(t.shape, strides, dtype=t.dtype,
                              device=t.device)
    return out.copy_(t)


class GradLikeParameter:
    """A gradient hook that hands a parameter its gradient laid out with the
    parameter's own strides (see :func:`store_channels_last`). Holds the
    parameter weakly; parameters are pickled without their hooks."""

    def __init__(self, param: torch.Tensor):
        self.param = weakref.ref(param)

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        param = self.param()
        if param is None or grad.layout != torch.strided or \
                not getattr(param, '_mmstvit_grad_layout', True):
            return grad
        return relayout(grad, param.stride())


def store_channels_last(module: nn.Module) -> int:
    """Lays the parameters of ``module`` out for DistributedDataParallel:
    every convolution weight channels last, with exactly the strides
    :func:`channels_last_strides` gives, and every 4-D parameter's gradient
    handed over in its parameter's layout (:class:`GradLikeParameter`; not
    on frozen parameters, which get no gradient); returns how many weights
    were re-laid. Values are unchanged, and so are the parameters'
    identities (``param.data`` is replaced), so optimizers and hooks that
    already hold them keep working.

    Why: DDP builds its gradient buckets with the strides of the
    parameters, and when a gradient's strides differ, even only in size-1
    dimensions (a 1x1 kernel's (2048, 1, 2048, 2048) against
    (2048, 1, 1, 1)), it warns "Grad strides do not match bucket view
    strides" and copies that gradient at every step. Convolutions on the
    channels-last maps return their weight gradients channels last, so
    weights stored that way get theirs with no copy. Where autograd still
    hands a gradient with other strides (a layer scale folded into a
    projection, a depthwise kernel whose output gradient arrives
    contiguous), the hook re-strides it before it is accumulated: a free
    view when only size-1 strides differ, the copy autograd would make
    otherwise. ``Tensor.contiguous(memory_format=...)`` cannot do this for
    1x1 kernels: it sees them as channels last already and keeps their
    strides.
    """
    changed = 0
    convs = {id(m.weight) for m in module.modules()
             if isinstance(m, nn.Conv2d)}
    for p in module.parameters():
        if p.dim() != 4:
            continue
        if id(p) in convs:
            strides = channels_last_strides(p.shape)
            if p.stride() != strides:
                with torch.no_grad():
                    p.data = relayout(p.detach(), strides)
                if p.grad is not None:
                    p.grad = relayout(p.grad, strides)
                changed += 1
        if p.requires_grad and not getattr(p, '_mmstvit_grad_hook', False):
            p.register_hook(GradLikeParameter(p))
            p._mmstvit_grad_hook = True
        p._mmstvit_grad_layout = True  # the hook's switch (store_contiguous)
    return changed


def store_contiguous(module: nn.Module) -> None:
    """The layout before :func:`store_channels_last`, for comparisons (the
    benchmark, the tests): every parameter with plain contiguous strides and
    its gradient as autograd hands it (the hooks turned off)."""
    for p in module.parameters():
        strides = [1] * p.dim()
        for d in range(p.dim() - 2, -1, -1):
            strides[d] = strides[d + 1] * p.shape[d + 1]
        with torch.no_grad():
            p.data = relayout(p.detach(), tuple(strides))
        p._mmstvit_grad_layout = False


# ---------------------------------------------------------------------------
# memory-lean autograd functions (training)
# ---------------------------------------------------------------------------


def _autocast_dtype(t: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype autocast gives a convolution on ``t``'s device, or None
    outside autocast: the question ``torch.amp.custom_fwd`` asks, for the
    device of the data (CUDA AMP and CPU autocast alike)."""
    device = t.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


class GELUDepthwiseConv(torch.autograd.Function):
    """``conv2d(gelu(a), weight, bias, groups=channels)`` that keeps ``a``
    and recomputes ``gelu(a)`` in backward instead of storing it.

    Autograd would keep both the GELU input (for GELU's backward) and its
    output (for the convolution's weight gradient): two copies of the
    4x-wide hidden map of every ConvFFN. Recomputing the GELU is one
    elementwise pass; the values and gradients are those of the two ops.
    All tensors have one dtype (:func:`gelu_dwconv` casts them as autocast
    would); the gradients of a cast are cast back by autograd.
    """

    @staticmethod
    def forward(ctx, a, weight, bias, padding: int):
        ctx.save_for_backward(a, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv2d(F.gelu(a), weight, bias, 1, padding, 1, a.shape[1])

    @staticmethod
    def backward(ctx, grad):
        a, weight = ctx.saved_tensors
        need_a, need_w, need_b = ctx.needs_input_grad[:3]
        p = ctx.padding
        gy, gw, gb = torch.ops.aten.convolution_backward(
            grad.to(a.dtype), F.gelu(a), weight,
            [weight.shape[0]] if ctx.has_bias else None, [1, 1], [p, p],
            [1, 1], False, [0, 0], a.shape[1],
            [need_a, need_w, need_b and ctx.has_bias])
        ga = torch.ops.aten.gelu_backward(gy, a) if need_a else None
        return ga, gw, gb, None


class GELUBatchNorm(torch.autograd.Function):
    """``batch_norm(gelu(a))`` in training mode, keeping ``a`` and
    recomputing ``gelu(a)`` in backward (the stem's conv -> GELU -> BN at
    full and half resolution). Running statistics are updated as
    ``nn.BatchNorm2d`` does (the caller passes the averaging factor); the
    affine parameters and statistics stay float32 beside a half-precision
    ``a``, as ``F.batch_norm`` keeps them under autocast."""

    @staticmethod
    def forward(ctx, a, weight, bias, running_mean, running_var,
                factor: float, eps: float):
        out, mean, invstd = torch.ops.aten.native_batch_norm(
            F.gelu(a), weight, bias, running_mean, running_var, True,
            factor, eps)[:3]
        ctx.save_for_backward(a, weight, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad):
        a, weight, mean, invstd = ctx.saved_tensors
        need_a, need_w, need_b = ctx.needs_input_grad[:3]
        gy, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad.to(a.dtype).contiguous(memory_format=_memory_format(a)),
            F.gelu(a), weight, None, None, mean, invstd, True, ctx.eps,
            [need_a, need_w and weight is not None,
             need_b and weight is not None])
        ga = torch.ops.aten.gelu_backward(gy, a) if need_a else None
        return ga, gw, gb, None, None, None, None


def _memory_format(t: torch.Tensor):
    return torch.channels_last if t.dim() == 4 and \
        t.is_contiguous(memory_format=torch.channels_last) and \
        not t.is_contiguous() else torch.contiguous_format


def gelu_dwconv(a: torch.Tensor, dwconv: nn.Module) -> torch.Tensor:
    """``dwconv(gelu(a))`` for a residual depthwise ``dwconv``
    (:class:`~.stvit.ResDWC`) in training, without storing GELU's output
    (:class:`GELUDepthwiseConv`). Under autocast the operands are cast as
    autocast casts a convolution's, and the function runs with autocast off
    (what ``torch.amp.custom_fwd(cast_inputs=...)`` does)."""
    weight, bias = dwconv.folded_weight(), dwconv.conv.bias
    dtype = _autocast_dtype(a)
    if dtype is not None:
        a, weight = a.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(a.device.type, enabled=False):
        return GELUDepthwiseConv.apply(a, weight, bias,
                                       dwconv.kernel_size // 2)


def gelu_batch_norm(x: torch.Tensor, bn: _BatchNorm) -> torch.Tensor:
    """``bn(gelu(x))`` for a training-mode ``nn.BatchNorm2d`` that tracks
    running statistics, without storing GELU's output
    (:class:`GELUBatchNorm`); the statistics are updated as the module
    updates them."""
    bn.num_batches_tracked.add_(1)
    factor = (1. / float(bn.num_batches_tracked)
              if bn.momentum is None else bn.momentum)
    with torch.autocast(x.device.type, enabled=False):
        return GELUBatchNorm.apply(x, bn.weight, bn.bias, bn.running_mean,
                                   bn.running_var, factor, bn.eps)


def lean_bn(bn: nn.Module) -> bool:
    """:func:`gelu_batch_norm` can stand in for ``bn``: a plain
    ``nn.BatchNorm2d`` in training mode with running statistics (SyncBN and
    the rest keep their own forward)."""
    return type(bn) is nn.BatchNorm2d and bn.training and \
        bn.track_running_stats


# ---------------------------------------------------------------------------
# activation checkpointing
# ---------------------------------------------------------------------------


class _RestoreBuffers:
    """Puts every buffer of a module back as it was when entered."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.saved = [(b, b.detach().clone())
                      for b in self.module.buffers()]

    def __exit__(self, *exc):
        with torch.no_grad():
            for b, value in self.saved:
                b.copy_(value)
        self.saved = []
        return False


def keep_buffers_on_recompute(module: nn.Module):
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint`` (non-reentrant)
    that runs the forward as usual and puts ``module``'s buffers back after
    the recomputation in backward: a checkpointed block updates BatchNorm
    running statistics (and ``num_batches_tracked``) once per step, as
    without checkpointing, for any kind of normalization layer, instead of
    a second time when backward recomputes it (mmdet's ResNet ``with_cp``
    does the latter)."""
    return lambda: (contextlib.nullcontext(), _RestoreBuffers(module))
