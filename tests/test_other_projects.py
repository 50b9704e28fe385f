# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""An existing mm project uses STViT through ``custom_imports`` alone: the
toolboxes' own configs (from their installed packages) with the backbone
swapped, trained and tested with the toolboxes' own shipped tools."""
import importlib
import os
import os.path as osp
import subprocess
import sys

import pytest

from mmstvit.data.toy_data import generate_toy_cls, generate_toy_data
from mmstvit.weights import load_checkpoint_file

from helpers import TOY_COCO_DET_DATA

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = ("dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], "
        "num_heads=[1, 1, 1, 2])")


def mim(pkg):
    return osp.join(osp.dirname(importlib.import_module(pkg).__file__), '.mim')


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy')
    generate_toy_data(root=str(root), num_train=2, num_val=2)
    generate_toy_cls(root / 'toy_cls', num_train=6, num_val=3)
    return root


def run_tool(pkg, tool, *args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
               os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run(
        [sys.executable, osp.join(mim(pkg), 'tools', tool), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


COMMON = """
custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2,
                 val_interval=100)
param_scheduler = []
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=2),
                     logger=dict(interval=1))
log_processor = dict(by_epoch=False)
"""

DET = """
_base_ = '{base}'
model = dict(
    backbone=dict(_delete_=True, type='STViT', arch={tiny},
                  stoken_size=(4, 2, 1, 1), out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[16, 32, 48, 64]),
    roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)))
""" + TOY_COCO_DET_DATA

SEG = """
_base_ = '{base}'
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    pretrained=None,  # the base config's ResNet weights
    data_preprocessor=dict(size=(96, 96)),
    backbone=dict(_delete_=True, type='STViT', arch={tiny},
                  stoken_size=(4, 2, 1, 1), out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[16, 32, 48, 64], channels=32,
                     num_classes=4, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=48, channels=16, num_classes=4,
                        norm_cfg=norm_cfg))
metainfo = dict(classes=('background', 'circle', 'rectangle', 'triangle'))
train_pipe = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=(96, 96), keep_ratio=False),
    dict(type='PackSegInputs')]
test_pipe = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')]
data = dict(_delete_=True, type='BaseSegDataset', data_root='{root}/',
            metainfo=metainfo, img_suffix='.jpg', seg_map_suffix='.png')
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training'),
                 pipeline=train_pipe, **data))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation'),
                 pipeline=test_pipe, **data))
test_dataloader = val_dataloader
"""

CLS = """
_base_ = '{base}'
model = dict(
    backbone=dict(_delete_=True, type='STViT', arch={tiny},
                  stoken_size=(4, 2, 1, 1), out_indices=(3, )),
    neck=None,
    head=dict(_delete_=True, type='STViTClsHead', num_classes=3,
              in_channels=64, projection=32,
              loss=dict(type='CrossEntropyLoss')))
data_preprocessor = dict(num_classes=3)
pipe = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64)),
    dict(type='PackInputs')]
data = dict(_delete_=True, type='CustomDataset', data_root='{root}',
            pipeline=pipe)
train_dataloader = dict(batch_size=2, num_workers=0,
                        persistent_workers=False,
                        dataset=dict(data_prefix='train', **data))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(ann_file='meta/val.txt', data_prefix='val',
                                   **data))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
"""


CASES = {
    # 2 iterations of a tiny model may detect nothing: mmdet then evaluates
    # and says the results are empty instead of printing an mAP
    'mmdet': ('configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', DET,
              'toy_coco', 'Evaluating bbox'),
    'mmseg': ('configs/upernet/upernet_r50_4xb4-80k_ade20k-512x512.py', SEG,
              'toy_ade', 'mIoU'),
    'mmpretrain': ('configs/resnet/resnet50_8xb32_in1k.py', CLS, 'toy_cls',
                   'accuracy/top1'),
}


@pytest.mark.parametrize('pkg', list(CASES))
def test_toolbox_own_config_and_tools(pkg, toy, tmp_path):
    base, template, data, metric = CASES[pkg]
    base = osp.join(mim(pkg), base)
    assert osp.isfile(base), f'{pkg} ships no {base}'
    root = toy / data
    cfg = tmp_path / f'{pkg}_stvit.py'
    cfg.write_text(
        template.format(base=base, tiny=TINY, root=root) + COMMON)
    work = tmp_path / 'work'
    log = run_tool(pkg, 'train.py', str(cfg), '--work-dir', str(work),
                   cwd=tmp_path)
    ckpt = work / 'iter_2.pth'
    assert ckpt.is_file(), log[-3000:]
    sd = load_checkpoint_file(ckpt, map_location='cpu')['state_dict']
    assert 'backbone.layers.0.blocks.0.attn.stoken_refine.qkv.weight' in sd
    out = run_tool(pkg, 'test.py', str(cfg), str(ckpt), '--work-dir',
                   str(tmp_path / 'test'), cwd=tmp_path)
    assert 'Iter(test) [' in out and metric in out, out[-3000:]
