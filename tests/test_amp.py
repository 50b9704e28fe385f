# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Mixed precision: ``DeviceAmpOptimWrapper`` (mmstvit/engine/amp.py) and
``tools/train.py --amp`` on a CPU.

The wrapper is mmengine's ``AmpOptimWrapper`` on accelerators and bfloat16
(or float16) autocast on a CPU. Here: the choice for every device (the
CUDA branch through the same code, with mmengine's device assert patched),
steps, loss scaling and state round trips on a CPU.
"""
import math

import pytest
import torch
from mmengine.optim import AmpOptimWrapper

import mmstvit  # noqa: F401
from mmstvit import STViT
from mmstvit.engine import DeviceAmpOptimWrapper, amp_plan
from mmstvit.engine.amp import AmpPlan

from test_tools import TINY_ARCH

# ---------------------------------------------------------------------------
# the choice, for every device
# ---------------------------------------------------------------------------


def test_amp_plan_for_each_device():
    for dev in ('cuda', 'npu', 'mlu', 'musa'):
        # mmengine's AmpOptimWrapper, its dtype rule and its GradScaler
        assert amp_plan(dev) == AmpPlan(dev, None, True, True)
        assert amp_plan(dev, 'bfloat16') == AmpPlan(dev, torch.bfloat16,
                                                      True, True)
    assert amp_plan('cpu') == AmpPlan('cpu', torch.bfloat16, False, False)
    assert amp_plan('cpu', torch.bfloat16).loss_scaling is False
    assert amp_plan('cpu', 'float16') == AmpPlan('cpu', torch.float16, True,
                                                  False)
    with pytest.raises(ValueError, match="'bfloat16' .* or 'float16'"):
        amp_plan('cpu', 'float32')
    with pytest.raises(ValueError, match='without --amp'):
        amp_plan('mps')
    with pytest.raises(ValueError, match='must be one of'):
        amp_plan('cuda', 'half')


def _mmengine_sees_cuda(monkeypatch):
    """Lets mmengine's AmpOptimWrapper be built without a GPU (its device
    assert); its GradScaler then warns and disables itself."""
    from mmengine.optim.optimizer import amp_optimizer_wrapper
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available',
                        lambda: True)


@pytest.mark.filterwarnings('ignore::UserWarning')
@pytest.mark.filterwarnings('ignore::FutureWarning')
@pytest.mark.parametrize('kwargs', [
    dict(), dict(loss_scale=512.), dict(loss_scale=dict(init_scale=8.)),
    dict(dtype='bfloat16')
])
def test_cuda_branch_is_mmengines_wrapper(monkeypatch, kwargs):
    """On an accelerator the wrapper is built by mmengine's own __init__
    with the same arguments: the same scaler type and settings, dtype and
    static scale as mmengine's AmpOptimWrapper, and mmengine's methods."""
    _mmengine_sees_cuda(monkeypatch)
    params = [torch.nn.Parameter(torch.zeros(2))]
    ours = DeviceAmpOptimWrapper(
        optimizer=torch.optim.SGD(params, lr=0.1), device_type='cuda',
        **kwargs)
    theirs = AmpOptimWrapper(optimizer=torch.optim.SGD(params, lr=0.1),
                             **kwargs)
    assert ours.plan.mmengine
    assert type(ours.loss_scaler) is type(theirs.loss_scaler)  # noqa: E721
    assert vars(ours.loss_scaler) == vars(theirs.loss_scaler)
    assert ours.cast_dtype == theirs.cast_dtype
    assert ours._scale_update_param == theirs._scale_update_param
    for method in ('backward', 'step', 'state_dict'):
        assert getattr(DeviceAmpOptimWrapper, method) is \
            getattr(AmpOptimWrapper, method)


# ---------------------------------------------------------------------------
# the CPU branch
# ---------------------------------------------------------------------------


class Tiny(torch.nn.Module):
    """A 4-stage STViT of 16-64 channels and a linear classifier."""

    def __init__(self):
        super().__init__()
        self.backbone = STViT(arch=TINY_ARCH, stoken_size=[4, 2, 1, 1],
                              drop_path_rate=0.)
        self.fc = torch.nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(self.backbone(x)[-1].mean((2, 3)))


def cpu_wrapper(model, **kwargs):
    return DeviceAmpOptimWrapper(
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        device_type='cpu', **kwargs)


def train_steps(model, wrapper, steps):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([0, 2])
    losses, dtypes = [], set()
    for _ in range(steps):
        with wrapper.optim_context(model):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        dtypes.add(logits.dtype)
        wrapper.update_params(loss)
        losses.append(float(loss.detach()))
    return losses, dtypes


def test_cpu_bfloat16_steps_and_state_round_trip():
    torch.manual_seed(0)
    model = Tiny().train()
    wrapper = cpu_wrapper(model)
    assert wrapper.cast_dtype == torch.bfloat16
    assert not wrapper.loss_scaler.is_enabled()  # bf16: no loss scaling
    start = [p.detach().clone() for p in model.parameters()]
    losses, dtypes = train_steps(model, wrapper, 2)
    assert dtypes == {torch.bfloat16}
    assert all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(p, s)
               for p, s in zip(model.parameters(), start))
    state = wrapper.state_dict()
    assert state['loss_scaler'] == {}
    assert {float(s['step']) for s in state['state'].values()} == {2.}

    resumed = cpu_wrapper(model)
    resumed.load_state_dict(dict(state))
    again = resumed.optimizer.state_dict()
    assert {float(s['step']) for s in again['state'].values()} == {2.}
    torch.testing.assert_close(again['state'][0]['exp_avg'],
                               state['state'][0]['exp_avg'])


def test_cpu_float16_dynamic_loss_scale_round_trip():
    """float16 on a CPU: the GPU's loss-scaling logic with the CPU
    GradScaler (a step whose gradients overflow is skipped and the scale
    halved), and its state in the checkpoint."""
    torch.manual_seed(0)
    model = Tiny().train()
    wrapper = cpu_wrapper(model, dtype='float16',
                          loss_scale=dict(init_scale=2.**24,
                                          growth_interval=2))
    scaler = wrapper.loss_scaler
    assert wrapper.cast_dtype == torch.float16 and scaler.is_enabled()
    assert isinstance(scaler, torch.amp.GradScaler)
    losses, dtypes = train_steps(model, wrapper, 4)
    assert dtypes == {torch.float16}
    assert all(math.isfinite(v) for v in losses)
    scale = scaler.get_scale()
    assert 1 <= scale < 2.**24  # overflowed at 2**24 and backed off
    state = wrapper.state_dict()['loss_scaler']
    assert state['scale'] == scale and state['growth_interval'] == 2

    resumed = cpu_wrapper(model, dtype='float16')
    resumed.load_state_dict(wrapper.state_dict())
    assert resumed.loss_scaler.get_scale() == scale
    assert resumed.loss_scaler.state_dict() == state


def test_cpu_static_and_unused_loss_scales(caplog):
    model = torch.nn.Linear(3, 2)
    static = cpu_wrapper(model, dtype='float16', loss_scale=128.)
    assert static._scale_update_param == 128.
    x = torch.randn(4, 3)
    for _ in range(2):
        with static.optim_context(model):
            loss = model(x).float().pow(2).mean()
        static.update_params(loss)
    assert static.loss_scaler.get_scale() == 128.

    bf16 = cpu_wrapper(model, loss_scale=128.)
    assert not bf16.loss_scaler.is_enabled()
    # a bf16 run's checkpoint (no loss scale) resumes into a float16 one:
    # the scaler keeps its initial scale instead of failing
    fp16 = cpu_wrapper(model, dtype='float16')
    fp16.load_state_dict(bf16.state_dict())
    assert fp16.loss_scaler.get_scale() == 2.**16
    with pytest.raises(TypeError, match='loss_scale'):
        cpu_wrapper(model, dtype='float16', loss_scale='static')


def test_mmcv_cpu_ops_run_in_float32_under_cpu_autocast():
    """mmcv's CPU nms and roi_align take float32 only; under CPU autocast
    (once a CPU DeviceAmpOptimWrapper exists) they get float32 and hand
    back the caller's dtype, with gradients, and agree with float32."""
    ops = pytest.importorskip('mmcv.ops')
    cpu_wrapper(torch.nn.Linear(2, 2))  # wraps them once per process
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.],
                          [50., 50., 60., 60.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    feats = torch.randn(1, 4, 16, 16)
    rois = torch.tensor([[0., 1., 1., 8., 8.], [0., 2., 0., 15., 9.]])
    align = ops.RoIAlign((4, 4), 1.0, 0)
    ref = align(feats.requires_grad_(), rois)
    ref.sum().backward()
    for dtype in (torch.bfloat16, torch.float16):
        x = feats.detach().to(dtype).requires_grad_()
        with torch.autocast('cpu', dtype=dtype):
            dets, keep = ops.nms(boxes.to(dtype), scores.to(dtype), 0.5)
            out = align(x, rois.to(dtype))
        assert keep.tolist() == [0, 2] and dets.dtype == dtype
        assert out.dtype == dtype
        out.float().sum().backward()
        assert x.grad.dtype == dtype
        torch.testing.assert_close(out.float(), ref.detach(), atol=0.05,
                                   rtol=0.05)
        torch.testing.assert_close(x.grad.float(), feats.grad, atol=0.01,
                                   rtol=0.01)
    # outside autocast nothing changes: float32 only, as mmcv's own
    with pytest.raises(RuntimeError, match='scalar type'):
        ops.nms(boxes.bfloat16(), scores.bfloat16(), 0.5)


def test_wrapper_is_in_every_toolbox_registry():
    from mmengine.registry import OPTIM_WRAPPERS
    assert OPTIM_WRAPPERS.get('DeviceAmpOptimWrapper') is \
        DeviceAmpOptimWrapper
    for scope in ('mmdet', 'mmseg'):
        registry = pytest.importorskip(f'{scope}.registry')
        assert registry.OPTIM_WRAPPERS.get('DeviceAmpOptimWrapper') is \
            DeviceAmpOptimWrapper
