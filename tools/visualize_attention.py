# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Draw where chosen pixels attend in an STViT stage (default: the third).

As in the paper's figure "attention maps from the third layer": the
attention of query pixels at block ``--block`` (default: the last) of stage
``--stage`` (default 2, counted from 0), mapped back to pixels through the
association: pixel -> its 3x3 super tokens -> super token attention -> the
pixels of those super tokens (plain token attention where the super token
size is 1). Heads are averaged unless ``--head K``. Writes one PNG per query
point (the input image's size; the point is marked) and a montage
``<stem>_attn_stage<N>_grid.png``.

Query points are (x, y) image pixels, ``--points 120,80 300,200``, or an
N x N grid, ``--grid N`` (default 3).

Examples::

    python tools/visualize_attention.py configs/stvit_s_in1k_224.py demo.jpg \\
        --out-dir vis/ --checkpoint pretrained/stvit-small-224.pth
    python tools/visualize_attention.py CONFIG demo.jpg --out-dir vis/ \\
        --points 120,80 --stage 1 --head 0
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def point(text):
    try:
        x, y = (float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'a point is x,y in image pixels, got {text!r}') from None
    return (x, y)


def head(text):
    if text == 'mean':
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--head is 'mean' or a head index, got {text!r}") from None


def parse_args(argv=None):
    from mmstvit.cli.drawing import add_drawing_arguments
    parser = argparse.ArgumentParser(
        description='Draw the attention maps of query pixels of an STViT '
        'stage over an image')
    add_drawing_arguments(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument('--points', nargs='+', type=point, metavar='X,Y',
                       help='query points in image pixels')
    where.add_argument('--grid', type=int, default=3,
                       help='an N x N grid of query points (default 3)')
    parser.add_argument('--stage', type=int, default=2,
                        help='stage, from 0 (default 2: the third)')
    parser.add_argument('--block', type=int, help='block of the stage '
                        '(negative counts from the end); default: the last')
    parser.add_argument('--head', type=head, default='mean',
                        help="'mean' over heads (default) or a head index")
    return parser.parse_args(argv)


def main(argv=None):
    from mmstvit.cli.drawing import run_drawing
    args = parse_args(argv)
    return run_drawing(
        'visualize_attention', args, points=args.points, grid=args.grid,
        stage=args.stage, block=args.block, head=args.head)


if __name__ == '__main__':
    sys.exit(main())
