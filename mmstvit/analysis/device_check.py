# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""gpu_check.py's run (:func:`run`) and table (:func:`table`); check 1 is
:mod:`.numerics`, check 2 :mod:`.amp_steps`, check 3 :func:`check_speed`
(the benchmark's models and timing, :mod:`.speed`)."""
import time
import traceback

import torch

from .amp_steps import check_amp, short
from .memory import release_memory
from .models import CLS_STOKEN
from .numerics import check_compare
from .speed import inference_times, step_row, training_times
from .support import logger, machine, mm_log_level, quiet_warnings
from .timing import summary

log = logger('gpu_check')
MODELS = ('stvit_s', 'swin_t')


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


def _speed_in(device, st, amp, precision, res):
    (ishape, ibatch), (tshape, tbatch) = st['infer'], st['train']
    log(f'speed {precision}: inference {ishape[1]}x{ishape[0]} b{ibatch}')
    times, models = inference_times(
        MODELS, (f'inference {precision}', ishape, ibatch, CLS_STOKEN),
        device, amp, st['warmup'], st['rounds'])
    for name in MODELS:
        res.setdefault(name, {})[precision] = dict(
            inference=summary(times[name], ibatch))
    del models
    release_memory()
    log(f'speed {precision}: training step {tshape[1]}x{tshape[0]} '
        f'b{tbatch}')
    times, peaks = training_times(
        MODELS, (f'train {precision}', tshape, tbatch), device, amp,
        st['warmup'], st['train_rounds'], peaks=True)
    for name in MODELS:
        res[name][precision]['train'] = dict(step_row(times[name], tbatch),
                                             peak_mib=peaks[name])


def check_speed(device, st, amp_dtype):
    """Check 3: inference img/s and training step seconds with peak memory,
    STViT-S and Swin-T, in float32 and ``amp_dtype``, with the benchmark's
    models and timing."""
    res = {}
    for amp in (False, amp_dtype):
        _speed_in(device, st, amp, short(amp) if amp else 'fp32', res)
    ours, theirs = res['stvit_s'], res['swin_t']
    ratios = {
        precision: dict(
            inference_img_s=ours[precision]['inference']['img_s'] /
            theirs[precision]['inference']['img_s'],
            train_step_time=ours[precision]['train']['seconds'] /
            theirs[precision]['train']['seconds'])
        for precision in ours
    }
    (ishape, ibatch), (tshape, tbatch) = st['infer'], st['train']
    return dict(
        infer_setting=f'{ishape[1]}x{ishape[0]} b{ibatch}',
        train_setting=f'{tshape[1]}x{tshape[0]} b{tbatch}',
        rounds=st['rounds'], train_rounds=st['train_rounds'], models=res,
        stvit_s_over_swin_t=ratios, ok=True)


def _guarded(check, *args, **kwargs):
    """``check``'s result, or its error (reported in the table: the run
    goes on)."""
    try:
        return check(*args, **kwargs)
    except Exception as e:
        log(''.join(traceback.format_exception(e)).rstrip())
        return dict(ok=False,
                    error=f'{type(e).__name__}: {e}'.splitlines()[0])


def run(args):
    """The three checks of ``args`` (gpu_check.py's arguments)."""
    import mmstvit  # noqa: F401
    quiet_warnings()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick or (device.type == 'cpu' and not args.full)
    st = sizes(quick)
    results = dict(machine=machine(device, threads=torch.get_num_threads(),
                                   torch=torch.__version__), quick=quick)
    t0 = time.perf_counter()
    dtypes = amp_dtypes(device, args.amp_dtypes)
    with mm_log_level('WARNING'):
        results['compare'] = _guarded(check_compare, device, *st['compare'])
        results['amp'] = {
            short(dtype): _guarded(check_amp, device, dtype, *st['amp'],
                                   steps=args.steps)
            for dtype in dtypes}
        if not args.no_speed:
            results['speed'] = _guarded(check_speed, device, st, dtypes[0])
    results['seconds'] = time.perf_counter() - t0
    parts = [results['compare'], *results['amp'].values()]
    if 'speed' in results:
        parts.append(results['speed'])
    results['ok'] = all(p['ok'] for p in parts)
    return results


def _ok(flag):
    return 'ok' if flag else 'FAIL'


def _compare_rows(c):
    if 'error' in c:
        return [f"| compare | - | {c['error']} | - | ERROR |"]
    tol = c['tolerance']
    return [
        f"| {p['a']} vs {p['b']} | {c['setting']} | outputs "
        f"{max(p['eval_outputs'], p['train_outputs']):.1e}, input "
        f"grad {p['input_grad']:.1e}, param grads "
        f"{p['param_grads']:.1e} ({p['params_compared']} tensors) | "
        f"{tol['outputs']:.0e} / {tol['grads']:.0e} | {_ok(p['ok'])} |"
        for p in c['pairs']]


def _amp_row(key, a):
    if 'error' in a:
        return f"| AMP {key} steps | - | {a['error']} | - | ERROR |"
    scale = (f", scale {a['scales'][-1]:g}" if a['loss_scaling'] else
             ', no loss scaling')
    if a['skipped_steps']:
        scale += f" ({a['skipped_steps']} skipped)"
    err = a['first_step_grad_rel_err']
    status = _ok(a['ok'])
    if a['problems']:
        status += ': ' + '; '.join(a['problems'])
    return (f"| AMP {key} steps ({a['wrapper']}) | {a['setting']}, "
            f"{a['steps']} steps | losses "
            f"{', '.join(f'{v:.3f}' for v in a['losses'])}{scale}; grads vs "
            f"fp32 {'-' if err is None else f'{err:.3f}'} | finite; grads "
            f"{a['grad_tolerance']} | {status} |")


def _speed_rows(s):
    if 'error' in s:
        return [f"| speed | - | {s['error']} | - | ERROR |"]
    rows = []
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
    return rows


def table(results):
    """One row per check (and per compared pair, AMP dtype, model and
    precision), then the machine and the verdict."""
    rows = ['| check | setting | result | limit | status |',
            '|---|---|---|---|---|']
    rows += _compare_rows(results['compare'])
    rows += [_amp_row(key, a) for key, a in results['amp'].items()]
    if results.get('speed'):
        rows += _speed_rows(results['speed'])
    m = results['machine']
    rows.append('')
    rows.append(
        f"{m['device']} ({m['name']}, {m['threads']} threads), torch "
        f"{m['torch']}{', quick sizes' if results['quick'] else ''}; "
        f"{results['seconds']:.0f} s; "
        f"{'all checks passed' if results['ok'] else 'SOME CHECKS FAILED'}")
    return '\n'.join(rows)
