# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""mmstvit.builder: a config to its model, by the right registry."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from mmstvit import STViT
from mmstvit.builder import (ConfigError, build_backbone, build_model,
                             detect_task, load_config)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
            num_heads=[1, 2, 3, 4])


@pytest.mark.parametrize('cfg,task', [
    (dict(default_scope='mmseg'), 'mmseg'),
    (dict(model=dict(type='mmdet.MaskRCNN')), 'mmdet'),
    (dict(default_scope='mmpretrain', model=dict(type='mmdet.X')),
     'mmpretrain'),
    (dict(model=dict(type='Foo')), 'mmengine'),
])
def test_detect_task(cfg, task):
    assert detect_task(Config(cfg)) == task


def test_builds_the_classifier_of_a_config_without_weights():
    path = osp.join(ROOT, 'configs', 'stvit_s_in1k_224.py')
    torch.manual_seed(0)
    model = build_model(path, drop_path_rate=0.)
    from mmpretrain.models import ImageClassifier
    assert isinstance(model, ImageClassifier)
    assert isinstance(model.backbone, STViT)
    assert model.backbone.init_cfg is None
    assert model.backbone.stoken_size == [(8, 8), (4, 4), (1, 1), (1, 1)]
    # the top-level data_preprocessor became the model's, as in the Runner
    assert model.data_preprocessor.mean.flatten().tolist() == pytest.approx(
        Config.fromfile(path).data_preprocessor.mean)
    drop = [m.drop_prob for m in model.backbone.modules()
            if hasattr(m, 'drop_prob')]
    assert drop == []  # drop_path_rate 0 builds no DropPath


def test_keeps_init_cfg_only_when_asked():
    cfg = dict(default_scope='mmpretrain', model=dict(
        type='ImageClassifier', backbone=dict(
            type='STViT', arch=TINY, init_cfg=dict(
                type='Pretrained', checkpoint='w.pth'))))
    assert build_model(cfg).backbone.init_cfg is None
    assert build_model(cfg, keep_init_cfg=True).backbone.init_cfg == dict(
        type='Pretrained', checkpoint='w.pth')


def test_build_backbone_takes_the_config_arguments():
    cfg = dict(model=dict(backbone=dict(
        type='mmseg.STViT', arch=TINY, stoken_size=(4, 2, 1, 1),
        init_cfg=dict(type='Pretrained', checkpoint='nowhere.pth'))))
    backbone = build_backbone(cfg)
    assert isinstance(backbone, STViT)
    assert backbone.stoken_size == [(4, 4), (2, 2), (1, 1), (1, 1)]
    assert backbone.init_cfg is None


def test_errors_name_the_config_and_the_problem(tmp_path):
    with pytest.raises(ConfigError, match='no such file'):
        load_config(tmp_path / 'missing.py')
    bad = tmp_path / 'bad.py'
    bad.write_text('model = dict(\n')
    with pytest.raises(ConfigError, match=r'cannot read config .*bad\.py'):
        load_config(bad)
    with pytest.raises(ConfigError, match="type='STViT'"):
        build_backbone(dict(model=dict(backbone=dict(type='ResNet'))))
    with pytest.raises(ConfigError, match='cannot build the STViT backbone'):
        build_backbone(dict(model=dict(backbone=dict(type='STViT',
                                                     arch='tiny'))))
    with pytest.raises(ConfigError, match='no model dict'):
        build_model(dict(default_scope='mmdet'))
