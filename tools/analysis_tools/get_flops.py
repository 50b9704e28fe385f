# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Parameters and FLOPs of a whole model built from a config.

    python tools/analysis_tools/get_flops.py CONFIG [--shape H W]
    python tools/analysis_tools/get_flops.py --all      # the paper's table
    python tools/analysis_tools/get_flops.py --all --only 'retinanet_*'

The paper's protocol (docs/reference_numbers.md): mmengine's
``get_model_complexity_info`` (its ``FlopAnalyzer``) on the model's
tensor-mode forward (``model._forward``) of one random input at the paper's
size: 1280x800 for COCO (H=800, W=1280), 2048x512 for ADE20K UperNet
(H=512, W=2048), 224 or 384 for ImageNet; Semantic FPN, which the paper does
not report, at 512x512 as PVT and the papers comparing with it report it.
One multiply-add counts as one FLOP; parameters are the trainable ones.
With this protocol mmdet's own Mask R-CNN R50 gives the 260G / 44M that
papers quote. Two-stage detectors are counted as mmdet 2's
``forward_dummy`` counted them, which the papers' figures come from: the
RoI heads on exactly 1000 proposals (the
RPN's ``max_per_img``; a random model's RPN keeps fewer after NMS, 676 for
STViT-S, and the cascade's heads cost ~0.4 GFLOPs per RoI), the mask heads
on the first 100 (mmdet 3's Mask R-CNN tensor forward does so too; its
cascade runs the three mask heads on every proposal, about 1T more at
1280x800). With these rules ResNet-50 in the cascade recipe gives Swin's
published 82M / 739G. ``--all``
measures every config in configs/ (not configs/toy) and prints it beside the
paper's numbers, or 'not in the paper' (``--only`` picks configs by name
pattern); configs/ablations/ (the paper's ablation rows) comes after
configs/.
"""
import argparse
import fnmatch
import glob
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

# PAPER: the paper's figures (tests/test_ablations.py reads them here)
from mmstvit.analysis.flops import PAPER, measure, table_row  # noqa: E402,F401


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Params and FLOPs of a whole STViT model (paper protocol)')
    parser.add_argument('config', nargs='?', help='config file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width (default: the paper\'s '
                        'size for the task)')
    parser.add_argument('--all', action='store_true',
                        help='every config in configs/ and '
                        'configs/ablations/, beside the paper')
    parser.add_argument('--only', nargs='+', metavar='PATTERN',
                        help="with --all: only the configs whose name (no "
                        "directory, no .py) matches one of these patterns, "
                        "e.g. 'cascade_*'")
    args = parser.parse_args(argv)
    if args.only and not args.all:
        parser.error('--only goes with --all')
    if not args.all and not args.config:
        parser.error('give a CONFIG or --all')
    if args.config and not osp.isfile(args.config):
        parser.error(f'config {args.config} does not exist')
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.all:
        r = measure(args.config, args.shape)
        print(f'config: {args.config}\ninput: {r["shape"][1]}x{r["shape"][0]}'
              f' (W x H)\nparams: {r["params"] / 1e6:.2f} M\n'
              f'FLOPs: {r["flops"] / 1e9:.2f} G')
        return r
    rows = ['| config | input (WxH) | params (paper) | params | FLOPs (paper)'
            ' | FLOPs | diff |', '|---|---|---|---|---|---|---|']
    results = {}
    paths = sorted(glob.glob(osp.join(ROOT, 'configs', '*.py'))) + sorted(
        glob.glob(osp.join(ROOT, 'configs', 'ablations', '*.py')))
    if args.only:
        paths = [
            p for p in paths if any(
                fnmatch.fnmatchcase(osp.splitext(osp.basename(p))[0], pat)
                for pat in args.only)
        ]
        if not paths:
            sys.exit(f'no config in configs/ or configs/ablations/ matches '
                     f'{args.only}')
    for path in paths:
        name = osp.splitext(osp.basename(path))[0]
        r = measure(path)
        results[name] = r
        rows.append(table_row(name, r))
        print(rows[-1], flush=True)
    print('\n'.join(rows))
    return results


if __name__ == '__main__':
    main()
