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
   the worst tensor is reported). Limits:
   ``mmstvit.analysis.numerics.TOLERANCE``.
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
   same weights and batch) within ``AMP_GRAD_TOLERANCE`` (global
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
synchronisation and memory statistics are guarded by the device type. The
code is ``mmstvit.analysis.device_check`` (and the modules it names).
"""
import argparse
import os.path as osp
import sys

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

from mmstvit.analysis import device_check  # noqa: E402
from mmstvit.analysis.support import save  # noqa: E402


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
    results = device_check.run(args)
    text = device_check.table(results)
    results['table'] = text
    print(text)
    if args.out:
        save(results, args.out)
        print(f'\nwritten to {args.out}')
    return 0 if results['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
