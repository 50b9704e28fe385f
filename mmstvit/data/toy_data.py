# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Deterministic toy datasets so the detection and segmentation configs run
without downloading anything.

``generate_toy_data(root='data')`` writes two small datasets:

``<root>/toy_coco/`` -- COCO-style instance segmentation::

    train/000000.jpg ...              val/000000.jpg ...
    annotations/instances_train.json  annotations/instances_val.json

``<root>/toy_ade/`` -- semantic segmentation in the ADE20K folder layout::

    images/training/000000.jpg       annotations/training/000000.png
    images/validation/000000.jpg     annotations/validation/000000.png

Every image shows 1-4 filled shapes -- a disc (``circle``), a rotated
``rectangle`` and a ``triangle`` -- 32-144 px across, on a textured,
low-saturation background (gradients, stripes, smooth blobs, pixel noise).
The shape decides the class; each class also has its own hue family (red,
green, blue) with per-instance jitter in hue, saturation, brightness,
shading and noise, so the task is learnable in a few hundred iterations from
scratch while still being a genuine detection/segmentation problem.

Shapes may overlap: a later shape occludes an earlier one. Annotations are
derived from the pixels actually painted, so they always describe the
visible part only: the polygons are traced exactly along pixel edges, which
is what ``pycocotools`` rasterises back to the same mask, pixel for pixel.
Placements are resampled until every visible part is one piece without
holes and keeps at least 60% of its full area.

``generate_toy_cls(out_dir)`` (not part of ``generate_toy_data`` unless
``with_cls=True``) writes an ImageNet-style classification set, the folder
layout of mmpretrain's ``CustomDataset``::

    train/circle/000000.jpg ...      val/circle/000000.jpg ...
    meta/train.txt  meta/val.txt     ("circle/000000.jpg 0" per line)

one shape per 64x64 image, the shape being the class.

Semantic labels do NOT use ADE20K's ``reduce_zero_label`` convention:
0 is background and 1..3 are ``circle``, ``rectangle``, ``triangle``
(:data:`TOY_SEG_CLASSES`), so a config needs ``reduce_zero_label=False``.

Everything is deterministic: each image has its own random stream seeded by
``(seed, dataset, split, index)``, JPEGs are written with fixed settings,
and JSON is written with a fixed key order, so two runs produce identical
bytes. Train and validation images come from different streams.

Each dataset folder gets a ``.complete`` manifest (generator version,
parameters, list of written files). A later call with the same version and
parameters returns at once; otherwise the data are regenerated, and the only
files ever deleted are ones a previous run listed as its own.

Only numpy and Pillow are needed. Run ``python tools/misc/make_toy_data.py``
or ``python -m mmstvit.data.toy_data``. The images are drawn by
:mod:`.toy_scenes` (outlines by :mod:`.toy_polygons`), the files written
under the manifest of :mod:`.toy_files`; this module lays out the data
sets.
"""
import argparse
import json
import os
import sys
from pathlib import Path

from .toy_files import (GENERATOR_VERSION, IN_PROGRESS, MARKER, generate,
                        jpeg_bytes, png_bytes, write)
from .toy_polygons import mask_bbox, mask_to_polygons
from .toy_scenes import (CLASS_HUES, CLS_IMAGE_SIDE, MAX_OBJECTS,
                         TOY_CLS_CLASSES, TOY_COCO_CLASSES, TOY_COCO_PALETTE,
                         generate_cls_image, generate_scene, label_map)

#: Semantic classes of ``toy_ade``: label value ``i`` is ``TOY_SEG_CLASSES[i]``.
TOY_SEG_CLASSES = ('background', ) + TOY_COCO_CLASSES
#: Display colours (RGB) for :data:`TOY_SEG_CLASSES`.
TOY_SEG_PALETTE = [(0, 0, 0)] + TOY_COCO_PALETTE

TOY_COCO_DIR = 'toy_coco'
TOY_ADE_DIR = 'toy_ade'
TOY_CLS_DIR = 'toy_cls'

DEFAULT_NUM_TRAIN = 200
DEFAULT_NUM_VAL = 50
DEFAULT_SEED = 0
#: Images per split of ``toy_cls`` (classes take turns: index % 3).
DEFAULT_CLS_NUM_TRAIN = 60
DEFAULT_CLS_NUM_VAL = 30

__all__ = [
    'generate_toy_data', 'generate_toy_coco', 'generate_toy_ade',
    'generate_toy_cls', 'generate_scene', 'generate_cls_image',
    'mask_to_polygons', 'mask_bbox', 'label_map', 'format_report', 'main',
    'GENERATOR_VERSION', 'MARKER', 'IN_PROGRESS', 'CLASS_HUES',
    'CLS_IMAGE_SIDE', 'MAX_OBJECTS', 'TOY_COCO_CLASSES', 'TOY_COCO_PALETTE',
    'TOY_SEG_CLASSES', 'TOY_SEG_PALETTE', 'TOY_COCO_DIR', 'TOY_ADE_DIR',
    'TOY_CLS_DIR', 'TOY_CLS_CLASSES'
]


def _image_name(index):
    return f'{index:06d}'


def _coco_categories():
    return [
        dict(id=i + 1, name=name, supercategory='shape')
        for i, name in enumerate(TOY_COCO_CLASSES)
    ]


def generate_toy_coco(out_dir, num_train=DEFAULT_NUM_TRAIN,
                      num_val=DEFAULT_NUM_VAL, seed=DEFAULT_SEED,
                      force=False):
    """Writes (or keeps) the COCO-style instance segmentation toy set.

    Args:
        out_dir (str | Path): e.g. ``data/toy_coco``.
        num_train (int): Training images.
        num_val (int): Validation images.
        seed (int): Global seed.
        force (bool): Regenerate even when up to date.

    Returns:
        dict: ``path``, ``generated`` (False if it was up to date),
        ``num_train``, ``num_val``, ``num_instances``, ``bytes``, ``seconds``.
    """
    out_dir = Path(out_dir)
    params = dict(
        dataset='coco', num_train=int(num_train), num_val=int(num_val),
        seed=int(seed))
    splits = (('train', int(num_train)), ('val', int(num_val)))
    files = ['.gitignore']
    for split, n in splits:
        files += [f'{split}/{_image_name(i)}.jpg' for i in range(n)]
        files.append(f'annotations/instances_{split}.json')

    def writer():
        counts = {}
        for split, n in splits:
            images, annotations = [], []
            for i in range(n):
                img, objects = generate_scene(seed, 'coco', split, i)
                name = f'{_image_name(i)}.jpg'
                write(out_dir / split / name, jpeg_bytes(img))
                images.append(
                    dict(id=i + 1, file_name=name, height=img.shape[0],
                         width=img.shape[1]))
                for obj in objects:
                    annotations.append(
                        dict(id=len(annotations) + 1, image_id=i + 1,
                             category_id=obj['label'] + 1,
                             segmentation=[obj['polygon']],
                             area=obj['area'], bbox=obj['bbox'], iscrowd=0))
            coco = dict(
                info=dict(
                    description=f'mmstvit toy_coco {split} (synthetic shapes)',
                    version=GENERATOR_VERSION),
                licenses=[],
                images=images,
                annotations=annotations,
                categories=_coco_categories())
            write(out_dir / f'annotations/instances_{split}.json',
                   json.dumps(coco, separators=(',', ':')).encode())
            counts[f'num_{split}'] = n
            counts[f'num_instances_{split}'] = len(annotations)
        counts['num_instances'] = (
            counts['num_instances_train'] + counts['num_instances_val'])
        return counts

    return generate(out_dir, params, files, writer, force)


def generate_toy_ade(out_dir, num_train=DEFAULT_NUM_TRAIN,
                     num_val=DEFAULT_NUM_VAL, seed=DEFAULT_SEED, force=False):
    """Writes (or keeps) the ADE20K-layout semantic segmentation toy set.

    Label maps are single-channel PNGs with values in
    ``0..len(TOY_SEG_CLASSES) - 1`` (0 = background; no ignore pixels).

    Args and returns as :func:`generate_toy_coco` (without instance counts).
    """
    out_dir = Path(out_dir)
    params = dict(
        dataset='ade', num_train=int(num_train), num_val=int(num_val),
        seed=int(seed))
    splits = (('train', 'training', int(num_train)),
              ('val', 'validation', int(num_val)))
    files = ['.gitignore']
    for _, folder, n in splits:
        for i in range(n):
            files.append(f'images/{folder}/{_image_name(i)}.jpg')
            files.append(f'annotations/{folder}/{_image_name(i)}.png')

    def writer():
        counts = {}
        for split, folder, n in splits:
            for i in range(n):
                img, objects = generate_scene(seed, 'ade', split, i)
                name = _image_name(i)
                write(out_dir / f'images/{folder}/{name}.jpg',
                       jpeg_bytes(img))
                write(out_dir / f'annotations/{folder}/{name}.png',
                       png_bytes(label_map(img.shape[:2], objects)))
            counts[f'num_{split}'] = n
        return counts

    return generate(out_dir, params, files, writer, force)


def generate_toy_cls(out_dir, num_train=DEFAULT_CLS_NUM_TRAIN,
                     num_val=DEFAULT_CLS_NUM_VAL, seed=DEFAULT_SEED,
                     force=False):
    """Writes (or keeps) the ImageNet-style toy classification set.

    The layout is what mmpretrain's ``CustomDataset`` reads, with or without
    an annotation file::

        dict(type='CustomDataset', data_root=out_dir, data_prefix='train')
        dict(type='CustomDataset', data_root=out_dir,
             ann_file='meta/val.txt', data_prefix='val')

    Class ``i`` (:data:`TOY_CLS_CLASSES`) is the folder ``train/<name>``,
    and every third image belongs to it, so the classes are balanced.

    Args and returns as :func:`generate_toy_coco` (without instance counts).
    """
    out_dir = Path(out_dir)
    params = dict(
        dataset='cls', num_train=int(num_train), num_val=int(num_val),
        seed=int(seed), side=CLS_IMAGE_SIDE)
    splits = (('train', int(num_train)), ('val', int(num_val)))

    def rel(i):
        return (f'{TOY_CLS_CLASSES[i % len(TOY_CLS_CLASSES)]}/'
                f'{_image_name(i)}.jpg')

    files = ['.gitignore']
    for split, n in splits:
        files += [f'{split}/{rel(i)}' for i in range(n)]
        files.append(f'meta/{split}.txt')

    def writer():
        counts = {}
        for split, n in splits:
            lines = []
            for i in range(n):
                img, label = generate_cls_image(seed, split, i)
                write(out_dir / split / rel(i), jpeg_bytes(img))
                lines.append(f'{rel(i)} {label}\n')
            write(out_dir / f'meta/{split}.txt', ''.join(lines).encode())
            counts[f'num_{split}'] = n
        return counts

    return generate(out_dir, params, files, writer, force)


def generate_toy_data(root='data', force=False, num_train=DEFAULT_NUM_TRAIN,
                      num_val=DEFAULT_NUM_VAL, seed=DEFAULT_SEED,
                      with_cls=False):
    """Makes sure ``<root>/toy_coco`` and ``<root>/toy_ade`` exist (and
    ``<root>/toy_cls`` with ``with_cls=True``).

    Cheap when the data are already there (manifest check only).

    Args:
        root (str | Path): Parent folder, ``data`` by default.
        force (bool): Regenerate even when up to date.
        num_train (int): Training images per dataset.
        num_val (int): Validation images per dataset.
        seed (int): Global seed; train and val use different streams.
        with_cls (bool): Also write the classification set
            (:func:`generate_toy_cls`, its own default sizes).

    Returns:
        dict: ``{'toy_coco': report, 'toy_ade': report}`` as returned by
        :func:`generate_toy_coco` and :func:`generate_toy_ade` (and
        ``'toy_cls'``).
    """
    root = Path(root)
    kw = dict(num_train=num_train, num_val=num_val, seed=seed, force=force)
    reports = {
        TOY_COCO_DIR: generate_toy_coco(root / TOY_COCO_DIR, **kw),
        TOY_ADE_DIR: generate_toy_ade(root / TOY_ADE_DIR, **kw),
    }
    if with_cls:
        reports[TOY_CLS_DIR] = generate_toy_cls(
            root / TOY_CLS_DIR, seed=seed, force=force)
    return reports


def format_report(reports):
    """Human-readable lines for :func:`generate_toy_data`'s result."""
    lines = []
    for name, r in reports.items():
        what = (f'wrote {r.get("num_train", "?")} train + '
                f'{r.get("num_val", "?")} val images')
        if 'num_instances' in r:
            what += f', {r["num_instances"]} instances'
        mb = r['bytes'] / 2**20
        if r['generated']:
            lines.append(f'{name}: {what} -> {r["path"]} '
                         f'({mb:.1f} MiB, {r["seconds"]:.1f} s)')
        else:
            lines.append(f'{name}: up to date in {r["path"]} ({mb:.1f} MiB, '
                         f'generator v{GENERATOR_VERSION}); '
                         '--force regenerates')
    return lines


def main(argv=None):
    """Command line entry point; see ``--help``."""
    parser = argparse.ArgumentParser(
        description='Write the deterministic toy COCO instance segmentation '
        'and ADE20K-layout semantic segmentation data sets.')
    parser.add_argument('--out', default='data',
                        help='parent folder (default: data)')
    parser.add_argument('--force', action='store_true',
                        help='regenerate even if the data are up to date')
    parser.add_argument('--num-train', type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument('--num-val', type=int, default=DEFAULT_NUM_VAL)
    parser.add_argument('--seed', type=int, default=DEFAULT_SEED)
    parser.add_argument(
        '--with-cls', action='store_true',
        help=f'also write the ImageNet-style classification set {TOY_CLS_DIR}'
        f' ({DEFAULT_CLS_NUM_TRAIN} train + {DEFAULT_CLS_NUM_VAL} val '
        f'{CLS_IMAGE_SIDE}x{CLS_IMAGE_SIDE} images)')
    args = parser.parse_args(argv)
    if args.num_train < 1 or args.num_val < 1:
        parser.error('--num-train and --num-val must be at least 1')
    reports = generate_toy_data(
        args.out, force=args.force, num_train=args.num_train,
        num_val=args.num_val, seed=args.seed, with_cls=args.with_cls)
    for line in format_report(reports):
        print(line)
    coco, ade = (os.path.join(args.out, d, '') for d in (TOY_COCO_DIR,
                                                          TOY_ADE_DIR))
    print(f'detection:    data_root={coco!r}, ann_file='
          "'annotations/instances_{train,val}.json', "
          "data_prefix=dict(img='{train,val}/'), "
          f'classes={TOY_COCO_CLASSES}')
    print(f'segmentation: data_root={ade!r}, '
          "img_path='images/{training,validation}', "
          "seg_map_path='annotations/{training,validation}', "
          f'classes={TOY_SEG_CLASSES}, reduce_zero_label=False')
    if args.with_cls:
        cls = os.path.join(args.out, TOY_CLS_DIR, '')
        print(f"classification: type='CustomDataset', data_root={cls!r}, "
              "data_prefix='{train,val}' (optionally "
              "ann_file='meta/{train,val}.txt'), "
              f'classes={TOY_CLS_CLASSES}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
