# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""tools/train.py and tools/test.py stop before building anything, with the
config key and the fix, on a missing data root, an annotation file that is
not COCO and a label map with classes out of range."""
import json
import os.path as osp
import shutil

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from mmstvit.data.checks import DataError
from mmstvit.data.toy_data import generate_toy_data
from mmstvit.cli.preflight import check_datasets

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy')
    generate_toy_data(root=str(root), num_train=2, num_val=2)
    return root


def det_cfg(root):
    cfg = Config.fromfile(osp.join(ROOT, 'configs/toy/mask_rcnn_stvit_s_toy.py'))
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = str(root) + '/'
    return cfg


def seg_cfg(root):
    cfg = Config.fromfile(osp.join(ROOT, 'configs/toy/upernet_stvit_s_toy.py'))
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = str(root) + '/'
    return cfg


def test_good_toy_data_passes(toy):
    check_datasets(det_cfg(toy / 'toy_coco'), 'mmdet')
    check_datasets(seg_cfg(toy / 'toy_ade'), 'mmseg')


def test_missing_data_root(tmp_path):
    with pytest.raises(DataError, match='train_dataloader.dataset.data_root'
                       '.*does not exist.*make_toy_data'):
        check_datasets(det_cfg(tmp_path / 'nowhere'), 'mmdet')


def test_annotation_that_is_not_coco(toy, tmp_path):
    root = tmp_path / 'coco'
    shutil.copytree(toy / 'toy_coco', root)
    (root / 'annotations' / 'instances_train.json').write_text(
        json.dumps({'items': []}))
    with pytest.raises(DataError, match='instances_train.json'):
        check_datasets(det_cfg(root), 'mmdet')


def test_label_map_out_of_range(toy, tmp_path):
    root = tmp_path / 'ade'
    shutil.copytree(toy / 'toy_ade', root)
    bad = sorted((root / 'annotations' / 'training').glob('*.png'))[0]
    arr = np.array(Image.open(bad))
    arr[0, 0] = 7  # the toy set has 4 classes
    Image.fromarray(arr).save(bad)
    with pytest.raises(DataError, match=bad.name):
        check_datasets(seg_cfg(root), 'mmseg')


def test_train_tool_stops_with_the_message(tmp_path):
    import subprocess
    import sys
    proc = subprocess.run(
        [sys.executable, 'tools/train.py',
         'configs/toy/upernet_stvit_s_toy.py', '--work-dir',
         str(tmp_path / 'w'), '--cfg-options',
         f'train_dataloader.dataset.data_root={tmp_path}/missing/'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert 'does not exist' in proc.stderr and 'Traceback' not in proc.stderr
    assert not (tmp_path / 'w').exists() or not any(
        (tmp_path / 'w').glob('*.pth'))
