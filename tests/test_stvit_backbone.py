# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
import argparse
import re
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmstvit import STViT
from mmstvit.weights import CheckpointMismatchError

TINY = dict(embed_dims=[16, 32, 48, 64], depths=[1, 2, 1, 1],
            num_heads=[1, 2, 3, 4], layer_scale=[False, False, True, True])


def tiny(**kw):
    kw.setdefault('drop_path_rate', 0.)
    return STViT(arch=TINY, **kw)


# ---------------------------------------------------------------- archs --
@pytest.mark.parametrize('arch,dims,depths', [
    ('small', [64, 128, 320, 512], [3, 5, 9, 3]),
    ('s', [64, 128, 320, 512], [3, 5, 9, 3]),
    ('base', [96, 192, 384, 512], [4, 6, 14, 6]),
    ('large', [96, 192, 448, 640], [4, 7, 19, 8]),
])
def test_arch_presets(arch, dims, depths):
    m = STViT(arch)
    assert m.embed_dims == dims
    assert [len(layer.blocks) for layer in m.layers] == depths
    has_gamma = [hasattr(layer.blocks[0], 'gamma_1') for layer in m.layers]
    assert has_gamma == ([False] * 4 if arch.startswith('s') else
                         [False, False, True, True])
    if has_gamma[2]:
        assert torch.all(m.layers[2].blocks[0].gamma_1 == 1e-6)


def test_bad_arch_names_the_valid_ones():
    with pytest.raises(KeyError, match=r"unknown arch 'tiny'.*'small', "
                       r"'base', 'large'"):
        STViT('tiny')
    with pytest.raises(KeyError, match='missing'):
        STViT(dict(embed_dims=[8], depths=[1]))
    with pytest.raises(ValueError, match='one entry per stage'):
        STViT(dict(embed_dims=[8, 16], depths=[1], num_heads=[1, 1]))
    with pytest.raises(ValueError, match='stoken_size needs one entry'):
        STViT('small', stoken_size=(8, 4))
    with pytest.raises(ValueError, match='out_indices 4'):
        STViT('small', out_indices=(4, ))
    with pytest.raises(ValueError, match='not divisible'):
        STViT(dict(embed_dims=[10], depths=[1], num_heads=[3]), stoken_size=1,
              out_indices=(0, ))


# ---------------------------------------------------------------- shapes --
@pytest.mark.parametrize('hw', [(224, 224), (333, 511), (40, 24), (7, 5)])
def test_output_shapes_any_input_size(hw):
    m = tiny().eval()
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        outs = m(x)
    assert len(outs) == 4
    h, w = hw
    for i, (o, c) in enumerate(zip(outs, TINY['embed_dims'])):
        for _ in range(2 if i == 0 else 1):
            h, w = (h + 1) // 2, (w + 1) // 2
        assert o.shape == (1, c, h, w), (i, o.shape)
        assert torch.isfinite(o).all()


def test_small_backbone_real_size_and_out_indices():
    m = STViT('small', out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 160, 224))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 20, 28),
                                              (1, 512, 5, 7)]


def test_features_are_taken_before_the_downsample():
    m = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = m(x)
        y = m.patch_embed(x)
        y = m.layers[0](y)
    assert torch.allclose(outs[0], y, atol=1e-5)
    assert outs[0].is_contiguous()  # NCHW for the neck, whatever ran inside


def test_rejects_non_image_input():
    with pytest.raises(ValueError, match='NCHW'):
        tiny()(torch.randn(3, 32, 32))


# ----------------------------------------------------- training behaviour --
@pytest.mark.parametrize('frozen', [0, 1, 2, 4])
def test_frozen_stages(frozen):
    m = tiny(frozen_stages=frozen)
    m.train()
    assert m.patch_embed.training is False
    for p in m.patch_embed.parameters():
        assert not p.requires_grad
    for i, layer in enumerate(m.layers):
        frozen_i = i < frozen
        assert layer.training is (not frozen_i)
        for mod in layer.modules():
            if isinstance(mod, _BatchNorm):
                assert mod.training is (not frozen_i)
        for p in layer.parameters():
            assert p.requires_grad is (not frozen_i)


def test_frozen_stages_keep_running_stats():
    m = tiny(frozen_stages=1).train()
    bn = m.layers[0].blocks[0].norm2
    before = bn.running_mean.clone()
    m(torch.randn(2, 3, 32, 32)).__len__()
    assert torch.equal(bn.running_mean, before)
    assert not torch.equal(m.layers[1].blocks[0].norm2.running_mean,
                           torch.zeros_like(before[:0]).new_zeros(32))


def test_norm_eval():
    m = tiny(norm_eval=True).train()
    bns = [mod for mod in m.modules() if isinstance(mod, _BatchNorm)]
    assert bns and all(not bn.training for bn in bns)
    assert m.layers[0].blocks[0].attn.training  # the rest still trains
    m2 = tiny(norm_eval=False).train()
    assert all(mod.training for mod in m2.modules()
               if isinstance(mod, _BatchNorm))


def test_with_cp_same_output_and_gradients():
    torch.manual_seed(0)
    a = tiny(with_cp=False)
    b = tiny(with_cp=True)
    b.load_state_dict(a.state_dict())
    a.train()
    b.train()
    x = torch.randn(2, 3, 64, 48)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    oa, ob = a(xa), b(xb)
    for u, v in zip(oa, ob):
        assert torch.allclose(u, v, atol=1e-5)
    sum(o.square().mean() for o in oa).backward()
    sum(o.square().mean() for o in ob).backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-6, rtol=1e-4)
    ga = dict(a.named_parameters())
    for name, p in b.named_parameters():
        if p.grad is None:
            assert ga[name].grad is None
            continue
        assert torch.allclose(p.grad, ga[name].grad, atol=1e-5, rtol=1e-4), \
            name


def test_eval_fast_path_equals_plain_modules():
    """The BN folding of the fast plan in eval equals running the modules
    one by one (the plain plan)."""
    m = tiny().eval()
    for mod in m.modules():  # non-trivial running stats
        if isinstance(mod, _BatchNorm):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.normal_()
            mod.bias.data.normal_()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fast = m(x)
        plain = m.set_kernels('plain')(x)
    for u, v in zip(fast, plain):
        assert torch.allclose(u, v, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------- checkpoints --
def _official_like_checkpoint(model, path, ema_shift=0.):
    """An ImageNet checkpoint as the authors' training script writes it."""
    sd = OrderedDict(model.state_dict())
    dim = model.embed_dims[-1]
    sd['proj.weight'] = torch.randn(1024, dim, 1, 1)
    sd['proj.bias'] = torch.randn(1024)
    sd['norm.weight'] = torch.ones(1024)
    sd['norm.bias'] = torch.zeros(1024)
    sd['norm.running_mean'] = torch.zeros(1024)
    sd['norm.running_var'] = torch.ones(1024)
    sd['norm.num_batches_tracked'] = torch.tensor(0)
    sd['head.weight'] = torch.randn(1000, 1024)
    sd['head.bias'] = torch.zeros(1000)
    ema = OrderedDict((k, v + ema_shift if v.is_floating_point() else v)
                      for k, v in sd.items())
    torch.save(
        dict(model=sd, model_ema=ema,
             optimizer=dict(state={}, param_groups=[dict(lr=1e-3)]),
             lr_scheduler=dict(last_epoch=299), epoch=299,
             scaler=dict(scale=65536.0),
             args=argparse.Namespace(model='stvit_small', lr=1e-3,
                                     drop_path=0.1, input_size=224),
             max_accuracy=np.float64(83.6)), path)


def _randomise(m):
    for mod in m.modules():
        if isinstance(mod, _BatchNorm):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2)
    return m


def test_official_checkpoint_loads_through_init_cfg(tmp_path):
    src = _randomise(tiny()).eval()
    path = tmp_path / 'stvit-tiny-224.pth'
    _official_like_checkpoint(src, path)
    # the file really is in the authors' format: an argparse.Namespace inside
    from mmstvit.weights import load_checkpoint_file
    raw = load_checkpoint_file(path)
    assert isinstance(raw['args'], argparse.Namespace)
    dst = tiny(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    dst.init_weights()
    dst.eval()
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        for u, v in zip(src(x), dst(x)):
            assert torch.equal(u, v)


def test_official_keys_are_the_authors():
    """Key names of the authors' model (read off their models/stvit.py)."""
    sd = STViT('base').state_dict()
    block = {re.sub(r'^layers\.2\.blocks\.0\.', '', k) for k in sd
             if k.startswith('layers.2.blocks.0.')}
    assert block == {
        'pos_embed.conv.weight', 'pos_embed.conv.bias', 'norm1.norm.weight',
        'norm1.norm.bias', 'attn.unfold.weights', 'attn.fold.weights',
        'attn.stoken_refine.qkv.weight', 'attn.stoken_refine.qkv.bias',
        'attn.stoken_refine.proj.weight', 'attn.stoken_refine.proj.bias',
        'norm2.weight', 'norm2.bias', 'norm2.running_mean',
        'norm2.running_var', 'norm2.num_batches_tracked', 'mlp2.fc1.weight',
        'mlp2.fc1.bias', 'mlp2.conv.conv.weight', 'mlp2.conv.conv.bias',
        'mlp2.fc2.weight', 'mlp2.fc2.bias', 'gamma_1', 'gamma_2'
    }
    for i in (0, 3, 6, 9):
        assert f'patch_embed.proj.{i}.weight' in sd
    for i in (2, 5, 8, 11):
        assert f'patch_embed.proj.{i}.running_var' in sd
    assert 'layers.0.downsample.proj.0.weight' in sd
    assert 'layers.2.downsample.proj.1.running_mean' in sd
    assert not any(k.startswith('layers.3.downsample') for k in sd)
    assert sd['layers.0.blocks.0.attn.unfold.weights'].shape == (9, 1, 3, 3)
    assert sd['layers.0.blocks.0.attn.stoken_refine.qkv.weight'].shape == \
        (288, 96, 1, 1)


def test_ema_and_mm_checkpoints(tmp_path):
    from mmstvit.weights import load_stvit_state_dict
    src = _randomise(tiny()).eval()
    off = tmp_path / 'official.pth'
    _official_like_checkpoint(src, off, ema_shift=1.)
    dst = tiny()
    load_stvit_state_dict(dst, str(off), which='model_ema')
    w = 'layers.0.blocks.0.mlp2.fc1.weight'
    assert torch.allclose(dst.state_dict()[w], src.state_dict()[w] + 1)

    # an mm checkpoint: state_dict with backbone./neck. keys and numpy meta
    mm = tmp_path / 'mm.pth'
    sd = {f'backbone.{k}': v for k, v in src.state_dict().items()}
    sd['neck.lateral_convs.0.conv.weight'] = torch.randn(8, 16, 1, 1)
    torch.save(dict(state_dict=sd, meta=dict(epoch=np.int64(3))), mm)
    dst = tiny(init_cfg=dict(type='Pretrained', checkpoint=str(mm)))
    dst.init_weights()
    dst.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(u, v) for u, v in zip(src(x), dst(x)))


def test_wrong_variant_is_refused(tmp_path):
    path = tmp_path / 'stvit-base-224.pth'
    _official_like_checkpoint(STViT('base'), path)
    m = STViT('small', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointMismatchError,
                       match=r"holds STViT-base .* model is STViT-small.*"
                       r"arch='base'"):
        m.init_weights()


def test_not_an_stvit_checkpoint(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save(dict(state_dict={'conv1.weight': torch.randn(8, 3, 7, 7)}),
               path)
    m = tiny(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointMismatchError, match='unknown model'):
        m.init_weights()


def test_missing_pretrained_file_says_where_weights_come_from(tmp_path):
    m = tiny(init_cfg=dict(type='Pretrained',
                           checkpoint=str(tmp_path / 'stvit-small-224.pth')))
    with pytest.raises(FileNotFoundError) as e:
        m.init_weights()
    msg = str(e.value)
    assert 'stvit-small-224.pth' in msg
    assert 'Google Drive' in msg and 'stvit_to_mm.py' in msg


def test_partial_checkpoint_needs_strict_false(tmp_path):
    src = tiny()
    sd = {k: v for k, v in src.state_dict().items() if 'gamma' not in k}
    path = tmp_path / 'partial.pth'
    torch.save(dict(model=sd), path)
    from mmengine.logging import MMLogger
    from mmstvit.weights import load_stvit_state_dict
    logger = MMLogger.get_instance('stvit_test_partial')
    with pytest.raises(CheckpointMismatchError, match='gamma_1'):
        load_stvit_state_dict(tiny(), str(path), logger=logger)
    info = load_stvit_state_dict(tiny(), str(path), logger=logger,
                                 strict=False)
    assert sorted(info['missing']) == sorted(
        k for k in src.state_dict() if 'gamma' in k)


# ------------------------------------------------------- params and FLOPs --
@pytest.mark.parametrize('arch,target', [('small', 23.94), ('base', 50.14),
                                         ('large', 93.29)])
def test_trainable_parameter_counts(arch, target):
    n = sum(p.numel() for p in STViT(arch).parameters() if p.requires_grad)
    assert abs(n / 1e6 - target) / target < 0.005, n


def test_flops_small_1280x800_paper_protocol():
    from mmengine.analysis import FlopAnalyzer

    from mmstvit.models.backbones.kernels import use_kernels
    m = STViT('small').eval()
    with torch.no_grad(), use_kernels(m, 'reference'):
        fa = FlopAnalyzer(m, torch.randn(1, 3, 800, 1280))
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        g = fa.total() / 1e9
    assert abs(g - 82.3) / 82.3 < 0.005, g


# ------------------------------------------------------------ registries --
@pytest.mark.parametrize('toolbox', ['mmdet', 'mmseg', 'mmpretrain'])
def test_builds_from_every_registry(toolbox):
    import importlib
    registry = importlib.import_module(f'{toolbox}.registry').MODELS
    m = registry.build(dict(type='STViT', arch='small', out_indices=(3, )))
    assert isinstance(m, STViT)
    m2 = registry.build(dict(type=f'{toolbox}.STViT', arch=TINY))
    assert isinstance(m2, STViT)


def test_import_works_without_some_toolboxes():
    code = ('import sys; sys.modules["mmdet"] = None; '
            'sys.modules["mmseg"] = None; import mmstvit; '
            'import mmpretrain; '
            'from mmstvit.registry import registered_toolboxes as r; '
            'print(r())')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "['mmpretrain']"
