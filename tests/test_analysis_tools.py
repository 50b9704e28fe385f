# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""get_flops.py reproduces the paper's count for a config; benchmark.py
produces a complete, finite table (a smoke run, not a measurement)."""
import json
import math
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis_tools'))

import get_flops  # noqa: E402


def test_get_flops_classifier_matches_paper():
    r = get_flops.measure(osp.join(ROOT, 'configs/stvit_s_in1k_224.py'))
    assert r['shape'] == (224, 224)
    # paper: 25M, 4.4G; the authors' model measures 25.50M, 4.37G
    assert abs(r['params'] / 1e6 - 25.50) < 0.01
    assert abs(r['flops'] / 1e9 - 4.4) / 4.4 < 0.03


def test_get_flops_cli_detector_at_a_given_shape():
    out = subprocess.run(
        [sys.executable, 'tools/analysis_tools/get_flops.py',
         'configs/mask_rcnn_stvit_s_1x.py', '--shape', '128', '160'],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'input: 160x128 (W x H)' in out.stdout
    assert 'params: 44.11 M' in out.stdout  # docs/reference_numbers.md: 44.11M


def test_get_flops_protocol_of_the_new_families():
    """Semantic FPN is counted at 512x512 (PVT's protocol), UperNet at
    2048x512, detectors at 1280x800; configs the paper does not report are
    marked so in the table."""
    from mmengine.config import Config
    shape = {
        'fpn_stvit_s_80k_ade20k': (512, 512),
        'upernet_stvit_s_160k_ade20k': (512, 2048),
        'retinanet_stvit_s_1x': (800, 1280),
        'cascade_mask_rcnn_stvit_s_3x': (800, 1280),
    }
    for name, hw in shape.items():
        cfg = Config.fromfile(osp.join(ROOT, 'configs', name + '.py'))
        task = 'mmseg' if 'ade20k' in name else 'mmdet'
        assert get_flops.default_shape(cfg, task) == hw, name
    r = dict(params=36.1e6, flops=251.04e9, shape=(800, 1280))
    row = get_flops.table_row('retinanet_stvit_s_1x', r)
    assert row == ('| retinanet_stvit_s_1x | 1280x800 | not in the paper | '
                   '36.10M | not in the paper | 251.0G | - |')
    row = get_flops.table_row('mask_rcnn_stvit_s_1x', r)
    assert row == ('| mask_rcnn_stvit_s_1x | 1280x800 | 44M | 36.10M | 252G '
                   '| 251.0G | -0.4% |')


def _flops_model(cfg):
    """The model as get_flops builds it: no weights, SyncBN as BN, eval."""
    from mmstvit.builder import build_model
    return build_model(cfg, sync_bn_as_bn=True).eval()


def test_get_flops_builds_the_cascade_without_syncbn():
    """The cascade's box heads use SyncBN, which cannot run outside a
    process group: get_flops counts them as BN (same FLOPs)."""
    import torch.nn as nn
    from mmengine.config import Config
    cfg = Config.fromfile(
        osp.join(ROOT, 'configs/cascade_mask_rcnn_stvit_s_3x.py'))
    assert cfg.model.roi_head.bbox_head[0].norm_cfg.type == 'SyncBN'
    model = _flops_model(cfg)
    norms = [m for m in model.roi_head.bbox_head.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 3 * 4  # one per shared conv of each stage
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert not model.training


def test_cascade_counted_with_masks_on_100_rois():
    """get_flops counts the cascade as mmdet 2's forward_dummy did (the
    peers' protocol): the same box-head outputs as mmdet 3's tensor forward,
    and each stage's mask head on the first 100 RoIs only."""
    import torch
    from mmengine.config import Config
    from mmengine.structures import InstanceData
    cfg = Config.fromfile(
        osp.join(ROOT, 'configs/cascade_mask_rcnn_stvit_s_3x.py'))
    torch.manual_seed(0)
    model = _flops_model(cfg)
    head = model.roi_head
    feats = tuple(torch.randn(1, 256, 64 // 2**i, 64 // 2**i)
                  for i in range(5))
    samples = [get_flops._data_sample('mmdet', (256, 256))]

    def proposals(n):
        xy = torch.rand(n, 2) * 200
        return [InstanceData(bboxes=torch.cat([xy, xy + 8 + torch.rand(
            n, 2) * 48], 1))]

    with torch.no_grad():
        few = proposals(8)  # the heads cost ~0.6 GFLOPs per RoI and stage
        ref = head.forward(feats, few, samples)
        ours = get_flops.cascade_forward_100(head, feats, few, samples)
    for a, b in zip(ref[:2], ours[:2]):  # box heads: the same outputs
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)
    # mmdet merges the stages' sigmoid masks by their mean
    merged = torch.stack([m.sigmoid() for m in ours[2:]]).mean(0)
    assert torch.allclose(ref[2][0], merged, atol=1e-6)
    # 300 proposals: each stage's mask head sees the first 100 (the heads
    # are stubbed here: only the RoI counts matter)
    calls = []
    head._refine_roi = lambda x, rois, metas, num: (rois.split(num), [], [])
    head._mask_forward = lambda stage, x, rois: calls.append(len(rois)) or \
        dict(mask_preds=rois.new_zeros(len(rois), 80, 28, 28))
    get_flops.cascade_forward_100(head, feats, proposals(300), samples)
    assert calls == [100, 100, 100]


def test_rpn_proposals_padded_to_max_per_img():
    """Two-stage detectors are counted on exactly max_per_img (1000)
    proposals, as mmdet 2's forward_dummy did, whatever a random RPN keeps
    after NMS: the RPN's own proposals first, repeated."""
    import torch
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, 'configs/mask_rcnn_stvit_s_1x.py'))
    torch.manual_seed(0)
    model = _flops_model(cfg)
    x = torch.randn(1, 3, 128, 160)
    samples = [get_flops._data_sample('mmdet', (128, 160))]
    with torch.no_grad():
        feats = model.extract_feat(x)
        own = model.rpn_head.predict(feats, samples, rescale=False)[0]
        get_flops.pad_proposals(model)
        padded = model.rpn_head.predict(feats, samples, rescale=False)[0]
    assert 0 < len(own) < 1000 and len(padded) == 1000
    assert torch.equal(padded.bboxes[:len(own)], own.bboxes)
    assert torch.equal(padded.bboxes[len(own)], own.bboxes[0])


def test_get_flops_only_picks_configs_by_name():
    out = subprocess.run(
        [sys.executable, 'tools/analysis_tools/get_flops.py', '--only',
         'fpn_*'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and '--only goes with --all' in out.stderr
    out = subprocess.run(
        [sys.executable, 'tools/analysis_tools/get_flops.py', '--all',
         '--only', 'nothing_*'], cwd=ROOT, capture_output=True, text=True,
        timeout=120)
    assert out.returncode != 0
    assert ("no config in configs/ or configs/ablations/ matches "
            "['nothing_*']") in out.stderr


def test_get_flops_needs_a_config():
    out = subprocess.run(
        [sys.executable, 'tools/analysis_tools/get_flops.py', 'nope.py'],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and 'nope.py does not exist' in out.stderr


def test_benchmark_quick_run(tmp_path):
    out_json = tmp_path / 'bench.json'
    out = subprocess.run(
        [sys.executable, 'tools/analysis_tools/benchmark.py', '--quick',
         '--models', 'stvit_s', 'resnet50', '--ddp', '--out', str(out_json)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out_json.read_text())
    assert set(res['models']) == {'stvit_s', 'resnet50'}
    for name, r in res['models'].items():
        for key in ('224_b8', '224_b64', '1280x800_b1'):
            inf = r['inference'][key]
            assert inf['img_s_min'] <= inf['img_s'] <= inf['img_s_max']
            assert math.isfinite(inf['gflop_s']) and inf['gflop_s'] > 0
            assert r['flops'][key] > 0
        assert r['train']['seconds'] > 0 and r['train']['peak_mib'] > 0
        assert r['train']['s_per_img'] == r['train']['seconds'] / 2
    assert abs(res['models']['stvit_s']['params_m'] - 23.94) < 0.01
    assert '| stvit_s |' in out.stdout and '| resnet50 (mmdet) |' in out.stdout
    assert 'interleaved rounds' in out.stdout  # the protocol is stated
    # DDP: 2 processes against 1, the layout fix against the old layout
    ddp = res['ddp']['rows']
    assert ddp['one process']['efficiency'] is None
    for name in ('ddp', 'ddp_before_fix'):
        assert ddp[name]['seconds'] > 0 and ddp[name]['efficiency'] > 0
    assert ddp['ddp']['grad_stride_warnings'] == 0
    assert ddp['ddp_before_fix']['grad_stride_warnings'] >= 1
    assert 'parallel efficiency' in out.stdout


def test_benchmark_refuses_unknown_and_missing_official(tmp_path):
    out = subprocess.run(
        [sys.executable, 'tools/analysis_tools/benchmark.py', '--quick',
         '--models', 'official_stvit_s', '--out', str(tmp_path / 'b.json')],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and 'needs --official' in out.stderr


def test_compare_checkouts_refuses_a_folder_that_is_no_checkout(tmp_path):
    out = subprocess.run(
        [sys.executable, 'tools/analysis_tools/compare_checkouts.py',
         str(tmp_path), ROOT],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert f'{tmp_path} (before) is not a checkout of mmstvit' in out.stderr


def test_fast_paths_variants_turn_off_one_flag_each():
    """fast_paths.py: every variant differs from the plan users run (deploy
    for inference, fast for training) in exactly its own flag, and the
    flags that do not apply to a setting are left out, not measured."""
    import dataclasses

    import fast_paths
    from mmstvit.models.backbones import kernels
    covered = set()
    for name, flags in fast_paths.VARIANTS.items():
        for inference, base in (
                (True, kernels.deploy_plan(kernels.HAS_ONEDNN)),
                (False, kernels.FAST)):
            plan = fast_paths.plan(name, inference)
            only = fast_paths.TRAINING_ONLY if inference else \
                fast_paths.INFERENCE_ONLY
            if any(f in flags for f in only):
                assert plan is None, name
                continue
            changed = {f.name for f in dataclasses.fields(plan)
                       if getattr(plan, f.name) != getattr(base, f.name)}
            assert changed == set(flags) or (
                name == 'no oneDNN post-ops' and not kernels.HAS_ONEDNN), \
                (name, changed)
        covered |= set(flags)
    # every flag of the plan has its variant
    assert covered == {f.name for f in dataclasses.fields(kernels.Kernels)}
    rows = fast_paths.table(
        {v: {'a': 1.0} for v in fast_paths.VARIANTS}, ['a']).splitlines()
    assert rows[2].startswith('| all fast paths | 1.000 s |')
    assert all('+0.0%' in r for r in rows[3:3 + len(fast_paths.VARIANTS) - 1])
