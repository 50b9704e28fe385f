# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""gpu_check.py's check 2: AMP training steps of STViT-S + a linear
classifier through ``DeviceAmpOptimWrapper`` (its docstring gives what is
checked)."""
import copy
import math

import torch

from .models import CLS_STOKEN, build
from .numerics import full_fp32
from .support import logger

log = logger('gpu_check')

#: the first AMP step's unscaled gradients against float32's: global
#: relative error (all parameter gradients as one vector)
AMP_GRAD_TOLERANCE = 0.1
NUM_CLASSES = 10
DTYPE_NAMES = {torch.float16: 'fp16', torch.bfloat16: 'bf16',
               torch.float32: 'fp32', torch.float64: 'fp64'}


def short(dtype):
    """``fp16``, ``bf16``, ``fp32`` or ``fp64``."""
    return DTYPE_NAMES[dtype]


class Classifier(torch.nn.Module):
    """STViT-S, global average pool of the last stage, a linear layer."""

    def __init__(self):
        super().__init__()
        self.backbone = build('stvit_s', CLS_STOKEN)
        self.fc = torch.nn.Linear(self.backbone.embed_dims[-1], NUM_CLASSES)

    def forward(self, x):
        return self.fc(self.backbone(x)[-1].mean((2, 3)))


def _grads(model):
    return torch.cat([p.grad.detach().float().flatten()
                      for p in model.parameters() if p.grad is not None])


def _fp32_grads(model, x, y):
    """float32 gradients of the same weights and batch."""
    ref = copy.deepcopy(model)
    with full_fp32():
        torch.nn.functional.cross_entropy(ref(x), y).backward()
    return _grads(ref)


def _steps(model, wrapper, x, y, steps, ref_grads, dtype):
    """The steps: losses, scales, steps skipped, first-step gradient error
    and the last logits."""
    scaler = wrapper.loss_scaler
    losses, scales, skipped, grad_err = [], [], 0, None
    for i in range(steps):
        with wrapper.optim_context(model):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        wrapper.backward(loss)
        scale = scaler.get_scale() if scaler.is_enabled() else 1.
        g = _grads(model) / scale
        if grad_err is None and skipped == i and torch.isfinite(g).all():
            # the first finite gradients, at the initial weights still
            # (the steps before were skipped by the scaler)
            grad_err = float((g - ref_grads).norm() / ref_grads.norm())
        wrapper.step()
        wrapper.zero_grad()
        losses.append(float(loss.detach()))
        scales.append(scaler.get_scale() if scaler.is_enabled() else None)
        dropped = scales[-1] is not None and scales[-1] < scale
        skipped += dropped  # inf/nan gradients: the scaler skipped the step
        log(f'amp {short(dtype)}: step {i + 1}/{steps} loss {losses[-1]:.4f}'
            + (f' scale {scales[-1]:g}' if scales[-1] is not None else '')
            + (' (skipped: inf gradients)' if dropped else ''))
    return losses, scales, skipped, grad_err, logits


def _problems(res, dtype):
    problems = []
    scales = res['scales']
    if not all(math.isfinite(v) for v in res['losses']):
        problems.append('non-finite loss')
    if res['loss_scaling'] and not (math.isfinite(scales[-1])
                                    and scales[-1] >= 1):
        problems.append(f'loss scale {scales[-1]}')
    if res['max_weight_change'] == 0:
        problems.append('no step was applied')
    if res['logits_dtype'] != str(dtype):
        problems.append(f"autocast gave {res['logits_dtype']} logits")
    err = res['first_step_grad_rel_err']
    if err is None:
        problems.append('no finite gradients')
    elif err > AMP_GRAD_TOLERANCE:
        problems.append(f'first-step gradients {err:.3f} from fp32')
    return problems


def check_amp(device, dtype, shape, batch, steps):
    """Check 2 for one autocast dtype, through DeviceAmpOptimWrapper."""
    from mmstvit.engine.amp import DeviceAmpOptimWrapper
    torch.manual_seed(0)
    model = Classifier().to(device).train()
    x = torch.randn(batch, 3, *shape, device=device)
    y = torch.arange(batch, device=device) % NUM_CLASSES
    ref_grads = _fp32_grads(model, x, y)
    wrapper = DeviceAmpOptimWrapper(
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
        dtype=dtype, device_type=device.type)
    scaler = wrapper.loss_scaler
    start = [p.detach().clone() for p in model.parameters()]
    losses, scales, skipped, grad_err, logits = _steps(
        model, wrapper, x, y, steps, ref_grads, dtype)
    res = dict(
        dtype=str(dtype), autocast_dtype=str(wrapper.cast_dtype),
        wrapper=type(wrapper).__name__, mmengine_path=wrapper.plan.mmengine,
        loss_scaling=scaler.is_enabled(),
        scaler=type(scaler).__module__ + '.' + type(scaler).__name__,
        setting=f'STViT-S + linear {shape[1]}x{shape[0]} b{batch}',
        steps=steps, losses=losses, scales=scales, skipped_steps=skipped,
        max_weight_change=max(float((p.detach() - s).abs().max())
                              for p, s in zip(model.parameters(), start)),
        first_step_grad_rel_err=grad_err, grad_tolerance=AMP_GRAD_TOLERANCE,
        logits_dtype=str(logits.dtype))
    res['problems'] = _problems(res, dtype)
    res['ok'] = not res['problems']
    return res
