# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""tools/infer.py: one config of each task on a generated image (pictures
and JSON written, through the toolboxes' own inferencers), weights from an
mm checkpoint, and clear errors for bad input."""
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from helpers import REPO, load_script, run_in

DET = 'configs/toy/mask_rcnn_stvit_s_toy.py'
SEG = 'configs/toy/upernet_stvit_s_toy.py'
CLS = 'configs/stvit_s_in1k_224.py'


def load_tool():
    return load_script('tools/infer.py')


@pytest.fixture(scope='module')
def tool():
    return load_tool()


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """A folder with one generated 160x224 scene (shapes on a gradient)."""
    folder = tmp_path_factory.mktemp('images')
    rng = np.random.RandomState(0)
    img = np.zeros((160, 224, 3), np.uint8)
    img[:] = np.linspace(40, 200, 224, dtype=np.uint8)[None, :, None]
    cv2.circle(img, (60, 70), 35, (30, 30, 220), -1)
    cv2.rectangle(img, (120, 40), (200, 120), (40, 180, 40), -1)
    img = np.clip(img + rng.randint(0, 20, img.shape), 0, 255)
    cv2.imwrite(str(folder / 'scene.jpg'), img.astype(np.uint8))
    return folder


def test_detection_on_a_folder(tool, images, tmp_path, capsys):
    out = tmp_path / 'det'
    results = run_in(REPO, tool.main, [DET, str(images), '--out-dir', str(out),
                               '--device', 'cpu', '--score-thr', '0.05'])
    assert len(results) == 1
    assert (out / 'vis' / 'scene.jpg').is_file()
    pred = json.loads((out / 'preds' / 'scene.json').read_text())
    assert pred['task'] == 'detection' and pred['objects']
    combined = json.loads((out / 'predictions.json').read_text())
    assert len(combined) == 1
    assert combined[0].pop('json') == str(out / 'preds' / 'scene.json')
    assert combined[0] == pred
    for obj in pred['objects']:
        # the toy config's classes, not mmdet's COCO default
        assert obj['class'] in ('circle', 'rectangle', 'triangle')
        x1, y1, x2, y2 = obj['bbox']
        assert 0 <= x1 <= x2 <= 224 and 0 <= y1 <= y2 <= 160
        assert obj['mask']['size'] == [160, 224]
    scores = [o['score'] for o in pred['objects']]
    assert scores == sorted(scores, reverse=True)
    printed = capsys.readouterr().out
    kept = sum(s >= 0.05 for s in scores)
    assert f'scene.jpg: {kept} objects with score >= 0.05' in printed
    assert 'mmengine - INFO' not in printed
    # the toolbox's own messages are in the log, not on the console
    assert 'randomly initialized' in (out / 'infer.log').read_text()


def test_segmentation_with_weights(tool, images, tmp_path, capsys):
    """An mm checkpoint (as tools/train.py writes) with its class names."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import mmstvit  # noqa: F401
    from mmstvit.registry import register_toolbox
    register_toolbox('mmseg')
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, SEG))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    classes = ('sky', 'ball', 'box', 'roof')
    ckpt = tmp_path / 'seg.pth'
    torch.save(
        dict(state_dict=model.state_dict(),
             meta=dict(dataset_meta=dict(
                 classes=classes, palette=[[0, 0, 0], [255, 0, 0],
                                           [0, 255, 0], [0, 0, 255]]))),
        str(ckpt))
    out = tmp_path / 'seg'
    image = str(images / 'scene.jpg')
    run_in(REPO, tool.main, [SEG, image, '--weights', str(ckpt), '--out-dir',
                     str(out), '--device', 'cpu'])
    pred = json.loads((out / 'preds' / 'scene.json').read_text())
    assert pred['task'] == 'semantic segmentation'
    assert pred['weights'] == str(ckpt)
    label_map = cv2.imread(pred['label_map'], cv2.IMREAD_UNCHANGED)
    assert label_map.shape == (160, 224) == tuple(pred['shape'])
    ids, counts = np.unique(label_map, return_counts=True)
    assert {c['label']: c['pixels'] for c in pred['classes']} == dict(
        zip(ids.tolist(), counts.tolist()))
    assert abs(sum(c['fraction'] for c in pred['classes']) - 1) < 1e-3
    assert {c['name'] for c in pred['classes']} <= set(classes)
    assert (out / 'vis' / 'scene.jpg').is_file()
    log = (out / 'infer.log').read_text()
    assert 'randomly initialized' not in log
    assert 'Loads checkpoint by local backend' in log  # mmengine's print
    printed = capsys.readouterr().out
    assert f'weights {ckpt}' in printed
    assert 'Loads checkpoint' not in printed


def test_classification(tool, images, tmp_path):
    out = tmp_path / 'cls'
    run_in(REPO, tool.main, [CLS, str(images / 'scene.jpg'), '--out-dir', str(out),
                     '--device', 'cpu'])
    pred = json.loads((out / 'preds' / 'scene.json').read_text())
    assert pred['task'] == 'classification'
    top = pred['top']
    assert len(top) == 5
    assert [t['score'] for t in top] == sorted(
        (t['score'] for t in top), reverse=True)
    assert all(0 <= t['label'] < 1000 for t in top)
    from mmpretrain.datasets.categories import IMAGENET_CATEGORIES
    assert all(t['name'] == IMAGENET_CATEGORIES[t['label']] for t in top)
    assert (out / 'vis' / 'scene.png').is_file()


def test_bad_inputs_are_named(tool, images, tmp_path, capsys):
    text = tmp_path / 'notes.txt'
    text.write_text('not an image')
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'\xff\xd8\xff\x00 truncated')
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'readme.md').write_text('no images here')
    cases = [
        ([CLS, str(text)], 'notes.txt is not an image'),
        ([CLS, str(broken)], 'broken.jpg is a broken image'),
        ([CLS, str(empty)], 'is a folder with no images in it'),
        ([CLS, str(tmp_path / 'missing.jpg')], 'no such file or folder'),
        ([CLS, str(images), '--weights', str(tmp_path / 'nope.pth')],
         '--weights'),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            run_in(REPO, tool.main, argv)
        assert message in str(e.value), (argv, e.value)
        assert str(e.value).startswith('mmstvit infer:')
    # a config path with a typo: the nearest configs, exit status 2, as
    # tools/train.py and tools/test.py (tests/test_cli.py)
    with pytest.raises(SystemExit) as e:
        run_in(REPO, tool.main, ['configs/nope.py', str(images)])
    assert e.value.code == 2
    assert 'config configs/nope.py does not exist; nearest: configs/' in \
        capsys.readouterr().err


def test_config_of_another_backbone(tool, images, tmp_path):
    cfg = tmp_path / 'resnet_cls.py'
    cfg.write_text(
        "_base_ = ['mmpretrain::_base_/models/resnet18.py',\n"
        "          'mmpretrain::_base_/datasets/imagenet_bs32.py',\n"
        "          'mmpretrain::_base_/default_runtime.py']\n")
    with pytest.raises(SystemExit) as e:
        run_in(REPO, tool.main, [str(cfg), str(images)])
    assert 'has no STViT backbone (backbone: ResNet)' in str(e.value)
    other = tmp_path / 'engine.py'
    other.write_text("model = dict(type='Foo', backbone=dict(type='STViT'))\n")
    with pytest.raises(SystemExit) as e:
        run_in(REPO, tool.main, [str(other), str(images)])
    assert 'not an mmdet, mmseg or mmpretrain config' in str(e.value)


def test_command_line_is_quiet(images, tmp_path):
    """The console gets the header, a line per image and where things are;
    no third-party warnings."""
    env = dict(os.environ, OMP_NUM_THREADS='2')
    proc = subprocess.run([
        sys.executable, 'tools/infer.py', CLS,
        str(images), '--out-dir',
        str(tmp_path / 'out'), '--device', 'cpu'
    ], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == '', proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3, proc.stdout
    assert lines[0].startswith('mmstvit infer: classification with')
    assert lines[1].startswith('  scene.jpg: ')
    assert lines[2].startswith('pictures: ')
