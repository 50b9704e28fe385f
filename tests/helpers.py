# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What several test files need: the repository root, a free local port
for the distributed runs, the tools' scripts loaded as modules, and tiny
mmseg and mmpretrain cases (a config and four images each) on a 4-stage
STViT.

pytest puts this folder on ``sys.path`` (the tests are not a package), so
a test file says ``from helpers import REPO, free_port, load_script``.
"""
import importlib.util
import os
import os.path as osp
import socket

import numpy as np

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

# 4 stages of 16-64 channels, one block each: a CPU training step in seconds
TINY_ARCH = dict(
    embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])


def free_port() -> int:
    """A TCP port nothing listens on now (for a process group's store)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_in(folder, fn, *args):
    """``fn(*args)`` with ``folder`` as the working directory (the tools
    read configs relative to the repository root), the old one back after."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return fn(*args)
    finally:
        os.chdir(cwd)


def load_script(relpath: str, name: str = None):
    """The script at ``relpath`` (from the repository root, e.g.
    ``tools/infer.py``) as a module, without running its ``__main__``."""
    path = osp.join(REPO, relpath)
    if name is None:
        name = 'mmstvit_' + relpath[:-3].replace('/', '_')
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# mmseg's EncoderDecoder with an FCN head over TINY_ARCH (the text ``ARCH``)
# on the images under ``'DATA'`` (img/ and ann/); the backbone names a
# pretrained file that is missing, so a run from scratch says
# ``--cfg-options model.backbone.init_cfg=None``.
SEG_CFG = """
default_scope = 'mmseg'
custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
    seg_pad_val=255, size=(32, 32))
model = dict(
    type='EncoderDecoder', data_preprocessor=data_preprocessor,
    backbone=dict(
        type='STViT', arch=ARCH, stoken_size=[4, 2, 1, 1],
        drop_path_rate=0.,
        init_cfg=dict(type='Pretrained',
                      checkpoint='pretrained/stvit-small-224.pth')),
    decode_head=dict(
        type='FCNHead', in_channels=64, in_index=3, channels=16,
        num_convs=1, concat_input=False, dropout_ratio=0.1, num_classes=2,
        norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
    train_cfg=dict(), test_cfg=dict(mode='whole'))
pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
            dict(type='PackSegInputs')]
dataset = dict(
    type='BaseSegDataset', data_root='DATA',
    data_prefix=dict(img_path='img', seg_map_path='ann'), img_suffix='.png',
    seg_map_suffix='.png', pipeline=pipeline,
    metainfo=dict(classes=('bg', 'fg'), palette=[[0, 0, 0], [255, 255, 255]]))
train_dataloader = dict(
    batch_size=2, num_workers=0, dataset=dataset,
    sampler=dict(type='InfiniteSampler', shuffle=True))
val_dataloader = dict(
    batch_size=1, num_workers=0, dataset=dataset,
    sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01))
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=1.0, begin=0,
                        end=4, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
env_cfg = dict(cudnn_benchmark=False,
               mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
visualizer = dict(type='SegLocalVisualizer',
                  vis_backends=[dict(type='LocalVisBackend')],
                  name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
"""


def write_seg_case(root):
    """Four random 32x32 images with 0/1 masks under ``root/data`` and
    ``root/tiny_seg.py`` (SEG_CFG over them); returns the config's path."""
    from PIL import Image
    rng = np.random.default_rng(0)
    (root / 'data' / 'img').mkdir(parents=True)
    (root / 'data' / 'ann').mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3),
                                     dtype=np.uint8)).save(root / 'data' /
                                                           'img' / f'{i}.png')
        Image.fromarray(rng.integers(0, 2, (32, 32), dtype=np.uint8)).save(
            root / 'data' / 'ann' / f'{i}.png')
    cfg = root / 'tiny_seg.py'
    cfg.write_text(
        SEG_CFG.replace('ARCH', repr(TINY_ARCH)).replace(
            "'DATA'", repr(str(root / 'data'))))
    return cfg


# mmpretrain's ImageClassifier over TINY_ARCH (the text ``ARCH``) with
# STViTClsHead, on the class folders under ``'DATA'``; a test file appends
# its loaders, loops and hooks.
CLS_MODEL_CFG = """
default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='STViT', arch=ARCH, stoken_size=[4, 2, 1, 1],
                  out_indices=(3, ), drop_path_rate=0.),
    head=dict(type='STViTClsHead', num_classes=2, in_channels=64,
              loss=dict(type='CrossEntropyLoss')))
data_preprocessor = dict(num_classes=2, mean=[123.675, 116.28, 103.53],
                         std=[58.395, 57.12, 57.375], to_rgb=True)
pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=32),
            dict(type='PackInputs')]
dataset = dict(type='CustomDataset', data_root='DATA', pipeline=pipeline)
"""


def write_cls_case(root, cfg_text: str, arch: dict = TINY_ARCH):
    """Two class folders (``a``, ``b``) of two random 40x40 images under
    ``root/data`` and ``root/tiny_cls.py`` (``cfg_text`` over them, with
    ``arch``); returns the config's path."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ('a', 'b'):
        (root / 'data' / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(
                root / 'data' / c / f'{i}.png')
    cfg = root / 'tiny_cls.py'
    cfg.write_text(cfg_text.replace('ARCH', repr(arch)).replace(
        "'DATA'", repr(str(root / 'data'))))
    return cfg


# The toy COCO data (``python -m mmstvit make_toy_data``) for a Mask R-CNN
# config: classes, pipeline, loaders and evaluators; ``{root}`` is the
# folder of the data (``str.format`` or ``replace`` fills it).
TOY_COCO_DET_DATA = """metainfo = dict(classes=('circle', 'rectangle', 'triangle'))
pipe = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='PackDetInputs')]
data = dict(data_root='{root}/', metainfo=metainfo, pipeline=pipe)
train_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), **data))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), **data))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='{root}/annotations/instances_val.json')
test_evaluator = val_evaluator
"""
