# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The backbone's fast paths compute what the plain module graph computes.

* training: GELU -> depthwise conv (every ConvFFN) and the stem's
  GELU -> BatchNorm are custom autograd functions that keep the GELU input
  and recompute its output in backward. Same outputs, gradients and
  BatchNorm statistics as the plain ops; fewer saved bytes.
* CPU inference: oneDNN convolutions with GELU as post-op, residuals added
  in place, layer scale folded into the projections. Same outputs; the
  caller's input is never written.
* torch.compile runs the plain ops (no oneDNN calls in the graph).
"""
import copy

import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmstvit import STViT
from mmstvit.models.backbones import execution, kernels
from mmstvit.models.backbones import stvit as S

# layer scale on in the last two stages (as STViT-B/L)
TINY = dict(embed_dims=[16, 32, 48, 64], depths=[1, 2, 1, 1],
            num_heads=[1, 2, 3, 4], layer_scale=[False, False, True, True])


def tiny(**kw):
    kw.setdefault('drop_path_rate', 0.)
    torch.manual_seed(0)
    m = STViT(arch=TINY, **kw)
    for mod in m.modules():  # non-trivial statistics and affine terms
        if isinstance(mod, _BatchNorm):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.normal_()
            mod.bias.data.normal_()
    for name, p in m.named_parameters():
        if name.endswith(('gamma_1', 'gamma_2')):
            p.data.uniform_(0.5, 1.5)  # far from the 1e-6 init
    return m


@pytest.fixture
def plain_ops(monkeypatch):
    """Turns every fast path off: the modules run their plain ops."""

    def use():
        monkeypatch.setattr(execution, 'lean_autograd', lambda *t: False)
        monkeypatch.setattr(execution, 'fused_cpu', lambda *a, **k: False)

    return use


# --------------------------------------------------------------- training --
def test_gelu_depthwise_gradcheck():
    a = torch.randn(2, 3, 5, 4, dtype=torch.double, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=torch.double, requires_grad=True)
    b = torch.randn(3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, w, b: kernels.GELUDepthwiseConv.apply(a, w, b, 1),
        (a, w, b))
    ref = torch.nn.functional.conv2d(
        torch.nn.functional.gelu(a), w, b, 1, 1, 1, 3)
    torch.testing.assert_close(
        kernels.GELUDepthwiseConv.apply(a, w, b, 1), ref)


def test_gelu_batchnorm_gradcheck_and_statistics():
    a = torch.randn(3, 4, 5, 5, dtype=torch.double, requires_grad=True)
    bn = nn.BatchNorm2d(4).double()
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()

    def f(a, w, b):
        return kernels.GELUBatchNorm.apply(a, w, b, rm.clone(), rv.clone(),
                                           0.1, bn.eps)

    assert torch.autograd.gradcheck(f, (a, bn.weight, bn.bias))
    out = kernels.GELUBatchNorm.apply(a, bn.weight, bn.bias, rm, rv, 0.1,
                                      bn.eps)
    ref = bn(torch.nn.functional.gelu(a))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(rm, bn.running_mean)
    torch.testing.assert_close(rv, bn.running_var)


@pytest.mark.parametrize('momentum', [0.1, None])
def test_training_step_equals_plain_ops(plain_ops, momentum):
    """Outputs, input and parameter gradients and BatchNorm statistics of a
    training step (two steps for the cumulative momentum=None average)."""
    fast = tiny()
    for mod in fast.modules():
        if isinstance(mod, _BatchNorm):
            mod.momentum = momentum
    ref = copy.deepcopy(fast)
    fast.train()
    ref.train()
    x = torch.randn(2, 3, 70, 52)

    def step(model):
        xi = x.clone().requires_grad_()
        outs = model(xi)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum()
            for o in outs).backward()
        return outs, xi.grad

    outs_fast, gx_fast = step(fast)
    step(fast)
    plain_ops()
    outs_ref, gx_ref = step(ref)
    step(ref)
    for u, v in zip(outs_fast, outs_ref):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gx_fast, gx_ref, atol=1e-5, rtol=1e-4)
    ref_params = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref_params[name].grad,
                                   atol=1e-4, rtol=1e-4, msg=name)
    ref_bufs = dict(ref.named_buffers())
    for name, buf in fast.named_buffers():
        torch.testing.assert_close(buf, ref_bufs[name], msg=name)


def _saved_bytes(fn):
    """Bytes of the tensors autograd keeps for backward while ``fn`` runs
    (each storage once)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_lean_functions_save_less(plain_ops):
    """The ConvFFN keeps one hidden map fewer, the stem one map fewer per
    conv; the whole backbone keeps at least that much less."""
    ffn = S.ConvFFN(16, 64).train()
    bn = nn.BatchNorm2d(16).train()
    x = torch.randn(2, 16, 32, 32, requires_grad=True)
    hidden = 2 * 64 * 32 * 32 * 4
    lean_ffn = _saved_bytes(lambda: ffn(x, bn))
    stem = S.ConvStem(3, 16).train()
    img = torch.randn(2, 3, 64, 64, requires_grad=True)
    lean_stem = _saved_bytes(lambda: stem(img))
    model = tiny().train()
    lean_model = _saved_bytes(lambda: model(torch.randn(2, 3, 64, 64)))
    plain_ops()
    assert _saved_bytes(lambda: ffn(x, bn)) - lean_ffn == hidden
    stem_maps = 2 * (8 * 32 * 32 * 2 + 16 * 16 * 16 * 2) * 4
    # (+ the BatchNorms' running statistics, which autograd saves too)
    assert 0 <= _saved_bytes(lambda: stem(img)) - lean_stem - stem_maps <= \
        2 * 4 * (8 + 8 + 16 + 16)
    assert _saved_bytes(lambda: model(torch.randn(2, 3, 64, 64))) - \
        lean_model >= stem_maps


# -------------------------------------------------------------- inference --
@pytest.mark.parametrize('hw,stoken', [
    ((64, 64), (16, 8, 2, 1)),
    ((70, 52), (16, 8, 2, 1)),  # padded super token grids
    ((64, 64), (8, 4, 1, 1)),  # the ImageNet sizes: global attention
])
def test_inference_equals_plain_ops(plain_ops, hw, stoken):
    model = tiny(stoken_size=stoken).eval()
    x = torch.randn(2, 3, *hw)
    x_before = x.clone()
    with torch.no_grad():
        fast = model(x)
        plain_ops()
        ref = model(x)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)
    for u, v in zip(fast, ref):
        assert u.shape == v.shape
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)


def test_fused_kernels_serve_cpu_inference_only(monkeypatch):
    """oneDNN's fused calls run in eager CPU float32 inference, not when a
    gradient is needed, not under autocast, not for NCHW-contiguous maps."""
    calls = []
    real = kernels.conv_gelu

    def spy(*args, **kw):
        calls.append(execution.fused_cpu((args[0], ), (args[1], )))
        return real(*args, **kw)

    monkeypatch.setattr(kernels, 'conv_gelu', spy)
    model = tiny().eval()
    stem_bn_calls = []
    for mod in model.patch_embed.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.register_forward_hook(
                lambda *a: stem_bn_calls.append(1))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
    # every ConvFFN and all four stem convolutions, fused
    assert len(calls) == sum(TINY['depths']) + 4
    assert all(calls) == execution.HAS_POINTWISE
    assert len(stem_bn_calls) == (0 if execution.HAS_POINTWISE else 4)
    calls.clear()
    model(x.requires_grad_())  # eval, but the input wants a gradient
    assert calls and not any(calls)
    calls.clear()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        model(x)
    assert calls and not any(calls)
    calls.clear()
    with torch.no_grad():
        tiny(channels_last=False).eval()(x)
    assert calls and not any(calls)


def test_torch_compile_matches_eager():
    """torch.compile captures the whole forward as one graph (no graph
    breaks, no host syncs) and gives the eager outputs in eval and the eager
    gradients in training. The 'aot_eager' backend runs dynamo and
    AOTAutograd without inductor's C++ code generation, which takes many
    minutes on a 2-core CPU."""
    import torch._dynamo
    torch._dynamo.reset()
    model = tiny().eval()
    x = torch.randn(1, 3, 64, 48)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.no_grad():
        eager = model(x)
        comp = compiled(x)
    for u, v in zip(comp, eager):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)

    model.train()
    ref = copy.deepcopy(model)
    xi, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    outs = torch.compile(model, backend='aot_eager', fullgraph=True)(xi)
    sum(o.square().mean() for o in outs).backward()
    sum(o.square().mean() for o in ref(xr)).backward()
    torch.testing.assert_close(xi.grad, xr.grad, atol=1e-5, rtol=1e-4)
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad,
                                   atol=1e-5, rtol=1e-4, msg=name)
    ref_bufs = dict(ref.named_buffers())
    for name, buf in model.named_buffers():
        torch.testing.assert_close(buf, ref_bufs[name], msg=name)


def test_neighbourhood_operators_are_adjoint_and_exact():
    """``mmstvit::gather3x3`` / ``mmstvit::scatter3x3`` (what torch.compile
    sees): the eager kernels' values, each other's gradient, and a fake
    (meta) twin with the real shapes and strides (torch.library.opcheck)."""
    torch.manual_seed(0)
    t = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    sent = torch.randn(2, 20, 9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.equal(torch.ops.mmstvit.gather3x3(t), kernels._gather3x3(t))
    assert torch.equal(torch.ops.mmstvit.scatter3x3(sent, 5, 4),
                       kernels._scatter3x3(sent, 5, 4))
    assert torch.autograd.gradcheck(torch.ops.mmstvit.gather3x3, (t, ))
    assert torch.autograd.gradcheck(
        lambda s: torch.ops.mmstvit.scatter3x3(s, 5, 4), (sent, ))
    # adjoint: <gather(t), s> == <t, scatter(s)>
    lhs = (torch.ops.mmstvit.gather3x3(t) * sent).sum()
    rhs = (t * torch.ops.mmstvit.scatter3x3(sent, 5, 4)).sum()
    torch.testing.assert_close(lhs, rhs)
    torch.library.opcheck(torch.ops.mmstvit.gather3x3.default, (t, ))
    torch.library.opcheck(torch.ops.mmstvit.scatter3x3.default, (sent, 5, 4))


def test_torch_compile_keeps_neighbourhoods_opaque():
    """Under torch.compile every 3x3 gather/scatter is one operator call (in
    the forward and in the backward AOTAutograd derives), not the padded
    slices inductor would fuse into generated C++ (that code generation
    ran for more than 20 minutes for STViT-S on 2 cores)."""
    import torch._dynamo
    from torch._functorch.aot_autograd import aot_module_simplified
    torch._dynamo.reset()
    graphs = []

    def record(name):
        def compiler(gm, example_inputs):
            graphs.append((name, gm))
            return gm.forward
        return compiler

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs,
                                     fw_compiler=record('forward'),
                                     bw_compiler=record('backward'))

    model = tiny().train()
    # 64x64: every stage's map is a multiple of its super token size, so
    # no padding is expected anywhere in the graph
    outs = torch.compile(model, backend=backend, fullgraph=True)(
        torch.randn(1, 3, 64, 64))
    sum(o.square().mean() for o in outs).backward()

    def count(gm, op):
        return sum(node.op == 'call_function' and node.target == op
                   for node in gm.graph.nodes)

    fw = dict(graphs)['forward']
    bw = dict(graphs)['backward']
    gather = torch.ops.mmstvit.gather3x3.default
    scatter = torch.ops.mmstvit.scatter3x3.default
    # each block gathers the neighbours twice (association, upsampling)
    # and scatters once (the association's column sums); in the backward
    # each operator's gradient is the other one (the association's
    # super tokens come from a no-grad iteration, so fewer there)
    blocks = sum(m.uses_super_tokens for m in model.modules()
                 if isinstance(m, S.StokenAttention))
    assert blocks > 0
    assert count(fw, gather) >= 2 * blocks and count(fw, scatter) >= blocks
    assert count(bw, scatter) >= blocks and count(bw, gather) >= blocks
    assert not any(node.target is torch.ops.aten.constant_pad_nd.default
                   for gm in (fw, bw) for node in gm.graph.nodes)
    torch._dynamo.reset()


def test_inductor_compiles_inference_and_matches_eager():
    """The default backend (inductor, C++ code generation) compiles the
    inference forward in seconds and gives the eager outputs. Speed and
    compile time of STViT-S: benchmark.py --compile."""
    import torch._dynamo
    torch._dynamo.reset()
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        eager = model(x)
        comp = torch.compile(model, fullgraph=True)(x)
    for u, v in zip(comp, eager):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)
    torch._dynamo.reset()
