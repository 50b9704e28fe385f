# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Layer-wise learning-rate decay: STViT.get_layer_depth (mmpretrain's
convention) and LayerDecayOptimWrapperConstructor, built from the configs
of mmdet, mmseg and mmpretrain with a tiny STViT."""
import copy
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from mmstvit import LayerDecayOptimWrapperConstructor, STViT

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# depths 1, 2, 2, 1: the stem is depth 0, the blocks 1..6, the rest 7, of 8
TINY = dict(embed_dims=[16, 32, 48, 64], depths=[1, 2, 2, 1],
            num_heads=[1, 1, 1, 1], layer_scale=[False, False, True, True])
NUM_LAYERS = 8


def block_params(m, stage, block):
    return [n for n, _ in m.layers[stage].blocks[block].named_parameters()]


# ------------------------------------------------------- get_layer_depth --
@pytest.mark.parametrize('arch', ['small', 'base', 'large'])
def test_layer_depth_walks_the_forward_order(arch):
    """Stem 0, then every block one deeper in the order the forward runs
    them, each downsample at its stage's last block, num_layers =
    sum(depths) + 2 for everything else."""
    m = STViT(arch)
    depths = m.arch_settings['depths']
    n = sum(depths) + 2
    seen = {}
    for name, _ in m.named_parameters():
        d, total = m.get_layer_depth(name)
        assert total == n
        seen.setdefault(d, set()).add(name.split('.')[0])
    assert seen[0] == {'patch_embed'}
    assert sorted(seen) == list(range(n - 1))  # every block has a depth
    expected = 1
    for i, stage in enumerate(m.layers):
        for j in range(len(stage.blocks)):
            for p in block_params(m, i, j):
                assert m.get_layer_depth(f'layers.{i}.blocks.{j}.{p}') == (
                    expected, n)
            expected += 1
        if stage.downsample is not None:
            for p, _ in stage.downsample.named_parameters():
                assert m.get_layer_depth(f'layers.{i}.downsample.{p}') == (
                    expected - 1, n)
    assert expected == n - 1
    # outside the backbone (prefix not matched): the last depth
    assert m.get_layer_depth('neck.conv.weight', 'backbone.') == (n - 1, n)
    assert m.get_layer_depth('head.fc.weight', 'backbone.') == (n - 1, n)
    assert m.get_layer_depth('backbone.patch_embed.proj.0.weight',
                             'backbone.') == (0, n)


def test_layer_depth_agrees_with_mmpretrain_swin():
    """The same depths as mmpretrain's Swin Transformer gives the same
    structure (stem, blocks, downsample at the end of a stage)."""
    from mmpretrain.models import SwinTransformer
    m = STViT('base')
    depths = m.arch_settings['depths']
    swin = SimpleNamespace(depths=depths)
    for name, _ in m.named_parameters():
        parts = name.split('.')
        if parts[0] == 'patch_embed':
            swin_name = 'patch_embed.projection.weight'
        elif parts[2] == 'blocks':
            swin_name = f'stages.{parts[1]}.blocks.{parts[3]}.attn.w'
        else:
            swin_name = f'stages.{parts[1]}.downsample.reduction.weight'
        assert m.get_layer_depth('backbone.' + name, 'backbone.') == \
            SwinTransformer.get_layer_depth(swin, 'backbone.' + swin_name,
                                            'backbone.'), name
    assert m.get_layer_depth('head.fc.weight', 'backbone.') == \
        SwinTransformer.get_layer_depth(swin, 'head.fc.weight', 'backbone.')


def test_stage_wise_depth_and_bad_decay_type():
    m = STViT(TINY)
    n = 6  # stem, 4 stages, the rest
    assert m.get_layer_depth('patch_embed.proj.2.bias',
                             decay_type='stage_wise') == (0, n)
    for i in range(4):
        for name, _ in m.layers[i].named_parameters():
            assert m.get_layer_depth(f'layers.{i}.{name}',
                                     decay_type='stage_wise') == (i + 1, n)
    assert m.get_layer_depth('head.fc.weight', 'backbone.',
                             decay_type='stage_wise') == (n - 1, n)
    with pytest.raises(ValueError, match="'layer_wise' or 'stage_wise'"):
        m.get_layer_depth('patch_embed.proj.0.weight', decay_type='block')


# ------------------------------------------------------------ constructor --
def _tiny_model_and_optim_cfg(task):
    """A model of the toolbox with the tiny STViT, and the optim_wrapper of
    a config of that toolbox switched to layer-wise decay."""
    decay = dict(
        constructor='LayerDecayOptimWrapperConstructor',
        paramwise_cfg=dict(_delete_=True, decay_rate=0.5))
    if task == 'mmdet':
        # the example fine-tuning config as it is
        cfg = Config.fromfile(
            osp.join(ROOT, 'configs/cascade_mask_rcnn_stvit_s_3x_layer_decay'
                     '.py'))
        cfg.model.neck.in_channels = TINY['embed_dims']
        cfg.optim_wrapper.paramwise_cfg.decay_rate = 0.5
        from mmdet.registry import MODELS
    elif task == 'mmseg':
        cfg = Config.fromfile(
            osp.join(ROOT, 'configs/fpn_stvit_s_80k_ade20k.py'))
        cfg.merge_from_dict(dict(optim_wrapper=decay))
        cfg.model.neck.in_channels = TINY['embed_dims']
        from mmseg.registry import MODELS
    else:
        cfg = Config.fromfile(osp.join(ROOT, 'configs/stvit_s_in1k_224.py'))
        cfg.merge_from_dict(dict(optim_wrapper=decay))
        cfg.model.head.in_channels = TINY['embed_dims'][-1]
        from mmpretrain.registry import MODELS
    cfg.model.backbone.arch = TINY
    cfg.model.backbone.init_cfg = None
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    return model, cfg.optim_wrapper


def _group_of(optim_wrapper, param):
    groups = [g for g in optim_wrapper.optimizer.param_groups
              if any(p is param for p in g['params'])]
    assert len(groups) == 1
    return groups[0]


@pytest.mark.parametrize('task', ['mmdet', 'mmseg', 'mmpretrain'])
def test_layer_wise_lr_and_weight_decay_in_every_toolbox(task):
    model, optim_cfg = _tiny_model_and_optim_cfg(task)
    # built the way the Runner builds it, from the toolbox's default scope
    ow = build_optim_wrapper(model, optim_cfg)
    lr = optim_cfg.optimizer.lr
    wd = optim_cfg.optimizer.weight_decay
    assert lr > 0 and wd > 0
    params = dict(model.named_parameters())

    def check(name, depth, decays):
        g = _group_of(ow, params[name])
        assert g['lr'] == pytest.approx(lr * 0.5**(NUM_LAYERS - 1 - depth))
        assert g['weight_decay'] == pytest.approx(wd if decays else 0.)
        assert g['layer_id'] == depth

    # the stem: conv weight decays, its BatchNorm and bias do not
    check('backbone.patch_embed.proj.0.weight', 0, True)
    check('backbone.patch_embed.proj.0.bias', 0, False)
    check('backbone.patch_embed.proj.2.weight', 0, False)
    # a middle block (stage 1, block 1: depth 1 + 1 + 1)
    check('backbone.layers.1.blocks.1.attn.stoken_refine.qkv.weight', 3, True)
    check('backbone.layers.1.blocks.1.attn.stoken_refine.qkv.bias', 3, False)
    check('backbone.layers.1.blocks.1.norm1.norm.weight', 3, False)
    check('backbone.layers.1.downsample.proj.0.weight', 3, True)
    # the last stage: layer scales do not decay
    check('backbone.layers.3.blocks.0.mlp2.fc1.weight', 6, True)
    check('backbone.layers.3.blocks.0.gamma_1', 6, False)
    check('backbone.layers.3.blocks.0.gamma_2', 6, False)
    check('backbone.layers.3.blocks.0.norm2.weight', 6, False)
    # neck and heads keep the base learning rate
    head = {'mmdet': 'roi_head.bbox_head.0.fc_cls.weight',
            'mmseg': 'decode_head.conv_seg.weight',
            'mmpretrain': 'head.fc.weight'}[task]
    check(head, NUM_LAYERS - 1, True)
    # every trainable parameter is in exactly one group
    in_groups = [p for g in ow.optimizer.param_groups for p in g['params']]
    assert len(in_groups) == len({id(p) for p in in_groups})
    assert {id(p) for p in in_groups} == {
        id(p) for p in model.parameters() if p.requires_grad}


def test_stage_wise_lr():
    model, optim_cfg = _tiny_model_and_optim_cfg('mmdet')
    optim_cfg.paramwise_cfg.decay_type = 'stage_wise'
    ow = build_optim_wrapper(model, optim_cfg)
    lr = optim_cfg.optimizer.lr
    params = dict(model.named_parameters())
    for name, stage_depth in [
        ('backbone.patch_embed.proj.0.weight', 0),
        ('backbone.layers.0.blocks.0.mlp2.fc1.weight', 1),
        ('backbone.layers.1.blocks.1.attn.stoken_refine.qkv.weight', 2),
        ('backbone.layers.1.downsample.proj.0.weight', 2),
        ('backbone.layers.3.blocks.0.gamma_1', 4),
        ('neck.fpn_convs.0.conv.weight', 5),
    ]:
        g = _group_of(ow, params[name])
        assert g['lr'] == pytest.approx(lr * 0.5**(5 - stage_depth)), name


def test_matches_mmpretrain_constructor():
    """mmpretrain's own LearningRateDecayOptimWrapperConstructor, fed by
    STViT.get_layer_depth through ImageClassifier, gives the same learning
    rates (and the same weight decays where both rules agree)."""
    model, optim_cfg = _tiny_model_and_optim_cfg('mmpretrain')
    ours = build_optim_wrapper(model, optim_cfg)
    theirs_cfg = copy.deepcopy(optim_cfg)
    theirs_cfg.constructor = 'LearningRateDecayOptimWrapperConstructor'
    theirs_cfg.paramwise_cfg = dict(
        layer_decay_rate=0.5, norm_decay_mult=0., bias_decay_mult=0.,
        custom_keys={'.gamma_': dict(decay_mult=0.)})
    theirs = build_optim_wrapper(model, theirs_cfg)
    for name, p in model.named_parameters():
        a, b = _group_of(ours, p), _group_of(theirs, p)
        assert a['lr'] == pytest.approx(b['lr']), name
        assert a['weight_decay'] == pytest.approx(b['weight_decay']), name


def test_custom_keys_multiply_the_decayed_lr():
    model, optim_cfg = _tiny_model_and_optim_cfg('mmseg')
    optim_cfg.paramwise_cfg.custom_keys = {
        'decode_head': dict(lr_mult=10.),
        '.qkv.weight': dict(decay_mult=0.5),
    }
    ow = build_optim_wrapper(model, optim_cfg)
    lr, wd = optim_cfg.optimizer.lr, optim_cfg.optimizer.weight_decay
    params = dict(model.named_parameters())
    g = _group_of(ow, params['decode_head.conv_seg.weight'])
    assert g['lr'] == pytest.approx(10 * lr)
    g = _group_of(ow, params[
        'backbone.layers.1.blocks.1.attn.stoken_refine.qkv.weight'])
    assert g['lr'] == pytest.approx(lr * 0.5**4)
    assert g['weight_decay'] == pytest.approx(0.5 * wd)


def test_frozen_stages_are_left_out():
    model, optim_cfg = _tiny_model_and_optim_cfg('mmseg')
    model.backbone.frozen_stages = 1
    model.backbone._freeze_stages()
    ow = build_optim_wrapper(model, optim_cfg)
    in_groups = {id(p) for g in ow.optimizer.param_groups
                 for p in g['params']}
    for name, p in model.named_parameters():
        frozen = name.startswith(('backbone.patch_embed', 'backbone.layers.0'))
        assert (id(p) in in_groups) != frozen, name


@pytest.mark.parametrize('paramwise_cfg,error,match', [
    (dict(decay_rate=0.9, decay_type='block_wise'), ValueError,
     r"unknown decay_type 'block_wise'; one of \('layer_wise', "
     r"'stage_wise'\)"),
    (dict(decay_type='layer_wise'), KeyError, 'needs decay_rate'),
    (dict(decay_rate=1.5), ValueError, r'decay_rate must be a number in'),
    (dict(decay_rate=0.), ValueError, r'decay_rate must be a number in'),
    (dict(decay_rate='0.9'), ValueError, r'decay_rate must be a number in'),
    (dict(layer_decay_rate=0.9), KeyError,
     "mmpretrain's name for decay_rate"),
    (dict(decay_rate=0.9, num_layers=12), KeyError,
     'the backbone tells the number of layers'),
    (dict(decay_rate=0.9, norm_decay_mult=-1), ValueError,
     'norm_decay_mult must be a number >= 0'),
    (dict(decay_rate=0.9, custom_keys={'head': dict(lr=1.)}), KeyError,
     'takes lr_mult and decay_mult'),
])
def test_bad_paramwise_cfg_is_refused(paramwise_cfg, error, match):
    with pytest.raises(error, match=match):
        LayerDecayOptimWrapperConstructor(
            dict(optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05)),
            paramwise_cfg)


def test_backbones_without_depths_are_refused():
    cfg = dict(
        type='OptimWrapper',
        constructor='LayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.9))

    class Plain(nn.Module):

        def __init__(self):
            super().__init__()
            self.backbone = nn.Conv2d(3, 4, 3)

    with pytest.raises(TypeError, match='Conv2d has none'):
        build_optim_wrapper(Plain(), copy.deepcopy(cfg))

    class LayerDepthOnly(nn.Module):
        """A backbone with mmpretrain's two-argument get_layer_depth."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def get_layer_depth(self, param_name, prefix=''):
            return 0, 2

    model = Plain()
    model.backbone = LayerDepthOnly()
    ow = build_optim_wrapper(model, copy.deepcopy(cfg))
    assert ow.optimizer.param_groups[0]['lr'] == pytest.approx(0.9e-4)
    cfg['paramwise_cfg']['decay_type'] = 'stage_wise'
    with pytest.raises(TypeError, match='LayerDepthOnly gives layer depths '
                       "only: use decay_type='layer_wise'"):
        build_optim_wrapper(model, copy.deepcopy(cfg))


def test_runner_schedules_keep_the_ratios(tmp_path):
    """One iteration of an mmseg Runner with the constructor: the
    warm-up and poly schedules scale every group alike, and the optimizer
    state it saves loads into a freshly built one (what --resume does)."""
    import numpy as np
    from mmengine.runner import Runner
    from PIL import Image
    data = tmp_path / 'data'
    (data / 'img').mkdir(parents=True)
    (data / 'ann').mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(
            data / 'img' / f'{i}.png')
        Image.fromarray(rng.integers(0, 2, (64, 64), np.uint8)).save(
            data / 'ann' / f'{i}.png')
    cfg = Config.fromfile(osp.join(ROOT, 'configs/fpn_stvit_s_80k_ade20k.py'))
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                dict(type='PackSegInputs')]
    cfg.merge_from_dict(dict(
        work_dir=str(tmp_path / 'work'),
        model=dict(
            data_preprocessor=dict(size=(64, 64)),
            backbone=dict(init_cfg=None),
            neck=dict(in_channels=TINY['embed_dims'], out_channels=16),
            decode_head=dict(
                in_channels=[16] * 4, channels=16, num_classes=2,
                norm_cfg=dict(type='BN', requires_grad=True))),
        train_dataloader=dict(
            batch_size=2, num_workers=0, persistent_workers=False,
            dataset=dict(
                _delete_=True, type='BaseSegDataset', data_root=str(data),
                data_prefix=dict(img_path='img', seg_map_path='ann'),
                img_suffix='.png', seg_map_suffix='.png', pipeline=pipeline,
                metainfo=dict(classes=('a', 'b'),
                              palette=[[0, 0, 0], [1, 1, 1]]))),
        train_cfg=dict(max_iters=1, val_interval=100),
        val_dataloader=None, val_cfg=None, val_evaluator=None,
        test_dataloader=None, test_cfg=None, test_evaluator=None,
        optim_wrapper=dict(
            constructor='LayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(_delete_=True, decay_rate=0.5)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                 end=2),
            dict(type='PolyLR', power=0.9, begin=0, end=80000,
                 by_epoch=False)
        ],
        default_hooks=dict(checkpoint=dict(by_epoch=False, interval=1)),
        log_level='WARNING'))
    cfg.model.backbone.arch = TINY
    runner = Runner.from_cfg(cfg)
    runner.train()
    groups = runner.optim_wrapper.optimizer.param_groups
    top = max(g['initial_lr'] for g in groups)
    for g in groups:
        assert g['initial_lr'] == pytest.approx(
            1e-4 * 0.5**(NUM_LAYERS - 1 - g['layer_id']))
        # the schedules moved every lr by the same factor
        assert g['lr'] / g['initial_lr'] == pytest.approx(
            groups[0]['lr'] / groups[0]['initial_lr'])
        assert g['lr'] < g['initial_lr']
    assert top == pytest.approx(1e-4)
    ckpt = torch.load(tmp_path / 'work' / 'iter_1.pth', weights_only=False)
    saved = ckpt['optimizer']['param_groups']
    assert [g['layer_id'] for g in saved] == [g['layer_id'] for g in groups]
    fresh = build_optim_wrapper(runner.model, cfg.optim_wrapper)
    fresh.load_state_dict(ckpt['optimizer'])
    for g, h in zip(fresh.optimizer.param_groups, groups):
        assert g['lr'] == pytest.approx(h['lr'])
        assert [p.shape for p in g['params']] == [p.shape for p in h['params']]
    assert len(fresh.optimizer.state) == len(
        runner.optim_wrapper.optimizer.state)
