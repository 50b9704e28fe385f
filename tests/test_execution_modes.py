# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The kernel plans of the backbone and the kernels beside their twins.

* A plan is fixed when the model is built and changes only by an explicit
  call (``set_kernels``, ``use_kernels``, ``switch_to_deploy``), for every
  module of the model at once; bad plans are refused with the choices.
* The FLOP-counting protocol is the ``reference`` plan: the identity-kernel
  convolutions are in its trace, the paper's 82.3G for STViT-S at
  1280x800; ``use_kernels`` restores each model's own plan, on error too.
* The gather/scatter kernels (slices and operators) equal the authors'
  identity-kernel convolutions they replace.
* A stage is a module with a forward: hooks on ``layers[i]`` see the
  stage's features.
"""
import pytest
import torch

from mmstvit import STViT, StokenAttention
from mmstvit.models.backbones import kernels
from mmstvit.models.backbones import stvit as S

TINY = dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
            num_heads=[1, 2, 3, 4])


def _traced_ops(module, x):
    graph = torch.jit.trace(module, x, check_trace=False).inlined_graph
    return [node.kind() for node in graph.nodes()]


def _set(module, plan):
    for m in module.modules():
        if isinstance(m, S.Planned):
            m.kernels = plan


def _plans(model):
    return {m.kernels for m in model.modules() if isinstance(m, S.Planned)}


def test_plan_is_fixed_at_construction_for_every_module():
    m = STViT(arch=TINY)
    assert _plans(m) == {kernels.FAST} and m.kernels is kernels.FAST
    m = STViT(arch=TINY, kernels='plain')
    assert _plans(m) == {kernels.PLAIN}
    assert m.set_kernels('reference') is m
    assert _plans(m) == {kernels.REFERENCE}
    custom = kernels.Kernels(sdpa=False)
    m.set_kernels(custom)
    assert _plans(m) == {custom}
    with pytest.raises(ValueError, match="'fast'.*'plain'.*'reference'"):
        STViT(arch=TINY, kernels='fused')
    with pytest.raises(ValueError, match='neighbourhoods'):
        kernels.Kernels(neighbourhoods='unfold')


def test_reference_plan_is_what_a_trace_counts():
    m = StokenAttention(8, (4, 4), num_heads=2).eval()
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        fast_ops = _traced_ops(m, x)
        _set(m, kernels.REFERENCE)
        ref_ops = _traced_ops(m, x)
        _set(m, kernels.PLAIN)
        plain_ops = _traced_ops(m, x)
    # the fast plan traces what it runs: fused attention, the operators
    assert 'aten::scaled_dot_product_attention' in fast_ops
    assert 'mmstvit::gather3x3' in fast_ops
    # unfold/fold of the authors: convolutions with the identity kernel
    # (aten::_convolution covers conv2d and conv_transpose2d)
    assert ref_ops.count('aten::_convolution') >= 4
    assert 'aten::scaled_dot_product_attention' not in ref_ops
    # plain (what ONNX export traces): explicit softmax, slices; only qkv
    # and proj are convolutions
    assert 'aten::softmax' in plain_ops
    assert plain_ops.count('aten::_convolution') == 2
    assert not any(op.startswith('mmstvit::') for op in plain_ops)


def test_use_kernels_switches_every_backbone_and_restores_on_error():
    outer = torch.nn.ModuleDict(dict(a=STViT(arch=TINY),
                                     b=STViT(arch=TINY, kernels='plain')))
    with pytest.raises(RuntimeError, match='inside'):
        with kernels.use_kernels(outer, 'reference') as n:
            assert n == 2
            assert _plans(outer) == {kernels.REFERENCE}
            raise RuntimeError('inside')
    assert _plans(outer.a) == {kernels.FAST}
    assert _plans(outer.b) == {kernels.PLAIN}


def test_flops_follow_the_plan():
    """The paper's FLOP protocol is the reference plan (82.3G for the
    STViT-S backbone at 1280x800, test_stvit_backbone pins it); the fast
    plan's own count is lower by the identity-kernel convolutions."""
    from mmengine.analysis import FlopAnalyzer

    def count(model):
        with torch.no_grad():
            fa = FlopAnalyzer(model, torch.randn(1, 3, 256, 256))
            fa.unsupported_ops_warnings(False)
            fa.uncalled_modules_warnings(False)
            return fa.total()

    m = STViT(arch=TINY).eval()
    with kernels.use_kernels(m, 'reference'):
        reference = count(m)
    assert count(m) < reference  # restored: the fast plan again
    assert m.kernels is kernels.FAST


@pytest.mark.parametrize('h,w', [(1, 1), (3, 5), (6, 4)])
@pytest.mark.parametrize('how', ['slices', 'operator'])
def test_gather_and_scatter_equal_the_identity_kernel_convolutions(h, w, how):
    kernel = torch.eye(9).reshape(9, 1, 3, 3)
    x = torch.randn(2, 5, h, w, dtype=torch.double)
    ref = torch.nn.functional.conv2d(
        x.reshape(10, 1, h, w), kernel.double(), padding=1).reshape(
            2, 5, 9, h * w)
    fast = kernels.gather3x3(x.permute(0, 2, 3, 1), how)  # (B, n, 9, C)
    torch.testing.assert_close(fast.permute(0, 3, 2, 1), ref)
    torch.testing.assert_close(kernels.unfold3x3(x, kernel.double()), ref)

    sent = torch.randn(2, h * w, 9, 5, dtype=torch.double)
    ref = torch.nn.functional.conv_transpose2d(
        sent.permute(0, 3, 2, 1).reshape(10, 9, h, w), kernel.double(),
        padding=1).reshape(2, 5, h, w)
    fast = kernels.scatter3x3(sent, h, w, how).permute(0, 3, 1, 2)
    torch.testing.assert_close(fast, ref)
    cols = sent.permute(0, 3, 2, 1).reshape(2, 45, h * w)
    torch.testing.assert_close(
        kernels.fold3x3(cols, (h, w), kernel.double()), ref)


def test_stage_forward_hook_sees_the_stage_features():
    torch.manual_seed(0)
    m = STViT(arch=TINY, drop_path_rate=0.).eval()
    seen = {}
    for i, stage in enumerate(m.layers):
        stage.register_forward_hook(
            lambda mod, inp, out, i=i: seen.__setitem__(i, out.clone()))
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 64, 64))
    assert sorted(seen) == [0, 1, 2, 3]
    for i, out in enumerate(outs):
        torch.testing.assert_close(seen[i], out)
