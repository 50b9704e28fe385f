# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The building blocks of :mod:`.stvit`: the convolutional parts of STViT
(stem, positional encoding, ConvFFN, downsample) and the multi-head
self-attention over super tokens, with the authors' module and parameter
names. Each reads the model's kernel plan ``self.use`` (:class:`Planned`).
"""
import copy
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from . import execution, kernels
from .execution import Kernels


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


class Planned:
    """A module whose forward reads the model's kernel plan ``self.use``
    (set for the whole model by :meth:`STViT.set_kernels`)."""
    use: Kernels = execution.FAST


class IdentityKernel(nn.Module):
    """Holds the (9, 1, 3, 3) identity kernel of the official Unfold/Fold.

    The authors store it in every block's state dict as a frozen Parameter;
    it is kept here as a persistent buffer so that checkpoints round-trip
    with identical keys. Only the ``reference`` plan convolves with it.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer('weights', torch.eye(9).reshape(9, 1, 3, 3))


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


class ResDWC(Planned, nn.Module):
    """x + depthwise3x3(x); with ``use.fold_residual`` one convolution, the
    residual folded into the kernel's centre tap (exact in value and
    gradient; the authors left the same idea commented out)."""

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
        if not self.use.fold_residual:
            return x + self.conv(x)
        return F.conv2d(x, self.folded_weight(), self.conv.bias, 1,
                        self.kernel_size // 2, 1, self.dim)


class ConvFFN(Planned, nn.Module):
    """``mlp2``: fc2(h + DWConv(h)), h = GELU(fc1(x)), 1x1 convs, ratio 4."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.conv = ResDWC(hidden, 3)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x, bn: Optional[_BatchNorm] = None,
                identity: Optional[torch.Tensor] = None,
                gamma: Optional[torch.Tensor] = None,
                drop_path: Optional[nn.Module] = None):
        """``identity + drop_path(gamma * fc2(dwconv(gelu(fc1(bn(x))))))``
        without the terms that are not given (``gamma``: layer scale,
        (1, C, 1, 1)). The ``deploy`` plan may overwrite ``identity`` with
        the sum: pass only a tensor you own."""
        use = self.use
        if bn is not None and not bn.training and use.fold_norm:
            # eval: the BatchNorm folds into fc1 (exact)
            h = self.conv(kernels.bn_conv_gelu(x, bn, self.fc1, self.drop,
                                               use.onednn))
        else:
            h = self.fc1(x if bn is None else bn(x))
            if use.lean_training and self.training and not self.drop.p:
                h = kernels.gelu_dwconv(h, self.conv)  # GELU not stored
            else:
                h = self.conv(self.drop(self.act1(h)))
        return kernels.project_residual(h, self.fc2, self.drop, use,
                                        identity, gamma, drop_path)


class MultiheadConvAttention(Planned, nn.Module):
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
        """(B, C, H, W) -> q, k, v each (B, heads, N, head_dim), read through
        the channels-last view of the qkv map (no copy when the network runs
        channels last, the default)."""
        B, C, H, W = x.shape
        qkv = F.conv2d(x, self.qkv.weight, self.qkv.bias)
        qkv = kernels.nhwc(qkv).reshape(B, H * W, self.num_heads, 3,
                                        self.head_dim)
        return qkv.permute(3, 0, 2, 1, 4).unbind(0)

    def attention_weights(self, x):
        """Softmax attention (B, heads, N_query, N_key), for visualisation."""
        q, k, _ = self.qkv_heads(x)
        return ((q @ k.transpose(-1, -2)) * self.scale).softmax(-1)

    def forward(self, x, identity: Optional[torch.Tensor] = None,
                gamma: Optional[torch.Tensor] = None,
                drop_path: Optional[nn.Module] = None):
        """``identity + drop_path(gamma * attention(x))`` without the terms
        that are not given (``identity``: as in :meth:`ConvFFN.forward`)."""
        B, C, H, W = x.shape
        q, k, v = self.qkv_heads(x)
        if self.use.sdpa:
            p = self.attn_drop.p if self.training else 0.
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=p, scale=self.scale)
        else:
            attn = ((q @ k.transpose(-1, -2)) * self.scale).softmax(-1)
            out = self.attn_drop(attn) @ v
        # (B, h, N, d) -> (B, H, W, h*d) -> channels-last (B, C, H, W)
        out = out.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return kernels.project_residual(out, self.proj, self.proj_drop,
                                        self.use, identity, gamma, drop_path)


class ConvBN(Planned, nn.Module):
    """``proj`` = Sequential(conv3x3 stride 2, BN): the stage downsample."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 2, 1),
            nn.BatchNorm2d(out_channels))

    def forward(self, x):
        conv, bn = self.proj
        if self.use.fold_norm and not bn.training:
            return kernels.conv_bn_folded(x, conv, bn)  # eval: BN folded
        return bn(conv(x))


class ConvStem(Planned, nn.Module):
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
        use = self.use
        for conv, act, bn in zip(layers[0::3], layers[1::3], layers[2::3]):
            if use.inplace and not bn.training and bn.track_running_stats:
                x = kernels.stem_conv_gelu_bn_(x, conv, bn, use.onednn)
            elif use.lean_training and kernels.lean_bn(bn):
                x = kernels.gelu_batch_norm(conv(x), bn)  # GELU not stored
            else:
                x = bn(act(conv(x)))
        return x


def parse_arch(arch, arch_zoo: dict, arch_names) -> dict:
    """STViT's ``arch`` argument to a dict of per-stage settings (a copy);
    ``KeyError``/``TypeError``/``ValueError`` name what is wrong."""
    if isinstance(arch, str):
        key = arch.lower()
        if key not in arch_zoo:
            raise KeyError(
                f'STViT: unknown arch {arch!r}; choose one of '
                f"{', '.join(repr(a) for a in arch_names)} (or 's', "
                "'b', 'l'), or pass a dict with keys 'embed_dims', "
                "'depths', 'num_heads' and optionally 'layer_scale'")
        return copy.deepcopy(arch_zoo[key])
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

def per_stage(value, name: str, n: int) -> list:
    """A scalar repeated for ``n`` stages, or a list of ``n`` values."""
    if isinstance(value, (int, float)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f'STViT: {name} needs one entry per stage '
                         f'({n}), got {value!r}')
    return value
