# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The execution modes of the backbone and the kernels beside their twins.

* The FLOP-counting switch: a traced forward runs the authors' graph (the
  identity-kernel convolutions are in it) unless the switch is off; the
  setter and the context manager restore what they change.
* The gather/scatter kernels equal the authors' identity-kernel
  convolutions they replace.
* A stage is a module with a forward: hooks on ``layers[i]`` see the
  stage's features.
"""
import pytest
import torch

from mmstvit import STViT, StokenAttention
from mmstvit.models.backbones import execution, kernels


def _traced_ops(module, x):
    graph = torch.jit.trace(module, x, check_trace=False).inlined_graph
    return [node.kind() for node in graph.nodes()]


def test_reference_graph_is_traced_by_default():
    assert execution.reference_graph_enabled()
    m = StokenAttention(8, (4, 4), num_heads=2).eval()
    with torch.no_grad():
        ops = _traced_ops(m, torch.randn(1, 8, 8, 8))
    # unfold/fold of the authors: convolutions with the identity kernel
    # (aten::_convolution covers conv2d and conv_transpose2d)
    assert ops.count('aten::_convolution') >= 4
    assert 'aten::scaled_dot_product_attention' not in ops


def test_switch_off_traces_the_fast_path():
    m = StokenAttention(8, (4, 4), num_heads=2).eval()
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        with execution.reference_graph_when_tracing(False):
            assert not execution.reference_graph_enabled()
            ops = _traced_ops(m, x)
        assert execution.reference_graph_enabled()  # restored
    # a trace keeps plain ops (exportable: explicit softmax, no fused
    # attention), but without the identity-kernel convolutions: only qkv
    # and proj remain
    assert 'aten::scaled_dot_product_attention' not in ops
    assert 'aten::softmax' in ops
    assert ops.count('aten::_convolution') == 2


def test_setter_returns_the_previous_value_and_context_restores_on_error():
    assert execution.set_reference_graph_when_tracing(False) is True
    try:
        assert execution.set_reference_graph_when_tracing(False) is False
    finally:
        execution.set_reference_graph_when_tracing(True)
    with pytest.raises(RuntimeError):
        with execution.reference_graph_when_tracing(False):
            raise RuntimeError('inside')
    assert execution.reference_graph_enabled()


@pytest.mark.parametrize('h,w', [(1, 1), (3, 5), (6, 4)])
def test_gather_and_scatter_equal_the_identity_kernel_convolutions(h, w):
    kernel = torch.eye(9).reshape(9, 1, 3, 3)
    x = torch.randn(2, 5, h, w, dtype=torch.double)
    ref = torch.nn.functional.conv2d(
        x.reshape(10, 1, h, w), kernel.double(), padding=1).reshape(
            2, 5, 9, h * w)
    fast = kernels.gather3x3(x.permute(0, 2, 3, 1))  # (B, n, 9, C)
    torch.testing.assert_close(fast.permute(0, 3, 2, 1), ref)
    torch.testing.assert_close(kernels.unfold3x3(x), ref)

    sent = torch.randn(2, h * w, 9, 5, dtype=torch.double)
    ref = torch.nn.functional.conv_transpose2d(
        sent.permute(0, 3, 2, 1).reshape(10, 9, h, w), kernel.double(),
        padding=1).reshape(2, 5, h, w)
    fast = kernels.scatter3x3(sent, h, w).permute(0, 3, 1, 2)
    torch.testing.assert_close(fast, ref)
    cols = sent.permute(0, 3, 2, 1).reshape(2, 45, h * w)
    torch.testing.assert_close(kernels.fold3x3(cols, (h, w)), ref)


def test_stage_forward_hook_sees_the_stage_features():
    torch.manual_seed(0)
    m = STViT(arch=dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                        num_heads=[1, 2, 3, 4]), drop_path_rate=0.).eval()
    seen = {}
    for i, stage in enumerate(m.layers):
        stage.register_forward_hook(
            lambda mod, inp, out, i=i: seen.__setitem__(i, out.clone()))
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 64, 64))
    assert sorted(seen) == [0, 1, 2, 3]
    for i, out in enumerate(outs):
        torch.testing.assert_close(seen[i], out)
