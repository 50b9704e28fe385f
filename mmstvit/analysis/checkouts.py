# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""compare_checkouts.py's measurement: STViT-S in fresh processes of two
checkouts, alternating; each child imports ``mmstvit`` from its own
checkout, so :data:`CHILD` uses nothing of this package."""
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
    """One fresh process's figures of ``checkout``."""
    proc = subprocess.run([sys.executable, '-c', CHILD, checkout,
                           'cpu' if cpu_time else 'wall'],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f'compare_checkouts: the run in {checkout} failed:\n'
                         f'{proc.stderr[-2000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_checkouts(checkouts):
    """``SystemExit`` naming a folder of ``checkouts`` (name -> path) that
    is no checkout of mmstvit."""
    for name, path in checkouts.items():
        if not osp.isfile(osp.join(path, 'mmstvit', '__init__.py')):
            raise SystemExit(f'compare_checkouts: {path} ({name}) is not a '
                             'checkout of mmstvit (no mmstvit/__init__.py)')


def compare(checkouts, rounds, cpu_time=False):
    """``(runs, medians)``: every round's figures per checkout, alternating
    fresh processes, and their medians."""
    runs = {name: [] for name in checkouts}
    for r in range(rounds):
        for name, path in checkouts.items():
            runs[name].append(measure(path, cpu_time))
            print(f'[compare] round {r + 1}/{rounds}: {name} done',
                  file=sys.stderr, flush=True)
    keys = list(runs['before'][0])
    med = {name: {k: statistics.median(run[k] for run in rs) for k in keys}
           for name, rs in runs.items()}
    return runs, med
