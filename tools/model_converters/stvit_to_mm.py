# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Writes an official STViT ImageNet checkpoint as an mm checkpoint.

    python tools/model_converters/stvit_to_mm.py \\
        pretrained/stvit-small-224.pth pretrained/stvit-small-224_mm.pth [--ema]
    python tools/model_converters/stvit_to_mm.py \\
        pretrained/stvit-small-224.pth pretrained/stvit-small-224.safetensors \\
        --to safetensors

The result has ``backbone.*`` and ``head.*`` keys: it loads into
``configs/stvit_s_in1k_224.py`` as it is, and as a backbone ``init_cfg``
checkpoint for detection/segmentation (``backbone.`` is stripped there).
``--to pth`` (the default, unless DST ends in ``.safetensors``) writes a
``torch.save`` of ``state_dict`` and ``meta``; ``--to safetensors`` writes
the tensors alone (read without pickle, by every loader of mmstvit, by timm
and by Hugging Face), with the source file, its entry, epoch and the arch
as metadata. The source is read weights-only through the allow-list.
"""
import argparse
import os
import os.path as osp
import pickle
import sys

import torch

SUFFIX = '.safetensors'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert an official STViT checkpoint (hhb072/STViT) to '
        'an mm checkpoint (.pth or .safetensors)')
    parser.add_argument('src', help='official checkpoint, e.g. '
                        'stvit-small-224.pth')
    parser.add_argument('dst', help='where to write the mm checkpoint')
    parser.add_argument(
        '--to', choices=['pth', 'safetensors'], default=None,
        help='file format of dst (default: safetensors when dst ends in '
        '.safetensors, else pth)')
    parser.add_argument(
        '--ema', action='store_true',
        help="convert the file's 'model_ema' weights instead of 'model'")
    parser.add_argument(
        '--force', action='store_true', help='overwrite dst if it exists')
    parser.add_argument(
        '--unsafe-load', action='store_true',
        help='trust src: unpickle it fully even if it holds objects beyond '
        'weights (can run code it holds; only for files you trust)')
    args = parser.parse_args(argv)
    named = 'safetensors' if args.dst.endswith(SUFFIX) else 'pth'
    args.to = args.to or named
    if args.to != named:
        parser.error(f'--to {args.to} needs a dst ' + (
            f'ending in {SUFFIX}' if args.to == 'safetensors' else
            f'not ending in {SUFFIX} (a .safetensors name promises a file '
            'without pickle)'))
    return args


def check_paths(args):
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


def read_official(args):
    """The chosen weights entry of the official file, and the file."""
    from mmstvit.weights import load_checkpoint_file
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
    return ckpt[which], ckpt, which


def arch_of(official_sd):
    """``'small'``, ``'base'``, ``'large'`` or None (a custom variant)."""
    from mmstvit import STViT
    from mmstvit.weights import describe_stvit
    info = describe_stvit(official_sd, STViT.arch_zoo)
    return info['arch'] if info else None


def main(argv=None):
    args = parse_args(argv)
    check_paths(args)
    from mmstvit.weights import convert_official_state_dict, write_safetensors
    official_sd, ckpt, which = read_official(args)
    state_dict = convert_official_state_dict(official_sd)
    epoch = ckpt.get('epoch', None)
    meta = dict(converted_from=osp.basename(args.src), weights=which,
                epoch=epoch.item() if torch.is_tensor(epoch) else epoch,
                arch=arch_of(official_sd))
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    if args.to == 'safetensors':
        meta['converter'] = 'mmstvit tools/model_converters/stvit_to_mm.py'
        write_safetensors(state_dict, args.dst, meta)
    else:
        torch.save(dict(state_dict=state_dict, meta=meta), args.dst)
    print(f'stvit_to_mm: wrote {len(state_dict)} tensors ({which}) of '
          f'{args.src} to {args.dst} ({args.to})')


if __name__ == '__main__':
    main()
