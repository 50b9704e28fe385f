# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What each fast path of the STViT backbone buys, measured.

    python tools/analysis_tools/fast_paths.py [--rounds 5] [--train-rounds 3]
    python tools/analysis_tools/fast_paths.py --quick      # a smoke run

Every flag of the kernel plan (``mmstvit.analysis.plans.Plan``) is turned
off on its own, the others staying as users run them: the ``deploy`` plan
for inference (what tools/infer.py and tools/test.py run), ``fast`` for
training. STViT-S is timed in the benchmark's settings: inference at
224x224 batch 8 (ImageNet super tokens) and 1280x800 batch 1, the training
step at 1280x800 batch 2 (dense super tokens); every variant in the same
interleaved rounds of one process (benchmark.py's loop), the median
reported, and the training step's peak memory in a fresh process per
variant (benchmark.py's peak-memory child); the code is
``mmstvit.analysis.fast_paths``. The table gives each variant's time and
peak relative to the full plan: +20% means the fast path saves a sixth of
its variant's time. A flag is kept where it buys at
least 5% in some setting (docs/architecture.md has the table).
"""
import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from mmstvit.analysis import fast_paths, tables, timing  # noqa: E402


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
    if args.cpu_time:
        timing.use_cpu_time()
    results, settings = fast_paths.measure(args.quick, args.rounds,
                                           args.train_rounds, args.warmup)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(settings=settings, results=results,
                           threads=torch.get_num_threads(),
                           torch=torch.__version__), f, indent=2)
    print(tables.fast_paths(results, settings))
    return results


if __name__ == '__main__':
    main()
