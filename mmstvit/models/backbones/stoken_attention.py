# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Super token attention (STA), the paper's equations (1)-(4), and its
fused inference form.

For a super token size s: with pixels X, super tokens S (one per s x s
cell) and the association Q of each pixel with the 3x3 super tokens around
its cell,

    (1) Q = Softmax(X S^T / sqrt(C))          over the 9 neighbours
    (2) S = Q^T X / column sums of Q           super token update
    (3) S = MHSA(S)                            stoken_refine
    (4) X = Q S                                token upsampling

Which kernels compute the neighbourhoods is the model's plan
(``self.kernels``, :mod:`.kernels`). Module and parameter names follow the
authors' ``models/stvit.py``.
"""
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ablation, deploy, kernels
from .modules import IdentityKernel, MultiheadConvAttention, Planned, _pair

__all__ = ['StokenGrid', 'SuperTokenSampling', 'StokenAttention',
           'FusedStokenAttention']


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
    """Super token attention for inference (:meth:`.STViT.switch_to_deploy`):
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
