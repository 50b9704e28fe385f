# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What a GPU machine must confirm, in one run of a few minutes.

    python tools/analysis_tools/gpu_check.py [--device cuda] [--out gpu_check.json]
    python tools/analysis_tools/gpu_check.py --device cpu     # the CI stand-in

Three checks of STViT-S, one table at the end (progress lines on stderr as
it goes; ``--out`` also writes the results as JSON). The exit code is 1 when
a check fails.

1. **Same numbers as the CPU** (float32, TF32 off): one forward in eval mode
   and one training forward + backward (a fixed random weighting of every
   stage output as the loss) of the same weights on the same input, on the
   device and on the CPU, and both against the CPU in float64. Compared:
   every stage output (eval and train), the input gradient and every
   parameter gradient, by relative error ``||a - b|| / ||b||`` (per tensor;
   the worst tensor is reported). Limits: :data:`TOLERANCE`.
   Both run the default ``fast`` kernel plan (in eval its ``deploy`` plan,
   as tools/infer.py and tools/test.py do). With ``--device cpu`` the
   device run is the CPU with the ``plain`` plan: the module graph as
   written against the fast kernels (and, in eval, oneDNN's fused ones).
2. **AMP training steps**: STViT-S with a linear classifier on the pooled
   last stage, cross-entropy on a fixed batch, ``--steps`` steps through
   mmstvit's ``DeviceAmpOptimWrapper`` (what ``tools/train.py --amp``
   uses: on a GPU mmengine's ``AmpOptimWrapper``, fp16 autocast and
   torch.amp's GradScaler with dynamic loss scale). Checked: finite losses,
   a finite loss scale of at least 1 where a scaler runs, weights that
   moved, and the first step's unscaled gradients against float32's (the
   same weights and batch) within :data:`AMP_GRAD_TOLERANCE` (global
   relative error). On a CPU: bfloat16 without loss scaling
   (``--amp-dtypes float16`` adds the GPU's scaler logic with the CPU
   GradScaler; slow on most CPUs).
3. **Speed, STViT-S against mmdet's Swin-T** (benchmark.py's models and
   timing: one process, warm, interleaved rounds, medians): inference
   images/s at 224 batch 64 (STViT's deploy plan, as benchmark.py), one
   training step at 1280x800 batch 2 (seconds, and the peak memory it
   adds: ``torch.cuda.max_memory_allocated`` on a GPU, the growth of peak
   RSS on a CPU, indicative only in-process), in float32 and in the AMP
   dtype.

On a CPU, and with ``--quick``, the sizes are small (64x64 and 96x128
images, one round): it checks the tool, not the speed, in well under a
minute; ``--full`` keeps the GPU sizes on a CPU. Every step is the same
code for both devices with the device and dtype as parameters; only CUDA
synchronisation and memory statistics are guarded by the device type (in
benchmark.py).
"""
import argparse
import contextlib
import copy
import math
import os
import platform
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark  # noqa: E402  (tools/analysis_tools/benchmark.py)

#: relative-error limits of the comparison, float32 against float32 (other
#: device or other kernels) and against float64
TOLERANCE = dict(outputs=1e-4, grads=1e-3)
#: the first AMP step's unscaled gradients against float32's: global
#: relative error (all parameter gradients as one vector)
AMP_GRAD_TOLERANCE = 0.1
#: a parameter gradient's error is relative to its own norm, or to this
#: fraction of the whole gradient's norm where its own is smaller
GRAD_FLOOR = 1e-4
NUM_CLASSES = 10


def log(msg):
    print(f'[gpu_check {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr,
          flush=True)


def sizes(quick):
    """Input shapes and batches of the three checks."""
    if quick:
        return dict(compare=((64, 64), 1), amp=((64, 64), 4),
                    infer=((64, 64), 4), train=((96, 128), 2), warmup=0,
                    rounds=1, train_rounds=1)
    return dict(compare=((224, 224), 2), amp=((224, 224), 8),
                infer=((224, 224), 64), train=((800, 1280), 2), warmup=2,
                rounds=5, train_rounds=3)


def amp_dtypes(device, names=None):
    """The autocast dtypes checked: ``names`` (``float16``,
    ``bfloat16``), or by default what ``--amp`` trains with on the device
    (float16 on a GPU, plus bfloat16 where it supports it; bfloat16 on a
    CPU, whose float16 convolutions are slow on most CPUs)."""
    if names:
        return [getattr(torch, n) for n in names]
    if device.type == 'cpu':
        return [torch.bfloat16]
    dtypes = [torch.float16]
    if device.type == 'cuda' and torch.cuda.is_bf16_supported():
        dtypes.append(torch.bfloat16)
    return dtypes


def short(dtype):
    return {torch.float16: 'fp16', torch.bfloat16: 'bf16',
            torch.float32: 'fp32', torch.float64: 'fp64'}[dtype]


# ---------------------------------------------------------------------------
# 1. the same numbers as the CPU
# ---------------------------------------------------------------------------


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


def run_model(model, x, device, dtype, plan='fast'):
    """A copy of ``model`` on ``device`` in ``dtype`` with the kernel
    ``plan``: its stage outputs in eval mode (with ``fast``, as
    tools/infer.py and tools/test.py run it: the deploy plan), then the
    stage outputs, input gradient and parameter gradients of one training
    forward + backward (results in float64 on the CPU)."""
    from mmstvit.engine import switch_to_deploy

    def copy_on_device():
        return copy.deepcopy(model).to(device=device,
                                       dtype=dtype).set_kernels(plan)

    def host(t):
        return t.detach().to('cpu', torch.float64)

    xi = x.to(device=device, dtype=dtype)
    with full_fp32():
        m = copy_on_device()
        m.eval()
        if plan == 'fast':
            switch_to_deploy(m)
        with torch.no_grad():
            evals = [host(o) for o in benchmark._outputs(m(xi))]
        m = copy_on_device()
        m.train()
        xi = xi.clone().requires_grad_()
        outs = benchmark._outputs(m(xi))
        loss = sum((o * _loss_weight(i, o.shape).to(o)).sum()
                   for i, o in enumerate(outs))
        loss.backward()
    benchmark._sync(torch.device(device))
    return dict(
        eval=evals, train=[host(o) for o in outs], input_grad=host(xi.grad),
        grads={n: host(p.grad) for n, p in m.named_parameters()
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


def check_compare(device, shape, batch):
    """Check 1: float32 on the device (or the plain plan on a CPU) against
    float32 on the CPU, and both against float64 on the device."""
    torch.manual_seed(0)
    model = benchmark.build('stvit_s', benchmark.CLS_STOKEN)
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
    out = dict(setting=f'STViT-S {shape[1]}x{shape[0]} b{batch}',
               tolerance=TOLERANCE, pairs=[])
    for a, b in ((target, 'cpu fp32'), (target, reference),
                 ('cpu fp32', reference)):
        r = compare_runs(runs[a], runs[b])
        r.update(a=a, b=b)
        r['ok'] = (max(r['eval_outputs'], r['train_outputs']) <=
                   TOLERANCE['outputs'] and
                   max(r['input_grad'], r['param_grads']) <=
                   TOLERANCE['grads'] and not r['grads_missing'])
        out['pairs'].append(r)
        log(f"compare: {a} vs {b}: outputs {r['eval_outputs']:.1e} (eval) "
            f"{r['train_outputs']:.1e} (train), grads {r['input_grad']:.1e} "
            f"(input) {r['param_grads']:.1e} (worst: {r['worst_param']})")
    out['ok'] = all(p['ok'] for p in out['pairs'])
    return out


# ---------------------------------------------------------------------------
# 2. AMP training steps
# ---------------------------------------------------------------------------


class Classifier(torch.nn.Module):
    """STViT-S, global average pool of the last stage, a linear layer."""

    def __init__(self):
        super().__init__()
        self.backbone = benchmark.build('stvit_s', benchmark.CLS_STOKEN)
        self.fc = torch.nn.Linear(self.backbone.embed_dims[-1], NUM_CLASSES)

    def forward(self, x):
        return self.fc(self.backbone(x)[-1].mean((2, 3)))


def _grads(model):
    return torch.cat([p.grad.detach().float().flatten()
                      for p in model.parameters() if p.grad is not None])


def check_amp(device, dtype, shape, batch, steps):
    """Check 2 for one autocast dtype, through DeviceAmpOptimWrapper."""
    from mmstvit.engine.amp import DeviceAmpOptimWrapper
    torch.manual_seed(0)
    model = Classifier().to(device).train()
    x = torch.randn(batch, 3, *shape, device=device)
    y = torch.arange(batch, device=device) % NUM_CLASSES
    ce = torch.nn.functional.cross_entropy

    # float32 gradients of the same weights and batch
    ref = copy.deepcopy(model)
    with full_fp32():
        ce(ref(x), y).backward()
    ref_grads = _grads(ref)
    del ref

    wrapper = DeviceAmpOptimWrapper(
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
        dtype=dtype, device_type=device.type)
    scaler = wrapper.loss_scaler
    start = [p.detach().clone() for p in model.parameters()]
    losses, scales, skipped, grad_err = [], [], 0, None
    for i in range(steps):
        with wrapper.optim_context(model):
            logits = model(x)
            loss = ce(logits.float(), y)
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
        if scaler.is_enabled() and scales[-1] < scale:
            skipped += 1  # inf/nan gradients: the scaler skipped the step
        log(f'amp {short(dtype)}: step {i + 1}/{steps} loss {losses[-1]:.4f}'
            + (f' scale {scales[-1]:g}' if scales[-1] is not None else '')
            + (' (skipped: inf gradients)' if scales[-1] is not None
               and scales[-1] < scale else ''))
    moved = max(float((p.detach() - s).abs().max())
                for p, s in zip(model.parameters(), start))
    res = dict(
        dtype=str(dtype), autocast_dtype=str(wrapper.cast_dtype),
        wrapper=type(wrapper).__name__, mmengine_path=wrapper.plan.mmengine,
        loss_scaling=scaler.is_enabled(),
        scaler=type(scaler).__module__ + '.' + type(scaler).__name__,
        setting=f'STViT-S + linear {shape[1]}x{shape[0]} b{batch}',
        steps=steps, losses=losses, scales=scales, skipped_steps=skipped,
        max_weight_change=moved,
        first_step_grad_rel_err=grad_err,
        grad_tolerance=AMP_GRAD_TOLERANCE,
        logits_dtype=str(logits.dtype))
    problems = []
    if not all(math.isfinite(v) for v in losses):
        problems.append('non-finite loss')
    if scaler.is_enabled() and not (math.isfinite(scales[-1])
                                    and scales[-1] >= 1):
        problems.append(f'loss scale {scales[-1]}')
    if moved == 0:
        problems.append('no step was applied')
    if logits.dtype != dtype:
        problems.append(f'autocast gave {logits.dtype} logits')
    if grad_err is None:
        problems.append('no finite gradients')
    elif grad_err > AMP_GRAD_TOLERANCE:
        problems.append(f'first-step gradients {grad_err:.3f} from fp32')
    res['problems'] = problems
    res['ok'] = not problems
    return res


# ---------------------------------------------------------------------------
# 3. speed against Swin-T
# ---------------------------------------------------------------------------

MODELS = ('stvit_s', 'swin_t')


def check_speed(device, st, amp_dtype):
    """Check 3: inference img/s and training step seconds with peak memory,
    STViT-S and Swin-T, in float32 and ``amp_dtype``, with benchmark.py's
    models and timing."""
    from mmstvit.engine import switch_to_deploy
    res = {}
    (ishape, ibatch), (tshape, tbatch) = st['infer'], st['train']
    for amp in (False, amp_dtype):
        precision = short(amp) if amp else 'fp32'
        fns = {}
        for name in MODELS:
            model = benchmark.build(
                name, benchmark.stoken_for(name, benchmark.CLS_STOKEN))
            model.to(device)
            model.eval()
            switch_to_deploy(model)  # STViT: as infer.py / test.py run it
            x = torch.randn(ibatch, 3, *ishape, device=device)
            fns[name] = benchmark.inference_fn(model, x, device, amp)
        log(f'speed {precision}: inference {ishape[1]}x{ishape[0]} '
            f'b{ibatch}')
        times = benchmark.interleaved(fns, device, st['warmup'], st['rounds'],
                                      label=f'inference {precision}')
        for name in MODELS:
            res.setdefault(name, {})[precision] = dict(
                inference=benchmark.summary(times[name], ibatch))
        del fns, model, x
        benchmark.release_memory()

        fns = {}
        for name in MODELS:
            model = benchmark.build(
                name, benchmark.stoken_for(name, benchmark.DET_STOKEN))
            model.to(device)
            model.train()  # (not chained: mmdet's Swin.train returns None)
            x = torch.randn(tbatch, 3, *tshape, device=device)
            fns[name] = benchmark.train_step_fn(model, x, device, amp)
        log(f'speed {precision}: training step {tshape[1]}x{tshape[0]} '
            f'b{tbatch}')
        times = benchmark.interleaved(fns, device, st['warmup'],
                                      st['train_rounds'],
                                      label=f'train {precision}')
        for name in MODELS:
            benchmark.release_memory()
            peak = benchmark.step_peak_mib(fns[name], device)
            r = benchmark.summary(times[name], tbatch)
            res[name][precision]['train'] = dict(
                seconds=r['seconds'], seconds_min=r['seconds_min'],
                seconds_max=r['seconds_max'], peak_mib=peak)
        del fns, model, x
        benchmark.release_memory()
    ours, theirs = res['stvit_s'], res['swin_t']
    ratios = {
        precision: dict(
            inference_img_s=ours[precision]['inference']['img_s'] /
            theirs[precision]['inference']['img_s'],
            train_step_time=ours[precision]['train']['seconds'] /
            theirs[precision]['train']['seconds'])
        for precision in ours
    }
    return dict(
        infer_setting=f'{ishape[1]}x{ishape[0]} b{ibatch}',
        train_setting=f'{tshape[1]}x{tshape[0]} b{tbatch}',
        rounds=st['rounds'], train_rounds=st['train_rounds'], models=res,
        stvit_s_over_swin_t=ratios)


# ---------------------------------------------------------------------------
# the run and its table
# ---------------------------------------------------------------------------


def _error(e):
    log(''.join(traceback.format_exception(e)).rstrip())
    return dict(ok=False, error=f'{type(e).__name__}: {e}'.splitlines()[0])


def run(args):
    import mmstvit  # noqa: F401
    from mmstvit.cli.quiet import mm_log_level, quiet_third_party_warnings
    quiet_third_party_warnings()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick or (device.type == 'cpu' and not args.full)
    st = sizes(quick)
    results = dict(
        machine=dict(
            device=str(device),
            name=(torch.cuda.get_device_name(device) if device.type == 'cuda'
                  else platform.processor() or platform.machine()),
            threads=torch.get_num_threads(), torch=torch.__version__),
        quick=quick)
    t0 = time.perf_counter()
    with mm_log_level('WARNING'):
        try:
            results['compare'] = check_compare(device, *st['compare'])
        except Exception as e:  # reported in the table, the run goes on
            results['compare'] = _error(e)
        results['amp'] = {}
        for dtype in amp_dtypes(device, args.amp_dtypes):
            try:
                results['amp'][short(dtype)] = check_amp(
                    device, dtype, *st['amp'], steps=args.steps)
            except Exception as e:
                results['amp'][short(dtype)] = _error(e)
        if not args.no_speed:
            try:
                results['speed'] = check_speed(
                    device, st, amp_dtypes(device, args.amp_dtypes)[0])
                results['speed']['ok'] = True
            except Exception as e:
                results['speed'] = _error(e)
    results['seconds'] = time.perf_counter() - t0
    parts = [results['compare'], *results['amp'].values()]
    if 'speed' in results:
        parts.append(results['speed'])
    results['ok'] = all(p['ok'] for p in parts)
    return results


def _ok(flag):
    return 'ok' if flag else 'FAIL'


def table(results):
    rows = ['| check | setting | result | limit | status |',
            '|---|---|---|---|---|']
    c = results['compare']
    if 'error' in c:
        rows.append(f"| compare | - | {c['error']} | - | ERROR |")
    else:
        tol = c['tolerance']
        for p in c['pairs']:
            rows.append(
                f"| {p['a']} vs {p['b']} | {c['setting']} | outputs "
                f"{max(p['eval_outputs'], p['train_outputs']):.1e}, input "
                f"grad {p['input_grad']:.1e}, param grads "
                f"{p['param_grads']:.1e} ({p['params_compared']} tensors) | "
                f"{tol['outputs']:.0e} / {tol['grads']:.0e} | "
                f"{_ok(p['ok'])} |")
    for key, a in results['amp'].items():
        if 'error' in a:
            rows.append(f"| AMP {key} steps | - | {a['error']} | - | ERROR |")
            continue
        scale = (f", scale {a['scales'][-1]:g}" if a['loss_scaling'] else
                 ', no loss scaling')
        if a['skipped_steps']:
            scale += f" ({a['skipped_steps']} skipped)"
        err = a['first_step_grad_rel_err']
        status = _ok(a['ok'])
        if a['problems']:
            status += ': ' + '; '.join(a['problems'])
        rows.append(
            f"| AMP {key} steps ({a['wrapper']}) | {a['setting']}, "
            f"{a['steps']} steps | losses "
            f"{', '.join(f'{v:.3f}' for v in a['losses'])}{scale}; grads vs "
            f"fp32 {'-' if err is None else f'{err:.3f}'} | finite; grads "
            f"{a['grad_tolerance']} | {status} |")
    s = results.get('speed')
    if s and 'error' in s:
        rows.append(f"| speed | - | {s['error']} | - | ERROR |")
    elif s:
        for name, per in s['models'].items():
            for precision, r in per.items():
                inf, tr = r['inference'], r['train']
                rows.append(
                    f"| speed {name} {precision} | {s['infer_setting']} "
                    f"inference; {s['train_setting']} train | "
                    f"{inf['img_s']:.1f} img/s ({inf['img_s_min']:.1f}-"
                    f"{inf['img_s_max']:.1f}); {tr['seconds']:.3f} s/step "
                    f"({tr['seconds_min']:.3f}-{tr['seconds_max']:.3f}), "
                    f"peak {tr['peak_mib']:.0f} MiB | - | - |")
        for precision, r in s['stvit_s_over_swin_t'].items():
            rows.append(
                f"| speed STViT-S / Swin-T {precision} | as above | "
                f"inference {r['inference_img_s']:.2f}x the img/s, training "
                f"step {r['train_step_time']:.2f}x the time | - | - |")
    m = results['machine']
    rows.append('')
    rows.append(
        f"{m['device']} ({m['name']}, {m['threads']} threads), torch "
        f"{m['torch']}{', quick sizes' if results['quick'] else ''}; "
        f"{results['seconds']:.0f} s; "
        f"{'all checks passed' if results['ok'] else 'SOME CHECKS FAILED'}")
    return '\n'.join(rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='STViT-S on a GPU: the same numbers as the CPU, AMP '
        'training steps, speed against Swin-T (one table)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu')
    parser.add_argument('--quick', action='store_true',
                        help='small sizes and one round (the default on a '
                        'CPU)')
    parser.add_argument('--full', action='store_true',
                        help='the GPU sizes also on a CPU (slow)')
    parser.add_argument('--steps', type=int, default=3,
                        help='AMP training steps per dtype')
    parser.add_argument('--amp-dtypes', nargs='+', default=None,
                        choices=['float16', 'bfloat16'],
                        help='autocast dtypes of the AMP steps (the first '
                        'also times the models); default: float16 and '
                        'bfloat16 on a GPU, bfloat16 on a CPU')
    parser.add_argument('--no-speed', action='store_true',
                        help='skip the speed comparison')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: all cores)')
    parser.add_argument('--out', default=None,
                        help='also write the results as JSON to this file')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    results = run(args)
    text = table(results)
    results['table'] = text
    print(text)
    if args.out:
        benchmark.save(results, args.out)
        print(f'\nwritten to {args.out}')
    return 0 if results['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
