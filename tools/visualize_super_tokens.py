# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Draw an STViT's initial and learned super tokens over an image.

As in the paper's figure "(a) input, (b) initial super tokens, (c) learned
super tokens": for every stage whose super token size is > 1 (or only
``--stage N``, counted from 0), writes

* ``<stem>_stage<N>_initial.png``: the initial grid of s x s cells of that
  stage (a stage-N feature pixel covers 4 * 2**N image pixels);
* ``<stem>_stage<N>_learned.png``: every pixel given to the neighbouring
  super token it associates with most (at block ``--block`` of the stage,
  by default its last block), coloured per super token and outlined;

both the size of the input image. Works with random weights (no
``--checkpoint``), our mm checkpoints and the authors' ImageNet files.

Examples::

    python tools/visualize_super_tokens.py \\
        configs/upernet_stvit_s_160k_ade20k.py demo.jpg --out-dir vis/ \\
        --checkpoint pretrained/stvit-small-224.pth
    python tools/visualize_super_tokens.py CONFIG demo.jpg --out-dir vis/ \\
        --stage 1 --block 0
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    from mmstvit.cli.drawing import add_drawing_arguments
    parser = argparse.ArgumentParser(
        description="Draw an STViT's initial and learned super tokens over "
        'an image')
    add_drawing_arguments(parser)
    parser.add_argument('--stage', type=int, help='only this stage (from 0); '
                        'default: every stage with super token size > 1')
    parser.add_argument('--block', type=int, help='block of the stage whose '
                        'association is drawn (negative counts from the '
                        'end); default: the last block')
    return parser.parse_args(argv)


def main(argv=None):
    from mmstvit.cli.drawing import run_drawing
    args = parse_args(argv)
    return run_drawing('visualize_super_tokens', args, stage=args.stage,
                       block=args.block)


if __name__ == '__main__':
    sys.exit(main())
