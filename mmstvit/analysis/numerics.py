# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""gpu_check.py's check 1: the same numbers as the CPU (its docstring
gives the protocol): stage outputs, input and parameter gradients of one
step on the device and on the CPU in float32, and against float64."""
import contextlib
import copy

import torch

from . import plans
from .models import CLS_STOKEN, build
from .support import logger
from .timing import outputs, sync

log = logger('gpu_check')

#: relative-error limits of the comparison, float32 against float32 (other
#: device or other kernels) and against float64
TOLERANCE = dict(outputs=1e-4, grads=1e-3)
#: a parameter gradient's error is relative to its own norm, or to this
#: fraction of the whole gradient's norm where its own is smaller
GRAD_FLOOR = 1e-4


@contextlib.contextmanager
def full_fp32():
    """float32 matmuls and convolutions in float32 (no TF32 on CUDA)."""
    saved = (torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved


def _loss_weight(i, shape):
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _host(t):
    return t.detach().to('cpu', torch.float64)


def run_model(model, x, device, dtype, plan='fast'):
    """A copy of ``model`` on ``device`` in ``dtype`` with the kernel
    ``plan``: its stage outputs in eval mode (with ``fast``, as
    tools/infer.py and tools/test.py run it: the deploy plan), then the
    stage outputs, input gradient and parameter gradients of one training
    forward + backward (results in float64 on the CPU)."""
    from mmstvit.engine import switch_to_deploy

    def copy_on_device():
        return plans.set_plan(
            copy.deepcopy(model).to(device=device, dtype=dtype), plan)

    xi = x.to(device=device, dtype=dtype)
    with full_fp32():
        m = copy_on_device()
        m.eval()
        if plan == 'fast':
            switch_to_deploy(m)
        with torch.no_grad():
            evals = [_host(o) for o in outputs(m(xi))]
        m = copy_on_device()
        m.train()
        xi = xi.clone().requires_grad_()
        outs = outputs(m(xi))
        loss = sum((o * _loss_weight(i, o.shape).to(o)).sum()
                   for i, o in enumerate(outs))
        loss.backward()
    sync(torch.device(device))
    return dict(
        eval=evals, train=[_host(o) for o in outs], input_grad=_host(xi.grad),
        grads={n: _host(p.grad) for n, p in m.named_parameters()
               if p.grad is not None})


def rel_err(a, b, floor=0.):
    """``||a - b|| / max(||b||, floor)``."""
    return float((a - b).norm() / b.norm().clamp_min(max(floor, 1e-30)))


def compare_runs(a, b):
    """Worst relative errors of run ``a`` against run ``b``. A parameter
    gradient's error is relative to its own norm, floored at
    :data:`GRAD_FLOOR` of the norm of all of them: the bias of a
    convolution that a BatchNorm follows has a true gradient of zero, and
    its float32 rounding noise (1e-9 of the whole) is no error."""
    floor = GRAD_FLOOR * float(
        torch.cat([g.flatten() for g in b['grads'].values()]).norm())
    grads = {n: rel_err(a['grads'][n], b['grads'][n], floor)
             for n in b['grads']}
    worst = max(grads, key=grads.get)
    missing = sorted(set(b['grads']) ^ set(a['grads']))
    return dict(
        eval_outputs=max(rel_err(x, y) for x, y in zip(a['eval'], b['eval'])),
        train_outputs=max(
            rel_err(x, y) for x, y in zip(a['train'], b['train'])),
        input_grad=rel_err(a['input_grad'], b['input_grad']),
        param_grads=grads[worst], worst_param=worst,
        params_compared=len(grads), grads_missing=missing)


def _pair(runs, a, b):
    r = compare_runs(runs[a], runs[b])
    r.update(a=a, b=b)
    r['ok'] = (max(r['eval_outputs'], r['train_outputs']) <=
               TOLERANCE['outputs'] and
               max(r['input_grad'], r['param_grads']) <= TOLERANCE['grads']
               and not r['grads_missing'])
    log(f"compare: {a} vs {b}: outputs {r['eval_outputs']:.1e} (eval) "
        f"{r['train_outputs']:.1e} (train), grads {r['input_grad']:.1e} "
        f"(input) {r['param_grads']:.1e} (worst: {r['worst_param']})")
    return r


def check_compare(device, shape, batch):
    """Check 1: float32 on the device (or the plain plan on a CPU) against
    float32 on the CPU, and both against float64 on the device."""
    torch.manual_seed(0)
    model = build('stvit_s', CLS_STOKEN)
    x = torch.randn(batch, 3, *shape)
    cpu = torch.device('cpu')
    if device.type == 'cpu':
        target, plan = 'cpu fp32 plain', 'plain'
    else:
        target, plan = f'{device.type} fp32', 'fast'
    reference = f'{device.type} fp64'
    runs = {}
    for name, dev, dtype, pl in ((reference, device, torch.float64, 'fast'),
                                 ('cpu fp32', cpu, torch.float32, 'fast'),
                                 (target, device, torch.float32, plan)):
        log(f'compare: {name}, {shape[1]}x{shape[0]} batch {batch}')
        runs[name] = run_model(model, x, dev, dtype, pl)
    pairs = [_pair(runs, a, b) for a, b in (
        (target, 'cpu fp32'), (target, reference), ('cpu fp32', reference))]
    return dict(setting=f'STViT-S {shape[1]}x{shape[0]} b{batch}',
                tolerance=TOLERANCE, pairs=pairs,
                ok=all(p['ok'] for p in pairs))
