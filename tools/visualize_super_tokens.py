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
    parser = argparse.ArgumentParser(
        description="Draw an STViT's initial and learned super tokens over "
        'an image')
    parser.add_argument('config', help='mmdet/mmseg/mmpretrain config whose '
                        "model.backbone is type='STViT'")
    parser.add_argument('image', help='image file')
    parser.add_argument('--out-dir', required=True,
                        help='folder for the PNGs (created if needed)')
    parser.add_argument('--checkpoint', help='mm checkpoint of an STViT '
                        "model or the authors' ImageNet file; without it "
                        'the weights are random')
    parser.add_argument('--stage', type=int, help='only this stage (from 0); '
                        'default: every stage with super token size > 1')
    parser.add_argument('--block', type=int, help='block of the stage whose '
                        'association is drawn (negative counts from the '
                        'end); default: the last block')
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
    from mmstvit.visualization import (VisualizationError,
                                       visualize_super_tokens)
    try:
        paths = visualize_super_tokens(
            args.config, args.image, args.out_dir, checkpoint=args.checkpoint,
            stage=args.stage, block=args.block, device=args.device,
            max_size=args.max_size or None)
    except VisualizationError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == '__main__':
    sys.exit(main())
