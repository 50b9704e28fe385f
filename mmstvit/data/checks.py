# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Cheap data checks that run before training and fail with a useful message.

Each check raises :class:`DataError` (a ``ValueError``) whose message says
what is wrong, where, and how to fix it, instead of letting a missing folder
or a mislabelled PNG surface as an obscure error deep inside a data loader
(or, worse, as silently wrong training). Only numpy and Pillow are used.
"""
import json
import json.decoder
import json.scanner
import re
from collections import Counter
from pathlib import Path

import numpy as np


def _make_toy_data_command() -> str:
    from mmstvit.mim import installed
    # an installed package has no tools/ folder in sight of the user
    return 'python -m mmstvit make_toy_data' if installed() else \
        'python tools/misc/make_toy_data.py'


#: the command that writes the toy data sets, as the user types it
MAKE_TOY_DATA = _make_toy_data_command()
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


# JSON numbers parse to exactly these types (bool is a separate JSON type)
_NUMBER_TYPES = frozenset((int, float))
_WS_CHARS = frozenset(' \t\n\r')
_skip_ws = re.compile(r'[ \t\n\r]*').match
_COCO_KEYS = ('images', 'annotations', 'categories')
_IMAGE_KEYS = ('id', 'file_name', 'width', 'height')
_CATEGORY_KEYS = ('id', 'name')


class _IdEntries:
    """The checks of the ``images`` or ``categories`` entries, fed one
    entry at a time: keeps the ids and the positions of bad entries."""

    def __init__(self, key, required):
        self.key, self.required = key, required
        self.count = 0
        self.ids, self.bad = [], []

    def add(self, entry):
        if (type(entry) is dict and all(k in entry for k in self.required)
                and _is_int(entry['id'])):
            self.ids.append(entry['id'])
        else:
            self.bad.append(self.count)
        self.count += 1

    def id_set(self, path, fix):
        """The ids; raises on bad entries and duplicate ids."""
        if self.bad:
            raise DataError(
                f'{path}: entries lack {", ".join(self.required)} or have a '
                'non-integer id: '
                f'{_examples(f"{self.key}[{i}]" for i in self.bad)}. {fix}')
        ids = set(self.ids)
        if len(ids) != len(self.ids):
            dups = sorted(i for i, n in Counter(self.ids).items() if n > 1)
            raise DataError(f'{path}: duplicate {self.key} ids: '
                            f'{_examples(dups)}. {fix}')
        return ids


class _Annotations:
    """The checks of the ``annotations`` entries, fed one entry at a time.

    A parsed annotation (with its polygons, most of a COCO file) can be
    dropped as soon as :meth:`add` returns: only its id, image id and
    category id are kept, for :meth:`problems` to look up once images and
    categories are known. Messages are built for bad entries only.
    """

    _NOT_AN_OBJECT = object()

    def __init__(self):
        self.count = 0
        self.ids, self.image_ids, self.category_ids = [], [], []
        self.bad_box, self.bad_seg = [], []

    def add(self, ann):
        i = self.count
        self.count = i + 1
        if type(ann) is not dict:
            self.bad_box.append(f'annotations[{i}] (not an object)')
            self.image_ids.append(self._NOT_AN_OBJECT)
            self.category_ids.append(None)
            self.ids.append(None)
            return
        get = ann.get
        self.ids.append(get('id'))
        self.image_ids.append(get('image_id'))
        self.category_ids.append(get('category_id'))
        box = get('bbox')
        if not (type(box) is list and len(box) == 4
                and type(box[0]) in _NUMBER_TYPES
                and type(box[1]) in _NUMBER_TYPES
                and type(box[2]) in _NUMBER_TYPES
                and type(box[3]) in _NUMBER_TYPES):
            self.bad_box.append(f'{self._where(i)}: bbox {box!r}')
        seg = get('segmentation')
        if seg is None or type(seg) is dict:  # no mask, or an RLE
            return
        if type(seg) is list:
            issuperset = _NUMBER_TYPES.issuperset
            for poly in seg:
                if (type(poly) is not list or len(poly) < 6 or len(poly) % 2
                        or not issuperset(map(type, poly))):
                    break
            else:
                return
        self.bad_seg.append(self._where(i))

    def _where(self, i):
        return f'annotations[{i}] (id {self.ids[i]})'

    def problems(self, image_ids, cat_ids):
        """What is wrong with the entries fed, one phrase per kind."""
        unknown_img, unknown_cat = [], []
        skip = self._NOT_AN_OBJECT
        for i, (img, cat) in enumerate(
                zip(self.image_ids, self.category_ids)):
            if img is skip:
                continue
            try:
                known = img in image_ids and cat in cat_ids
            except TypeError:  # an unhashable id (a list, an object)
                known = False
            if known:
                continue
            if not _contains(image_ids, img):
                unknown_img.append(f'{self._where(i)}: image_id {img!r}')
            if not _contains(cat_ids, cat):
                unknown_cat.append(f'{self._where(i)}: category_id {cat!r}')
        problems = []
        if unknown_img:
            problems.append('annotations refer to image ids missing from '
                            f'"images": {_examples(unknown_img)}')
        if unknown_cat:
            problems.append('annotations refer to category ids missing from '
                            f'"categories" (ids {sorted(cat_ids)}): '
                            f'{_examples(unknown_cat)}')
        if self.bad_box:
            problems.append('bbox must be [x, y, w, h] numbers: '
                            f'{_examples(self.bad_box)}')
        if self.bad_seg:
            problems.append('segmentation must be a list of polygons '
                            '[x0, y0, x1, y1, ...] with >= 3 points, or an '
                            f'RLE dict: {_examples(self.bad_seg)}')
        return problems


def _contains(ids, value):
    try:
        return value in ids
    except TypeError:
        return False


class _NotFastPath(Exception):
    """The text is not a JSON object that :func:`_parse_coco` reads (or is
    broken where it reads it): ``json.loads`` decides what it is."""


def _scan_array(text, i, scan, add):
    """Feeds each element of the JSON array at ``text[i] == '['`` to
    ``add`` as soon as it is parsed; returns the index after the ``]``."""
    i = _skip_ws(text, i + 1).end()
    if text[i:i + 1] == ']':
        return i + 1
    while True:
        try:
            value, i = scan(text, i)
        except StopIteration as e:  # as json.JSONDecoder.raw_decode says it
            raise json.JSONDecodeError('Expecting value', text,
                                       e.value) from None
        add(value)
        c = text[i:i + 1]
        if c in _WS_CHARS:
            i = _skip_ws(text, i).end()
            c = text[i:i + 1]
        if c == ']':
            return i + 1
        if c != ',':
            raise _NotFastPath
        i += 1
        if text[i:i + 1] in _WS_CHARS:
            i = _skip_ws(text, i).end()


def _parse_coco(text, streamed):
    """Parses a JSON object like ``json.loads``, except that the arrays under
    the keys of ``streamed`` (a key -> checker factory dict) are not built:
    each element goes to ``checker.add`` once parsed and is then dropped;
    the checker stands in for the array in the result.

    json's own scanner parses every value and element, so errors inside them
    are ``json.JSONDecodeError`` s with json's message and position; for
    anything else (not an object, a broken delimiter at this level) it
    raises :class:`_NotFastPath`.
    """
    scan = json.scanner.make_scanner(json.JSONDecoder())
    i = _skip_ws(text, 0).end()
    if text[i:i + 1] != '{':
        raise _NotFastPath
    data = {}
    i = _skip_ws(text, i + 1).end()
    if text[i:i + 1] == '}':
        i += 1
    else:
        while True:
            if text[i:i + 1] != '"':
                raise _NotFastPath
            key, i = json.decoder.scanstring(text, i + 1)
            i = _skip_ws(text, i).end()
            if text[i:i + 1] != ':':
                raise _NotFastPath
            i = _skip_ws(text, i + 1).end()
            if key in streamed and text[i:i + 1] == '[':
                checker = streamed[key]()
                i = _scan_array(text, i, scan, checker.add)
                data[key] = checker
            else:
                try:
                    data[key], i = scan(text, i)
                except StopIteration as e:
                    raise json.JSONDecodeError('Expecting value', text,
                                               e.value) from None
            i = _skip_ws(text, i).end()
            c = text[i:i + 1]
            if c == '}':
                i += 1
                break
            if c != ',':
                raise _NotFastPath
            i = _skip_ws(text, i + 1).end()
    if _skip_ws(text, i).end() != len(text):
        raise _NotFastPath
    return data


def _load_coco(path, fix):
    """The top-level object of a COCO file, with ``images`` and
    ``annotations`` (where they are arrays) as checkers fed entry by entry,
    so peak memory is about twice the file size, not the whole parsed
    file (pycocotools' load holds that and its index)."""
    with open(path, 'rb') as f:
        text = f.read()
    try:  # as json.loads decodes bytes
        text = text.decode(json.detect_encoding(text), 'surrogatepass')
    except UnicodeDecodeError as e:
        raise DataError(f'COCO annotation file {path} is not valid JSON '
                        f'({e}). {fix}') from None
    streamed = dict(
        images=lambda: _IdEntries('images', _IMAGE_KEYS),
        annotations=_Annotations)
    try:
        try:
            return _parse_coco(text, streamed)
        except _NotFastPath:
            # json's own verdict (as json.loads gives it for bytes)
            return json.JSONDecoder().decode(text)
    except ValueError as e:
        raise DataError(f'COCO annotation file {path} is not valid JSON '
                        f'({e}). {fix}') from None


def _checkers(data, path, fix):
    """The checker of each COCO key: fed while parsing, or fed here."""
    checkers = {}
    for key in _COCO_KEYS:
        value = data[key]
        if isinstance(value, (_IdEntries, _Annotations)):
            checkers[key] = value  # fed while parsing
            continue
        if not isinstance(value, list):
            raise DataError(f'{path}: "{key}" must be a list, got '
                            f'{type(value).__name__}. {fix}')
        checker = _Annotations() if key == 'annotations' else _IdEntries(
            key, _IMAGE_KEYS if key == 'images' else _CATEGORY_KEYS)
        for entry in value:
            checker.add(entry)
        checkers[key] = checker
    return checkers


def check_coco_annotation(path):
    """Checks that a file is a usable COCO instance annotation file.

    Looks at the structure only (no images are opened): the top-level
    ``images``, ``annotations`` and ``categories`` lists, unique image and
    category ids, and that every annotation refers to a known image id and
    category id, has a 4-number ``bbox`` and, if present, a polygon
    ``segmentation`` with an even number (>= 6) of coordinates or an RLE
    dict.

    The file is parsed once, with json's own scanner, one image and one
    annotation at a time: the check takes less time and memory than
    loading the file with pycocotools (see
    ``tools/analysis_tools/benchmark_data_check.py``).

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
    data = _load_coco(path, fix)
    if not isinstance(data, dict):
        raise DataError(f'{path} holds a JSON {type(data).__name__}, not a '
                        'COCO object with "images", "annotations" and '
                        f'"categories". {fix}')
    missing = [k for k in _COCO_KEYS if k not in data]
    if missing:
        raise DataError(f'{path} is not a COCO instances file: it lacks '
                        f'{", ".join(repr(k) for k in missing)} (has '
                        f'{_examples(sorted(map(repr, data)))}). {fix}')
    checkers = _checkers(data, path, fix)
    categories = data['categories']
    del data
    image_ids = checkers['images'].id_set(path, fix)
    cat_ids = checkers['categories'].id_set(path, fix)
    if not categories:
        raise DataError(f'{path}: "categories" is empty. {fix}')
    anns = checkers['annotations']
    problems = anns.problems(image_ids, cat_ids)
    if problems:
        raise DataError(f'{path} is not a valid COCO instances file: '
                        + '; '.join(problems) + f'. {fix}')
    cats = sorted(categories, key=lambda c: c['id'])
    return dict(
        num_images=checkers['images'].count,
        num_annotations=anns.count,
        num_categories=len(cats),
        categories=tuple(c['name'] for c in cats))


def _labels_out_of_range(p, num_classes, ignore_index):
    """The values of label map ``p`` out of range (a list, maybe empty)."""
    from PIL import Image
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
    return values[(values >= num_classes)
                  & (values != ignore_index)].tolist()


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
    bad = [(p, wrong) for p in files
           for wrong in [_labels_out_of_range(p, num_classes, ignore_index)]
           if wrong]
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
