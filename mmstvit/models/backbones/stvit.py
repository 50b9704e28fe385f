# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Super Token Vision Transformer (STViT) backbone.

Huang et al., "Vision Transformer with Super Token Sampling", CVPR 2023.

This file is the model, written as the paper's maths; how it runs fast is in
:mod:`.kernels` and which way it runs is decided in :mod:`.execution` (see
``docs/architecture.md``). Module and parameter names follow the authors'
``models/stvit.py`` so that their ImageNet checkpoints load as they are.

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
import copy
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from . import execution, kernels

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


class IdentityKernel(nn.Module):
    """Holds the (9, 1, 3, 3) identity kernel of the official Unfold/Fold.

    The authors store it in every block's state dict as a frozen Parameter;
    it is kept here as a persistent buffer so that checkpoints round-trip
    with identical keys. Only the reference graph (tracing) convolves with
    it; the eager path gathers the same neighbours with slices.
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
        if execution.traced():  # plain ops: the residual as written
            return x + self.conv(x)
        c = self.kernel_size // 2
        return F.conv2d(x, self.folded_weight(), self.conv.bias, 1, c, 1,
                        self.dim)


class ConvFFN(nn.Module):
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
                gamma: Optional[torch.Tensor] = None):
        """``fc2(dwconv(gelu(fc1(bn(x)))))``, times ``gamma`` (layer scale,
        (1, C, 1, 1)) and plus ``identity`` when they are given.

        ``identity`` may be overwritten with the sum when no gradient is
        needed: pass only a tensor you own.
        """
        if bn is not None and not bn.training and not execution.traced():
            # inference: the BatchNorm folds into fc1 (exact)
            h = self.conv(kernels.bn_conv_gelu(x, bn, self.fc1, self.act1,
                                               self.drop))
        else:
            if bn is not None:
                x = bn(x)
            h = kernels.gelu_dwconv(self.fc1(x), self.act1, self.conv,
                                    self.drop)
        return kernels.project_residual(h, self.fc2, self.drop, identity,
                                        gamma)


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
        qkv = kernels.nhwc(qkv).reshape(B, H * W, self.num_heads, 3,
                                        self.head_dim)
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
        if execution.traced():  # plain ops: explicit softmax
            attn = ((q @ k.transpose(-1, -2)) * self.scale).softmax(-1)
            out = self.attn_drop(attn) @ v
        else:
            p = self.attn_drop.p if self.training else 0.
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=p, scale=self.scale)
        # (B, h, N, d) -> (B, H, W, h*d) -> channels-last (B, C, H, W)
        out = out.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return kernels.project_residual(out, self.proj, self.proj_drop,
                                        identity, gamma)


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
    def uses_super_tokens(self) -> bool:
        """False for a super token size of 1: plain global attention."""
        return self.stoken_size[0] > 1 or self.stoken_size[1] > 1

    # -- equations (1) and (2): super token sampling ------------------------
    def associate(self, x: torch.Tensor) -> SuperTokenSampling:
        """Runs super token sampling on ``x`` (B, C, H0, W0) and returns its
        results (:class:`SuperTokenSampling`)."""
        B, C, H0, W0 = x.shape
        if execution.traced():
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
                # (1) Q = softmax(X S^T / sqrt(C)) over the 3x3 neighbours
                neigh = kernels.neighbours(stokens, self.unfold.weights)
                assoc = ((pixels @ neigh) * self.scale).softmax(-1)
                assoc_sum = kernels.scatter_to_neighbours(
                    assoc.sum(2).unsqueeze(-2), hh, ww,
                    self.fold.weights)  # (B, 1, hh, ww)
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
            sent, hh, ww, self.fold.weights) / (assoc_sum + 1e-12)

    def _associate_in_float32(self, x: torch.Tensor) -> SuperTokenSampling:
        if x.dtype in (torch.float16, torch.bfloat16) or \
                torch.is_autocast_enabled(x.device.type):
            # The association sums up to s*s*9 weights and its update sums
            # s*s products: both run in float32 so half precision can
            # neither overflow nor lose the normaliser.
            with torch.autocast(x.device.type, enabled=False):
                return self.associate(x.float())
        return self.associate(x)

    # -- equation (4): token upsampling --------------------------------------
    def upsample(self, assoc: torch.Tensor, stokens: torch.Tensor,
                 grid: StokenGrid,
                 identity: Optional[torch.Tensor] = None) -> torch.Tensor:
        """X = Q S, cropped to the input size, plus ``identity`` if given
        (which may be overwritten with the sum when no gradient is
        needed)."""
        if execution.tracing():
            out = kernels.upsample_reference(assoc, stokens,
                                             self.fold.weights,
                                             self.stoken_size, grid.hh,
                                             grid.ww)
        else:
            out = kernels.upsample(assoc, stokens, self.stoken_size, grid.hh,
                                   grid.ww, identity, grid.padded)
            if out is identity:  # added in place
                return identity
        if grid.padded:
            out = out[:, :, :grid.H0, :grid.W0]
        return out if identity is None else identity + out

    def forward(self, x: torch.Tensor, identity: Optional[torch.Tensor] = None,
                gamma: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Super token attention of ``x``, times ``gamma`` (layer scale) and
        plus ``identity`` when they are given; ``identity`` may be
        overwritten with the sum when no gradient is needed."""
        if not self.uses_super_tokens:
            return self.stoken_refine(x, identity, gamma)
        sampling = self._associate_in_float32(x)  # (1) and (2)
        # (3); layer scale is per channel: it commutes with the upsampling
        stokens = self.stoken_refine(sampling.stokens, gamma=gamma)
        assoc = sampling.assoc.to(stokens.dtype)
        return self.upsample(assoc, stokens, sampling.grid, identity)  # (4)


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
        x = self.pos_embed(x)  # x + DWConv(x)
        g1, g2 = (self.gamma_1, self.gamma_2) if self.layer_scale else \
            (None, None)
        if execution.tracing() or (self.training and
                                   isinstance(self.drop_path, DropPath)):
            # as written: x + drop_path(gamma * branch(x))
            y = self.attn(self.norm1(x))
            x = x + self.drop_path(y if g1 is None else g1 * y)
            y = self.mlp2(x, bn=self.norm2)
            return x + self.drop_path(y if g2 is None else g2 * y)
        # No stochastic depth: each branch adds gamma * branch(x) to the
        # residual itself (in place when no gradient is needed: x is
        # pos_embed's own output).
        x = self.attn(self.norm1(x), identity=x, gamma=g1)
        return self.mlp2(x, bn=self.norm2, identity=x, gamma=g2)


class ConvBN(nn.Module):
    """``proj`` = Sequential(conv3x3 stride 2, BN): the stage downsample."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 2, 1),
            nn.BatchNorm2d(out_channels))

    def forward(self, x):
        conv, bn = self.proj
        if bn.training or execution.traced():
            return bn(conv(x))
        return kernels.conv_bn_folded(x, conv, bn)  # inference: BN folded


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
            if execution.tracing():
                x = bn(act(conv(x)))
            else:  # the same, fused or memory-lean where it can be
                x = kernels.conv_gelu_bn(x, conv, act, bn)
        return x


class STViTStage(nn.Module):
    """``layers.i``: blocks, then (except the last stage) a downsample.

    ``forward`` runs the blocks and returns the stage's features (what the
    backbone outputs for this stage, so a forward hook on ``layers[i]`` sees
    them); the backbone applies ``downsample`` to them to feed the next
    stage, as in the paper where the downsample ends the stage.
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
            if self.with_cp and x.requires_grad and torch.is_grad_enabled():
                x = cp.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


# ---------------------------------------------------------------------------
# ---------------------------------------------------------------------------
# the backbone
# ---------------------------------------------------------------------------


def _keep_channels_last(module: nn.Module, incompatible_keys) -> None:
    """Post-hook of ``load_state_dict``: with ``assign=True`` the file's
    tensors replace the parameters; lay them out channels last again."""
    kernels.store_channels_last(module)


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
            are returned NCHW-contiguous either way. Its convolution
            weights are then stored channels last too, as their gradients
            come, so that DistributedDataParallel copies no gradient into
            its buckets (:func:`~.kernels.store_channels_last`). Defaults
            to True.
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
        if channels_last:
            kernels.store_channels_last(self)
            # load_state_dict(assign=True) puts the file's tensors in place
            self.register_load_state_dict_post_hook(_keep_channels_last)

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
        """``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` loads an
        official or mm checkpoint strictly (every backbone tensor, with its
        shape); ``strict=False`` allows a partial load, ``prefix`` picks the
        keys of a sub-module, ``which='model_ema'`` the authors' EMA weights
        and ``unsafe_load=True`` unpickles a trusted file beyond the
        allow-list (see :mod:`mmstvit.utils.checkpoint`)."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            from mmstvit.utils.checkpoint import load_stvit_state_dict
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
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.pos_drop(self.patch_embed(x))
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
        """The depth of a parameter, for layer-wise learning-rate decay.

        The semantics of mmpretrain's ``get_layer_depth`` (as its Swin
        Transformer's): returns ``(depth, num_layers)`` with the stem at
        depth 0, block ``j`` of stage ``i`` at ``sum(depths[:i]) + j + 1``,
        the downsample that ends stage ``i`` at the depth of that stage's last
        block, and anything else (a parameter not under ``prefix``: neck,
        heads) at ``num_layers - 1``, where ``num_layers = sum(depths) + 2``.

        With ``decay_type='stage_wise'`` the unit is a stage instead of a
        block: the stem is 0, stage ``i`` (blocks and downsample) is
        ``i + 1``, the rest ``num_stages + 1``, out of ``num_stages + 2``.

        Args:
            param_name (str): The parameter's name in the model.
            prefix (str): What the backbone's parameters start with in the
                model (``'backbone.'`` in a detector). Defaults to ''.
            decay_type (str): ``'layer_wise'`` or ``'stage_wise'``.
        """
        depths = self.arch_settings['depths']
        if decay_type == 'layer_wise':
            num_layers = sum(depths) + 2
        elif decay_type == 'stage_wise':
            num_layers = self.num_stages + 2
        else:
            raise ValueError(f"STViT: decay_type must be 'layer_wise' or "
                             f"'stage_wise', got {decay_type!r}")
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        parts = param_name[len(prefix):].split('.')
        if parts[0] == 'patch_embed':
            return 0, num_layers
        if parts[0] == 'layers' and len(parts) > 2:
            stage = int(parts[1])
            if decay_type == 'stage_wise':
                return stage + 1, num_layers
            if parts[2] == 'blocks':
                return sum(depths[:stage]) + int(parts[3]) + 1, num_layers
            if parts[2] == 'downsample':
                return sum(depths[:stage + 1]), num_layers
        return num_layers - 1, num_layers
