# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Every config in configs/ builds, runs a loss step on a small CPU input, and
its data pipelines run on generated images; the ImageNet configs evaluate an
official-format checkpoint as the authors' classification tail would."""
import copy
import glob
import os
import os.path as osp
import re
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmstvit  # noqa: F401
from mmstvit.data.toy_data import generate_toy_data
from mmstvit.weights import convert_official_state_dict
from mmstvit.builder import detect_task
from mmstvit.cli.pretrained import find_missing_pretrained

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '*.py')))
EXPECTED = [
    f'configs/mask_rcnn_stvit_{v}_{s}.py' for v in 'sbl' for s in ('1x', '3x')
] + [f'configs/upernet_stvit_{v}_160k_ade20k.py' for v in 'sbl'] + [
    f'configs/stvit_{v}_in1k_{r}.py' for v in 'sbl' for r in (224, 384)
] + [
    # the protocols peers compare on (not in the paper)
    f'configs/cascade_mask_rcnn_stvit_{v}_3x.py' for v in 'sbl'
] + [f'configs/fpn_stvit_{v}_80k_ade20k.py' for v in 'sbl'] + [
    f'configs/retinanet_stvit_{v}_1x.py' for v in 'sbl'
] + ['configs/cascade_mask_rcnn_stvit_s_3x_layer_decay.py']
ARCH = {'s': 'small', 'b': 'base', 'l': 'large'}


def load(name):
    cfg = Config.fromfile(osp.join(ROOT, name))
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    return cfg


def registry(task):
    if task == 'mmdet':
        from mmdet.registry import MODELS
    elif task == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    return MODELS


def build_without_weights(cfg):
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    # as mmengine's Runner does: a top-level data_preprocessor is the model's
    if 'data_preprocessor' not in model_cfg and 'data_preprocessor' in cfg:
        model_cfg.data_preprocessor = copy.deepcopy(cfg.data_preprocessor)
    model = registry(detect_task(cfg)).build(model_cfg)
    model.init_weights()
    return model


def test_every_paper_row_has_a_config():
    assert sorted(EXPECTED) == CONFIGS


@pytest.mark.parametrize('name', CONFIGS)
def test_config_recipe(name):
    cfg = load(name)
    v = re.search(r'stvit_([sbl])_', name).group(1)
    bb = cfg.model.backbone
    assert bb.type == 'STViT' and bb.arch == ARCH[v]
    assert cfg.custom_imports == dict(
        imports=['mmstvit'], allow_failed_imports=False)
    if 'in1k' in name:
        assert tuple(bb.stoken_size) == (8, 4, 1, 1)
        assert cfg.model.head.type == 'STViTClsHead'
        assert cfg.optim_wrapper.optimizer.type == 'AdamW'
        assert cfg.optim_wrapper.paramwise_cfg.norm_decay_mult == 0
        if '384' in name:
            # fine-tuned from the 224 official file, as the authors did
            assert cfg.load_from == f'pretrained/stvit-{ARCH[v]}-224.pth'
    else:
        assert tuple(bb.stoken_size) == (16, 8, 2, 1)
        assert bb.init_cfg == dict(
            type='Pretrained', checkpoint=f'pretrained/stvit-{ARCH[v]}-224.pth')
        pw = cfg.optim_wrapper.paramwise_cfg
        if 'layer_decay' in name:
            # norms, biases and layer scales: the constructor's defaults
            assert cfg.optim_wrapper.constructor == \
                'LayerDecayOptimWrapperConstructor'
            assert pw == dict(decay_rate=0.9, decay_type='layer_wise')
        else:
            assert pw.norm_decay_mult == 0
            assert pw.custom_keys['.gamma_1'] == dict(decay_mult=0.)
        assert cfg.optim_wrapper.optimizer.type == 'AdamW'
        # drop path as the Mask R-CNN / UperNet configs (Swin's choice)
        assert bb.drop_path_rate == dict(s=0.2, b=0.3, l=0.4)[v]
    if name.startswith(('configs/mask_rcnn', 'configs/cascade')):
        assert cfg.train_cfg.max_epochs == (12 if '1x' in name else 36)
        assert cfg.optim_wrapper.optimizer.lr == (
            2e-4 if 'layer_decay' in name else 1e-4)
    if name.startswith(('configs/mask_rcnn', 'configs/cascade')) and \
            '3x' in name:
        # Swin's multi-scale + crop augmentation, steps at 27 and 33
        assert cfg.train_pipeline[3].type == 'RandomChoice'
        assert cfg.param_scheduler[1].milestones == [27, 33]
    if name.startswith('configs/cascade'):
        # Swin / CSWin cascade heads: 4conv1fc with SyncBN, GIoU loss
        assert cfg.model.type == 'CascadeRCNN'
        heads = cfg.model.roi_head.bbox_head
        assert len(heads) == 3
        for head, std in zip(heads, (0.1, 0.05, 0.033)):
            assert head.type == 'ConvFCBBoxHead'
            assert (head.num_shared_convs, head.num_shared_fcs) == (4, 1)
            assert head.norm_cfg.type == 'SyncBN'
            assert head.loss_bbox.type == 'GIoULoss'
            assert head.reg_decoded_bbox
            assert head.bbox_coder.target_stds[0] == std
        assert cfg.optim_wrapper.optimizer.weight_decay == 0.05
        assert cfg.train_dataloader.batch_size * 8 == 16
    if name.startswith('configs/retinanet'):
        # PVT's RetinaNet 1x
        assert cfg.model.type == 'RetinaNet'
        assert cfg.model.neck.start_level == 1
        assert cfg.model.neck.add_extra_convs == 'on_input'
        assert cfg.train_cfg.max_epochs == 12
        assert cfg.param_scheduler[1].milestones == [8, 11]
        opt = cfg.optim_wrapper.optimizer
        assert (opt.lr, opt.weight_decay) == (1e-4, 1e-4)
        assert cfg.train_dataloader.batch_size * 8 == 16
        assert [t.type for t in cfg.train_pipeline][2] == 'Resize'
        assert cfg.train_pipeline[2].scale == (1333, 800)
    if name.startswith('configs/fpn'):
        # PVT's Semantic FPN: 80k iterations, AdamW, poly 0.9, 512 crops
        assert cfg.model.decode_head.type == 'FPNHead'
        assert cfg.model.decode_head.num_classes == 150
        assert cfg.model.neck.num_outs == 4
        assert cfg.train_cfg.max_iters == 80000
        assert cfg.crop_size == (512, 512)
        assert cfg.train_dataloader.batch_size * 8 == 16
        opt = cfg.optim_wrapper.optimizer
        assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-4, 1e-4)
        (poly, ) = cfg.param_scheduler
        assert (poly.type, poly.power, poly.end) == ('PolyLR', 0.9, 80000)
    if name.startswith('configs/upernet'):
        assert cfg.train_cfg.max_iters == 160000
        assert cfg.train_dataloader.batch_size * 8 == 16
        assert cfg.crop_size == (512, 512)
        ratios = [t.scale_factor for t in cfg.tta_pipeline[1].transforms[0]]
        assert ratios == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
        assert cfg.tta_model.type == 'SegTTAModel'


@pytest.mark.parametrize('name', CONFIGS)
def test_missing_weights_are_reported(name, tmp_path, monkeypatch):
    """Run from an empty directory, each config names an official file
    (backbone init or load_from) that tools/train.py reports as missing."""
    cfg = load(name)
    monkeypatch.chdir(tmp_path)
    missing = find_missing_pretrained(cfg)
    if 'in1k_224' in name:
        assert missing == []  # trained from scratch on ImageNet
    else:
        assert len(missing) == 1
        key, path, _ = missing[0]
        assert re.fullmatch(r'pretrained/stvit-(small|base|large)-224\.pth',
                            path)


def _det_batch(model, size):
    from mmdet.testing import demo_mm_inputs
    packed = demo_mm_inputs(
        batch_size=1, image_shapes=[(3, size, size)], num_items=[2],
        num_classes=80, with_mask=True)
    return model.data_preprocessor(packed, True)


def _seg_batch(model, size):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    sample = SegDataSample(metainfo=dict(
        img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
    sample.gt_sem_seg = PixelData(
        data=torch.randint(0, 150, (1, size, size)))
    samples = [sample, copy.deepcopy(sample)]  # PPM's BN needs batch > 1
    data = dict(
        inputs=[torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
                for _ in samples],
        data_samples=samples)
    model.data_preprocessor.size = (size, size)  # not 512x512 in the test
    return model.data_preprocessor(data, True)


def _cls_batch(model, size):
    from mmpretrain.structures import DataSample
    data = dict(
        inputs=[torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
                for _ in range(2)],
        data_samples=[DataSample().set_gt_label(i) for i in (3, 7)])
    return model.data_preprocessor(data, True)


def _few_rois(model_cfg):
    """Fewer proposals, sampled RoIs and detections for a two-stage
    detector: the same loss and predict code runs on tens of boxes instead
    of 512-1000 (the cascade's three 4conv1fc heads cost ~100 GFLOPs per
    stage on 1000 RoIs)."""
    train, test = model_cfg.get('train_cfg'), model_cfg.get('test_cfg')
    if not train or 'rpn_proposal' not in train:
        return  # one-stage (RetinaNet)
    train.rpn_proposal.update(nms_pre=200, max_per_img=64)
    rcnn = train.rcnn if isinstance(train.rcnn, list) else [train.rcnn]
    for stage in rcnn:
        stage.sampler.num = 32
    test.rpn.update(nms_pre=200, max_per_img=64)
    test.rcnn.max_per_img = 20


# Configs whose model is exactly another config's (only data, schedule or
# optimizer differ): the loss/predict step runs on the twin only, and
# test_twins_have_the_same_model checks that the models are the same.
SAME_MODEL = {
    **{
        f'configs/mask_rcnn_stvit_{v}_3x.py':
        f'configs/mask_rcnn_stvit_{v}_1x.py'
        for v in 'sbl'
    },
    **{
        f'configs/stvit_{v}_in1k_384.py': f'configs/stvit_{v}_in1k_224.py'
        for v in 'sbl'
    },
    'configs/cascade_mask_rcnn_stvit_s_3x_layer_decay.py':
    'configs/cascade_mask_rcnn_stvit_s_3x.py',
}
MODEL_CASES = [name for name in CONFIGS if name not in SAME_MODEL]


@pytest.mark.parametrize('name,twin', sorted(SAME_MODEL.items()))
def test_twins_have_the_same_model(name, twin):
    assert load(name).model.to_dict() == load(twin).model.to_dict()


@pytest.mark.parametrize('name', MODEL_CASES)
def test_forward_and_loss_step(name):
    torch.manual_seed(0)
    cfg = load(name)
    _few_rois(cfg.model)
    model = build_without_weights(cfg)
    model.train()
    task = detect_task(cfg)
    size = 96
    batch = dict(mmdet=_det_batch, mmseg=_seg_batch,
                 mmpretrain=_cls_batch)[task](model, size)
    losses = model(**batch, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters()
             if n.startswith('backbone.layers.0') and p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    # and an inference forward of the same model
    model.eval()
    with torch.no_grad():
        out = model(**batch, mode='predict')
    assert len(out) == len(batch['data_samples'])


@pytest.fixture(scope='module')
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy')
    generate_toy_data(root=str(root), num_train=3, num_val=2)
    return root


def _dataset(cfg, split, toy_root, task):
    """The config's dataset with its pipeline, pointed at the toy data."""
    ds = copy.deepcopy(cfg[f'{split}_dataloader'].dataset)
    if task == 'mmdet':
        from mmdet.registry import DATASETS
        part = 'train' if split == 'train' else 'val'
        ds.update(
            data_root=str(toy_root / 'toy_coco'),
            ann_file=f'annotations/instances_{part}.json',
            data_prefix=dict(img=f'{part}/'),
            metainfo=dict(classes=('circle', 'rectangle', 'triangle')))
    elif task == 'mmseg':
        from mmseg.registry import DATASETS
        part = 'training' if split == 'train' else 'validation'
        ds.update(
            data_root=str(toy_root / 'toy_ade'),
            data_prefix=dict(
                img_path=f'images/{part}', seg_map_path=f'annotations/{part}'))
    else:
        from mmpretrain.registry import DATASETS
        img_dir = toy_root / 'toy_ade' / 'images' / 'training'
        ds = dict(
            type='CustomDataset', data_root=str(img_dir), with_label=False,
            pipeline=ds.pipeline)
    return DATASETS.build(ds)


PIPELINE_CASES = [
    'configs/mask_rcnn_stvit_s_1x.py', 'configs/mask_rcnn_stvit_s_3x.py',
    'configs/upernet_stvit_s_160k_ade20k.py', 'configs/stvit_s_in1k_224.py',
    'configs/stvit_s_in1k_384.py', 'configs/cascade_mask_rcnn_stvit_s_3x.py',
    'configs/retinanet_stvit_s_1x.py', 'configs/fpn_stvit_s_80k_ade20k.py'
]


@pytest.mark.parametrize('name', PIPELINE_CASES)
def test_pipelines_run_on_generated_images(name, toy_root):
    """The B and L configs share these pipelines (they inherit them)."""
    cfg = load(name)
    task = detect_task(cfg)
    for split in ('train', 'val'):
        dataset = _dataset(cfg, split, toy_root, task)
        assert len(dataset) > 0
        for i in range(min(2, len(dataset))):
            item = dataset[i]
            inputs = item['inputs']
            assert inputs.dtype == torch.uint8 and inputs.shape[0] == 3
            h, w = inputs.shape[1:]
            if task == 'mmdet':
                assert max(h, w) <= 1333 and min(h, w) <= 800
                if split == 'train':
                    assert len(item['data_samples'].gt_instances) > 0
            elif task == 'mmseg' and split == 'train':
                # 512x512 crops (smaller images are padded by the model)
                assert h <= 512 and w <= 512
            elif task == 'mmpretrain':
                side = 384 if '384' in name else 224
                assert (h, w) == (side, side)


def test_toy_cascade_trains_one_iteration(toy_root, tmp_path):
    """The toy demo's path with a config of the new families: tools/train.py
    trains configs/toy/cascade_mask_rcnn_stvit_s_toy.py (the real Cascade
    Mask R-CNN 3x with toy data) on the generated images for one iteration,
    evaluates it with the COCO metric and saves the checkpoint."""
    coco = str(toy_root / 'toy_coco') + '/'
    work = tmp_path / 'work'
    proc = subprocess.run(
        [sys.executable, 'tools/train.py',
         'configs/toy/cascade_mask_rcnn_stvit_s_toy.py', '--work-dir',
         str(work), '--cfg-options', 'train_cfg.max_iters=1',
         'train_cfg.val_interval=1', 'default_hooks.logger.interval=1',
         f'train_dataloader.dataset.data_root={coco}',
         f'val_dataloader.dataset.data_root={coco}',
         f'test_dataloader.dataset.data_root={coco}',
         f'val_evaluator.ann_file={coco}annotations/instances_val.json',
         f'test_evaluator.ann_file={coco}annotations/instances_val.json',
         # fewer boxes through the three heads: same code, less time
         'model.train_cfg.rpn_proposal.max_per_img=64',
         'model.test_cfg.rpn.max_per_img=32',
         'model.test_cfg.rcnn.max_per_img=10'],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS='2'))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert 'Iter(train) [1/1]' in out
    loss = re.search(r'Iter\(train\) \[1/1\].* loss: ([0-9.]+)', out)
    assert loss and float(loss.group(1)) > 0, out[-3000:]
    # the three cascade stages all trained
    for stage in range(3):
        assert f's{stage}.loss_bbox' in out
    assert 'coco/bbox_mAP' in out and 'coco/segm_mAP' in out
    assert (work / 'iter_1.pth').is_file()


def _official_tail(feat, sd):
    """The authors' classification tail written out: 1x1 conv, BN, Swish,
    average pool, linear."""
    x = F.conv2d(feat, sd['proj.weight'], sd['proj.bias'])
    x = F.batch_norm(x, sd['norm.running_mean'], sd['norm.running_var'],
                     sd['norm.weight'], sd['norm.bias'], False, 0., 1e-5)
    x = x * torch.sigmoid(x)
    return F.linear(x.mean((2, 3)), sd['head.weight'], sd['head.bias'])


def test_official_classifier_checkpoint_evaluates_as_is(tmp_path):
    """An official-format file (keys of the authors' classifier) loads into
    the ImageNet config through the converter and gives the logits of the
    authors' tail on top of the same backbone."""
    from mmengine.runner import load_checkpoint
    cfg = load('configs/stvit_s_in1k_224.py')
    src = build_without_weights(cfg).eval()
    g = torch.Generator().manual_seed(0)
    official = OrderedDict()
    for k, v in src.state_dict().items():
        v = v.clone()
        if v.is_floating_point():
            v = torch.randn(v.shape, generator=g) * 0.05 + \
                (1.0 if k.endswith(('running_var', 'norm.weight')) else 0.)
            if k.endswith('running_var'):
                v = v.abs() + 0.5
        name = re.sub(r'^backbone\.', '', k)
        name = re.sub(r'^head\.fc\.', 'head.', name)
        name = re.sub(r'^head\.(proj|norm)\.', r'\1.', name)
        official[name] = v
    assert {'proj.weight', 'norm.running_var', 'head.weight'} <= set(official)
    converted = convert_official_state_dict(official)
    assert set(converted) == set(src.state_dict())
    path = tmp_path / 'stvit-small-224-mm.pth'
    torch.save(dict(state_dict=converted), path)
    dst = build_without_weights(cfg).eval()
    load_checkpoint(dst, str(path), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=g)
    with torch.no_grad():
        logits = dst(x, mode='tensor')
        feat = dst.backbone(x)[-1]
        ref = _official_tail(feat, official)
    assert logits.shape == (2, 1000)
    np.testing.assert_allclose(logits.numpy(), ref.numpy(), atol=1e-4,
                               rtol=1e-4)


def test_converter_rejects_foreign_keys():
    with pytest.raises(KeyError, match='unexpected key'):
        convert_official_state_dict({'backbone.conv1.weight': torch.zeros(1)})
