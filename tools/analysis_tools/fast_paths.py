# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What each fast path of the STViT backbone buys, measured.

    python tools/analysis_tools/fast_paths.py [--rounds 5] [--train-rounds 3]
    python tools/analysis_tools/fast_paths.py --quick      # a smoke run

Every flag of the kernel plan (:class:`mmstvit.models.backbones.kernels.
Kernels`) is turned off on its own, the others staying as users run them:
the ``deploy`` plan for inference (what tools/infer.py and tools/test.py
run), ``fast`` for training. STViT-S is timed in the benchmark's settings:
inference at 224x224 batch 8 (ImageNet super tokens) and 1280x800 batch 1,
the training step at 1280x800 batch 2 (dense super tokens); every variant
in the same interleaved rounds of one process (benchmark.py's loop), the
median reported, and the training step's peak memory in a fresh process
per variant (benchmark.py's peak-memory child). The table gives each
variant's time and peak relative to the full plan: +20% means the fast
path saves a sixth of its variant's time. A flag is kept where it buys at
least 5% in some setting (docs/architecture.md has the table).
"""
import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import statistics
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchmark as B  # noqa: E402  (its loop, peak memory, logging)

from mmstvit.models.backbones import STViT, kernels  # noqa: E402

VARIANTS = {  # name -> the flags changed from the plan users run
    'all fast paths': {},
    'neighbourhoods as identity convs': dict(neighbourhoods='conv'),
    'neighbourhoods inline (no operator)': dict(neighbourhoods='slices'),
    'no fused attention (sdpa)': dict(sdpa=False),
    'no memory-lean training': dict(lean_training=False),
    'no in-place sums': dict(inplace=False),
    'no oneDNN post-ops': dict(onednn=False),
}
INFERENCE_ONLY = ('inplace', 'onednn')
TRAINING_ONLY = ('lean_training', )


def plan(variant: str, inference: bool):
    """The variant's plan, or None where its flag does not apply."""
    flags = VARIANTS[variant]
    only = TRAINING_ONLY if inference else INFERENCE_ONLY
    if any(f in flags for f in only):
        return None
    base = kernels.deploy_plan(kernels.HAS_ONEDNN) if inference else \
        kernels.FAST
    return dataclasses.replace(base, **flags)


def build(arch, stoken, kernels, inference):
    torch.manual_seed(0)
    model = STViT(arch=arch, stoken_size=stoken, drop_path_rate=0.,
                  kernels=kernels)
    if inference:
        model.requires_grad_(False)
        model.eval()
    return model


def _child_peak(arch, shape, batch, variant, queue):
    model = build(arch, B.DET_STOKEN, plan(variant, False), False).train()
    x = torch.randn(batch, 3, *shape)
    step = B.train_step_fn(model, x)
    before = B._rss_kib()
    B._reset_peak_rss()
    step()
    queue.put(max(B._peak_rss_kib() - before, 0) / 1024.)


def peak_memory(arch, shape, batch, variant):
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_peak,
                       args=(arch, shape, batch, variant, queue))
    proc.start()
    proc.join()
    return queue.get() if proc.exitcode == 0 else None


def time_variants(fns, label, rounds, warmup, results, key):
    """Times ``fns`` (variant -> call) in interleaved rounds and stores each
    variant's median under ``results[variant][key]``; frees the models."""
    B.log(f'{label}: {len(fns)} variants')
    times = B.interleaved(fns, torch.device('cpu'), warmup, rounds,
                          label=label)
    for v, t in times.items():
        results[v][key] = statistics.median(t)
    fns.clear()
    B.release_memory()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='time and peak memory of STViT-S with each fast path '
        'turned off on its own')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--train-rounds', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--quick', action='store_true',
                        help='a tiny model at small sizes (smoke run)')
    parser.add_argument('--out', default=None, help='JSON of the results')
    parser.add_argument(
        '--cpu-time', action='store_true',
        help='one thread, timed by CPU seconds: steadier than wall time on '
        'a machine that other work shares')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cpu = torch.device('cpu')
    if args.cpu_time:
        import time
        torch.set_num_threads(1)
        B.CLOCK = time.process_time
    if args.quick:
        arch = dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                    num_heads=[1, 2, 3, 4])
        infer = [('224 b8', (64, 64), 2, B.CLS_STOKEN),
                 ('1280x800 b1', (64, 96), 1, B.DET_STOKEN)]
        train = ('1280x800 b2 step', (64, 96), 2)
    else:
        arch = 's'
        infer = [('224 b8', (224, 224), 8, B.CLS_STOKEN),
                 ('1280x800 b1', (800, 1280), 1, B.DET_STOKEN)]
        train = ('1280x800 b2 step', (800, 1280), 2)
    results = {v: {} for v in VARIANTS}
    settings = [k for k, *_ in infer] + [train[0], 'train peak MiB']
    for key, shape, batch, stoken in infer:
        fns = {}
        for v in VARIANTS:
            p = plan(v, True)
            if p is not None:
                model = build(arch, stoken, p, True)
                x = torch.randn(batch, 3, *shape)
                fns[v] = B.inference_fn(model, x, cpu, False)
        time_variants(fns, f'inference {key}', args.rounds, args.warmup,
                      results, key)
    key, shape, batch = train
    fns = {}
    for v in VARIANTS:
        p = plan(v, False)
        if p is not None:
            model = build(arch, B.DET_STOKEN, p, False).train()
            fns[v] = B.train_step_fn(model, torch.randn(batch, 3, *shape))
    time_variants(fns, f'training {key}', args.train_rounds, args.warmup,
                  results, key)
    for v in VARIANTS:
        if plan(v, False) is not None:
            B.log(f'peak memory of the training step: {v}')
            results[v]['train peak MiB'] = peak_memory(arch, shape, batch, v)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(settings=settings, results=results,
                           threads=torch.get_num_threads(),
                           torch=torch.__version__), f, indent=2)
    print(table(results, settings))
    return results


def table(results, settings):
    """Markdown: the full plan's figures, then each variant against it."""
    base = results['all fast paths']
    lines = ['| variant | ' + ' | '.join(settings) + ' |',
             '|---|' + '---|' * len(settings)]
    for v, r in results.items():
        cells = []
        for s in settings:
            if r.get(s) is None or base.get(s) is None:
                cells.append('-')
            elif v == 'all fast paths':
                unit = ' MiB' if s.endswith('MiB') else ' s'
                cells.append(f'{r[s]:.3f}{unit}' if unit == ' s' else
                             f'{r[s]:.0f}{unit}')
            else:
                cells.append(f'{100 * (r[s] / base[s] - 1):+.1f}%')
        lines.append(f'| {v} | ' + ' | '.join(cells) + ' |')
    lines.append(f'({torch.get_num_threads()} threads, torch '
                 f'{torch.__version__}; medians of interleaved rounds; a '
                 'variant turns one fast path off: +x% is what that path '
                 'saves)')
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
