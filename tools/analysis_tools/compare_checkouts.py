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
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(
    __file__)))))

from mmstvit.analysis import checkouts, tables  # noqa: E402


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
    paths = {'before': osp.abspath(args.before),
             'after': osp.abspath(args.after)}
    checkouts.check_checkouts(paths)
    runs, med = checkouts.compare(paths, args.rounds, args.cpu_time)
    print(tables.checkouts(med, paths, args.rounds, args.cpu_time))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(checkouts=paths, runs=runs, medians=med), f,
                      indent=2)
    return med


if __name__ == '__main__':
    main()
