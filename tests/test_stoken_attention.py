# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Super token attention against a deliberately plain implementation.

The reference below follows the paper's four equations one super token and
one neighbour at a time, in float64, sharing nothing with the module but its
weights:

    Q^t  = Softmax(X S^{t-1 T} / sqrt(d))         (association, 3x3 neighbours)
    S    = (Q^t)^T X  (column-normalised)          (super token update)
    Attn(S) = Softmax(q(S) k(S)^T / sqrt(d_h)) v(S) (self-attention)
    TU   = Q Attn(S)                               (token upsampling)
"""
import itertools
import math

import pytest
import torch

from mmstvit.models.backbones.stvit import StokenAttention

NEIGHBOURS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]


def reference_mhsa(tokens, module):
    """Multi-head self-attention over a list of (C,) tokens, plainly."""
    m = module.stoken_refine
    C = tokens.shape[1]
    heads, hd = m.num_heads, C // m.num_heads
    wqkv = m.qkv.weight.double().reshape(3 * C, C)
    bqkv = m.qkv.bias.double()
    wproj = m.proj.weight.double().reshape(C, C)
    bproj = m.proj.bias.double()
    qkv = tokens @ wqkv.T + bqkv  # (N, 3C)
    out = torch.zeros_like(tokens)
    N = tokens.shape[0]
    for h in range(heads):
        # the authors lay qkv channels out per head: [q | k | v] of head h
        base = h * 3 * hd
        q = qkv[:, base:base + hd]
        k = qkv[:, base + hd:base + 2 * hd]
        v = qkv[:, base + 2 * hd:base + 3 * hd]
        for i in range(N):
            logits = torch.stack([q[i] @ k[j] for j in range(N)]) / \
                math.sqrt(hd)
            w = torch.softmax(logits, 0)
            out[i, h * hd:(h + 1) * hd] = sum(w[j] * v[j] for j in range(N))
    return out @ wproj.T + bproj


def reference_stoken_attention(x, module):
    """x: (C, H0, W0) float64 -> (C, H0, W0)."""
    C, H0, W0 = x.shape
    sh, sw = module.stoken_size
    H = math.ceil(H0 / sh) * sh
    W = math.ceil(W0 / sw) * sw
    xp = torch.zeros(C, H, W, dtype=x.dtype)
    xp[:, :H0, :W0] = x
    hh, ww = H // sh, W // sw

    def cell_pixels(i, j):
        return [(i * sh + a, j * sw + b) for a in range(sh) for b in range(sw)]

    # initial super tokens: the mean of each cell
    S = {(i, j): torch.stack([xp[:, p, q] for p, q in cell_pixels(i, j)]
                             ).mean(0)
         for i in range(hh) for j in range(ww)}

    def neighbour(S, i, j, di, dj):
        a, b = i + di, j + dj
        if 0 <= a < hh and 0 <= b < ww:
            return S[(a, b)]
        return torch.zeros(C, dtype=x.dtype)  # zero padding, not masked

    def associate(S):
        Q = {}
        for i, j in itertools.product(range(hh), range(ww)):
            for p, q in cell_pixels(i, j):
                logits = torch.stack([
                    xp[:, p, q] @ neighbour(S, i, j, di, dj)
                    for di, dj in NEIGHBOURS
                ]) / math.sqrt(C)
                Q[(p, q)] = torch.softmax(logits, 0)
        return Q

    def update(Q):
        num = {k: torch.zeros(C, dtype=x.dtype) for k in S}
        den = {k: torch.zeros((), dtype=x.dtype) for k in S}
        for i, j in itertools.product(range(hh), range(ww)):
            for p, q in cell_pixels(i, j):
                for n, (di, dj) in enumerate(NEIGHBOURS):
                    a, b = i + di, j + dj
                    if 0 <= a < hh and 0 <= b < ww:
                        num[(a, b)] += Q[(p, q)][n] * xp[:, p, q]
                        den[(a, b)] += Q[(p, q)][n]
        return {k: num[k] / (den[k] + 1e-12) for k in S}

    for it in range(module.n_iter):
        Q = associate(S)
        if it < module.n_iter - 1:
            S = update(Q)
    S = update(Q)

    keys = [(i, j) for i in range(hh) for j in range(ww)]
    A = reference_mhsa(torch.stack([S[k] for k in keys]), module)
    A = {k: A[n] for n, k in enumerate(keys)}

    out = torch.zeros(C, H, W, dtype=x.dtype)
    for i, j in keys:
        for p, q in cell_pixels(i, j):
            out[:, p, q] = sum(Q[(p, q)][n] * neighbour(A, i, j, di, dj)
                               for n, (di, dj) in enumerate(NEIGHBOURS))
    return out[:, :H0, :W0]


def reference_global_attention(x, module):
    C, H, W = x.shape
    tokens = x.reshape(C, H * W).T
    return reference_mhsa(tokens, module).T.reshape(C, H, W)


def _module(dim, stoken_size, n_iter, heads, seed=0):
    torch.manual_seed(seed)
    m = StokenAttention(dim, stoken_size, n_iter=n_iter, num_heads=heads)
    # non-trivial biases so that a layout mistake cannot hide
    for p in m.parameters():
        p.data.normal_(0, 0.3)
    return m.eval()


@pytest.mark.parametrize('size,stoken,n_iter', [
    ((16, 16), (4, 4), 1),   # multiple of the super token size
    ((13, 18), (4, 4), 1),   # not a multiple: padding and crop
    ((13, 18), (4, 4), 2),   # two association iterations
    ((12, 10), (4, 2), 2),   # rectangular super tokens
    ((7, 9), (8, 8), 1),     # smaller than one super token
    ((9, 11), (3, 3), 3),
])
def test_stoken_attention_matches_reference(size, stoken, n_iter):
    dim, heads = 8, 2
    m = _module(dim, stoken, n_iter, heads)
    torch.manual_seed(1)
    x = torch.randn(2, dim, *size) * 2
    with torch.no_grad():
        out = m(x)
    assert out.shape == x.shape
    for b in range(2):
        ref = reference_stoken_attention(x[b].double(), m)
        err = (out[b].double() - ref).abs().max().item()
        assert err < 1e-5, f'max abs diff {err}'


def test_global_attention_matches_reference():
    dim, heads = 10, 5
    m = _module(dim, 1, 1, heads)
    x = torch.randn(1, dim, 5, 7)
    with torch.no_grad():
        out = m(x)
    ref = reference_global_attention(x[0].double(), m)
    assert (out[0].double() - ref).abs().max().item() < 1e-5


def test_reference_is_sensitive():
    """The comparison can fail: a perturbed weight changes the output."""
    m = _module(8, (4, 4), 1, 2)
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        out = m(x)
        # a v channel of head 0 (rows 8..11 with head_dim 4)
        m.stoken_refine.qkv.weight[9, 0] += 0.5
    ref = reference_stoken_attention(x[0].double(), m)
    assert (out[0].double() - ref).abs().max().item() > 1e-3


@pytest.mark.parametrize('plan', ['plain', 'reference'])
def test_reference_and_plain_plans_equal_the_fast_one(plan):
    """The authors' graph (what FLOPs are counted on) and the plain one
    (what ONNX export traces) give the fast plan's numbers."""
    from mmstvit.models.backbones import kernels
    from mmstvit.models.backbones.stvit import Planned
    m = _module(16, (4, 4), 1, 4)
    x = torch.randn(2, 16, 13, 17)
    with torch.no_grad():
        fast = m(x)
        for mod in m.modules():
            if isinstance(mod, Planned):
                mod.kernels = kernels.resolve(plan)
        other = m(x)
    assert torch.allclose(fast, other, atol=1e-5)


def test_association_is_a_distribution():
    m = _module(8, (4, 4), 1, 2)
    x = torch.randn(1, 8, 10, 14)
    with torch.no_grad():
        sampling = m.associate(x)
    assoc = sampling.assoc
    hh, ww, H, W, H0, W0 = sampling.grid
    assert (hh, ww, H, W, H0, W0) == (3, 4, 12, 16, 10, 14)
    assert assoc.shape == (1, hh * ww, 16, 9)
    assert torch.allclose(assoc.sum(-1), torch.ones(1, hh * ww, 16))
    assert (assoc >= 0).all()


def test_association_carries_no_gradient_but_features_do():
    """As in the paper's code: Q is computed without gradient; the super
    token update and the upsampling are differentiable in X."""
    m = _module(8, (4, 4), 1, 2).train()
    x = torch.randn(1, 8, 8, 8, requires_grad=True)
    sampling = m.associate(x)
    assert not sampling.assoc.requires_grad
    assert sampling.stokens.requires_grad
    m(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize('dtype', [torch.bfloat16])
def test_half_precision_association_is_safe(dtype):
    """Large activations must not overflow the normaliser under autocast."""
    m = _module(16, (8, 8), 1, 2)
    x = torch.randn(1, 16, 32, 32) * 300
    with torch.no_grad():
        ref = m(x)
        with torch.autocast('cpu', dtype=dtype):
            out = m(x)
    assert torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05
