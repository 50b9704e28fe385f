# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Cheap data checks that run before training and fail with a useful message.

Each check raises :class:`DataError` (a ``ValueError``) whose message says
what is wrong, where, and how to fix it, instead of letting a missing folder
or a mislabelled PNG surface as an obscure error deep inside a data loader
(or, worse, as silently wrong training). Only numpy and Pillow are used.
"""
import json
from collections import Counter
from pathlib import Path

import numpy as np

MAKE_TOY_DATA = 'python tools/misc/make_toy_data.py'
_MAX_LISTED = 5


class DataError(ValueError):
    """The data on disk cannot be used as configured."""


def _examples(items, limit=_MAX_LISTED):
    items = list(items)
    shown = ', '.join(str(i) for i in items[:limit])
    if len(items) > limit:
        shown += f', ... ({len(items)} in all)'
    return shown


def check_data_root(path, what='data_root'):
    """Checks that a dataset folder exists.

    Args:
        path (str | Path): The folder.
        what (str): The config key that set it, named in the message, e.g.
            ``'train_dataloader.dataset.data_root'``.

    Returns:
        Path: ``path``.

    Raises:
        DataError: ``path`` is empty, missing or not a folder.
    """
    hint = (f'Set `{what}` in your config to the folder that holds the '
            f'data, or run `{MAKE_TOY_DATA}` to create the toy data sets '
            '(data/toy_coco and data/toy_ade).')
    if path is None or str(path) == '':
        raise DataError(f'{what} is not set. {hint}')
    p = Path(path)
    if not p.exists():
        raise DataError(f'{what} = {str(path)!r} does not exist '
                        f'(resolved to {p.resolve()}). {hint}')
    if not p.is_dir():
        raise DataError(
            f'{what} = {str(path)!r} is a file, not a folder. {hint}')
    return p


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_coco_annotation(path):
    """Checks that a file is a usable COCO instance annotation file.

    Looks at the structure only (no images are opened): the top-level
    ``images``, ``annotations`` and ``categories`` lists, unique image and
    category ids, and that every annotation refers to a known image id and
    category id, has a 4-number ``bbox`` and, if present, a polygon
    ``segmentation`` with an even number (>= 6) of coordinates or an RLE
    dict.

    Args:
        path (str | Path): The ``.json`` file.

    Returns:
        dict: ``num_images``, ``num_annotations``, ``num_categories`` and
        ``categories`` (the names, in id order).

    Raises:
        DataError: naming the file, the offending entries and the fix.
    """
    path = Path(path)
    fix = ('Point `ann_file` (relative to `data_root`) at a COCO instances '
           f'file, or run `{MAKE_TOY_DATA}` for the toy one '
           '(data/toy_coco/annotations/instances_{train,val}.json).')
    if not path.is_file():
        why = 'is a folder' if path.is_dir() else 'does not exist'
        raise DataError(f'COCO annotation file {path} {why}. {fix}')
    try:
        with open(path, 'rb') as f:
            data = json.load(f)
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(f'COCO annotation file {path} is not valid JSON '
                        f'({e}). {fix}') from None
    if not isinstance(data, dict):
        raise DataError(f'{path} holds a JSON {type(data).__name__}, not a '
                        'COCO object with "images", "annotations" and '
                        f'"categories". {fix}')
    missing = [k for k in ('images', 'annotations', 'categories')
               if k not in data]
    if missing:
        raise DataError(f'{path} is not a COCO instances file: it lacks '
                        f'{", ".join(repr(k) for k in missing)} (has '
                        f'{_examples(sorted(map(repr, data)))}). {fix}')
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(data[key], list):
            raise DataError(f'{path}: "{key}" must be a list, got '
                            f'{type(data[key]).__name__}. {fix}')

    def ids_of(key, required):
        ids, bad = [], []
        for i, entry in enumerate(data[key]):
            if (not isinstance(entry, dict)
                    or any(k not in entry for k in required)
                    or not _is_int(entry['id'])):
                bad.append(f'{key}[{i}]')
            else:
                ids.append(entry['id'])
        if bad:
            raise DataError(
                f'{path}: entries lack {", ".join(required)} or have a '
                f'non-integer id: {_examples(bad)}. {fix}')
        dups = sorted(i for i, n in Counter(ids).items() if n > 1)
        if dups:
            raise DataError(f'{path}: duplicate {key} ids: '
                            f'{_examples(dups)}. {fix}')
        return set(ids)

    image_ids = ids_of('images', ('id', 'file_name', 'width', 'height'))
    cat_ids = ids_of('categories', ('id', 'name'))
    if not data['categories']:
        raise DataError(f'{path}: "categories" is empty. {fix}')

    unknown_img, unknown_cat, bad_box, bad_seg = [], [], [], []
    for i, ann in enumerate(data['annotations']):
        if not isinstance(ann, dict):
            bad_box.append(f'annotations[{i}] (not an object)')
            continue
        where = f'annotations[{i}] (id {ann.get("id")})'
        if ann.get('image_id') not in image_ids:
            unknown_img.append(f'{where}: image_id {ann.get("image_id")!r}')
        if ann.get('category_id') not in cat_ids:
            unknown_cat.append(
                f'{where}: category_id {ann.get("category_id")!r}')
        box = ann.get('bbox')
        if (not isinstance(box, list) or len(box) != 4
                or not all(_is_number(v) for v in box)):
            bad_box.append(f'{where}: bbox {box!r}')
        seg = ann.get('segmentation')
        if seg is None or isinstance(seg, dict):
            continue
        if not isinstance(seg, list) or not all(
                isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                and all(_is_number(v) for v in p) for p in seg):
            bad_seg.append(where)
    problems = []
    if unknown_img:
        problems.append('annotations refer to image ids missing from '
                        f'"images": {_examples(unknown_img)}')
    if unknown_cat:
        problems.append('annotations refer to category ids missing from '
                        f'"categories" (ids {sorted(cat_ids)}): '
                        f'{_examples(unknown_cat)}')
    if bad_box:
        problems.append('bbox must be [x, y, w, h] numbers: '
                        f'{_examples(bad_box)}')
    if bad_seg:
        problems.append('segmentation must be a list of polygons '
                        '[x0, y0, x1, y1, ...] with >= 3 points, or an RLE '
                        f'dict: {_examples(bad_seg)}')
    if problems:
        raise DataError(f'{path} is not a valid COCO instances file: '
                        + '; '.join(problems) + f'. {fix}')
    cats = sorted(data['categories'], key=lambda c: c['id'])
    return dict(
        num_images=len(data['images']),
        num_annotations=len(data['annotations']),
        num_categories=len(cats),
        categories=tuple(c['name'] for c in cats))


def check_seg_label_maps(ann_dir, num_classes, ignore_index=255,
                         max_files=None, suffix='.png'):
    """Checks that semantic label maps hold class indices in range.

    Every value must be in ``0..num_classes-1`` or equal ``ignore_index``
    (values are taken as stored, i.e. before any ``reduce_zero_label``).

    Args:
        ann_dir (str | Path): Folder of label maps (searched recursively).
        num_classes (int): Number of classes the model predicts.
        ignore_index (int): The value that marks unlabelled pixels.
        max_files (int, optional): Check only the first ``max_files`` maps
            (sorted by path) to keep start-up fast on big data sets.
        suffix (str): Label map file ending.

    Returns:
        int: The number of files checked.

    Raises:
        DataError: the folder is missing or has no label maps, a map is not
            a single-channel image, or values are out of range (naming the
            files and the values).
    """
    ann_dir = Path(ann_dir)
    if not ann_dir.is_dir():
        raise DataError(
            f'Label map folder {ann_dir} does not exist. Set `data_root` and '
            '`data_prefix.seg_map_path` in your config, or run '
            f'`{MAKE_TOY_DATA}` for the toy data (data/toy_ade).')
    files = sorted(p for p in ann_dir.rglob(f'*{suffix}') if p.is_file())
    if not files:
        raise DataError(f'No *{suffix} label maps in {ann_dir}. Check '
                        '`data_prefix.seg_map_path` and `seg_map_suffix`.')
    if max_files is not None:
        files = files[:max_files]
    from PIL import Image
    bad = []
    for p in files:
        try:
            with Image.open(p) as im:
                mode = im.mode
                arr = np.asarray(im)
        except OSError as e:
            raise DataError(f'Label map {p} cannot be read ({e}).') from None
        if arr.ndim != 2:
            raise DataError(
                f'Label map {p} has mode {mode!r} with {arr.shape[-1]} '
                'channels; label maps must be single-channel images whose '
                'pixel values are class indices (mode "L" or "P"), not '
                'colour visualisations.')
        values = np.unique(arr)
        wrong = values[(values >= num_classes) & (values != ignore_index)]
        if wrong.size:
            bad.append((p, wrong.tolist()))
    if bad:
        shown = '; '.join(
            f'{p} has {_examples(v)}' for p, v in bad[:_MAX_LISTED])
        if len(bad) > _MAX_LISTED:
            shown += f'; ... ({len(bad)} files in all)'
        top = max(max(v) for _, v in bad)
        raise DataError(
            f'Label values out of range for num_classes={num_classes} '
            f'(allowed 0..{num_classes - 1} and ignore_index={ignore_index})'
            f': {shown}. Fix: set num_classes (decode_head and '
            f'auxiliary_head) to at least {top + 1} and list that many '
            'classes, or if 0 means "unlabelled" (ADE20K style) use '
            'reduce_zero_label=True, or remap the label maps.')
    return len(files)


__all__ = [
    'DataError', 'check_data_root', 'check_coco_annotation',
    'check_seg_label_maps', 'MAKE_TOY_DATA'
]
