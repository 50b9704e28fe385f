# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Every kernel plan computes what the plain module graph computes, in every
precision a GPU run takes, checked here on the CPU through the same code.

* The precision matrix: the ``fast`` plan against the ``plain`` one in fp32,
  bf16 autocast and fp16 autocast (CPU autocast runs the dtype logic of CUDA
  AMP), train and eval, with ``with_cp``, ``frozen_stages``, ``norm_eval``,
  drop path and ``channels_last`` on and off: outputs, input and parameter
  gradients, BatchNorm statistics.
* Models cast with ``.half()`` / ``.bfloat16()``: inference in that dtype
  close to float32's, in every plan.
* ``with_cp`` changes nothing but memory: the same outputs, gradients and
  BatchNorm running statistics (``num_batches_tracked`` too).
* Memory-lean training: the recomputation runs the modules (hooks,
  wrappers), BatchNorm statistics once, the bytes autograd keeps.
* ``deploy``: the fast plan's outputs, inference only, its oneDNN kernels
  decided when it is switched and again when it moves or is cast.
* ``torch.compile``: one graph with eager's values and gradients, the
  neighbourhoods as opaque operators.
"""
import copy
import itertools

import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmstvit import STViT
from mmstvit.models.backbones import kernels
from mmstvit.models.backbones import stvit as S
from mmstvit.models.backbones.kernels import neighbourhoods

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


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 0.) -> float:
    """||a - b|| / max(||b||, floor) in float64 (``floor``: a scale under
    which ``b`` counts as zero, such as the gradient of a convolution's bias
    that a training-mode BatchNorm follows)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / max(b.norm().item(), floor, 1e-30)).item()


# ------------------------------------------------ the precision matrix --
# dtype under autocast (None: fp32) and tolerance (relative norm); and the
# fraction of the largest gradient's norm under which a gradient counts as
# zero (the bias of a convolution that a training-mode BatchNorm follows:
# its true gradient is 0, what is computed is rounding noise)
PRECISIONS = {
    'fp32': (None, 1e-5, 1e-3),
    'bf16': (torch.bfloat16, 0.02, 1e-2),
    'fp16': (torch.float16, 0.005, 1e-2),
}
SETTINGS = {
    'default': dict(),
    'with_cp': dict(with_cp=True),
    'frozen_stages': dict(frozen_stages=1),
    'norm_eval': dict(norm_eval=True),
    'drop_path': dict(drop_path_rate=0.3),
    'nchw': dict(channels_last=False),
}


def run_step(model, x, train, dtype):
    """One forward (+ backward of a weighted sum in float32, as AMP does
    with the loss) of ``model`` on ``x``; returns outputs, input gradient,
    parameter gradients and buffers."""
    model.train(train)
    torch.manual_seed(1)  # the same drop-path masks for every plan
    xi = x.clone().requires_grad_(train)
    with torch.autocast('cpu', dtype=dtype or torch.bfloat16,
                        enabled=dtype is not None):
        outs = model(xi)
    if train:
        loss = sum((o.float() * torch.linspace(-1, 1, o.numel()).view_as(o))
                   .sum() for o in outs)
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.grad is not None}
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    return [o.detach().float() for o in outs], xi.grad, grads, bufs


def plain_copy(model):
    """The model as the plain module graph, without checkpointing."""
    plain = copy.deepcopy(model).set_kernels('plain')
    plain.with_cp = False
    for stage in plain.layers:
        stage.with_cp = False
    return plain


@pytest.mark.parametrize('precision,setting,train', [
    (p, s, t) for p, s, t in itertools.product(PRECISIONS, SETTINGS,
                                               (True, False))
    # eval runs no backward: with_cp and drop path do nothing there
    if t or s not in ('with_cp', 'drop_path')
])
def test_fast_plan_equals_plain_graph(precision, setting, train):
    """fp32: the fast plan equals the plain graph within 1e-5. Autocast:
    both run in the low precision; the fast plan's error against the plain
    graph in fp32 is at most twice the plain graph's own error in that
    precision plus the tolerance (it rounds in other places, not more)."""
    compare_plans(precision, SETTINGS[setting], train,
                  frozen=setting == 'frozen_stages')


# the components of the paper's ablation (ablation.py) that are not
# STViT's: the baseline's patch stem with APE and a plain MLP; RPE (tables
# smaller than some grids: clipped offsets) with the ConvFFN w/o shortcut
ABLATIONS = {
    'patch_ape_mlp': dict(stem='patch', pos_embed='ape', ffn='mlp'),
    'rpe_no_shortcut': dict(pos_embed='rpe', rel_pos_grid=(2, 2, 2, 2),
                            ffn='conv_no_shortcut'),
}


@pytest.mark.parametrize('precision,setting,train', list(
    itertools.product(('fp32', 'bf16'), ABLATIONS, (True, False))))
def test_fast_plan_equals_plain_ablations(precision, setting, train):
    """The same comparison with the ablation's components switched on; in
    fp32 against the plain graph in fp64 (without the CPE and the stem's
    BatchNorms a few fp32 gradients differ by 1e-4 between the plans, and
    the fast plan's are the nearer to fp64's)."""
    compare_plans(precision, ABLATIONS[setting], train, fp64_reference=True)


def compare_plans(precision, kwargs, train, frozen=False,
                  fp64_reference=False):
    """The fast plan of ``tiny(**kwargs)`` against its plain graph; under
    autocast both against the plain graph in fp32, and with
    ``fp64_reference`` in fp32 both against the plain graph in fp64."""
    dtype, tol, zero = PRECISIONS[precision]
    if fp64_reference:
        # fp32 against fp64: the stem conv's bias gradient sums ~1,800
        # terms per channel that BatchNorm's backward nearly cancels; with
        # one thread its fp32 rounding was 3.7e-5 of the norm in the fast
        # plan (the stem recomputed) and 6e-6 in the plain one
        tol = max(tol, 5e-5)
    fast = tiny(**kwargs)
    plain = plain_copy(fast)
    ref = plain_copy(fast) if dtype is not None else \
        plain_copy(fast).double() if fp64_reference else None
    x = torch.randn(2, 3, 70, 52)  # padded super token grids too
    f = run_step(fast, x, train, dtype)
    p = run_step(plain, x, train, dtype)
    r = run_step(ref, x.to(next(ref.parameters()).dtype), train, None) \
        if ref is not None else None

    def check(a, b, ref, floor=0., what=''):
        if ref is None:
            assert rel_err(a, b, floor) < max(tol, 1e-4 if floor else 0), \
                what
        else:
            assert rel_err(a, ref, floor) <= \
                2 * rel_err(b, ref, floor) + tol, what

    for i, (u, v) in enumerate(zip(f[0], p[0])):
        assert u.shape == v.shape and torch.isfinite(u).all()
        check(u, v, r and r[0][i], what=f'output {i}')
    if not train:
        return
    check(f[1], p[1], r and r[1], what='input gradient')
    grads_f, grads_p = f[2], p[2]
    assert grads_f.keys() == grads_p.keys() and grads_f
    frozen_params = [n for n, q in fast.named_parameters()
                     if not q.requires_grad]
    assert bool(frozen_params) == frozen
    assert not any(n in grads_f for n in frozen_params)
    floor = zero * max(g.norm().item() for g in grads_p.values())
    for name in grads_f:
        check(grads_f[name], grads_p[name], r and r[2][name], floor, name)
    for name, buf in f[3].items():  # BatchNorm statistics
        if buf.is_floating_point():
            check(buf, p[3][name], r and r[3][name], what=name)
        else:
            assert torch.equal(buf, p[3][name]), name


@pytest.mark.parametrize('momentum', [0.1, None])
def test_with_cp_changes_nothing_but_memory(momentum):
    """Outputs, gradients and every BatchNorm statistic of two training
    steps are those of the model without activation checkpointing (the
    recomputation in backward used to update the statistics again:
    num_batches_tracked 2 instead of 1 after one step)."""
    ref = tiny(drop_path_rate=0.2)
    for mod in ref.modules():
        if isinstance(mod, _BatchNorm):
            mod.momentum = momentum
    cp = copy.deepcopy(ref)
    for stage in cp.layers:
        stage.with_cp = True
    x = torch.randn(2, 3, 64, 48)
    for _ in range(2):
        a = run_step(ref, x, True, None)
        b = run_step(cp, x, True, None)
    for u, v in zip(a[0], b[0]):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6)
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], rtol=1e-4,
                                   atol=1e-6, msg=name)
    for name in a[3]:
        torch.testing.assert_close(a[3][name], b[3][name], rtol=1e-5,
                                   atol=1e-7, msg=name)
    tracked = [b for n, b in cp.named_buffers()
               if n.endswith('num_batches_tracked')]
    assert tracked and all(int(t) == 2 for t in tracked)


@pytest.mark.parametrize('plan', ['fast', 'plain', 'deploy'])
@pytest.mark.parametrize('dtype,tol', [(torch.float16, 0.01),
                                       (torch.bfloat16, 0.05)])
def test_half_precision_model(plan, dtype, tol):
    """A model cast with .half()/.bfloat16() runs inference in that dtype
    (the association still in float32) and gives float32's outputs within
    the dtype's precision."""
    model = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        half = copy.deepcopy(model)
        if plan == 'deploy':
            half.switch_to_deploy()
        else:
            half.set_kernels(plan)
        half = half.to(dtype)
        outs = half(x.to(dtype))
    assert not half.kernels.onednn  # oneDNN serves float32 alone
    for u, v in zip(outs, ref):
        assert u.dtype == dtype
        assert rel_err(u, v) < tol


# ---------------------------------------------------------------- deploy --
def test_deploy_equals_fast_and_is_inference_only():
    model = tiny().eval()
    x = torch.randn(2, 3, 70, 52)
    x_before = x.clone()
    with torch.no_grad():
        fast = model(x)
        deployed = copy.deepcopy(model).switch_to_deploy()
        outs = deployed(x)
    assert deployed.kernels.inplace
    assert deployed.kernels.onednn == kernels.HAS_ONEDNN
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)  # not written
    for u, v in zip(outs, fast):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in deployed.parameters())
    with pytest.raises(RuntimeError, match='deploy'):
        deployed.train()
    with pytest.raises(RuntimeError, match='gradients'):
        deployed(x.clone().requires_grad_())
    # under CPU autocast the oneDNN kernels run float32, as they must
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        for u, v in zip(deployed(x), fast):
            torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)
    # cast: oneDNN off; back to float32: on again (decided on each move)
    deployed.bfloat16()
    assert deployed.kernels.inplace and not deployed.kernels.onednn
    deployed.float()
    assert deployed.kernels.onednn == kernels.HAS_ONEDNN


@pytest.mark.parametrize('onednn', [True, False])
def test_deploy_kernels_with_and_without_onednn(onednn):
    """The deploy plan as a GPU takes it (no oneDNN: in-place sums and
    folded convolutions only) and as a CPU takes it, on the same input."""
    model = tiny(stoken_size=(8, 4, 1, 1)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model.requires_grad_(False)
        model.set_kernels(kernels.deploy_plan(onednn))
        outs = model(x)
    for u, v in zip(outs, ref):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)


def test_deploy_keeps_a_chosen_neighbourhood_kernel_across_moves():
    """A deploy plan with the authors' identity-kernel neighbourhoods (what
    fast_paths.py times) keeps its kernels when deployed and when the
    model is cast or moved: the same outputs as before the deploy."""
    model = tiny(stoken_size=(8, 4, 1, 1)).eval()
    x = torch.randn(1, 3, 64, 64)
    plan = kernels.Kernels(neighbourhoods='conv', sdpa=True,
                           lean_training=False, inplace=True, onednn=False)
    with torch.no_grad():
        ref = model(x)
        model.set_kernels(plan)
        assert model.kernels == plan
        outs = model(x)
        model.double()
        assert model.kernels.neighbourhoods == 'conv'
        cast = model(x.double())
    for u, v, w in zip(outs, ref, cast):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(w.float(), v, atol=1e-4, rtol=1e-4)


# ------------------------------------------------- memory-lean training --
def test_lean_training_runs_the_modules_and_their_wrappers():
    """The memory-lean ConvFFN and stem recompute through the modules
    themselves: a forward hook on the depthwise conv fires, a wrapper that replaces
    the depthwise conv is what runs, and the stem's statistics are updated
    once."""
    ffn = S.ConvFFN(8, 16).train()
    calls = []
    ffn.conv.conv.register_forward_hook(lambda *a: calls.append('dw'))
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    ffn(x).sum().backward()
    # in the forward; the recomputation stops once GELU's output is back
    # (torch.utils.checkpoint's early stop)
    assert calls[0] == 'dw'
    dw = ffn.conv.conv
    ffn.conv.conv = nn.Sequential(dw, nn.Dropout(0.))  # a swapped layer
    plain_out = copy.deepcopy(ffn)
    plain_out.kernels = kernels.PLAIN
    torch.testing.assert_close(ffn(x), plain_out(x))
    stem = S.ConvStem(3, 8).train()
    stem(torch.randn(2, 3, 16, 16, requires_grad=True)).sum().backward()
    assert all(int(b) == 1 for n, b in stem.named_buffers()
               if n.endswith('num_batches_tracked'))


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


def test_lean_functions_save_less():
    """The ConvFFN keeps one hidden map fewer, the stem one map fewer per
    conv; the whole backbone keeps at least that much less."""
    ffn = S.ConvFFN(16, 64).train()
    x = torch.randn(2, 16, 32, 32, requires_grad=True)
    hidden = 2 * 64 * 32 * 32 * 4
    stem = S.ConvStem(3, 16).train()
    img = torch.randn(2, 3, 64, 64, requires_grad=True)
    model = tiny().train()
    lean = [_saved_bytes(lambda: ffn(x)), _saved_bytes(lambda: stem(img)),
            _saved_bytes(lambda: model(torch.randn(2, 3, 64, 64)))]
    for m in (ffn, stem, model):
        for mod in m.modules():
            if isinstance(mod, S.Planned):
                mod.kernels = kernels.PLAIN
    # (+ the depthwise kernel, which the plain graph saves too)
    assert _saved_bytes(lambda: ffn(x)) - lean[0] == \
        hidden + ffn.conv.conv.weight.numel() * 4
    stem_maps = 2 * (8 * 32 * 32 * 2 + 16 * 16 * 16 * 2) * 4
    # (+ the BatchNorms' parameters and statistics, which the plain graph
    # saves and the recomputation does not)
    assert 0 <= _saved_bytes(lambda: stem(img)) - lean[1] - stem_maps <= \
        4096
    assert _saved_bytes(lambda: model(torch.randn(2, 3, 64, 64))) - \
        lean[2] >= stem_maps


# ---------------------------------------------------------- torch.compile --
@pytest.mark.parametrize('with_cp', [False, True])
def test_torch_compile_matches_eager(with_cp):
    """torch.compile captures the whole forward as one graph (no graph
    breaks, no host syncs) and gives the eager outputs in eval and the eager
    gradients and BatchNorm statistics in training, with the lean stem's
    and ``with_cp``'s recomputation (a checkpoint that dynamo traces). The
    'aot_eager' backend runs dynamo and AOTAutograd without inductor's C++
    code generation, which takes many minutes on a 2-core CPU."""
    import torch._dynamo
    torch._dynamo.reset()
    model = tiny(with_cp=with_cp).eval()
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
    assert torch.equal(torch.ops.mmstvit.gather3x3(t), neighbourhoods._gather3x3(t))
    assert torch.equal(torch.ops.mmstvit.scatter3x3(sent, 5, 4),
                       neighbourhoods._scatter3x3(sent, 5, 4))
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
    from torch._dynamo.backends.debugging import aot_eager
    torch._dynamo.reset()
    graphs = []

    def record(name):
        def compiler(gm, example_inputs):
            graphs.append((name, gm))
            return gm.forward
        return compiler

    def backend(gm, example_inputs):
        # the 'aot_eager' backend (AOTAutograd as torch.compile runs it:
        # inductor's partitioner, buffer updates kept in the graph) with
        # compilers that record the graphs
        return aot_eager(gm, example_inputs, fw_compiler=record('forward'),
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
