# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""STViT under DistributedDataParallel (2 CPU processes, gloo): the
gradients equal one process's, and DDP copies none of them into its buckets
(no "Grad strides do not match bucket view strides" warning), because the
convolution weights are stored as their channels-last gradients come and a
hook hands every other gradient over in its parameter's layout (with and
without stochastic depth, which takes the other residual path). The control
run, with the parameters laid out as before the fix, raises the warning, so
the check can fail."""
import os.path as osp
import subprocess
import sys

import pytest
import torch

from mmstvit import STViT
from mmstvit.models.backbones import kernels

import ddp_worker
from helpers import REPO, free_port

WORKER = osp.join(REPO, 'tests', 'ddp_worker.py')

MESSAGE = 'Grad strides do not match bucket view strides'


def run_ddp(tmp_path, layout, drop_path_rate=0.):
    proc = subprocess.run(
        [sys.executable, WORKER, str(tmp_path), str(free_port()),
         '--layout', layout, '--drop-path-rate', str(drop_path_rate)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True)
             for r in range(2)]
    return ranks, proc.stderr


def single_process_grads(drop_path_rate):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, x = ddp_worker.build_model(drop_path_rate)
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            ddp_worker.loss_of(model(x)).backward()
    finally:
        torch.set_num_threads(threads)
    return {n: p.grad for n, p in model.named_parameters()
            if p.grad is not None}


@pytest.mark.parametrize('drop_path_rate', [0., 0.1])
def test_ddp_gradients_equal_one_process_and_need_no_copy(tmp_path,
                                                          drop_path_rate):
    reference = single_process_grads(drop_path_rate)
    ranks, stderr = run_ddp(tmp_path, 'stored', drop_path_rate)
    for rank in ranks:
        assert not [w for w in rank['warnings'] if MESSAGE in w], \
            rank['warnings']
        # every gradient is laid out as its parameter (and DDP's bucket)
        assert {n: s for n, s in rank['strides'].items()
                if s[0] != s[1]} == {}
        assert set(rank['grads']) == set(reference)
        for name, grad in rank['grads'].items():
            torch.testing.assert_close(grad, reference[name], rtol=1e-5,
                                       atol=1e-7, msg=name)
    assert MESSAGE not in stderr


def test_control_the_layout_before_the_fix_raises_the_warning(tmp_path):
    ranks, stderr = run_ddp(tmp_path, 'contiguous')
    warned = [w for r in ranks for w in r['warnings'] if MESSAGE in w]
    assert warned or MESSAGE in stderr


def test_conv_weights_stored_channels_last_with_exact_strides():
    model = STViT(arch=ddp_worker.ARCH, stoken_size=ddp_worker.STOKEN)
    convs = [(n, m.weight) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) > 10
    for name, w in convs:
        assert w.stride() == kernels.channels_last_strides(w.shape), name
    # 1x1 kernels included, which .contiguous(channels_last) leaves alone
    fc2 = model.layers[0].blocks[0].mlp2.fc2.weight
    assert fc2.shape[2:] == (1, 1) and fc2.stride()[2:] != (1, 1)


def test_layout_survives_to_load_state_dict_and_copy():
    model = STViT(arch=ddp_worker.ARCH, stoken_size=ddp_worker.STOKEN)
    state = {k: v.contiguous() if v.dim() != 4 else
             torch.empty_strided(v.shape, torch.empty(v.shape).stride()
                                 ).copy_(v)
             for k, v in model.state_dict().items()}
    for assign in (False, True):
        other = STViT(arch=ddp_worker.ARCH, stoken_size=ddp_worker.STOKEN)
        other.load_state_dict(state, assign=assign)
        for (name, p), q in zip(other.named_parameters(),
                                model.parameters()):
            assert torch.equal(p, q), name
            assert p.stride() == q.stride(), (assign, name)
    import copy
    clone = copy.deepcopy(model)
    for p, q in zip(clone.parameters(), model.parameters()):
        assert p.stride() == q.stride()


def test_channels_first_models_keep_contiguous_parameters():
    model = STViT(arch=ddp_worker.ARCH, stoken_size=ddp_worker.STOKEN,
                  channels_last=False)
    for p in model.parameters():
        assert p.is_contiguous()
        if p.dim() == 4 and p.shape[2:] == (1, 1):
            assert p.stride() == torch.empty(p.shape).stride()


def test_gradients_are_handed_over_in_the_parameters_layout():
    """The hook re-strides a gradient that autograd hands over with other
    strides: a free view when only size-1 strides differ, a copy
    otherwise; the values are the gradient's."""
    model = STViT(arch=ddp_worker.ARCH, stoken_size=ddp_worker.STOKEN)
    fc2 = model.layers[0].blocks[0].mlp2.fc2.weight  # (C, 4C, 1, 1)
    dw = model.layers[0].blocks[0].pos_embed.conv.weight  # (C, 1, 3, 3)
    for p in (fc2, dw):
        grad = torch.randn(p.shape)  # contiguous
        assert grad.stride() != p.stride()
        hook = kernels.GradLikeParameter(p)
        out = hook(grad)
        assert out.stride() == p.stride() and torch.equal(out, grad)
        assert out.data_ptr() == grad.data_ptr()  # size-1 dims only: a view
    w3 = model.layers[0].downsample.proj[0].weight  # (C', C, 3, 3)
    grad = torch.randn(w3.shape)
    out = kernels.GradLikeParameter(w3)(grad)
    assert out.stride() == w3.stride() and torch.equal(out, grad)
    assert out.data_ptr() != grad.data_ptr()  # a real re-layout: a copy


def test_frozen_stages_get_no_hook_and_train():
    model = STViT(arch=ddp_worker.ARCH, stoken_size=ddp_worker.STOKEN,
                  frozen_stages=1).train()
    sum(o.mean() for o in model(torch.randn(1, 3, 64, 64))).backward()
    assert model.patch_embed.proj[0].weight.grad is None
    last = model.layers[3].blocks[0].mlp2.fc2.weight
    assert last.grad is not None and last.grad.stride() == last.stride()
