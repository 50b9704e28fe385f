# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The markdown tables of benchmark.py (:func:`benchmark`) and of the
comparisons beside it: fast_paths.py (:func:`fast_paths`) and
compare_checkouts.py (:func:`checkouts`)."""
import torch

from .models import LABELS


def cell(value, fmt):
    """``value`` formatted by ``fmt`` (e.g. ``'{:.2f}'``), ``-`` for None."""
    return '-' if value is None else fmt.format(value)


def with_range(value, low, high, fmt='{:.2f}'):
    """``value (low-high)``: a median and the range of its rounds."""
    return f'{fmt.format(value)} ({fmt.format(low)}-{fmt.format(high)})'


def header(*names):
    """The first two lines of a markdown table with these columns."""
    return [row(*names), '|' + '---|' * len(names)]


def row(*cells):
    """One markdown table row (an empty cell is ``| |``)."""
    return ' '.join(['|'] + [f'{c} |' if str(c) else '|' for c in cells])


DDP_NAMES = {'one process': 'one process (no DDP)',
             'ddp': 'DDP, parameters channels last (now)',
             'ddp_before_fix': 'DDP, parameters contiguous (before)'}


def _img_s(v):
    return with_range(v['img_s'], v['img_s_min'], v['img_s_max'])


def _inference_rows(models):
    rows = header('model', 'params', 'GFLOPs 224', 'img/s 224 b8',
                  'img/s 224 b64', 'img/s 1280x800 b1', 'GFLOP/s 224 b8')
    for name, r in models.items():
        inf = r['inference']
        rows.append(row(
            LABELS.get(name, name), f"{r['params_m']:.2f}M",
            cell(inf['224_b8'].get('gflops_per_img'), '{:.2f}'),
            _img_s(inf['224_b8']), _img_s(inf['224_b64']),
            _img_s(inf['1280x800_b1']),
            cell(inf['224_b8'].get('gflop_s'), '{:.1f}')))
    return rows + ['']


def _train_rows(models):
    rows = header('model', 'train step 1280x800 b2', 's / image',
                  'train peak MiB')
    for name, r in models.items():
        tr = r['train']
        rows.append(row(
            LABELS.get(name, name),
            f"{tr['seconds']:.2f} s ({tr['seconds_min']:.2f}-"
            f"{tr['seconds_max']:.2f})", f"{tr['s_per_img']:.2f}",
            cell(tr['peak_mib'], '{:.0f}')))
    return rows + ['']


def _ratios(models):
    rows = []
    ours = models.get('stvit_s')
    for other, label in (('official_stvit_s', 'STViT-S (authors)'),
                         ('swin_t', 'Swin-T')):
        theirs = models.get(other)
        if not (ours and theirs):
            continue
        if ours['inference'] and theirs['inference']:
            ratio = (ours['inference']['224_b8']['img_s'] /
                     theirs['inference']['224_b8']['img_s'])
            rows.append(f'STViT-S / {label} img/s at 224 b8: {ratio:.2f}x')
        if 'train' in ours and 'train' in theirs:
            rows.append(
                f'STViT-S / {label} training step time at 1280x800 b2: '
                f"{ours['train']['seconds'] / theirs['train']['seconds']:.2f}")
    return rows


def _ddp_rows(ddp):
    rows = ['', f"DDP, STViT-S training step at {ddp['setting']}, "
            f"{ddp['threads_per_process']} thread(s) per process:", '']
    rows += header('run', 'processes', 'step s', 'img/s',
                   'parallel efficiency', 'grad-stride warnings')
    for name, r in ddp['rows'].items():
        rows.append(row(
            DDP_NAMES[name], r['processes'],
            with_range(r['seconds'], r['seconds_min'], r['seconds_max']),
            f"{r['img_s']:.2f}", cell(r['efficiency'], '{:.2f}'),
            cell(r['grad_stride_warnings'], '{}')))
    return rows


def _compile_rows(comp):
    rows = ['', 'torch.compile (inductor) of STViT-S against eager:', '']
    rows += header('', 'setting', 'eager s', 'compiled s', 'speed-up',
                   'compile s')
    for kind, r in comp.items():
        rows.append(row(
            kind, r['setting'], with_range(r['eager_s'], *r['eager_range'],
                                           fmt='{:.3f}'),
            with_range(r['compiled_s'], *r['compiled_range'], fmt='{:.3f}'),
            f"{r['speedup']:.2f}x", f"{r['compile_s']:.0f}"))
    return rows


def benchmark(results):
    """benchmark.py's tables: inference, training step, the run's machine
    and protocol, STViT-S against its peers, and DDP and compile if run."""
    m, s, models = results['machine'], results['settings'], results['models']
    rows = []
    if any(r['inference'] for r in models.values()):
        rows += _inference_rows(models)
    if any('train' in r for r in models.values()):
        rows += _train_rows(models)
    rows.append(
        f"{m['device']} ({m['name']}, {m['threads']} threads), torch "
        f"{m['torch']}, {s['dtype']}; {s['protocol']}: "
        f"{s['rounds']} inference rounds, {s['train_rounds']} training "
        'rounds (min-max of the rounds in brackets)')
    rows += _ratios(models)
    if results.get('ddp'):
        rows += _ddp_rows(results['ddp'])
    if results.get('compile'):
        rows += _compile_rows(results['compile'])
    return '\n'.join(rows)


def fast_paths(results, settings, base_name='all fast paths'):
    """Markdown: the full plan's figures, then each variant against it."""
    base = results[base_name]
    lines = header('variant', *settings)
    for v, r in results.items():
        cells = []
        for s in settings:
            if r.get(s) is None or base.get(s) is None:
                cells.append('-')
            elif v == base_name:
                cells.append(f'{r[s]:.0f} MiB' if s.endswith('MiB') else
                             f'{r[s]:.3f} s')
            else:
                cells.append(f'{100 * (r[s] / base[s] - 1):+.1f}%')
        lines.append(row(v, *cells))
    lines.append(f'({torch.get_num_threads()} threads, torch '
                 f'{torch.__version__}; medians of interleaved rounds; a '
                 'variant turns one fast path off: +x% is what that path '
                 'saves)')
    return '\n'.join(lines)


def checkouts(med, checkouts, rounds, cpu_time):
    """compare_checkouts.py's table: each checkout's medians, the change."""
    keys = list(med['before'])
    lines = header('', *(k if k.endswith('MiB') else f'{k} (s)'
                         for k in keys))
    for name, path in checkouts.items():
        lines.append(row(f'{name} ({path})',
                         *(f'{med[name][k]:.3f}' for k in keys)))
    lines.append(row('change', *(
        f"{100 * (med['after'][k] / med['before'][k] - 1):+.1f}%"
        for k in keys)))
    lines.append(f'medians of {rounds} interleaved rounds, one fresh process '
                 'per checkout and round' +
                 (', CPU seconds of one thread' if cpu_time else ''))
    return '\n'.join(lines)
