# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""tools/train.py, tools/test.py and the dist scripts, on tiny CPU configs.

The end-to-end runs use a 4-stage STViT with 16-64 channels, one block per
stage, inside mmseg's EncoderDecoder on four generated 32x32 images: a
training run takes seconds. The mmpretrain run is skipped where mmpretrain
cannot import (it needs torchvision).
"""
import argparse
import os
import os.path as osp
import pickle
import shutil
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmstvit  # noqa: F401
from mmstvit import STViT
from mmstvit import weights as ck
from mmstvit.cli import load_from, pretrained, run_config
from mmstvit.cli.errors import ToolError
from mmstvit.weights import load_checkpoint_file

from helpers import (CLS_MODEL_CFG, REPO, TINY_ARCH, free_port, load_script,
                     write_cls_case)

TOOLS = osp.join(REPO, 'tools')


def load_tool(name):
    return load_script(f'tools/{name}.py')


@pytest.fixture(scope='module')
def test_tool():
    return load_tool('test')


def run(cmd, cwd, timeout=240, env=None):
    full_env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    full_env.update(env or {})
    return subprocess.run(
        cmd,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env)


SCRATCH = ['--cfg-options', 'model.backbone.init_cfg=None']


def assert_clean_exit(proc, *texts):
    """Non-zero exit, the texts in the message and no Python traceback."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert 'Traceback' not in out, out[-3000:]
    for t in texts:
        assert t in out, (t, out[-3000:])


# ---------------------------------------------------------------------------
# argument parsing and config merging
# ---------------------------------------------------------------------------


def test_train_parse_args(train_tool, keep_local_rank):
    args = train_tool.parse_args(['c.py'])
    assert (args.config, args.work_dir, args.resume, args.amp,
            args.auto_scale_lr, args.cfg_options,
            args.launcher) == ('c.py', None, None, False, False, None, 'none')
    assert os.environ['LOCAL_RANK'] == '0'
    assert train_tool.parse_args(['c.py', '--resume']).resume == 'auto'
    os.environ.pop('LOCAL_RANK')
    args = train_tool.parse_args([
        'c.py', '--work-dir', 'w', '--resume', 'x.pth', '--amp',
        '--auto-scale-lr', '--cfg-options', 'a.b=1', 'c=[1,2]', '--launcher',
        'pytorch', '--local-rank', '3'
    ])
    assert args.resume == 'x.pth' and args.amp and args.auto_scale_lr
    assert args.cfg_options == {'a.b': 1, 'c': [1, 2]}
    assert args.launcher == 'pytorch' and args.local_rank == 3
    assert os.environ['LOCAL_RANK'] == '3'
    assert train_tool.parse_args(['c.py', '--local_rank', '1']).local_rank \
        == 1
    with pytest.raises(SystemExit):
        train_tool.parse_args(['c.py', '--launcher', 'ssh'])


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_tool_errors_end_the_tools_with_their_message(
        tool, train_tool, test_tool, monkeypatch, tmp_path):
    """The glue raises ToolError (library code never exits); each tool's
    main turns it into its exit message, without a traceback."""
    def broken(task):
        raise ToolError(f'mmstvit: this is a {task} config, but '
                               'mmseg cannot be imported: fix it')

    monkeypatch.setattr(run_config, 'register_toolbox', broken)
    cfg = tmp_path / 'c.py'
    cfg.write_text("default_scope = 'mmseg'\n")
    ckpt = tmp_path / 'm.pth'
    torch.save(dict(state_dict={}, meta={}), ckpt)
    module = train_tool if tool == 'train' else test_tool
    argv = [str(cfg)] + ([str(ckpt)] if tool == 'test' else [])
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    assert not isinstance(e.value, ToolError)
    assert str(e.value) == ('mmstvit: this is a mmseg config, but mmseg '
                            'cannot be imported: fix it')
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert not issubclass(ToolError, SystemExit)


def _cfg(**kw):
    base = dict(
        default_scope='mmseg',
        model=dict(type='EncoderDecoder'),
        optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD')),
        load_from='some.pth',
        resume=False)
    base.update(kw)
    return Config(base)


def test_train_merge_args(train_tool, keep_local_rank):
    p = train_tool.parse_args
    cfg = train_tool.merge_args(_cfg(), p(['cfgs/my_cfg.py']), 'mmseg')
    assert cfg.work_dir == osp.join('./work_dirs', 'my_cfg')
    assert cfg.launcher == 'none' and cfg.load_from == 'some.pth'
    cfg = train_tool.merge_args(
        _cfg(work_dir='from_cfg'), p(['c.py', '--resume']), 'mmseg')
    assert cfg.work_dir == 'from_cfg'
    assert cfg.resume is True and cfg.load_from is None
    cfg = train_tool.merge_args(
        _cfg(),
        p([
            'c.py', '--work-dir', 'cli', '--resume', 'r.pth', '--cfg-options',
            'optim_wrapper.optimizer.lr=0.5'
        ]), 'mmseg')
    assert cfg.work_dir == 'cli' and cfg.load_from == 'r.pth' and cfg.resume
    assert cfg.optim_wrapper.optimizer.lr == 0.5
    cfg = train_tool.merge_args(_cfg(), p(['c.py', '--amp']), 'mmseg')
    # mmengine's AmpOptimWrapper on a GPU, bf16 autocast on a CPU
    # (tests/test_amp.py)
    assert cfg.optim_wrapper.type == 'DeviceAmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    with pytest.raises(SystemExit, match='auto_scale_lr'):
        train_tool.merge_args(_cfg(), p(['c.py', '--auto-scale-lr']), 'mmseg')
    cfg = train_tool.merge_args(
        _cfg(auto_scale_lr=dict(enable=False, base_batch_size=16)),
        p(['c.py', '--auto-scale-lr']), 'mmseg')
    assert cfg.auto_scale_lr.enable is True
    # mmpretrain's defaults for the data loaders
    cfg = train_tool.merge_args(
        _cfg(train_dataloader=dict(batch_size=2, num_workers=2)), p(['c.py']),
        'mmpretrain')
    assert cfg.train_dataloader.collate_fn == dict(type='default_collate')
    assert cfg.train_dataloader.persistent_workers is True


def test_test_parse_and_merge_args(test_tool, keep_local_rank, tmp_path):
    ckpt = tmp_path / 'model.pth'
    torch.save(dict(state_dict={}, meta={}), ckpt)
    args = test_tool.parse_args(['c.py', str(ckpt)])
    assert (args.checkpoint, args.out, args.show, args.show_dir,
            args.wait_time, args.tta,
            args.launcher) == (str(ckpt), None, False, None, 2, False, 'none')
    with pytest.raises(SystemExit):
        test_tool.parse_args(['c.py', str(ckpt), '--out-item', 'metrics'])

    hooks = dict(visualization=dict(type='DetVisualizationHook'))
    det = Config(
        dict(
            default_scope='mmdet',
            model=dict(type='MaskRCNN'),
            default_hooks=hooks,
            test_dataloader=dict(
                dataset=dict(
                    type='ConcatDataset',
                    dataset=dict(pipeline=[
                        dict(type='LoadImageFromFile'),
                        dict(type='PackDetInputs')
                    ])))))
    args = test_tool.parse_args(
        ['det.py',
         str(ckpt), '--show-dir', 'vis', '--tta', '--out', 'r.pkl'])
    cfg = test_tool.merge_args(det, args, 'mmdet')
    assert cfg.load_from == str(ckpt)
    assert cfg.work_dir == osp.join('./work_dirs', 'det')
    vis = cfg.default_hooks.visualization
    assert vis.draw is True and vis.test_out_dir == 'vis'
    assert cfg.model.type == 'DetTTAModel'
    assert cfg.model.module.type == 'MaskRCNN'
    assert cfg.test_dataloader.dataset.pipeline[-1].type == 'TestTimeAug'

    seg = Config(
        dict(
            default_scope='mmseg',
            model=dict(type='EncoderDecoder'),
            default_hooks=dict(
                visualization=dict(type='SegVisualizationHook')),
            visualizer=dict(type='SegLocalVisualizer'),
            test_evaluator=dict(type='IoUMetric'),
            tta_model=dict(type='SegTTAModel'),
            tta_pipeline=[dict(type='TestTimeAug')],
            test_dataloader=dict(dataset=dict(pipeline=[]))))
    args = test_tool.parse_args([
        'seg.py',
        str(ckpt), '--show-dir', 'vis', '--tta', '--out', 'maps', '--interval',
        '1'
    ])
    cfg = test_tool.merge_args(seg, args, 'mmseg')
    assert cfg.visualizer.save_dir == 'vis'
    assert cfg.default_hooks.visualization.draw is True
    assert cfg.default_hooks.visualization.interval == 1
    assert cfg.model.type == 'SegTTAModel'
    assert cfg.model.module.type == 'EncoderDecoder'
    assert cfg.test_evaluator.output_dir == 'maps'
    assert cfg.test_evaluator.keep_results is True

    cls = Config(
        dict(
            default_scope='mmpretrain',
            model=dict(type='ImageClassifier'),
            default_hooks=dict(
                visualization=dict(type='VisualizationHook', enable=False)),
            test_dataloader=dict(
                dataset=dict(pipeline=[
                    dict(type='LoadImageFromFile'),
                    dict(type='PackInputs')
                ]))))
    args = test_tool.parse_args(
        ['cls.py', str(ckpt), '--show-dir', 'vis', '--tta'])
    cfg = test_tool.merge_args(cls, args, 'mmpretrain')
    vis = cfg.default_hooks.visualization
    assert vis.enable is True and vis.out_dir == 'vis' and vis.interval == 1
    assert cfg.model.type == 'mmpretrain.AverageClsScoreTTA'
    assert cfg.test_dataloader.collate_fn == dict(type='default_collate')

    (tmp_path / 'broken.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(SystemExit, match='cannot read'):
        test_tool.merge_args(
            Config(dict(default_scope='mmseg')),
            test_tool.parse_args(['c.py', str(tmp_path / 'broken.pth')]),
            'mmseg')
    with pytest.raises(SystemExit, match='checkpoint not found'):
        test_tool.merge_args(
            Config(dict(default_scope='mmseg')),
            test_tool.parse_args(['c.py', str(tmp_path / 'nope.pth')]),
            'mmseg')


def test_detect_task():
    assert run_config.detect_task(Config(dict(default_scope='mmdet'))) == 'mmdet'
    assert run_config.detect_task(
        Config(dict(model=dict(type='mmseg.EncoderDecoder')))) == 'mmseg'
    assert run_config.detect_task(Config(dict(model=dict(type='X')))) == \
        'mmengine'


# ---------------------------------------------------------------------------
# missing pretrained weights
# ---------------------------------------------------------------------------


def test_find_missing_pretrained(tmp_path):
    there = tmp_path / 'there.pth'
    there.write_bytes(b'x')
    cfg = Config(
        dict(
            model=dict(
                backbone=dict(
                    init_cfg=dict(type='Pretrained', checkpoint='gone/a.pth')),
                neck=dict(init_cfg=[
                    dict(type='Xavier'),
                    dict(type='Pretrained', checkpoint=str(there)),
                    dict(type='Pretrained', checkpoint='gone/b.pth')
                ]),
                head=dict(
                    init_cfg=dict(
                        type='Pretrained', checkpoint='https://x/y.pth')),
                pretrained='open-mmlab://resnet50_v1c',
                aux=dict(pretrained='gone/c.pth')),
            load_from='gone/d.pth'))
    missing = pretrained.find_missing_pretrained(cfg)
    assert [(k, p) for k, p, _ in missing] == [
        ('model.backbone.init_cfg.checkpoint', 'gone/a.pth'),
        ('model.neck.init_cfg[2].checkpoint', 'gone/b.pth'),
        ('model.aux.pretrained', 'gone/c.pth'),
        ('load_from', 'gone/d.pth'),
    ]
    msg = pretrained.missing_pretrained_message(missing)
    from mmstvit.weights import OFFICIAL_WEIGHTS_HELP
    assert OFFICIAL_WEIGHTS_HELP in msg
    assert 'model.backbone.init_cfg=None' in msg
    assert osp.abspath('gone/a.pth') in msg
    assert pretrained.find_missing_pretrained(cfg, load_from=False)[-1][0] == \
        'model.aux.pretrained'
    cfg.model.backbone.init_cfg = None
    assert 'model.backbone.init_cfg.checkpoint' not in [
        k for k, _, _ in pretrained.find_missing_pretrained(cfg)
    ]


def test_train_stops_on_missing_weights(seg_case):
    root, cfg = seg_case
    proc = run([
        sys.executable,
        osp.join(TOOLS, 'train.py'),
        str(cfg), '--work-dir',
        str(root / 'w_missing')
    ],
               cwd=root)
    from mmstvit.weights import OFFICIAL_WEIGHTS_HELP
    assert_clean_exit(proc, 'pretrained/stvit-small-224.pth',
                      'model.backbone.init_cfg.checkpoint',
                      str(root / 'pretrained/stvit-small-224.pth'),
                      OFFICIAL_WEIGHTS_HELP,
                      '--cfg-options model.backbone.init_cfg=None')
    assert proc.returncode == 1
    # it stopped before building anything: no work dir
    assert not (root / 'w_missing').exists()


def test_train_stops_on_missing_weights_mmdet_config(tmp_path):
    """The same on an mmdet Mask R-CNN config with STViT swapped in."""
    cfg = tmp_path / 'mask_rcnn_stvit.py'
    cfg.write_text("_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'\n"
                   "custom_imports = dict(imports=['mmstvit'], "
                   'allow_failed_imports=False)\n'
                   'model = dict(backbone=dict(_delete_=True, type="STViT", '
                   'arch="small", init_cfg=dict(type="Pretrained", '
                   'checkpoint="pretrained/stvit-small-224.pth")), '
                   'neck=dict(in_channels=[64, 128, 320, 512]))\n')
    proc = run(
        [sys.executable, osp.join(TOOLS, 'train.py'),
         str(cfg)], cwd=tmp_path)
    assert_clean_exit(proc, 'pretrained/stvit-small-224.pth',
                      'model.backbone.init_cfg.checkpoint')
    assert not (tmp_path / 'work_dirs').exists()


@pytest.mark.skipif(
    torch.cuda.is_available(), reason='AmpOptimWrapper runs with CUDA')
def test_mmengine_amp_wrapper_on_cpu_says_why(seg_case):
    """A config with mmengine's AmpOptimWrapper stops on a CPU before
    anything is built, naming the two ways to go on (--amp, which trains
    in bfloat16 here, or fp32); tests/test_amp.py trains with --amp."""
    root, cfg = seg_case
    proc = run(
        [
            sys.executable,
            osp.join(TOOLS, 'train.py'),
            str(cfg), '--work-dir',
            str(root / 'w_amp')
        ] + SCRATCH + ['optim_wrapper.type=AmpOptimWrapper'],
        cwd=root)
    assert_clean_exit(proc, 'needs a CUDA GPU', 'add --amp',
                      'DeviceAmpOptimWrapper', "type='OptimWrapper'")
    assert not (root / 'w_amp').exists()


# ---------------------------------------------------------------------------
# the authors' checkpoint format
# ---------------------------------------------------------------------------


def tiny_backbone():
    from mmstvit import STViT
    torch.manual_seed(0)
    return STViT(arch=TINY_ARCH, stoken_size=[4, 2, 1, 1])


def official_file(path, backbone_sd):
    """A file in the authors' format: ``model`` (backbone + classification
    tail), ``model_ema``, ``args`` (a Namespace), numpy values."""
    sd = OrderedDict(backbone_sd)
    sd['proj.weight'] = torch.randn(1024, 64, 1, 1)
    sd['proj.bias'] = torch.randn(1024)
    sd['norm.weight'] = torch.rand(1024)
    sd['norm.bias'] = torch.rand(1024)
    sd['norm.running_mean'] = torch.rand(1024)
    sd['norm.running_var'] = torch.rand(1024)
    sd['norm.num_batches_tracked'] = torch.tensor(1)
    sd['head.weight'] = torch.randn(2, 1024)
    sd['head.bias'] = torch.randn(2)
    torch.save(
        dict(
            model=sd,
            model_ema=sd,
            epoch=299,
            optimizer={},
            args=argparse.Namespace(model='stvit_small', lr=1e-3),
            max_accuracy=np.float64(83.6)), path)
    return sd


def test_official_format_detection_and_conversion(tmp_path):
    from mmengine.runner.checkpoint import load_checkpoint
    backbone = tiny_backbone()
    theirs = official_file(tmp_path / 'official.pth', backbone.state_dict())
    torch.save(
        dict(
            state_dict=OrderedDict(('backbone.' + k, v)
                                   for k, v in backbone.state_dict().items()),
            meta={}), tmp_path / 'mm.pth')
    torch.save(backbone.state_dict(), tmp_path / 'plain.pth')
    assert ck.checkpoint_format(str(tmp_path / 'official.pth')) == \
        'official'
    assert ck.checkpoint_format(str(tmp_path / 'mm.pth')) == 'mm'
    assert ck.checkpoint_format(str(tmp_path / 'plain.pth')) == 'other'

    ckpt = dict(model=theirs)
    full = ck.convert_official(ckpt)
    assert full['head.fc.weight'] is theirs['head.weight']
    assert full['head.proj.weight'] is theirs['proj.weight']
    assert full['head.norm.running_var'] is theirs['norm.running_var']
    assert all(k.startswith(('backbone.', 'head.')) for k in full)
    assert len(full) == len(theirs)
    dense = ck.convert_official(ckpt, backbone_only=True)
    assert set(dense) == {'backbone.' + k for k in backbone.state_dict()}

    # through mmengine's loader (what the Runner does with load_from)
    class Det(torch.nn.Module):

        def __init__(self):
            super().__init__()
            self.backbone = tiny_backbone()
            self.backbone.apply(
                lambda m:
                [torch.nn.init.zeros_(p) for p in m.parameters(recurse=False)])
            self.neck = torch.nn.Conv2d(64, 8, 1)

    model = Det()
    path = load_from.official_load_from(str(tmp_path / 'official.pth'), 'mmdet')
    assert path.startswith('stvit-official-backbone://')
    out = load_checkpoint(model, path, map_location='cpu')
    assert out['meta']['converted_from'] == str(tmp_path / 'official.pth')
    for k, v in backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[k], v)


def test_train_load_from_official_is_converted(tmp_path):
    official_file(tmp_path / 'official.pth', tiny_backbone().state_dict())
    path = str(tmp_path / 'official.pth')
    cfg = Config(dict(load_from=path, resume=False))
    load_from.convert_load_from(cfg, 'mmseg')
    assert cfg.load_from == 'stvit-official-backbone://' + path
    cfg = Config(dict(load_from=path, resume=False))
    load_from.convert_load_from(cfg, 'mmpretrain')
    assert cfg.load_from == 'stvit-official://' + path
    with pytest.raises(ToolError, match='cannot resume'):
        load_from.convert_load_from(
            Config(dict(load_from=path, resume=True)), 'mmseg')
    torch.save(dict(state_dict={}), tmp_path / 'mm.pth')
    cfg = Config(dict(load_from=str(tmp_path / 'mm.pth'), resume=True))
    load_from.convert_load_from(cfg, 'mmseg')
    assert cfg.load_from == str(tmp_path / 'mm.pth')


def test_official_load_from_gets_the_strict_backbone_check(tmp_path):
    """The authors' file as load_from is checked against the config's
    backbone like init_cfg: all tensors, right shapes, right variant."""
    sd = tiny_backbone().state_dict()
    model = dict(backbone=dict(type='STViT', arch=TINY_ARCH, init_cfg=None))
    official_file(tmp_path / 'full.pth', sd)
    cfg = Config(dict(load_from=str(tmp_path / 'full.pth'), model=model))
    load_from.convert_load_from(cfg, 'mmdet')
    assert cfg.load_from.startswith('stvit-official-backbone://')

    partial = {k: v for k, v in sd.items() if not k.startswith('layers.3')}
    official_file(tmp_path / 'partial.pth', partial)
    cfg = Config(dict(load_from=str(tmp_path / 'partial.pth'), model=model))
    with pytest.raises(ToolError) as e:
        load_from.convert_load_from(cfg, 'mmdet')
    msg = str(e.value)
    assert 'missing from the file' in msg and 'layers.3.blocks.0' in msg
    assert 'strict=False' in msg

    official_file(tmp_path / 'small.pth', STViT('small').state_dict())
    cfg = Config(dict(load_from=str(tmp_path / 'small.pth'), model=model))
    with pytest.raises(ToolError, match="STViT-small .*arch='small'"):
        load_from.convert_load_from(cfg, 'mmdet')


def test_test_tool_refuses_weights_that_leave_heads_random(seg_case):
    """tools/test.py on a segmentation config refuses the authors' ImageNet
    file and an mm file of backbone weights only (the decode head would be
    evaluated at random), saying what to do instead."""
    root, cfg = seg_case
    backbone = tiny_backbone().state_dict()
    official_file(root / 'official.pth', backbone)
    torch.save(dict(state_dict=OrderedDict(
        ('backbone.' + k, v) for k, v in backbone.items()), meta={}),
        root / 'backbone_only.pth')
    for name in ('official.pth', 'backbone_only.pth'):
        proc = run([
            sys.executable,
            osp.join(TOOLS, 'test.py'),
            str(cfg),
            str(root / name), '--work-dir',
            str(root / 'w_official')
        ],
                   cwd=root)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, out[-3000:]
        assert 'does not hold the weights of the whole model' in out, \
            out[-3000:]
        assert 'decode_head' in out and 'backbone weights only' in out
        assert f'python tools/train.py {cfg}' in out
        assert 'Traceback' not in out
        assert 'mIoU:' not in out  # nothing was evaluated


# ---------------------------------------------------------------------------
# distributed training with CPU processes, resume, test, --show-dir
# ---------------------------------------------------------------------------


def test_dist_train_cpu_then_resume_and_test(seg_case):
    root, cfg = seg_case
    work = root / 'w_dist'
    env = dict(PORT=str(free_port()), PYTHON=sys.executable)
    proc = run(
        [
            'bash',
            osp.join(TOOLS, 'dist_train.sh'),
            str(cfg), '2', '--work-dir',
            str(work)
        ] + SCRATCH,
        cwd=root,
        env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert (work / 'iter_2.pth').is_file()
    log = open(next(work.glob('*/*.log'))).read()
    assert "backend='gloo'" in log or "'backend': 'gloo'" in log
    assert 'CPUDistributedDataParallel' in log
    # the parameters are laid out as their gradients (tests/test_ddp.py)
    assert 'Grad strides do not match bucket view strides' not in out
    # third-party warnings nobody can act on stay hidden in every process
    # (cli.quiet.KNOWN_THIRD_PARTY_WARNINGS)
    assert '`broadcast_buffers` is deprecated' not in out
    if not torch.cuda.is_available():
        assert 'SyncBatchNorm only runs on accelerators' in out
    ckpt = load_checkpoint_file(work / 'iter_2.pth')
    assert ckpt['meta']['iter'] == 2

    # resume the distributed run in one process, up to iteration 4
    proc = run([
        sys.executable,
        osp.join(TOOLS, 'train.py'),
        str(cfg), '--work-dir',
        str(work), '--resume', '--cfg-options', 'model.backbone.init_cfg=None',
        'train_cfg.max_iters=4'
    ],
               cwd=root)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'resumed epoch: 0, iter: 2' in out
    assert 'Iter(train) [4/4]' in out and 'Iter(train) [1/4]' not in out
    assert load_checkpoint_file(work / 'iter_4.pth')['meta']['iter'] == 4

    # 2-process test of the result, pictures with --show-dir
    shutil.rmtree(root / 'vis', ignore_errors=True)
    env['PORT'] = str(free_port())
    proc = run([
        'bash',
        osp.join(TOOLS, 'dist_test.sh'),
        str(cfg),
        str(work / 'iter_4.pth'), '2', '--work-dir',
        str(root / 'w_dist_test'), '--show-dir',
        str(root / 'vis'), '--interval', '1'
    ],
               cwd=root,
               env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'mIoU:' in out
    # mmengine's visualizer saves on rank 0 only: its half of the images
    pictures = sorted(p.name for p in (root / 'vis').rglob('*.png'))
    assert pictures == ['test_0.png_0.png', 'test_2.png_0.png']


# ---------------------------------------------------------------------------
# mmdet: --show-dir, --out, --tta on Mask R-CNN
# ---------------------------------------------------------------------------

DET_CFG = """
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='STViT', arch=ARCH,
                  stoken_size=[4, 2, 1, 1], drop_path_rate=0.),
    neck=dict(in_channels=[16, 32, 48, 64], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=3),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(in_channels=32, conv_out_channels=32,
                       num_classes=3)))
metainfo = dict(classes=('circle', 'rectangle', 'triangle'))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'scale_factor'))]
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root='DATA/', metainfo=metainfo,
                 ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='DATA/annotations/instances_val.json')
test_evaluator = val_evaluator
"""


def test_mmdet_test_show_dir_out_and_tta(tmp_path):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from mmstvit.data.toy_data import generate_toy_coco
    generate_toy_coco(tmp_path / 'toy_coco', num_train=1, num_val=2)
    cfg_file = tmp_path / 'tiny_mask_rcnn.py'
    cfg_file.write_text(
        DET_CFG.replace('ARCH',
                        repr(TINY_ARCH)).replace('DATA',
                                                 str(tmp_path / 'toy_coco')))
    register_all_modules(init_default_scope=False)
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(cfg_file)).model)
    torch.save(
        dict(state_dict=model.state_dict(), meta={}), tmp_path / 'model.pth')

    proc = run([
        sys.executable,
        osp.join(TOOLS, 'test.py'),
        str(cfg_file),
        str(tmp_path / 'model.pth'), '--work-dir',
        str(tmp_path / 'w'), '--show-dir', 'vis', '--out',
        str(tmp_path / 'res.pkl')
    ],
               cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'coco/bbox_mAP' in out and 'coco/segm_mAP' in out
    # mmdet writes the pictures under work_dir/<timestamp>/<show-dir>
    assert len(list((tmp_path / 'w').glob('*/vis/*.jpg'))) == 2
    with open(tmp_path / 'res.pkl', 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 2 and 'pred_instances' in results[0]

    proc = run([
        sys.executable,
        osp.join(TOOLS, 'test.py'),
        str(cfg_file),
        str(tmp_path / 'model.pth'), '--tta'
    ],
               cwd=tmp_path)
    assert_clean_exit(proc, 'cannot merge instance masks')


# ---------------------------------------------------------------------------
# mmpretrain (needs torchvision)
# ---------------------------------------------------------------------------


def _mmpretrain_ready():
    try:
        import mmpretrain.datasets  # noqa: F401
        from mmpretrain.registry import MODELS
    except Exception:  # torchvision missing or broken
        return False
    import mmstvit.models  # noqa: F401
    return MODELS.get('STViTClsHead') is not None


CLS_CFG = CLS_MODEL_CFG + """train_dataloader = dict(batch_size=2, num_workers=0, dataset=dataset,
                        sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(batch_size=2, num_workers=0, dataset=dataset,
                      sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9))
train_cfg = dict(by_epoch=False, max_iters=2, val_interval=2)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1),
    checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
    visualization=dict(type='VisualizationHook', enable=False))
env_cfg = dict(mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
visualizer = dict(type='UniversalVisualizer',
                  vis_backends=[dict(type='LocalVisBackend')])
randomness = dict(seed=0)
"""


@pytest.mark.skipif(
    not _mmpretrain_ready(),
    reason='mmpretrain needs torchvision and STViTClsHead')
def test_mmpretrain_dist_train_and_official_test(tmp_path):
    cfg = write_cls_case(tmp_path, CLS_CFG)
    env = dict(PORT=str(free_port()), PYTHON=sys.executable)
    proc = run([
        'bash',
        osp.join(TOOLS, 'dist_train.sh'),
        str(cfg), '2', '--work-dir',
        str(tmp_path / 'w')
    ],
               cwd=tmp_path,
               env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (tmp_path / 'w' / 'iter_2.pth').is_file()
    # mmpretrain's loaders pin memory; on a CPU torch says so once per
    # loader and process, hidden (cli.quiet.KNOWN_THIRD_PARTY_WARNINGS)
    if not torch.cuda.is_available():
        assert "'pin_memory' argument is set as true" not in proc.stderr

    # the authors' format of the trained weights evaluates the same
    sd = load_checkpoint_file(tmp_path / 'w' / 'iter_2.pth')['state_dict']
    theirs = OrderedDict()
    for k, v in sd.items():
        if k.startswith('backbone.'):
            theirs[k[len('backbone.'):]] = v
        elif k.startswith('head.fc.'):
            theirs['head.' + k[len('head.fc.'):]] = v
        elif k.startswith(('head.proj.', 'head.norm.')):
            theirs[k[len('head.'):]] = v
    torch.save(
        dict(model=theirs, args=argparse.Namespace(x=1)),
        tmp_path / 'official.pth')
    preds = {}
    for name in ('w/iter_2.pth', 'official.pth'):
        out = tmp_path / (name.replace('/', '_') + '.pkl')
        proc = run([
            sys.executable,
            osp.join(TOOLS, 'test.py'),
            str(cfg),
            str(tmp_path / name), '--out',
            str(out)
        ],
                   cwd=tmp_path)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        with open(out, 'rb') as f:
            preds[name] = [p['pred_score'] for p in pickle.load(f)]
    for a, b in zip(*preds.values()):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------
# bad data stops both tools before anything is built
# ---------------------------------------------------------------------------


def test_tools_stop_on_bad_data(tmp_path):
    """tools/test.py on an annotation file that is not COCO and
    tools/train.py on a label map with an out-of-range class: exit code 1,
    the file and the fix named, no traceback, no run started. (The missing
    data root through train.py: tests/test_data_errors.py.)"""
    from PIL import Image

    from mmstvit.data.toy_data import generate_toy_data
    generate_toy_data(root=str(tmp_path), num_train=1, num_val=1)
    coco = tmp_path / 'toy_coco'
    (coco / 'annotations' / 'instances_val.json').write_text(
        '{"items": []}')
    torch.save(dict(state_dict={}, meta={}), tmp_path / 'model.pth')
    proc = run([
        sys.executable,
        osp.join(TOOLS, 'test.py'), 'configs/toy/mask_rcnn_stvit_s_toy.py',
        str(tmp_path / 'model.pth'), '--work-dir',
        str(tmp_path / 'w_test'), '--cfg-options',
        f'test_dataloader.dataset.data_root={coco}/'
    ],
               cwd=REPO)
    assert_clean_exit(proc, 'instances_val.json', 'not a COCO')
    assert proc.returncode == 1
    assert not (tmp_path / 'w_test').exists()

    ade = tmp_path / 'toy_ade'
    label_map = next((ade / 'annotations' / 'training').glob('*.png'))
    arr = np.array(Image.open(label_map))
    arr[:4, :4] = 9  # the toy set has classes 0..3
    Image.fromarray(arr).save(label_map)
    opts = [
        f'{split}_dataloader.dataset.data_root={ade}/'
        for split in ('train', 'val', 'test')
    ]
    proc = run([
        sys.executable,
        osp.join(TOOLS, 'train.py'), 'configs/toy/upernet_stvit_s_toy.py',
        '--work-dir',
        str(tmp_path / 'w_train'), '--cfg-options'
    ] + opts,
               cwd=REPO)
    assert_clean_exit(proc, label_map.name, '9')
    assert proc.returncode == 1
    assert not (tmp_path / 'w_train').exists()
