# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Speed, memory and FLOPs of STViT backbones beside the usual peers.

    python tools/analysis_tools/benchmark.py [--models stvit_s swin_t ...]
        [--device cpu|cuda] [--amp] [--threads N] [--rounds 5]
        [--train-rounds 3] [--ddp] [--compile] [--official PATH/TO/stvit.py]
        [--quick] [--out benchmark.json]

The protocol, and why
---------------------
Figures are compared between models, so every model is timed in **one
process, warm, in interleaved rounds**: all the models of a setting are
built, each runs ``--warmup`` times, then each round times one call of every
model in turn (CUDA synchronised around it; not ``torch.utils.benchmark``,
whose ``timeit`` adds two warm-up calls to every measurement: see
``mmstvit.analysis.timing.interleaved``). The figure is the **median over rounds**, shown with the
min-max range of the rounds. On a shared virtual machine the speed drifts by
10-20% over minutes; interleaving spreads that drift over all models
alike, and the median drops a round that another job disturbed. An earlier
version timed each model's training step in a fresh child process, one model
after another: those figures moved by more than the differences between
models from one run to the next (STViT-S vs Swin-T: 12.42 vs 11.20 s there,
7.08 vs 8.02 s in one process). Peak memory is the one thing measured in a
fresh child process per model (its own step, not timed), so that allocator
caches of other models do not leak in: on CPU the growth of the peak
resident memory (VmHWM) during one step, on CUDA
``torch.cuda.max_memory_allocated`` above what was allocated before it.

Settings (fp32, or ``--amp`` for fp16 autocast on CUDA):

* inference (eval mode, ``torch.no_grad``) at 224x224 batch 8 and 64, and at
  1280x800 batch 1; STViT with the ImageNet super token sizes (8, 4, 1, 1) at
  224 and the detection ones (16, 8, 2, 1) at 1280x800;
* one training step (forward, ``sum(mean of every output)``, backward) at
  1280x800 batch 2: seconds per step and per image, and peak memory;
* FLOPs (mmengine's FlopAnalyzer, one multiply-add = 1 FLOP) and the GFLOP/s
  achieved at each inference setting;
* ``--ddp``: the training step of STViT-S under DistributedDataParallel with
  2 processes (gloo on CPU, each with half the threads; nccl on 2 GPUs)
  against one process with the same threads and per-process batch, in the
  same interleaved rounds, and the same DDP run with the parameters laid out
  as before the layout fix (contiguous), with the number of "Grad strides do
  not match bucket view strides" warnings each raised. Parallel efficiency =
  one process's step time / the DDP step time (1.0: the second process adds
  its images at no cost);
* ``--compile``: ``torch.compile`` (inductor) of STViT-S for inference at
  224 batch 8 and for the training step: the compile time (the first call)
  and the speed against eager, interleaved. It is a benchmark, not a test
  (about 1 and 2 minutes of compiling on 2 cores). The 3x3 super-token
  gathers/scatters are opaque operators under compile; before they were,
  inductor's code generation for STViT-S inference had not finished after
  20 minutes (nested masked loads of their padded slices).

The code is ``mmstvit.analysis`` (``benchmark.run``, ``tables.benchmark``).
Peers come from the installed toolboxes: mmdet's SwinTransformer (T/S/B),
mmpretrain's ConvNeXt-T and mmdet's ResNet-50. ``--official`` adds the
authors' STViT-S (their models/stvit.py from https://github.com/hhb072/STViT,
not shipped here).
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from mmstvit.analysis import benchmark, models, tables  # noqa: E402
from mmstvit.analysis.support import save  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Throughput, training step, memory and FLOPs of STViT '
        'vs peers (one process, warm, interleaved rounds, medians)')
    parser.add_argument('--models', nargs='+', default=None,
                        help=f'subset of {models.ALL_MODELS} (default: all; '
                        'official_stvit_s only with --official)')
    parser.add_argument('--official', default=None,
                        help="path to the authors' models/stvit.py")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu')
    parser.add_argument('--amp', action='store_true',
                        help='fp16 autocast (CUDA)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: all cores)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed calls per model before the rounds')
    parser.add_argument('--rounds', type=int, default=5,
                        help='interleaved rounds of the inference settings')
    parser.add_argument('--train-rounds', type=int, default=3,
                        help='interleaved rounds of the training step')
    parser.add_argument('--repeats', type=int, default=None,
                        help=argparse.SUPPRESS)  # the old name of --rounds
    parser.add_argument('--no-infer', action='store_true',
                        help='skip the inference settings')
    parser.add_argument('--no-train', action='store_true',
                        help='skip the 1280x800 training step')
    parser.add_argument('--no-memory', action='store_true',
                        help='skip the peak-memory processes')
    parser.add_argument('--no-flops', action='store_true',
                        help='skip the FLOP counts')
    parser.add_argument('--ddp', action='store_true',
                        help='also 2-process DDP against one process '
                        '(STViT-S training step)')
    parser.add_argument('--compile', action='store_true',
                        help='also torch.compile against eager (STViT-S)')
    parser.add_argument('--quick', action='store_true',
                        help='small shapes and 1 round: checks the tool, '
                        'not the speed')
    parser.add_argument('--out', default='benchmark.json',
                        help='JSON file for the results')
    args = parser.parse_args(argv)
    if args.repeats is not None:
        args.rounds = args.repeats
    if args.amp and args.device == 'cpu':
        parser.error('--amp is fp16 autocast on CUDA; on the CPU the '
                     'benchmark runs fp32 (drop --amp)')
    return args


def main(argv=None):
    args = parse_args(argv)
    results = benchmark.run(args)
    text = tables.benchmark(results)
    results['table'] = text
    save(results, args.out)
    print(text)
    print(f'\nwritten to {args.out}')
    return results


if __name__ == '__main__':
    main()
