# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""STViT-S speed of two checkouts of mmstvit, before and after a change.

    git worktree add /tmp/before <commit>
    python tools/analysis_tools/compare_checkouts.py /tmp/before . [--rounds 4]

Each round starts one fresh process per checkout, alternating, and each
process imports ``mmstvit`` from its own checkout, builds STViT-S and times:
inference at 224x224 batch 8 (super tokens (8, 4, 1, 1)) and at 1280x800
batch 1 ((16, 8, 2, 1)), median of 5 runs (a checkout whose STViT has
``switch_to_deploy`` runs it first, as tools/infer.py and tools/test.py do),
and the training step at 1280x800 batch 2 (forward, sum of the output means,
backward), median of 3, with its peak memory (growth of the peak resident
set over the steps).
The table gives the median over rounds and the change in per cent. Fresh
processes per round and interleaving keep drift of a shared machine out of
the comparison; ``--cpu-time`` (one thread, CPU seconds) keeps most of the
other work's share out too. To compare models instead, use benchmark.py.
"""
import argparse
import json
import os.path as osp
import statistics
import subprocess
import sys

CHILD = r'''
import gc, json, os, resource, statistics, sys, time, warnings
sys.path.insert(0, sys.argv[1])
CPU_TIME = sys.argv[2] == 'cpu'
clock = time.process_time if CPU_TIME else time.perf_counter
warnings.filterwarnings('ignore')
import torch
from mmstvit import STViT


def median_time(fn, n):
    fn()
    times = []
    for _ in range(n):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


if CPU_TIME:
    torch.set_num_threads(1)
torch.manual_seed(0)
out = {}
for key, stoken, shape in (('infer_224_b8', (8, 4, 1, 1), (8, 3, 224, 224)),
                           ('infer_1280x800_b1', (16, 8, 2, 1),
                            (1, 3, 800, 1280))):
    model = STViT(arch='s', stoken_size=stoken, drop_path_rate=0.).eval()
    if hasattr(model, 'switch_to_deploy'):  # inference as infer.py runs it
        model.switch_to_deploy()
    x = torch.randn(*shape)

    def infer():
        with torch.no_grad():
            model(x)

    out[key] = median_time(infer, 5)
del model, x
gc.collect()
model = STViT(arch='s', stoken_size=(16, 8, 2, 1), drop_path_rate=0.).train()
x = torch.randn(2, 3, 800, 1280)
with open('/proc/self/statm') as f:  # resident now, before training
    rss_before = int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def step():
    model.zero_grad(set_to_none=True)
    sum(o.mean() for o in model(x)).backward()


out['train_1280x800_b2'] = median_time(step, 3)
# growth of the peak resident memory over the training steps (the training
# step's peak is above the inference settings' peaks)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out['train_peak_MiB'] = (peak - rss_before) / 2**20
print(json.dumps(out))
'''


def measure(checkout, cpu_time=False):
    proc = subprocess.run([sys.executable, '-c', CHILD, checkout,
                           'cpu' if cpu_time else 'wall'],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f'compare_checkouts: the run in {checkout} failed:\n'
                         f'{proc.stderr[-2000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='STViT-S speed of two mmstvit checkouts (fresh '
        'processes, interleaved rounds, medians)')
    parser.add_argument('before')
    parser.add_argument('after')
    parser.add_argument('--rounds', type=int, default=4)
    parser.add_argument('--out', default=None, help='JSON of every round')
    parser.add_argument(
        '--cpu-time', action='store_true',
        help='one thread per process, timed by its CPU time: on a machine '
        'that other work shares, far steadier than wall-clock time')
    args = parser.parse_args(argv)
    checkouts = {'before': osp.abspath(args.before),
                 'after': osp.abspath(args.after)}
    for name, path in checkouts.items():
        if not osp.isfile(osp.join(path, 'mmstvit', '__init__.py')):
            raise SystemExit(f'compare_checkouts: {path} ({name}) is not a '
                             'checkout of mmstvit (no mmstvit/__init__.py)')
    runs = {name: [] for name in checkouts}
    for r in range(args.rounds):
        for name, path in checkouts.items():
            runs[name].append(measure(path, args.cpu_time))
            print(f'[compare] round {r + 1}/{args.rounds}: {name} done',
                  file=sys.stderr, flush=True)
    keys = list(runs['before'][0])
    med = {name: {k: statistics.median(run[k] for run in rs) for k in keys}
           for name, rs in runs.items()}
    print('| | ' + ' | '.join(k if k.endswith('MiB') else f'{k} (s)'
                              for k in keys) + ' |')
    print('|---|' + '---|' * len(keys))
    for name in checkouts:
        print(f'| {name} ({checkouts[name]}) | ' +
              ' | '.join(f'{med[name][k]:.3f}' for k in keys) + ' |')
    print('| change | ' + ' | '.join(
        f"{100 * (med['after'][k] / med['before'][k] - 1):+.1f}%"
        for k in keys) + ' |')
    print(f'medians of {args.rounds} interleaved rounds, one fresh process '
          'per checkout and round' +
          (', CPU seconds of one thread' if args.cpu_time else ''))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(checkouts=checkouts, runs=runs, medians=med), f,
                      indent=2)
    return med


if __name__ == '__main__':
    main()
