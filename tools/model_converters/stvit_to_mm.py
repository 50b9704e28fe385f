# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Writes an official STViT ImageNet checkpoint as an mm checkpoint.

    python tools/model_converters/stvit_to_mm.py \\
        pretrained/stvit-small-224.pth pretrained/stvit-small-224_mm.pth [--ema]

The result has a ``state_dict`` with ``backbone.*`` and ``head.*`` keys: it
loads into ``configs/stvit_s_in1k_224.py`` as it is, and as a backbone
``init_cfg`` checkpoint for detection/segmentation (``backbone.`` is
stripped there). The official file itself also loads in both places without
conversion; converting once saves unpickling its optimizer state each time.
"""
import argparse
import os
import os.path as osp
import pickle
import sys

import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert an official STViT checkpoint (hhb072/STViT) to '
        'an mm checkpoint')
    parser.add_argument('src', help='official checkpoint, e.g. '
                        'stvit-small-224.pth')
    parser.add_argument('dst', help='where to write the mm checkpoint')
    parser.add_argument(
        '--ema', action='store_true',
        help="convert the file's 'model_ema' weights instead of 'model'")
    parser.add_argument(
        '--force', action='store_true', help='overwrite dst if it exists')
    parser.add_argument(
        '--unsafe-load', action='store_true',
        help='trust src: unpickle it fully even if it holds objects beyond '
        'weights (can run code it holds; only for files you trust)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mmstvit.utils import convert_official_state_dict, load_checkpoint_file
    if not osp.isfile(args.src):
        sys.exit(f'stvit_to_mm: {args.src} does not exist. The official '
                 'weights are on the Google Drive folder linked from '
                 'https://github.com/hhb072/STViT (stvit-small-224.pth, ...)')
    if osp.abspath(args.src) == osp.abspath(args.dst):
        sys.exit('stvit_to_mm: dst must differ from src (the official file '
                 'would be overwritten)')
    if osp.exists(args.dst) and not args.force:
        sys.exit(f'stvit_to_mm: {args.dst} exists; pass --force to '
                 'overwrite it')
    try:
        ckpt = load_checkpoint_file(args.src, unsafe=args.unsafe_load)
    except (ValueError, pickle.UnpicklingError) as e:
        sys.exit(f'stvit_to_mm: {e}')
    which = 'model_ema' if args.ema else 'model'
    if not isinstance(ckpt, dict) or 'model' not in ckpt:
        sys.exit(f'stvit_to_mm: {args.src} is not an official STViT '
                 "checkpoint (no 'model' entry); keys: "
                 f'{sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt)}')
    if which not in ckpt:
        sys.exit(f"stvit_to_mm: {args.src} has no '{which}' entry (it has "
                 f'{sorted(k for k in ckpt if k.startswith("model"))}); '
                 'drop --ema to convert the plain weights')
    state_dict = convert_official_state_dict(ckpt[which])
    meta = dict(
        converted_from=osp.basename(args.src), weights=which,
        epoch=ckpt.get('epoch', None))
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    torch.save(dict(state_dict=state_dict, meta=meta), args.dst)
    print(f'stvit_to_mm: wrote {len(state_dict)} tensors ({which}) of '
          f'{args.src} to {args.dst}')


if __name__ == '__main__':
    main()
