# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Super Token Vision Transformer (STViT) backbone.

Huang et al., "Vision Transformer with Super Token Sampling", CVPR 2023.

Parameter and buffer names follow the authors' ``models/stvit.py`` so that
their ImageNet checkpoints load as they are; the computation is our own and
avoids the identity-kernel convolutions, permute round trips and unfused
attention of the reference code (see ``tools/analysis_tools/benchmark.py``).
"""
import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from mmstvit.utils.checkpoint import load_stvit_state_dict

# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def _pair(x) -> Tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    x = tuple(int(v) for v in x)
    if len(x) != 2:
        raise ValueError(f'a super token size must be an int or a pair of '
                         f'ints, got {x!r}')
    return x


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (as timm's ``DropPath``)."""
    if p == 0. or not training:
        return x
    keep = 1 - p
    shape = (x.shape[0], ) + (1, ) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):

    def __init__(self, drop_prob: float = 0.):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self):
        return f'drop_prob={self.drop_prob:.3f}'


# A traced forward (FLOP counters, the ONNX exporter) runs plain ops only:
# explicit matmul + softmax attention, the residuals and BatchNorms as
# separate ops, no oneDNN fused calls, no in-place updates and no custom
# autograd functions, so that counters see every operation and exporters
# can express it. When True (the default) it also runs the authors' 3x3
# neighbourhood gather/scatter as identity-kernel convolutions, as in their
# graph: every FLOP counter then reports the paper's protocol (e.g. 82.3G for
# the STViT-S backbone at 1280x800). The eager path computes the same values
# without the identity convolutions (0.75G of those multiply-adds at that
# size): set this to False to count only the arithmetic the fast path
# executes, or to export the fast graph (tools/deployment/export_onnx.py
# does, unless given --reference-graph).
REFERENCE_GRAPH_WHEN_TRACING = True


def _traced() -> bool:
    """True while the model is traced (FLOP counters, the ONNX exporter)."""
    return torch.jit.is_tracing() or torch.jit.is_scripting()


def _tracing() -> bool:
    """True while traced with :data:`REFERENCE_GRAPH_WHEN_TRACING` on: the
    trace is then the authors' graph."""
    return REFERENCE_GRAPH_WHEN_TRACING and _traced()


def unfold3x3(x: torch.Tensor, kernel: Optional[torch.Tensor] = None
              ) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, 9, h*w): every cell's 3x3 neighbourhood.

    Out-of-grid neighbours are zeros. One im2col; with the authors' (9, 1, 3,
    3) identity ``kernel`` under tracing, their convolution (same values).
    """
    B, C, h, w = x.shape
    if kernel is not None and _tracing():
        y = F.conv2d(x.reshape(B * C, 1, h, w), kernel.to(x.dtype), padding=1)
        return y.reshape(B, C, 9, h * w)
    return F.unfold(x, 3, padding=1).view(B, C, 9, h * w)


def fold3x3(cols: torch.Tensor, size: Tuple[int, int],
            kernel: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, C*9, h*w) -> (B, C, h, w): adjoint of :func:`unfold3x3`.

    Each cell receives the sum of what its 3x3 neighbours sent to it.
    """
    if kernel is not None and _tracing():
        B, C9, _ = cols.shape
        y = F.conv_transpose2d(
            cols.reshape(B * (C9 // 9), 9, *size), kernel.to(cols.dtype),
            padding=1)
        return y.reshape(B, C9 // 9, *size)
    return F.fold(cols, size, 3, padding=1)


_OFFSETS = [(i, j) for i in range(3) for j in range(3)]


def gather3x3(t: torch.Tensor) -> torch.Tensor:
    """(B, h, w, C) -> (B, h*w, 9, C): each cell's 3x3 neighbours (zeros off
    the grid), neighbour k = (di+1)*3 + (dj+1) as in :func:`unfold3x3`.

    Nine strided slices of the padded grid: for the small super token grids
    this is several times faster than im2col and keeps channels last.
    """
    B, h, w, C = t.shape
    tp = F.pad(t, (0, 0, 1, 1, 1, 1))
    out = torch.stack([tp[:, i:i + h, j:j + w] for i, j in _OFFSETS], 3)
    return out.reshape(B, h * w, 9, C)


def scatter3x3(sent: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h*w, 9, C) -> (B, h, w, C): adjoint of :func:`gather3x3`; every
    cell receives the sum of what its 3x3 neighbours sent to it."""
    B, n, _, C = sent.shape
    sent = sent.reshape(B, h, w, 9, C)
    if _traced():  # exporters: shifted copies added, no in-place updates
        out = sum(
            F.pad(sent[:, :, :, k], (0, 0, j, 2 - j, i, 2 - i))
            for k, (i, j) in enumerate(_OFFSETS))
        return out[:, 1:h + 1, 1:w + 1]
    out = sent.new_zeros(B, h + 2, w + 2, C)
    for k, (i, j) in enumerate(_OFFSETS):
        out[:, i:i + h, j:j + w] += sent[:, :, :, k]
    return out[:, 1:h + 1, 1:w + 1]


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C), a free view for channels-last maps."""
    return x.permute(0, 2, 3, 1)


class IdentityKernel(nn.Module):
    """Holds the (9, 1, 3, 3) identity kernel of the official Unfold/Fold.

    The authors store it in every block's state dict as a frozen Parameter;
    it is kept here as a persistent buffer so that checkpoints round-trip
    with identical keys, while the computation uses im2col/col2im.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer('weights', torch.eye(9).reshape(9, 1, 3, 3))


# ---------------------------------------------------------------------------
# fused oneDNN kernels for CPU inference
# ---------------------------------------------------------------------------


def _compiling() -> bool:
    compiler = getattr(torch, 'compiler', None)
    return bool(compiler is not None and compiler.is_compiling())


_HAS_POINTWISE = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops, 'mkldnn') and hasattr(torch.ops.mkldnn,
                                     '_convolution_pointwise')


def _fused_cpu(maps: Sequence[torch.Tensor],
               params: Sequence[torch.Tensor] = ()) -> bool:
    """True where oneDNN's fused convolutions can serve an eager float32
    CPU forward that needs no gradient: channels-last ``maps``, no
    autocast, not traced or compiled (those see the plain ops and fuse by
    themselves)."""
    if _compiling() or _traced() or not _HAS_POINTWISE or \
            not torch.backends.mkldnn.enabled:
        return False
    tensors = tuple(maps) + tuple(params)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if torch.is_autocast_enabled('cpu'):
        return False
    return all(t.device.type == 'cpu' and t.dtype == torch.float32
               for t in tensors) and all(
                   t.dim() == 4 and t.is_contiguous(
                       memory_format=torch.channels_last) for t in maps)


def conv_gelu(x: torch.Tensor, weight: torch.Tensor,
              bias: Optional[torch.Tensor], stride: int = 1,
              padding: int = 0) -> torch.Tensor:
    """``gelu(conv2d(x))``: one oneDNN call with GELU (erf) as its post-op
    on CPU inference, the two ops otherwise."""
    if _fused_cpu((x, ), (weight, )):
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, [padding] * 2, [stride] * 2, [1, 1], 1, 'gelu',
            [], 'none')
    return F.gelu(F.conv2d(x, weight, bias, stride, padding))


def add_conv1x1_(acc: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``acc + conv1x1(x)``; on CPU inference the convolution accumulates
    into ``acc`` in place (one oneDNN call, no new map), so ``acc`` must be
    a tensor the caller owns."""
    if _fused_cpu((acc, x), (weight, )) and acc.shape[1] == weight.shape[0]:
        return torch.ops.mkldnn._convolution_pointwise_(
            acc, x, weight, bias, [0, 0], [1, 1], [1, 1], 1, 'add', 1.0,
            None, [], None)
    return acc + F.conv2d(x, weight, bias)


def project_residual(x: torch.Tensor, proj: nn.Conv2d, drop: nn.Dropout,
                     identity: Optional[torch.Tensor] = None,
                     gamma: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``identity + gamma * drop(proj(x))`` for a 1x1 ``proj``, without the
    terms that are not given.

    Layer scale ``gamma`` ((1, C, 1, 1)) is folded into ``proj``'s weight and
    bias (per channel, it commutes with dropout) except under tracing, which
    keeps the reference graph. When no gradient is needed and dropout is off,
    ``proj`` accumulates into ``identity`` in place (:func:`add_conv1x1_`):
    pass only an ``identity`` you own.
    """
    w, b = proj.weight, proj.bias
    if gamma is not None and not _tracing():
        w = w * gamma.view(-1, 1, 1, 1)
        b = b * gamma.view(-1) if b is not None else None
        gamma = None
    if identity is not None and not (drop.training and drop.p) and \
            _no_grad_needed(identity, x, w):
        return add_conv1x1_(identity, x, w, b)
    y = drop(F.conv2d(x, w, b))
    if gamma is not None:
        y = gamma * y
    return y if identity is None else identity + y


def _bn_scale_shift(bn: _BatchNorm) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(x) == x * scale + shift`` for
    a BatchNorm in eval mode (running statistics)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = bn.weight * scale
    shift = -bn.running_mean * scale
    if bn.affine:
        shift = shift + bn.bias
    return scale, shift


def _no_grad_needed(*tensors: torch.Tensor) -> bool:
    return not torch.is_grad_enabled() or not any(
        t.requires_grad for t in tensors)


# ---------------------------------------------------------------------------
# memory-lean autograd functions (training)
# ---------------------------------------------------------------------------


class _GELUDepthwiseConv(torch.autograd.Function):
    """``conv2d(gelu(a), weight, bias, groups=channels)`` that keeps ``a``
    and recomputes ``gelu(a)`` in backward instead of storing it.

    Autograd would keep both the GELU input (for GELU's backward) and its
    output (for the convolution's weight gradient): two copies of the
    4x-wide hidden map of every ConvFFN. Recomputing the GELU is one
    elementwise pass; the values and gradients are those of the two ops.
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
            grad, F.gelu(a), weight,
            [weight.shape[0]] if ctx.has_bias else None, [1, 1], [p, p],
            [1, 1], False, [0, 0], a.shape[1],
            [need_a, need_w, need_b and ctx.has_bias])
        ga = torch.ops.aten.gelu_backward(gy, a) if need_a else None
        return ga, gw, gb, None


class _GELUBatchNorm(torch.autograd.Function):
    """``batch_norm(gelu(a))`` in training mode, keeping ``a`` and
    recomputing ``gelu(a)`` in backward (the stem's conv -> GELU -> BN at
    full and half resolution). Running statistics are updated as
    ``nn.BatchNorm2d`` does (the caller passes the averaging factor)."""

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
            grad.contiguous(memory_format=_memory_format(a)), F.gelu(a),
            weight, None, None, mean, invstd, True, ctx.eps,
            [need_a, need_w and weight is not None,
             need_b and weight is not None])
        ga = torch.ops.aten.gelu_backward(gy, a) if need_a else None
        return ga, gw, gb, None, None, None, None


def _memory_format(t: torch.Tensor):
    return torch.channels_last if t.dim() == 4 and \
        t.is_contiguous(memory_format=torch.channels_last) and \
        not t.is_contiguous() else torch.contiguous_format


def _lean_autograd(*tensors) -> bool:
    """Use the memory-lean functions: eager training with gradients."""
    return torch.is_grad_enabled() and not _traced() and any(
        t is not None and t.requires_grad for t in tensors)


# ---------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map (eps 1e-6)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        # For a channels-last tensor the permutes are free views.
        y = F.layer_norm(
            x.permute(0, 2, 3, 1), self.norm.normalized_shape,
            self.norm.weight, self.norm.bias, self.norm.eps)
        return y.permute(0, 3, 1, 2)


class ResDWC(nn.Module):
    """x + depthwise3x3(x), computed as one convolution.

    The residual is folded into the kernel's centre tap, which is exact in
    value and gradient (the authors left the same idea commented out).
    """

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(
            dim, dim, kernel_size, 1, kernel_size // 2, groups=dim)

    def folded_weight(self) -> torch.Tensor:
        """The depthwise kernel with 1 added at the centre tap."""
        w = self.conv.weight
        c = self.kernel_size // 2
        delta = torch.zeros_like(w)
        delta[:, :, c, c] = 1
        return w + delta

    def forward(self, x):
        if _traced():
            return x + self.conv(x)
        c = self.kernel_size // 2
        return F.conv2d(x, self.folded_weight(), self.conv.bias, 1, c, 1,
                        self.dim)


class ConvFFN(nn.Module):
    """1x1 conv -> GELU -> residual depthwise 3x3 -> 1x1 conv (``mlp2``)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.conv = ResDWC(hidden, 3)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def _fc1_folded(self, bn: _BatchNorm):
        """fc1's weight and bias with an eval-mode BatchNorm before it folded
        in (exact up to rounding)."""
        scale, shift = _bn_scale_shift(bn)
        w = self.fc1.weight * scale.view(1, -1, 1, 1)
        b = self.fc1.bias + (self.fc1.weight.flatten(1) @ shift)
        return w, b

    def forward(self, x, bn: Optional[_BatchNorm] = None,
                identity: Optional[torch.Tensor] = None,
                gamma: Optional[torch.Tensor] = None):
        """``fc2(dwconv(gelu(fc1(bn(x)))))``, times ``gamma`` (layer scale,
        (1, C, 1, 1)) and plus ``identity`` when they are given.

        ``identity`` may be overwritten with the sum when no gradient is
        needed: pass only a tensor you own.
        """
        if bn is not None and not bn.training and not _traced():
            # inference: fold the preceding BatchNorm into fc1 (exact).
            w, b = self._fc1_folded(bn)
            if not self.training or not self.drop.p:
                x = conv_gelu(x, w, b)
            else:
                x = self.drop(self.act1(F.conv2d(x, w, b)))
            x = self.conv(x)
        else:
            if bn is not None:
                x = bn(x)
            x = self.fc1(x)
            conv = self.conv.conv
            if (not self.drop.p or not self.training) and _lean_autograd(
                    x, conv.weight, conv.bias):
                # GELU -> residual depthwise conv, GELU's output not stored
                x = _GELUDepthwiseConv.apply(x, self.conv.folded_weight(),
                                             conv.bias,
                                             self.conv.kernel_size // 2)
            else:
                x = self.drop(self.act1(x))
                x = self.conv(x)
        return project_residual(x, self.fc2, self.drop, identity, gamma)


class MultiheadConvAttention(nn.Module):
    """Global multi-head self-attention over an NCHW map (``stoken_refine``).

    qkv is a 1x1 convolution whose output channels are laid out per head as
    (head, [q|k|v], head_dim), as in the authors' code.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.,
                 proj_drop: float = 0.):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f'embed dim {dim} is not divisible by '
                             f'num_heads {num_heads}')
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv_heads(self, x):
        """(B, C, H, W) -> q, k, v each (B, heads, N, head_dim).

        Read through the channels-last view of the qkv map, so no copy is
        made when the network runs channels last (the default).
        """
        B, C, H, W = x.shape
        qkv = F.conv2d(x, self.qkv.weight, self.qkv.bias)
        qkv = _nhwc(qkv).reshape(B, H * W, self.num_heads, 3, self.head_dim)
        return qkv.permute(3, 0, 2, 1, 4).unbind(0)

    def attention_weights(self, x):
        """Softmax attention (B, heads, N_query, N_key), for visualisation."""
        q, k, _ = self.qkv_heads(x)
        return ((q @ k.transpose(-1, -2)) * self.scale).softmax(-1)

    def forward(self, x, identity: Optional[torch.Tensor] = None,
                gamma: Optional[torch.Tensor] = None):
        """Attention output, times ``gamma`` (layer scale, (1, C, 1, 1)) and
        plus ``identity`` when given (``identity`` may be overwritten with
        the sum when no gradient is needed: pass only a tensor you own)."""
        B, C, H, W = x.shape
        q, k, v = self.qkv_heads(x)
        if _traced():
            attn = ((q @ k.transpose(-1, -2)) * self.scale).softmax(-1)
            out = self.attn_drop(attn) @ v
        else:
            p = self.attn_drop.p if self.training else 0.
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=p, scale=self.scale)
        # (B, h, N, d) -> (B, H, W, h*d) -> channels-last (B, C, H, W)
        out = out.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return project_residual(out, self.proj, self.proj_drop, identity,
                                gamma)


class StokenAttention(nn.Module):
    """Super token attention: sampling, self-attention, upsampling.

    For a super token size ``s`` (a pair) the map is padded right/bottom to a
    multiple of ``s``; each s x s cell starts as the mean of its pixels; every
    pixel is associated with the 3x3 super tokens around its cell by a softmax
    of dot products scaled by ``C**-0.5``; ``n_iter`` refinement steps run
    without gradient; the super tokens are the association-weighted means of
    their pixels; multi-head self-attention mixes them; and each pixel is
    rebuilt from its 3x3 super tokens with the same association. With
    ``s == (1, 1)`` this is plain global self-attention.
    """

    def __init__(self, dim: int, stoken_size, n_iter: int = 1,
                 num_heads: int = 8, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.,
                 proj_drop: float = 0.):
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
            dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop)

    @property
    def samples(self) -> bool:
        return self.stoken_size[0] > 1 or self.stoken_size[1] > 1

    # -- step 1: super token sampling -------------------------------------
    def associate(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Runs the sampling step and returns its intermediate results.

        Returns a dict with ``pixels`` (B, n, P, C), ``assoc`` (B, n, P, 9):
        each pixel's softmax association with the 3x3 super tokens around
        its cell (row-major, centre at index 4), ``assoc_sum`` (B, 1, hh, ww),
        ``stokens`` (B, C, hh, ww) and ``grid`` (hh, ww, H, W, H0, W0), where
        n = hh*ww super tokens and P = sh*sw pixels per cell.
        """
        B, C, H0, W0 = x.shape
        if _traced():
            # a trace has a fixed input size: plain ints keep the shapes
            # below static for exporters (ONNX cannot infer through // and %)
            H0, W0 = int(H0), int(W0)
        sh, sw = self.stoken_size
        pad_b, pad_r = (-H0) % sh, (-W0) % sw
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        H, W = H0 + pad_b, W0 + pad_r
        hh, ww = H // sh, W // sw
        n, P = hh * ww, sh * sw

        # initial grid: the mean of each cell, (B, C, hh, ww)
        if torch.onnx.is_in_onnx_export():
            # ONNX pools to constant sizes only: the same cell means
            stokens = F.avg_pool2d(x, (sh, sw))
        else:
            stokens = F.adaptive_avg_pool2d(x, (hh, ww))
        pixels = x.reshape(B, C, hh, sh, ww, sw).permute(0, 2, 4, 3, 5, 1)
        pixels = pixels.reshape(B, n, P, C)

        with torch.no_grad():
            for it in range(self.n_iter):
                neigh = self._neighbours(stokens)  # (B, n, C, 9)
                assoc = ((pixels @ neigh) * self.scale).softmax(-1)
                assoc_sum = self._scatter(
                    assoc.sum(2).unsqueeze(-2), hh, ww)  # (B, 1, hh, ww)
                if it < self.n_iter - 1:
                    stokens = self._update(pixels, assoc, assoc_sum, hh, ww)
        stokens = self._update(pixels, assoc, assoc_sum, hh, ww)
        return dict(
            pixels=pixels, assoc=assoc, assoc_sum=assoc_sum,
            stokens=stokens, grid=(hh, ww, H, W, H0, W0))

    def _neighbours(self, stokens):
        """(B, C, hh, ww) -> (B, n, C, 9): the 3x3 super tokens of each cell.
        """
        if _tracing():  # the authors' identity-kernel convolution
            return unfold3x3(stokens, self.unfold.weights).permute(0, 3, 1, 2)
        return gather3x3(_nhwc(stokens)).transpose(-1, -2)

    def _scatter(self, sent, hh, ww):
        """(B, n, C, 9) -> (B, C, hh, ww): what each cell sent to each of its
        3x3 neighbours, summed at the receiving super token."""
        B, n, C, _ = sent.shape
        if _tracing():
            cols = sent.permute(0, 2, 3, 1).reshape(B, C * 9, n)
            return fold3x3(cols, (hh, ww), self.fold.weights)
        return scatter3x3(sent.transpose(-1, -2), hh, ww).permute(0, 3, 1, 2)

    def _update(self, pixels, assoc, assoc_sum, hh, ww):
        """Super tokens as association-weighted means of their pixels."""
        # (B, n, C, 9): what each cell's pixels send to its 9 neighbours
        sent = pixels.transpose(-1, -2) @ assoc
        return self._scatter(sent, hh, ww) / (assoc_sum + 1e-12)

    # -- steps 2 and 3 ------------------------------------------------------
    def forward(self, x: torch.Tensor, identity: Optional[torch.Tensor] = None,
                gamma: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Super token attention of ``x``, times ``gamma`` (layer scale) and
        plus ``identity`` when they are given; ``identity`` may be
        overwritten with the sum when no gradient is needed."""
        if not self.samples:
            return self.stoken_refine(x, identity, gamma)
        B, C = x.shape[:2]
        if x.dtype in (torch.float16, torch.bfloat16) or \
                torch.is_autocast_enabled(x.device.type):
            # The association sums up to s*s*9 weights and its update sums
            # s*s products: both run in float32 so half precision can
            # neither overflow nor lose the normaliser.
            with torch.autocast(x.device.type, enabled=False):
                s = self.associate(x.float())
        else:
            s = self.associate(x)
        hh, ww, H, W, H0, W0 = s['grid']
        sh, sw = self.stoken_size
        # layer scale is per channel: it commutes with the upsampling
        stokens = self.stoken_refine(s['stokens'], gamma=gamma)
        assoc = s['assoc'].to(stokens.dtype)
        # step 3: token upsampling with the same association
        if _tracing():
            neigh = unfold3x3(stokens, self.fold.weights).permute(0, 3, 1, 2)
            out = neigh @ assoc.transpose(-1, -2)  # (B, n, C, P)
            out = out.reshape(B, hh, ww, C, sh, sw).permute(0, 3, 1, 4, 2, 5)
            out = out.reshape(B, C, H, W)
        else:
            out = assoc @ gather3x3(_nhwc(stokens))  # (B, n, P, C)
            out = out.view(B, hh, ww, sh, sw, C).transpose(2, 3)
            if identity is not None and not _traced() and H == H0 and \
                    W == W0 and identity.is_contiguous(
                        memory_format=torch.channels_last) and \
                    _no_grad_needed(identity, out):
                # add the cells into the residual map in place, no copy
                _nhwc(identity).view(B, hh, sh, ww, sw, C).add_(out)
                return identity
            out = out.reshape(B, H, W, C).permute(0, 3, 1, 2)
        if H != H0 or W != W0:
            out = out[:, :, :H0, :W0]
        return out if identity is None else identity + out


class STViTBlock(nn.Module):
    """CPE -> LN -> super token attention -> BN -> ConvFFN, with residuals."""

    def __init__(self, dim: int, num_heads: int, stoken_size, n_iter: int = 1,
                 mlp_ratio: float = 4., qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop: float = 0.,
                 attn_drop: float = 0., drop_path: float = 0.,
                 layer_scale: bool = False, init_values: float = 1e-6):
        super().__init__()
        self.pos_embed = ResDWC(dim, 3)
        self.norm1 = LayerNorm2d(dim)
        self.attn = StokenAttention(
            dim, stoken_size, n_iter=n_iter, num_heads=num_heads,
            qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
            proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else \
            nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp2 = ConvFFN(dim, int(dim * mlp_ratio), drop)
        self.layer_scale = layer_scale
        if layer_scale:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(1, dim, 1, 1))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(1, dim, 1, 1))

    def forward(self, x):
        x = self.pos_embed(x)
        if _tracing() or (self.training and
                          isinstance(self.drop_path, DropPath)):
            y = self.attn(self.norm1(x))
            if self.layer_scale:
                y = self.gamma_1 * y
            x = x + self.drop_path(y)
            y = self.mlp2(x, bn=self.norm2)
            if self.layer_scale:
                y = self.gamma_2 * y
            return x + self.drop_path(y)
        # No stochastic depth: each branch adds itself to the residual (in
        # place when no gradient is needed: x is pos_embed's own output).
        x = self.attn(self.norm1(x), identity=x,
                      gamma=self.gamma_1 if self.layer_scale else None)
        return self.mlp2(x, bn=self.norm2, identity=x,
                         gamma=self.gamma_2 if self.layer_scale else None)


class ConvBN(nn.Module):
    """``proj`` = Sequential(conv3x3 stride 2, BN): the stage downsample."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 2, 1),
            nn.BatchNorm2d(out_channels))

    def forward(self, x):
        conv, bn = self.proj
        if bn.training or _traced():
            return bn(conv(x))
        scale, shift = _bn_scale_shift(bn)
        w = conv.weight * scale.view(-1, 1, 1, 1)
        b = conv.bias * scale + shift
        return F.conv2d(x, w, b, 2, 1)


class ConvStem(nn.Module):
    """``patch_embed``: four 3x3 convs (strides 2, 1, 2, 1), each -> GELU -> BN.
    """

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        half = embed_dim // 2
        layers = []
        for cin, cout, stride in ((in_channels, half, 2), (half, half, 1),
                                  (half, embed_dim, 2),
                                  (embed_dim, embed_dim, 1)):
            layers += [
                nn.Conv2d(cin, cout, 3, stride, 1),
                nn.GELU(),
                nn.BatchNorm2d(cout)
            ]
        self.proj = nn.Sequential(*layers)

    def forward(self, x):
        layers = list(self.proj)
        for conv, act, bn in zip(layers[0::3], layers[1::3], layers[2::3]):
            plain_bn = type(bn) is nn.BatchNorm2d
            if not bn.training and plain_bn and bn.track_running_stats and \
                    _fused_cpu((x, ), (conv.weight, )):
                # inference: conv + GELU in one oneDNN call, then the
                # BatchNorm's affine map in place on that fresh output
                x = conv_gelu(x, conv.weight, conv.bias, conv.stride[0],
                              conv.padding[0])
                scale, shift = _bn_scale_shift(bn)
                x = x.mul_(scale.view(1, -1, 1, 1)).add_(
                    shift.view(1, -1, 1, 1))
                continue
            x = conv(x)
            if plain_bn and bn.training and bn.track_running_stats and \
                    _lean_autograd(x, bn.weight):
                # GELU -> BN without storing GELU's output (the largest
                # maps of the network); SyncBN and frozen BN take the
                # modules' own path.
                bn.num_batches_tracked.add_(1)
                factor = (1. / float(bn.num_batches_tracked)
                          if bn.momentum is None else bn.momentum)
                x = _GELUBatchNorm.apply(x, bn.weight, bn.bias,
                                         bn.running_mean, bn.running_var,
                                         factor, bn.eps)
            else:
                x = bn(act(x))
        return x


class STViTStage(nn.Module):
    """``layers.i``: blocks, then (except the last stage) a downsample."""

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

    def forward_blocks(self, x):
        for blk in self.blocks:
            if self.with_cp and x.requires_grad and torch.is_grad_enabled():
                x = cp.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


# ---------------------------------------------------------------------------
# the backbone
# ---------------------------------------------------------------------------


def _registry_decorator():
    """Registers into mmengine's root MODELS (children find it by parent)."""
    from mmengine.registry import MODELS
    return MODELS.register_module(force=True)


@_registry_decorator()
class STViT(BaseModule):
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
        with_cp (bool): Activation checkpointing per block. Defaults False.
        channels_last (bool): Run the network in channels-last memory
            format (faster convolutions on CPU and tensor cores); outputs
            are returned NCHW-contiguous either way. Defaults to True.
        pretrained (str, optional): Deprecated, use ``init_cfg``.
        init_cfg (dict, optional): ``dict(type='Pretrained',
            checkpoint=PATH, prefix=None)`` loads the authors' ImageNet file
            as it is, or any mm checkpoint of an STViT model.
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
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('init_cfg and pretrained cannot be set at '
                                 'the same time; use init_cfg only')
            print_log('STViT: `pretrained` is deprecated, use '
                      "init_cfg=dict(type='Pretrained', checkpoint=...)",
                      logger='current')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)

        self.arch_settings = self._parse_arch(arch)
        self.arch = arch if isinstance(arch, str) else 'custom'
        dims = self.arch_settings['embed_dims']
        depths = self.arch_settings['depths']
        heads = self.arch_settings['num_heads']
        layer_scale = self.arch_settings['layer_scale']
        num_stages = len(depths)
        self.num_stages = num_stages
        self.embed_dims = list(dims)

        self.stoken_size = self._per_stage(stoken_size, 'stoken_size',
                                           num_stages)
        self.stoken_size = [_pair(s) for s in self.stoken_size]
        self.n_iter = [int(v) for v in self._per_stage(n_iter, 'n_iter',
                                                       num_stages)]

        if isinstance(out_indices, int):
            out_indices = [out_indices]
        out_indices = [i + num_stages if i < 0 else i for i in out_indices]
        for i in out_indices:
            if not 0 <= i < num_stages:
                raise ValueError(f'out_indices {i} is out of range for a '
                                 f'{num_stages}-stage STViT')
        self.out_indices = tuple(out_indices)
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], '
                             f'got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.channels_last = channels_last

        self.patch_embed = ConvStem(in_channels, dims[0])
        self.pos_drop = nn.Dropout(drop_rate)
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
                init_values=layer_scale_init_value)
            self.layers.append(
                STViTStage(
                    depths[i], dims[i],
                    dims[i + 1] if i < num_stages - 1 else None, block_cfg,
                    dpr[start:start + depths[i]], with_cp=with_cp))
            start += depths[i]
        self._freeze_stages()

    # -- construction helpers ---------------------------------------------
    @classmethod
    def _parse_arch(cls, arch) -> dict:
        if isinstance(arch, str):
            key = arch.lower()
            if key not in cls.arch_zoo:
                raise KeyError(
                    f'STViT: unknown arch {arch!r}; choose one of '
                    f"{', '.join(repr(a) for a in cls.arch_names)} (or 's', "
                    "'b', 'l'), or pass a dict with keys 'embed_dims', "
                    "'depths', 'num_heads' and optionally 'layer_scale'")
            return copy.deepcopy(cls.arch_zoo[key])
        if not isinstance(arch, dict):
            raise TypeError(f'STViT: arch must be a str or a dict, got '
                            f'{type(arch).__name__}')
        need = {'embed_dims', 'depths', 'num_heads'}
        missing = need - set(arch)
        extra = set(arch) - need - {'layer_scale'}
        if missing or extra:
            raise KeyError(
                f'STViT: a custom arch dict needs the keys {sorted(need)} '
                f"(and optionally 'layer_scale'); missing {sorted(missing)},"
                f' unknown {sorted(extra)}')
        arch = copy.deepcopy(dict(arch))
        n = len(arch['depths'])
        if not (len(arch['embed_dims']) == len(arch['num_heads']) == n):
            raise ValueError('STViT: embed_dims, depths and num_heads must '
                             'have one entry per stage')
        arch.setdefault('layer_scale', [False] * n)
        if len(arch['layer_scale']) != n:
            raise ValueError('STViT: layer_scale needs one bool per stage')
        return arch

    @staticmethod
    def _per_stage(value, name, n):
        if isinstance(value, (int, float)):
            return [value] * n
        value = list(value)
        if len(value) != n:
            raise ValueError(f'STViT: {name} needs one entry per stage '
                             f'({n}), got {value!r}')
        return value

    # -- training-mode behaviour --------------------------------------------
    def _frozen_modules(self):
        if self.frozen_stages >= 0:
            yield self.patch_embed
        for i in range(min(self.frozen_stages, self.num_stages)):
            yield self.layers[i]

    def _freeze_stages(self):
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # -- weights -------------------------------------------------------------
    def init_weights(self):
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            load_stvit_state_dict(
                self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                map_location=cfg.get('map_location', 'cpu'))
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
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.pos_drop(self.patch_embed(x))
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage.forward_blocks(x)
            if i in self.out_indices:
                outs.append(x.contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x)
        return tuple(outs)
