# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The building blocks of :mod:`.stvit`: the convolutional parts of STViT
(stem, positional encoding, ConvFFN, downsample) and the multi-head
self-attention over super tokens, with the authors' module and parameter
names. Every layer is called as its module; the modules that compute in more
than one way read the model's kernel plan ``self.kernels``
(:class:`Planned`). The residuals, layer scale and drop path are the
block's (:class:`~.stages.STViTBlock`).
"""
import copy
import functools
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernels import FAST, Kernels, nhwc, recompute


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
    """A module whose forward reads the model's kernel plan
    ``self.kernels`` (:class:`~.kernels.Kernels`, set for the whole model
    by :meth:`STViT.set_kernels`): how it computes, never whether its
    layers are called."""
    kernels: Kernels = FAST


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
    """LayerNorm over the channels of an NCHW map (eps 1e-6): ``norm``, an
    ``nn.LayerNorm``, on the channels-last view (free for a channels-last
    map)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        return self.norm(nhwc(x)).permute(0, 3, 1, 2)


class DWConv(nn.Module):
    """``conv``, a depthwise ``kernel_size`` convolution: the CPE
    ``pos_embed`` (the block adds its residual, ``x + pos_embed(x)``) and
    the ConvFFN's ``conv``. A module of its own so that the authors' keys
    (``pos_embed.conv.weight``, ``mlp2.conv.conv.weight``) load as they are;
    ``switch_to_deploy`` folds the residual into the kernel's centre tap."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(
            dim, dim, kernel_size, 1, kernel_size // 2, groups=dim)

    def forward(self, x):
        return self.conv(x)


class ConvFFN(Planned, nn.Module):
    """``mlp2``: fc2(h + DWConv(h)), h = GELU(fc1(x)), 1x1 convs, ratio 4.

    With ``kernels.lean_training`` (training) GELU's output is recomputed in
    backward instead of stored (:func:`~.kernels.recompute`: ``act1`` and
    ``conv`` still run as modules). The paper's ablation (:mod:`.ablation`):
    ``shortcut=False`` gives fc2(DWConv(h)) ("w/o shortcut"),
    ``dwconv=False`` the plain MLP fc2(h) of the rows before "+ ConvFFN"
    (no ``conv``). Shapes: (B, dim, H, W) -> (B, dim, H, W)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.,
                 dwconv: bool = True, shortcut: bool = True):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.conv = DWConv(hidden, 3) if dwconv else None
        self.shortcut = shortcut
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def hidden(self, a):
        """GELU, dropout and the depthwise conv on fc1's output ``a``."""
        h = self.drop(self.act1(a))
        if self.conv is None:
            return h
        return h + self.conv(h) if self.shortcut else self.conv(h)

    def forward(self, x):
        a = self.fc1(x)
        if self.kernels.lean_training and self.training and \
                self.conv is not None and torch.is_grad_enabled():
            h = recompute(self.hidden, a, random=self.drop.p > 0)
        else:
            h = self.hidden(a)
        return self.drop(self.fc2(h))


class MultiheadConvAttention(Planned, nn.Module):
    """Global multi-head self-attention over an NCHW map (``stoken_refine``):
    ``proj_drop(proj(attention(qkv(x))))``, with
    ``scaled_dot_product_attention`` where ``kernels.sdpa``.

    qkv is a 1x1 convolution whose output channels are laid out per head as
    (head, [q|k|v], head_dim), as in the authors' code. Shapes:
    (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.,
                 proj_drop: float = 0., rpe: Optional[nn.Module] = None):
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
        # the ablation's relative position bias (:mod:`.ablation`): a module
        # (H, W) -> (heads, H*W, H*W) added to the attention logits
        self.rpe = rpe

    def position_bias(self, H: int, W: int, dtype) -> Optional[torch.Tensor]:
        """The (1, heads, N, N) relative position bias, or None."""
        if self.rpe is None:
            return None
        return self.rpe(int(H), int(W)).unsqueeze(0).to(dtype)

    def qkv_heads(self, x):
        """(B, C, H, W) -> q, k, v each (B, heads, N, head_dim), read through
        the channels-last view of the qkv map (no copy when the network runs
        channels last, the default)."""
        B, C, H, W = x.shape
        qkv = nhwc(self.qkv(x)).reshape(B, H * W, self.num_heads, 3,
                                        self.head_dim)
        return qkv.permute(3, 0, 2, 1, 4).unbind(0)

    def attention_weights(self, x):
        """Softmax attention (B, heads, N_query, N_key), for visualisation."""
        q, k, _ = self.qkv_heads(x)
        logits = (q @ k.transpose(-1, -2)) * self.scale
        bias = self.position_bias(x.shape[2], x.shape[3], logits.dtype)
        return (logits if bias is None else logits + bias).softmax(-1)

    def attend(self, x):
        """The heads' attention output before ``proj``, (B, C, H, W)
        channels last."""
        B, C, H, W = x.shape
        q, k, v = self.qkv_heads(x)
        bias = self.position_bias(H, W, q.dtype)
        drop = self.attn_drop
        if self.kernels.sdpa:
            p = drop.p if drop is not None and self.training else 0.
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=p, scale=self.scale)
        else:
            attn = (q @ k.transpose(-1, -2)) * self.scale
            attn = (attn if bias is None else attn + bias).softmax(-1)
            out = (attn if drop is None else drop(attn)) @ v
        # (B, h, N, d) -> (B, H, W, h*d) -> channels-last (B, C, H, W)
        return out.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)

    def forward(self, x):
        return self.proj_drop(self.proj(self.attend(x)))


class ConvBN(nn.Module):
    """``proj`` = Sequential(conv3x3 stride 2, BN): the stage downsample."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 2, 1),
            nn.BatchNorm2d(out_channels))

    def forward(self, x):
        return self.proj(x)


class ConvStem(Planned, nn.Module):
    """``patch_embed``: four 3x3 convs (strides 2, 1, 2, 1), each -> GELU -> BN.

    With ``kernels.lean_training`` (training) each GELU's output is
    recomputed in backward instead of stored (:func:`~.kernels.recompute`,
    the BatchNorm's statistics updated once). Shapes: (B, in_channels, H, W)
    -> (B, embed_dim, ceil(H / 4), ceil(W / 4)).
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
        lean = self.kernels.lean_training and self.training and \
            torch.is_grad_enabled()
        for conv, act, bn in zip(layers[0::3], layers[1::3], layers[2::3]):
            x = conv(x)
            if lean:
                x = recompute(functools.partial(_act_norm, act, bn), x,
                              buffers_of=bn)
            else:
                x = bn(act(x))
        return x


def _act_norm(act: nn.Module, bn: nn.Module, a: torch.Tensor):
    return bn(act(a))


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


def parse_out_indices(out_indices, num_stages: int) -> Tuple[int, ...]:
    """STViT's ``out_indices`` (an int or a sequence, negative from the
    end) as a tuple of stage indices; ``ValueError`` when out of range."""
    if isinstance(out_indices, int):
        out_indices = [out_indices]
    out_indices = [i + num_stages if i < 0 else i for i in out_indices]
    for i in out_indices:
        if not 0 <= i < num_stages:
            raise ValueError(f'out_indices {i} is out of range for a '
                             f'{num_stages}-stage STViT')
    return tuple(out_indices)


def check_frozen_stages(frozen_stages: int, num_stages: int) -> int:
    if not -1 <= frozen_stages <= num_stages:
        raise ValueError(f'frozen_stages must be in [-1, {num_stages}], '
                         f'got {frozen_stages}')
    return frozen_stages


def pretrained_init_cfg(pretrained: Optional[str], init_cfg):
    """The deprecated ``pretrained=PATH`` as ``init_cfg`` (with a notice);
    ``ValueError`` when both are given."""
    if pretrained is None:
        return init_cfg
    if init_cfg is not None:
        raise ValueError('init_cfg and pretrained cannot be set at '
                         'the same time; use init_cfg only')
    from mmengine.logging import print_log
    print_log('STViT: `pretrained` is deprecated, use '
              "init_cfg=dict(type='Pretrained', checkpoint=...)",
              logger='current')
    return dict(type='Pretrained', checkpoint=pretrained)


def per_stage(value, name: str, n: int) -> list:
    """A scalar repeated for ``n`` stages, or a list of ``n`` values."""
    if isinstance(value, (int, float)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f'STViT: {name} needs one entry per stage '
                         f'({n}), got {value!r}')
    return value
