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
    parser = argparse.ArgumentParser(
        description='Draw the attention maps of query pixels of an STViT '
        'stage over an image')
    parser.add_argument('config', help='mmdet/mmseg/mmpretrain config whose '
                        "model.backbone is type='STViT'")
    parser.add_argument('image', help='image file')
    parser.add_argument('--out-dir', required=True,
                        help='folder for the PNGs (created if needed)')
    parser.add_argument('--checkpoint', help='mm checkpoint of an STViT '
                        "model or the authors' ImageNet file; without it "
                        'the weights are random')
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
    parser.add_argument('--unsafe-load', action='store_true',
                        help='trust --checkpoint: unpickle it fully even if '
                        'it holds objects beyond weights (can run code it '
                        'holds; only for files from a source you trust)')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument('--max-size', type=int, default=1024,
                        help='longest side the network sees; larger images '
                        'are resized for the forward pass and drawn at '
                        'their own size (0: never resize). Default 1024')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mmstvit.cli.quiet import quiet_third_party_warnings
    quiet_third_party_warnings()
    if args.unsafe_load and args.checkpoint:
        from mmstvit.weights import trust
        trust(args.checkpoint)
    from mmstvit.visualization import VisualizationError, visualize_attention
    try:
        paths = visualize_attention(
            args.config, args.image, args.out_dir, checkpoint=args.checkpoint,
            points=args.points, grid=args.grid, stage=args.stage,
            block=args.block, head=args.head, device=args.device,
            max_size=args.max_size or None)
    except VisualizationError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == '__main__':
    sys.exit(main())
