# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""check_coco_annotation parses a COCO file one image and one annotation at
a time; it must say exactly what the straightforward check (json.load of
the whole file, then a walk over it; kept below as ``reference_check``)
says, on good files and on every kind of broken one, including every
truncation of a file. Like tests/test_toy_data.py, the modules are loaded
from their files, so neither torch nor OpenMMLab is needed.
"""
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from test_toy_data import checks, toy  # loaded from their files

DataError = checks.DataError


def reference_check(path):
    """The check as it was before it streamed: whole-file json.load."""
    _examples, _is_int, _is_number = (checks._examples, checks._is_int,
                                       checks._is_number)
    path = Path(path)
    fix = ('Point `ann_file` (relative to `data_root`) at a COCO instances '
           f'file, or run `{checks.MAKE_TOY_DATA}` for the toy one '
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


def outcome(check, path):
    try:
        return 'ok', check(path)
    except DataError as e:
        return 'DataError', str(e)
    except Exception as e:  # noqa: B902  (compared, not hidden)
        return type(e).__name__, str(e)


def assert_same(path):
    ours, ref = outcome(checks.check_coco_annotation,
                        path), outcome(reference_check, path)
    assert ours == ref, path.read_bytes()[:300]
    return ours


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    """The toy val annotations (3 images) as a dict, with one crowd RLE
    annotation and a two-polygon one added."""
    root = tmp_path_factory.mktemp('coco')
    toy.generate_toy_coco(root, num_train=1, num_val=3)
    data = json.loads((root / 'annotations/instances_val.json').read_text())
    anns = data['annotations']
    anns.append(dict(anns[0], id=1000, iscrowd=1,
                     segmentation=dict(counts=[3, 4, 5], size=[8, 8])))
    anns.append(dict(anns[0], id=1001,
                     segmentation=[[1, 2, 3.5, 4, 5, 6], [0, 0, 1, 1, 2, 0]]))
    return data


def write(tmp_path, name, obj, **dump):
    path = tmp_path / name
    if isinstance(obj, (str, bytes)):
        (path.write_bytes if isinstance(obj, bytes) else path.write_text)(obj)
    else:
        path.write_text(json.dumps(obj, **dump))
    return path


def streamed(path):
    """Whether the check read the file's images and annotations one at a
    time (instead of building the lists, as json.load does)."""
    data = checks._load_coco(path, 'fix')
    return (isinstance(data['images'], checks._IdEntries)
            and isinstance(data['annotations'], checks._Annotations))


def test_good_files_compact_pretty_and_odd_whitespace(coco, tmp_path):
    info = assert_same(write(tmp_path, 'a.json', coco,
                             separators=(',', ':')))
    assert info[0] == 'ok' and info[1]['num_annotations'] == len(
        coco['annotations'])
    assert assert_same(write(tmp_path, 'b.json', coco, indent=2)) == info
    text = json.dumps(coco, indent='\t').replace('\n', '\r\n ')
    assert assert_same(write(tmp_path, 'c.json', '\n ' + text + ' \n')) == \
        info
    # utf-8 with a BOM, utf-16: decoded as json.load decodes bytes
    raw = json.dumps(coco).encode()
    assert assert_same(write(tmp_path, 'd.json', b'\xef\xbb\xbf' + raw)) == \
        info
    assert assert_same(write(tmp_path, 'e.json', json.dumps(coco).encode(
        'utf-16'))) == info
    for name in 'abcde':
        assert streamed(tmp_path / f'{name}.json'), name
    # empty arrays, and keys in another order (categories first)
    reordered = dict(categories=coco['categories'], annotations=[],
                     images=[])
    assert assert_same(write(tmp_path, 'f.json', reordered))[0] == 'ok'


def mutations(coco):
    """(name, broken copy of ``coco``) pairs, one per kind of problem."""

    def edit(fn):
        data = json.loads(json.dumps(coco))
        fn(data)
        return data

    def set_ann(i, **kv):
        return lambda d: d['annotations'][i].update(kv)

    yield 'top-level list', [coco]
    yield 'no annotations', {k: v for k, v in coco.items()
                             if k != 'annotations'}
    yield 'no keys', {'items': []}
    yield 'images is a dict', edit(lambda d: d.update(images={}))
    yield 'annotations is a string', edit(lambda d: d.update(annotations='x'))
    yield 'categories empty', edit(lambda d: d.update(categories=[]))
    yield 'image without file_name', edit(
        lambda d: d['images'][1].pop('file_name'))
    yield 'image id a string', edit(lambda d: d['images'][0].update(id='1'))
    yield 'image id true', edit(lambda d: d['images'][0].update(id=True))
    yield 'image not an object', edit(lambda d: d['images'].append(7))
    yield 'duplicate image id', edit(
        lambda d: d['images'].append(dict(d['images'][0])))
    yield 'duplicate category id', edit(
        lambda d: d['categories'].append(dict(d['categories'][0])))
    yield 'category without name', edit(
        lambda d: d['categories'][2].pop('name'))
    yield 'unknown image id', edit(set_ann(0, image_id=999))
    yield 'unknown category id', edit(set_ann(1, category_id=42))
    yield 'no image_id', edit(lambda d: d['annotations'][2].pop('image_id'))
    yield 'annotation not an object', edit(
        lambda d: d['annotations'].insert(1, [1, 2]))
    yield 'annotation null', edit(lambda d: d['annotations'].append(None))
    yield 'bbox of 3', edit(set_ann(0, bbox=[1, 2, 3]))
    yield 'bbox with a string', edit(set_ann(0, bbox=[1, 2, '3', 4]))
    yield 'bbox with a bool', edit(set_ann(1, bbox=[1, 2, True, 4]))
    yield 'bbox a dict', edit(set_ann(1, bbox={'x': 1}))
    yield 'no bbox', edit(lambda d: d['annotations'][0].pop('bbox'))
    yield 'polygon of 2 points', edit(set_ann(0, segmentation=[[1, 2, 3,
                                                                4]]))
    yield 'polygon odd length', edit(
        set_ann(0, segmentation=[[1, 2, 3, 4, 5, 6, 7]]))
    yield 'polygon with a bool', edit(
        set_ann(0, segmentation=[[1, 2, 3, 4, 5, False]]))
    yield 'polygon with null', edit(
        set_ann(0, segmentation=[[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, None, 6]]))
    yield 'polygons not nested', edit(
        set_ann(0, segmentation=[1, 2, 3, 4, 5, 6]))
    yield 'segmentation a string', edit(set_ann(0, segmentation='rle'))
    yield 'segmentation null is fine', edit(set_ann(0, segmentation=None))
    yield 'empty segmentation is fine', edit(set_ann(0, segmentation=[]))
    yield 'NaN coordinates are numbers', edit(
        set_ann(0, segmentation=[[float('nan')] * 6]))

    def many_bad(d):
        for i, a in enumerate(d['annotations']):
            a.update(image_id=-i, bbox=None)
        d['annotations'] *= 3

    def all_wrong(d):
        set_ann(0, image_id=5, category_id=9, bbox=[], segmentation=[[]])(d)
        d['annotations'].append('x')

    yield 'many bad entries', edit(many_bad)
    yield 'everything wrong at once', edit(all_wrong)


def test_same_verdict_on_every_kind_of_problem(coco, tmp_path):
    verdicts = Counter()
    for k, (name, data) in enumerate(mutations(coco)):
        for dump in (dict(separators=(',', ':')), dict(indent=1)):
            path = write(tmp_path, f'{k}.json', data, **dump)
            kind, message = assert_same(path)
            verdicts[kind] += 1
            if name.endswith('is fine'):
                assert kind == 'ok', (name, message)
            elif kind != 'ok':
                assert str(path) in message, (name, message)
    assert verdicts['DataError'] >= 2 * 30 and set(verdicts) == {
        'ok', 'DataError'}, verdicts


def test_same_verdict_on_duplicate_keys(coco, tmp_path):
    """json keeps the last of repeated keys; so does the streamed parse."""
    body = json.dumps(coco)[1:-1]
    bad = json.dumps(dict(annotations=[{'bbox': 1}]))[1:-1]
    bad_images = json.dumps(dict(images=[{'id': 'x'}]))[1:-1]
    for text in ('{%s,%s}' % (bad, body), '{%s,%s}' % (body, bad),
                 '{%s,%s}' % (bad_images, body),
                 '{%s,%s}' % (body, bad_images)):
        assert_same(write(tmp_path, 'dup.json', text))


def test_same_message_for_every_truncation(coco, tmp_path):
    """A download cut short anywhere: the same 'not valid JSON' message,
    with json's own reason and position."""
    small = json.loads(json.dumps(coco))
    for ann in small['annotations']:  # short polygons: fewer cut points
        if isinstance(ann['segmentation'], list):
            ann['segmentation'] = [p[:8] for p in ann['segmentation']]
    text = json.dumps(small, indent=1)
    path = tmp_path / 'cut.json'
    kinds = Counter()
    for n in range(len(text)):
        path.write_text(text[:n])
        kind, message = assert_same(path)
        assert kind == 'DataError' and 'not valid JSON' in message, n
        kinds[message.split('(', 1)[1].split(':', 1)[0]] += 1
    assert len(kinds) >= 4, kinds  # several of json's reasons were met


def test_same_verdict_after_random_damage(coco, tmp_path):
    """A character replaced, inserted or deleted at random places."""
    text = json.dumps(coco, separators=(',', ':'))
    rng = random.Random(0)
    path = tmp_path / 'damaged.json'
    kinds = Counter()
    for _ in range(1500):
        i = rng.randrange(len(text))
        c = rng.choice('{}[],:" \n0-1.5eEtrufalsnx\\')
        op = rng.randrange(3)
        damaged = (text[:i] + c + text[i + 1:], text[:i] + c + text[i:],
                   text[:i] + text[i + 1:])[op]
        path.write_text(damaged)
        kinds[assert_same(path)[0]] += 1
    assert kinds['ok'] and kinds['DataError'] > 500, kinds


def test_unhashable_ids_are_reported_not_crashed(coco, tmp_path):
    """An id that is a list or an object is an unknown id (the whole-file
    check crashed with a TypeError on it)."""
    data = json.loads(json.dumps(coco))
    data['annotations'][0]['image_id'] = [1]
    data['annotations'][1]['category_id'] = {'id': 1}
    path = write(tmp_path, 'unhashable.json', data)
    assert outcome(reference_check, path)[0] == 'TypeError'
    with pytest.raises(DataError) as e:
        checks.check_coco_annotation(path)
    msg = str(e.value)
    assert 'annotations[0] (id' in msg and 'image_id [1]' in msg
    assert "category_id {'id': 1}" in msg


def test_non_json_and_missing_files(tmp_path):
    for raw in (b'', b'   ', b'\xff\xfe\xfd', b'nul', b'{"images": [',
                b'{"a": 1} x', b'[1, 2', b'"text"', b'{"images": [] ,}'):
        path = write(tmp_path, 'x.json', raw)
        kind, message = assert_same(path)
        assert kind == 'DataError', (raw, message)
    assert assert_same(tmp_path / 'missing.json')[0] == 'DataError'
    assert 'is a folder' in assert_same(tmp_path)[1]
