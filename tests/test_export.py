# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""ONNX export (tools/deployment/export_onnx.py, mmstvit.export): the
backbone and the classifier agree with PyTorch in onnxruntime, the exported
graph has no identity-kernel convolutions unless asked for, UperNet's
pyramid pooling exports at any size, and what does not export says why."""
import os.path as osp

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mmstvit  # noqa: F401
from mmstvit import export
from mmstvit.models import STViT

from helpers import REPO, load_script, run_in

TINY = dict(
    embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4],
    layer_scale=[False, False, True, True])


def load_tool():
    return load_script('tools/deployment/export_onnx.py')


@pytest.fixture(scope='module')
def tool():
    return load_tool()


def tiny_backbone():
    torch.manual_seed(0)
    model = STViT(arch=TINY, stoken_size=(4, 2, 2, 1),
                  out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():  # eval BatchNorms with statistics of their own
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            if hasattr(m, 'gamma_1'):
                m.gamma_1.fill_(0.5)
                m.gamma_2.fill_(0.7)
    return model


@pytest.mark.parametrize('reference', [False, True])
def test_tiny_backbone_graph(reference, tmp_path):
    """Both graphs agree with PyTorch at a size that needs padding; only the
    reference graph has the authors' identity-kernel convolutions."""
    model = tiny_backbone()
    x = torch.randn(2, 3, 52, 76)
    path = str(tmp_path / 'tiny.onnx')
    info = export.export_onnx(
        export.Features(model), x, path, reference=reference,
        log_file=str(tmp_path / 'tiny.log'))
    assert info['outputs'] == ['output0', 'output1', 'output2', 'output3']
    n_eye = export.identity_kernel_convs(path)
    if reference:
        # per sampling block (3): the neighbours' gather and the upsampling
        # (Conv), the normaliser's and the update's scatter (ConvTranspose)
        assert n_eye == 4 * 3
    else:
        assert n_eye == 0
        assert 'ConvTranspose' not in export.op_counts(path)
    rows = export.compare_with_onnxruntime(export.Features(model), x, path)
    assert [r['shape'] for r in rows] == [(2, 16, 13, 19), (2, 32, 7, 10),
                                          (2, 48, 4, 5), (2, 64, 2, 3)]
    assert max(r['relative'] for r in rows) < 1e-4, rows
    # the model's own plan is restored after the export
    from mmstvit.models.backbones import kernels
    assert model.kernels is kernels.FAST


def test_comparison_can_fail(tmp_path):
    """A changed weight after export shows up as a difference."""
    model = tiny_backbone()
    x = torch.randn(1, 3, 32, 32)
    path = str(tmp_path / 'tiny.onnx')
    export.export_onnx(export.Features(model), x, path)
    with torch.no_grad():
        model.layers[3].blocks[0].mlp2.fc2.weight.add_(0.1)
    rows = export.compare_with_onnxruntime(export.Features(model), x, path)
    assert rows[-1]['relative'] > 1e-3


@pytest.mark.parametrize('hw', [(16, 16), (13, 17), (8, 12)])
def test_exportable_adaptive_pool_equals_adaptive_pool(hw):
    x = torch.randn(2, 5, *hw)
    for size in (1, 2, 3, 6, (2, 5)):
        got = export.ExportableAdaptiveAvgPool2d(size)(x)
        assert torch.allclose(got, F.adaptive_avg_pool2d(x, size),
                              atol=1e-6), size


def test_pyramid_pooling_exports_at_any_size(tmp_path):
    """UperNet's pooling bins (1, 2, 3, 6) of a 16x16 map: ONNX pools only
    to divisors, the swapped module exports; the originals come back."""

    class PPM(nn.Module):

        def __init__(self):
            super().__init__()
            self.pools = nn.ModuleList(
                nn.AdaptiveAvgPool2d(s) for s in (1, 2, 3, 6))

        def forward(self, x):
            return tuple(p(x) for p in self.pools)

    model = PPM()
    x = torch.randn(1, 8, 16, 16)
    path = str(tmp_path / 'ppm.onnx')
    export.export_onnx(model, x, path)
    assert all(type(p) is nn.AdaptiveAvgPool2d for p in model.pools)
    rows = export.compare_with_onnxruntime(model, x, path)
    assert max(r['max_abs_diff'] for r in rows) < 1e-5


def test_export_classifier(tool, tmp_path, capsys):
    """The real STViT-S ImageNet config, small input."""
    out = str(tmp_path / 'cls.onnx')
    result = run_in(REPO, tool.main, [
        'configs/stvit_s_in1k_224.py', '--shape', '64', '64', '--out', out
    ])
    assert osp.isfile(out) and result['identity_kernel_convs'] == 0
    (row, ) = result['rows']
    assert row['shape'] == (1, 1000)
    assert row['relative'] < 1e-4
    printed = capsys.readouterr().out
    assert 'classifier logits' in printed
    assert f'relative {row["relative"]:.2e}' in printed
    assert 'minus mean [123.675, 116.28, 103.53]' in printed
    assert 'Warning' not in printed  # the exporter's go to the log
    assert 'TracerWarning' in open(osp.splitext(out)[0] + '.log').read()


def test_export_backbone_of_a_dense_config(tool, tmp_path):
    """The UperNet config's backbone ((16, 8, 2, 1): padding at 72x104)."""
    out = str(tmp_path / 'backbone.onnx')
    result = run_in(REPO, tool.main, [
        'configs/upernet_stvit_s_160k_ade20k.py', '--part', 'backbone',
        '--shape', '72', '104', '--out', out
    ])
    rows = result['rows']
    assert [r['shape'][1:] for r in rows] == [(64, 18, 26), (128, 9, 13),
                                              (320, 5, 7), (512, 3, 4)]
    assert max(r['relative'] for r in rows) < 1e-4, rows
    assert result['identity_kernel_convs'] == 0


def test_what_does_not_export_says_why(tool, tmp_path):
    with pytest.raises(SystemExit) as e:
        run_in(REPO, tool.main, ['configs/mask_rcnn_stvit_s_1x.py', '--part', 'model',
                        '--shape', '64', '64'])
    assert 'mmdeploy' in str(e.value) and '--part features' in str(e.value)
    with pytest.raises(SystemExit) as e:
        run_in(REPO, tool.main, ['configs/stvit_s_in1k_224.py', '--part', 'features',
                        '--shape', '64', '64'])
    assert 'choose one of model, backbone' in str(e.value)
    cfg = tmp_path / 'resnet_seg.py'
    cfg.write_text("_base_ = ['mmseg::_base_/models/pspnet_r50-d8.py']\n"
                   "default_scope = 'mmseg'\n")
    with pytest.raises(SystemExit) as e:
        run_in(REPO, tool.main, [str(cfg), '--shape', '64', '64'])
    assert 'no STViT backbone (backbone: ResNetV1c)' in str(e.value)


def test_rtol_failure_exits_1(tool, tmp_path, monkeypatch):
    """A mismatch beyond --rtol ends the tool with status 1."""
    real = export.compare_with_onnxruntime

    def off(*args, **kwargs):
        rows = real(*args, **kwargs)
        return [dict(r, relative=1.0) for r in rows]

    monkeypatch.setattr(export, 'compare_with_onnxruntime', off)
    with pytest.raises(SystemExit) as e:
        run_in(REPO, tool.main, ['configs/stvit_s_in1k_224.py', '--part', 'backbone',
                        '--shape', '32', '32', '--out',
                        str(tmp_path / 'b.onnx')])
    assert e.value.code == 1


def test_checkpoint_is_exported(tool, tmp_path):
    """--checkpoint: the exported graph computes the checkpoint's model
    (the tool's own random init would differ)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmstvit.registry import register_toolbox
    register_toolbox('mmpretrain')
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, 'configs/stvit_s_in1k_224.py'))
    torch.manual_seed(123)
    model = MODELS.build(cfg.model).eval()
    ckpt = str(tmp_path / 'cls.pth')
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    out = str(tmp_path / 'cls.onnx')
    run_in(REPO, tool.main, ['configs/stvit_s_in1k_224.py', '--shape', '64', '64',
                    '--checkpoint', ckpt, '--out', out])
    import onnxruntime as ort
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    got = ort.InferenceSession(out, providers=['CPUExecutionProvider']).run(
        None, {'input': x.numpy()})[0]
    with torch.no_grad():
        ref = model(x, mode='tensor').numpy()
    assert abs(got - ref).max() / abs(ref).max() < 1e-4
