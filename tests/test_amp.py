# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Mixed precision: ``DeviceAmpOptimWrapper`` (mmstvit/engine/amp.py) and
``tools/train.py --amp`` on a CPU.

The wrapper is mmengine's ``AmpOptimWrapper`` on accelerators and bfloat16
(or float16) autocast on a CPU. Here: the choice for every device (the
CUDA branch through the same code, with mmengine's device assert patched),
steps, loss scaling and state round trips on a CPU, and ``--amp`` training
the toy Mask R-CNN and UperNet configs (shrunk: a 4-stage STViT of 16-64
channels, small images, 2 iterations, then a resume to 3) in bfloat16, and
UperNet in float16 with the CPU GradScaler.
"""
import json
import math
import os
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import AmpOptimWrapper

import mmstvit  # noqa: F401
from mmstvit import STViT
from mmstvit.engine import DeviceAmpOptimWrapper, amp_plan
from mmstvit.engine.amp import AmpPlan
from mmstvit.cli import amp as cli_amp
from mmstvit.cli.errors import ToolError
from mmstvit.weights import load_checkpoint_file

from helpers import REPO
from test_tools import TINY_ARCH, run

TRAIN = osp.join(REPO, 'tools', 'train.py')

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


def small_convnet():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(),
        torch.nn.BatchNorm2d(8), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 3))


def test_cpu_float16_dynamic_loss_scale_round_trip():
    """float16 on a CPU: the GPU's loss-scaling logic with the CPU
    GradScaler (a step whose gradients overflow is skipped and the scale
    halved), and its state in the checkpoint. (STViT itself trains in
    float16 in the UperNet run below; a small net keeps this test fast,
    float16 convolutions being slow on most CPUs.)"""
    torch.manual_seed(0)
    model = small_convnet().train()
    wrapper = cpu_wrapper(model, dtype='float16',
                          loss_scale=dict(init_scale=2.**40,
                                          growth_interval=2))
    scaler = wrapper.loss_scaler
    assert wrapper.cast_dtype == torch.float16 and scaler.is_enabled()
    assert isinstance(scaler, torch.amp.GradScaler)
    losses, dtypes = train_steps(model, wrapper, 4)
    assert dtypes == {torch.float16}
    assert all(math.isfinite(v) for v in losses)
    scale = scaler.get_scale()
    assert 1 <= scale < 2.**40  # overflowed at 2**40 and backed off
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


# ---------------------------------------------------------------------------
# --amp in tools/train.py
# ---------------------------------------------------------------------------


def _cfg(wrapper='OptimWrapper', **kw):
    return Config(dict(
        optim_wrapper=dict(type=wrapper, optimizer=dict(type='SGD', lr=0.1),
                           **kw)))


def test_apply_amp_and_check_amp(monkeypatch):
    cfg = _cfg()
    cli_amp.apply_amp(cfg)
    assert cfg.optim_wrapper.type == 'DeviceAmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    cli_amp.check_amp(cfg)  # runs here (bfloat16 on a CPU)

    with pytest.raises(ToolError, match='--amp works with'):
        cli_amp.apply_amp(_cfg('ApexOptimWrapper'))

    if torch.cuda.is_available():
        return
    # mmengine's own AmpOptimWrapper cannot run on a CPU: --amp turns it
    # into ours, and without --amp the tools stop naming both fixes
    cfg = _cfg('AmpOptimWrapper')
    with pytest.raises(ToolError, match='add --amp') as e:
        cli_amp.check_amp(cfg)
    assert 'DeviceAmpOptimWrapper' in str(e.value)
    cli_amp.apply_amp(cfg)
    assert cfg.optim_wrapper.type == 'DeviceAmpOptimWrapper'
    with pytest.raises(ToolError, match='bfloat16 or float16'):
        cli_amp.check_amp(_cfg('DeviceAmpOptimWrapper', dtype='float64'))


# ---------------------------------------------------------------------------
# tools/train.py --amp on the toy configs
# ---------------------------------------------------------------------------

PROBE = '''
import json
import os

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class AmpProbe(Hook):
    """Writes amp_probe.json to the work dir: the optimizer wrapper, its
    autocast dtype, and the autocast state and output dtypes that the
    model's convolutions and linear layers saw in training forwards."""

    def before_train(self, runner):
        self.seen = dict(autocast=set(), outputs=set())
        model = getattr(runner.model, 'module', runner.model)

        def record(module, args, out):
            if module.training and torch.is_tensor(out):
                self.seen['outputs'].add(str(out.dtype))
                self.seen['autocast'].add(
                    str(torch.get_autocast_dtype('cpu'))
                    if torch.is_autocast_enabled('cpu') else 'off')

        self.handles = [
            m.register_forward_hook(record) for m in model.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]

    def after_train(self, runner):
        for h in self.handles:
            h.remove()
        w = runner.optim_wrapper
        info = dict(wrapper=type(w).__name__, cast_dtype=str(w.cast_dtype),
                    loss_scaling=w.loss_scaler.is_enabled(),
                    **{k: sorted(v) for k, v in self.seen.items()})
        with open(os.path.join(runner.work_dir, 'amp_probe.json'), 'w') as f:
            json.dump(info, f)
'''

COMMON = '''
custom_imports = dict(imports=['mmstvit', 'amp_probe'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='AmpProbe')]
train_cfg = dict(max_iters=2, val_interval=1000)
val_dataloader = None
val_cfg = None
val_evaluator = None
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=2, max_keep_ckpts=3))
randomness = dict(seed=0)
'''

DET = '''_base_ = 'BASE/configs/toy/mask_rcnn_stvit_s_toy.py'
''' + COMMON + '''model = dict(
    backbone=dict(arch=dict(_delete_=True, **ARCH), stoken_size=[4, 2, 1, 1]),
    neck=dict(in_channels=[16, 32, 48, 64], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(in_channels=32, conv_out_channels=32)),
    train_cfg=dict(rpn_proposal=dict(max_per_img=64),
                   rcnn=dict(sampler=dict(num=32))))
train_dataloader = dict(dataset=dict(
    data_root='DATA/toy_coco/',
    pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='Resize', scale=(128, 128), keep_ratio=True),
        dict(type='PackDetInputs')]))
'''

SEG = '''_base_ = 'BASE/configs/toy/upernet_stvit_s_toy.py'
''' + COMMON + '''model = dict(
    data_preprocessor=dict(size=(64, 64)),
    backbone=dict(arch=dict(_delete_=True, **ARCH), stoken_size=[4, 2, 1, 1]),
    decode_head=dict(in_channels=[16, 32, 48, 64], channels=16),
    auxiliary_head=dict(in_channels=48, channels=16))
train_dataloader = dict(dataset=dict(
    data_root='DATA/toy_ade/',
    pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=False),
        dict(type='Resize', scale=(64, 64), keep_ratio=True),
        dict(type='RandomCrop', crop_size=(64, 64)),
        dict(type='PackSegInputs')]))
'''


@pytest.fixture(scope='module')
def amp_case(tmp_path_factory):
    """The probe hook, 2 training images of each toy set, the two shrunk
    toy configs."""
    from mmstvit.data.toy_data import generate_toy_data
    root = tmp_path_factory.mktemp('amp')
    generate_toy_data(root=str(root / 'data'), num_train=2, num_val=1)
    (root / 'amp_probe.py').write_text(PROBE)
    for name, text in (('det', DET), ('seg', SEG)):
        (root / f'{name}.py').write_text(
            text.replace('BASE', REPO).replace('ARCH', repr(TINY_ARCH))
            .replace('DATA', str(root / 'data')))
    return root


def train(root, name, work, *extra):
    env = dict(PYTHONPATH=str(root) + os.pathsep + REPO)
    proc = run([sys.executable, TRAIN, str(root / f'{name}.py'), '--amp',
                '--work-dir', str(work)] + list(extra), cwd=root, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def scalars(work):
    """The logged training scalars of every run in ``work``, by iteration
    (mmengine's LocalVisBackend: <timestamp>/vis_data/scalars.json)."""
    rows = {}
    for path in sorted(work.glob('*/vis_data/scalars.json')):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if 'loss' in row:
                rows[row['iter']] = row
    return rows


@pytest.mark.parametrize('name,dtype', [('det', 'bfloat16'),
                                        ('seg', 'bfloat16'),
                                        ('seg', 'float16')])
def test_train_amp_on_cpu_then_resume(amp_case, name, dtype):
    """tools/train.py --amp trains 2 iterations with finite losses under
    autocast in ``dtype`` through DeviceAmpOptimWrapper, saves the wrapper's
    state, and a resume continues to iteration 3 from it."""
    root = amp_case
    work = root / f'w_{name}_{dtype}'
    extra = [] if dtype == 'bfloat16' else [
        '--cfg-options', f'optim_wrapper.dtype={dtype}']
    out = train(root, name, work, *extra)
    assert f'mixed precision on the CPU: torch.{dtype} autocast' in out
    # the log names what the run trains with (kernels.describe_run)
    assert f'STViT kernels: 1 backbone(s) train on cpu in {dtype} ' \
        'autocast with the plan' in out
    probe = json.loads((work / 'amp_probe.json').read_text())
    assert probe['wrapper'] == 'DeviceAmpOptimWrapper'
    assert probe['cast_dtype'] == f'torch.{dtype}'
    assert probe['autocast'] == [f'torch.{dtype}']
    assert f'torch.{dtype}' in probe['outputs']
    assert probe['loss_scaling'] == (dtype == 'float16')

    ckpt = load_checkpoint_file(work / 'iter_2.pth')
    state = ckpt['optimizer']
    assert {float(s['step']) for s in state['state'].values()} == {2.}
    if dtype == 'float16':
        assert state['loss_scaler']['scale'] >= 1
    else:
        assert state['loss_scaler'] == {}

    out = train(root, name, work, '--resume', '--cfg-options',
                'train_cfg.max_iters=3', *extra[1:])
    assert 'resumed epoch: 0, iter: 2' in out
    assert 'Iter(train) [3/3]' in out and 'Iter(train) [1/3]' not in out
    rows = scalars(work)
    assert sorted(rows) == [1, 2, 3]
    assert all(math.isfinite(r['loss']) for r in rows.values()), rows
    state3 = load_checkpoint_file(work / 'iter_3.pth')['optimizer']
    # AdamW's moments came back from iteration 2 (3 steps, not 1)
    assert {float(s['step']) for s in state3['state'].values()} == {3.}
    if dtype == 'float16':
        # the loss scaler went on from its saved state: one more step
        # since the last change of scale, or a halved scale
        s2, s3 = state['loss_scaler'], state3['loss_scaler']
        assert (s3['scale'] == s2['scale'] and
                s3['_growth_tracker'] == s2['_growth_tracker'] + 1) or \
            s3['scale'] == s2['scale'] / 2
