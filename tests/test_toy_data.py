# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The toy data generator and the data checks (numpy + Pillow + pycocotools).

The modules are loaded from their files so these tests need neither torch
nor the OpenMMLab packages that ``import mmstvit`` pulls in.
"""
import json
import os

import numpy as np
import pytest
from PIL import Image

from helpers import load_script

# (mmstvit/data as a package of its own: its modules import each other)
toy = load_script('tools/misc/make_toy_data.py').load_generator()
checks = load_script('mmstvit/data/checks.py', '_mmstvit_checks')

NUM_TRAIN, NUM_VAL = 8, 4


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy')
    toy.generate_toy_data(root, num_train=NUM_TRAIN, num_val=NUM_VAL)
    return root


def _all_files(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob('*')) if p.is_file()
    }


def test_layout(data_root):
    coco = data_root / toy.TOY_COCO_DIR
    ade = data_root / toy.TOY_ADE_DIR
    for split, n in (('train', NUM_TRAIN), ('val', NUM_VAL)):
        assert sorted(os.listdir(coco / split)) == [
            f'{i:06d}.jpg' for i in range(n)
        ]
        assert (coco / f'annotations/instances_{split}.json').is_file()
    for folder, n in (('training', NUM_TRAIN), ('validation', NUM_VAL)):
        imgs = sorted(p.stem for p in (ade / 'images' / folder).iterdir())
        segs = sorted(p.stem
                      for p in (ade / 'annotations' / folder).iterdir())
        assert imgs == segs == [f'{i:06d}' for i in range(n)]
    for d in (coco, ade):
        assert json.loads((d / toy.MARKER).read_text())['version'] == (
            toy.GENERATOR_VERSION)
        assert not (d / toy.IN_PROGRESS).exists()
        assert (d / '.gitignore').read_text().strip().endswith('*')


def test_deterministic(data_root, tmp_path):
    toy.generate_toy_data(tmp_path, num_train=NUM_TRAIN, num_val=NUM_VAL)
    assert _all_files(tmp_path) == _all_files(data_root)


def test_train_differs_from_val(data_root):
    coco = data_root / toy.TOY_COCO_DIR
    train = {p.read_bytes() for p in (coco / 'train').iterdir()}
    val = {p.read_bytes() for p in (coco / 'val').iterdir()}
    assert len(train) == NUM_TRAIN and len(val) == NUM_VAL
    assert not train & val
    ade = data_root / toy.TOY_ADE_DIR / 'images'
    assert not ({p.read_bytes() for p in (ade / 'training').iterdir()}
                & {p.read_bytes() for p in (ade / 'validation').iterdir()})
    # the two datasets use different streams too
    assert not train & {p.read_bytes() for p in (ade / 'training').iterdir()}


def test_coco_annotations_match_the_pixels(data_root):
    coco_api = pytest.importorskip('pycocotools.coco')
    root = data_root / toy.TOY_COCO_DIR
    for split, n in (('train', NUM_TRAIN), ('val', NUM_VAL)):
        ann_file = root / f'annotations/instances_{split}.json'
        summary = checks.check_coco_annotation(ann_file)
        assert summary['categories'] == toy.TOY_COCO_CLASSES
        coco = coco_api.COCO(str(ann_file))
        assert sorted(coco.getCatIds()) == [1, 2, 3]
        assert len(coco.getImgIds()) == n
        for img_id in coco.getImgIds():
            info = coco.loadImgs(img_id)[0]
            img = np.asarray(Image.open(root / split / info['file_name']))
            assert img.shape == (info['height'], info['width'], 3)
            assert 256 <= img.shape[0] <= 320 and 256 <= img.shape[1] <= 320
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
            assert 1 <= len(anns) <= toy.MAX_OBJECTS
            # the objects the generator painted, recomputed from the seed
            _, objects = toy.generate_scene(toy.DEFAULT_SEED, 'coco', split,
                                            img_id - 1)
            assert len(objects) == len(anns)
            covered = np.zeros(img.shape[:2], dtype=bool)
            for ann, obj in zip(anns, objects):
                assert ann['iscrowd'] == 0
                assert ann['category_id'] == obj['label'] + 1
                mask = coco.annToMask(ann).astype(bool)  # polygon -> pixels
                np.testing.assert_array_equal(mask, obj['mask'])
                assert not (mask & covered).any()  # visible parts only
                covered |= mask
                assert ann['area'] == mask.sum()
                rows = np.nonzero(mask.any(1))[0]
                cols = np.nonzero(mask.any(0))[0]
                assert ann['bbox'] == [
                    cols[0], rows[0], cols[-1] + 1 - cols[0],
                    rows[-1] + 1 - rows[0]
                ]
                assert max(ann['bbox'][2:]) >= 24  # not tiny
                # the pixels under the mask carry the class's colour family
                mean = img[mask].astype(float).mean(0)
                assert np.argmax(mean) == (0, 1, 2)[obj['label']]
            # the background is grey-ish: objects stand out by saturation
            hsv = np.asarray(Image.fromarray(img).convert('HSV'))
            assert (np.median(hsv[..., 1][covered])
                    > np.median(hsv[..., 1][~covered]) + 60)


def test_label_maps(data_root):
    ade = data_root / toy.TOY_ADE_DIR
    n_classes = len(toy.TOY_SEG_CLASSES)
    assert len(toy.TOY_SEG_PALETTE) == n_classes
    assert checks.check_seg_label_maps(ade / 'annotations',
                                       n_classes) == NUM_TRAIN + NUM_VAL
    seen = set()
    for folder, split in (('training', 'train'), ('validation', 'val')):
        for png in sorted((ade / 'annotations' / folder).iterdir()):
            im = Image.open(png)
            assert im.mode == 'L'
            seg = np.asarray(im)
            img = Image.open(ade / 'images' / folder / f'{png.stem}.jpg')
            assert seg.shape == (img.height, img.width)
            assert seg.max() < n_classes
            seen |= set(np.unique(seg).tolist())
            img_arr, objects = toy.generate_scene(toy.DEFAULT_SEED, 'ade',
                                                  split, int(png.stem))
            np.testing.assert_array_equal(
                seg, toy.label_map(img_arr.shape[:2], objects))
    assert 0 in seen and len(seen) >= 3


def test_mask_to_polygons_round_trip():
    mask_utils = pytest.importorskip('pycocotools.mask')
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = np.zeros((40, 50), dtype=bool)
        for _ in range(3):
            y, x = rng.integers(0, 35), rng.integers(0, 45)
            mask[y:y + rng.integers(2, 12), x:x + rng.integers(2, 12)] = True
        outers, holes = toy.mask_to_polygons(mask)
        if holes:
            continue
        rle = mask_utils.merge(mask_utils.frPyObjects(outers, 40, 50))
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool),
                                      mask)
    ring = np.zeros((8, 8), dtype=bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    outers, holes = toy.mask_to_polygons(ring)
    assert len(outers) == 1 and len(holes) == 1
    diagonal = np.zeros((5, 5), dtype=bool)
    diagonal[1, 1] = diagonal[2, 2] = True
    assert len(toy.mask_to_polygons(diagonal)[0]) == 2


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob('*') if p.is_file()}


def test_idempotent_and_regenerates(tmp_path):
    first = toy.generate_toy_data(tmp_path, num_train=3, num_val=2)
    assert all(r['generated'] for r in first.values())
    before = _mtimes(tmp_path)
    second = toy.generate_toy_data(tmp_path, num_train=3, num_val=2)
    assert not any(r['generated'] for r in second.values())
    assert second['toy_coco']['num_instances'] == (
        first['toy_coco']['num_instances'])
    assert _mtimes(tmp_path) == before

    # a file of the user's is never removed; a missing file of ours, a
    # changed size or version, or force=True triggers regeneration
    coco = tmp_path / toy.TOY_COCO_DIR
    mine = coco / 'train' / 'notes.txt'
    mine.write_text('keep me')
    (coco / 'val' / '000001.jpg').unlink()
    again = toy.generate_toy_coco(coco, num_train=3, num_val=2)
    assert again['generated'] and (coco / 'val' / '000001.jpg').is_file()

    smaller = toy.generate_toy_coco(coco, num_train=2, num_val=2)
    assert smaller['generated']
    assert not (coco / 'train' / '000002.jpg').exists()  # ours, stale
    assert mine.read_text() == 'keep me'

    marker = coco / toy.MARKER
    manifest = json.loads(marker.read_text())
    manifest['version'] = 'old'
    marker.write_text(json.dumps(manifest))
    assert toy.generate_toy_coco(coco, num_train=2, num_val=2)['generated']
    assert not toy.generate_toy_coco(coco, num_train=2,
                                     num_val=2)['generated']
    assert toy.generate_toy_coco(coco, num_train=2, num_val=2,
                                 force=True)['generated']


def test_cli(tmp_path, capsys):
    assert toy.main(['--out', str(tmp_path), '--num-train', '2',
                     '--num-val', '1']) == 0
    out = capsys.readouterr().out
    assert 'toy_coco: wrote 2 train + 1 val images' in out
    assert 'reduce_zero_label=False' in out
    toy.main(['--out', str(tmp_path), '--num-train', '2', '--num-val', '1'])
    assert 'up to date' in capsys.readouterr().out


def _hue_of_shape(path):
    """Mean hue (0..1) of the saturated pixels: the painted shape (the
    backgrounds are low-saturation)."""
    import colorsys
    rgb = np.asarray(Image.open(path).convert('RGB'), dtype=np.float32) / 255
    hsv = np.array([colorsys.rgb_to_hsv(*px) for px in rgb.reshape(-1, 3)])
    shape = hsv[hsv[:, 1] > 0.45]
    assert len(shape) > 100, path  # a shape 24-48 px across is there
    ang = shape[:, 0] * 2 * np.pi
    return (np.arctan2(np.sin(ang).mean(), np.cos(ang).mean()) /
            (2 * np.pi)) % 1.0


def test_toy_cls_layout_labels_and_determinism(tmp_path):
    out = tmp_path / 'a' / toy.TOY_CLS_DIR
    report = toy.generate_toy_cls(out, num_train=6, num_val=3)
    assert report['generated'] and report['num_train'] == 6
    classes = list(toy.TOY_CLS_CLASSES)
    # mmpretrain's CustomDataset sorts the class folders: same order
    assert sorted(os.listdir(out / 'train')) == classes
    for split, n in (('train', 6), ('val', 3)):
        lines = (out / 'meta' / f'{split}.txt').read_text().splitlines()
        assert len(lines) == n
        for i, line in enumerate(lines):
            rel, label = line.split()
            assert rel == f'{classes[int(label)]}/{i:06d}.jpg'
            img = Image.open(out / split / rel)
            assert img.size == (toy.CLS_IMAGE_SIDE, ) * 2
            # the image shows its class: the hue family of the label
            diff = abs(_hue_of_shape(out / split / rel) -
                       toy.CLASS_HUES[int(label)])
            assert min(diff, 1 - diff) < 0.1, (rel, diff)
        counts = [sum(int(ln.split()[1]) == c for ln in lines)
                  for c in range(len(classes))]
        assert max(counts) - min(counts) <= 1  # balanced
    files = _all_files(out)
    train = {v for k, v in files.items() if k.startswith('train/')}
    val = {v for k, v in files.items() if k.startswith('val/')}
    assert len(train) == 6 and len(val) == 3 and not train & val

    again = toy.generate_toy_data(tmp_path / 'b', num_train=1, num_val=1,
                                  with_cls=True)
    assert set(again) == {toy.TOY_COCO_DIR, toy.TOY_ADE_DIR, toy.TOY_CLS_DIR}
    # defaults are bigger: compare the first images, byte for byte
    other = tmp_path / 'b' / toy.TOY_CLS_DIR
    for rel in ('train/circle/000000.jpg', 'val/triangle/000002.jpg'):
        assert (other / rel).read_bytes() == files[rel]
    assert not toy.generate_toy_cls(out, num_train=6,
                                    num_val=3)['generated']


def test_cli_with_cls(tmp_path, capsys):
    assert toy.main(['--out', str(tmp_path), '--num-train', '1',
                     '--num-val', '1', '--with-cls']) == 0
    out = capsys.readouterr().out
    assert (f'toy_cls: wrote {toy.DEFAULT_CLS_NUM_TRAIN} train + '
            f'{toy.DEFAULT_CLS_NUM_VAL} val images') in out
    assert "type='CustomDataset'" in out


# ---------------------------------------------------------------- checks
def test_check_data_root(tmp_path):
    assert checks.check_data_root(tmp_path, 'data_root') == tmp_path
    with pytest.raises(checks.DataError) as e:
        checks.check_data_root(tmp_path / 'nope',
                               'train_dataloader.dataset.data_root')
    msg = str(e.value)
    assert 'does not exist' in msg
    assert 'train_dataloader.dataset.data_root' in msg
    assert 'python tools/misc/make_toy_data.py' in msg
    assert isinstance(e.value, ValueError)


def test_check_coco_annotation_errors(tmp_path, data_root):
    with pytest.raises(checks.DataError, match='does not exist'):
        checks.check_coco_annotation(tmp_path / 'missing.json')

    bad = tmp_path / 'bad.json'
    bad.write_text('{"images": [')
    with pytest.raises(checks.DataError, match='not valid JSON'):
        checks.check_coco_annotation(bad)

    no_anns = tmp_path / 'no_anns.json'
    no_anns.write_text(json.dumps(dict(images=[], categories=[])))
    with pytest.raises(checks.DataError, match="lacks 'annotations'"):
        checks.check_coco_annotation(no_anns)

    good = json.loads(
        (data_root / toy.TOY_COCO_DIR /
         'annotations/instances_val.json').read_text())
    good['annotations'][0]['image_id'] = 999
    good['annotations'][1]['category_id'] = 42
    wrong_ids = tmp_path / 'wrong_ids.json'
    wrong_ids.write_text(json.dumps(good))
    with pytest.raises(checks.DataError) as e:
        checks.check_coco_annotation(wrong_ids)
    msg = str(e.value)
    assert 'image_id 999' in msg and 'annotations[0]' in msg
    assert 'category_id 42' in msg and 'annotations[1]' in msg


def test_check_seg_label_maps_errors(tmp_path):
    ann_dir = tmp_path / 'annotations'
    with pytest.raises(checks.DataError, match='does not exist'):
        checks.check_seg_label_maps(ann_dir, 4)
    ann_dir.mkdir()
    with pytest.raises(checks.DataError, match='No \\*.png label maps'):
        checks.check_seg_label_maps(ann_dir, 4)

    seg = np.zeros((8, 8), dtype=np.uint8)
    seg[0, 0] = 255  # ignore_index is allowed
    seg[1, 1] = 3
    Image.fromarray(seg, 'L').save(ann_dir / 'ok.png')
    assert checks.check_seg_label_maps(ann_dir, 4) == 1
    seg[2, 2] = 7
    Image.fromarray(seg, 'L').save(ann_dir / 'seven.png')
    with pytest.raises(checks.DataError) as e:
        checks.check_seg_label_maps(ann_dir, 4)
    msg = str(e.value)
    assert 'seven.png has 7' in msg and 'num_classes=4' in msg
    assert 'ok.png' not in msg
    assert checks.check_seg_label_maps(ann_dir, 4, max_files=1) == 1

    Image.new('RGB', (4, 4)).save(ann_dir / 'rgb.png')
    with pytest.raises(checks.DataError, match='single-channel'):
        checks.check_seg_label_maps(ann_dir, 8)
