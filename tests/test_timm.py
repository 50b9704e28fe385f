# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""STViT as timm models (``import mmstvit.timm``): timm's generic model
contract (its tests/test_models.py) for S/B/L at small inputs, the same
numbers as the mm model from one state dict, and loading the weights from
an official ``.pth`` (through the allow-list) and from ``.safetensors``."""
import argparse
import copy
import fractions
import math
import re
import subprocess
import sys
from collections import OrderedDict

import pytest
import timm
import torch
from helpers import REPO

import mmstvit.timm  # noqa: F401  (registers the models with timm)
from mmstvit.timm import STViTClassifier
from mmstvit.weights import (CheckpointMismatchError,
                             UnsafeCheckpointError)

NAMES = ('stvit_small', 'stvit_base', 'stvit_large')
CHANNELS = {'stvit_small': [64, 128, 320, 512],
            'stvit_base': [96, 192, 384, 512],
            'stvit_large': [96, 192, 448, 640]}


def perturbed(state_dict, seed=0):
    """Weights and BatchNorm statistics away from their initial values, so
    that equal outputs mean the same tensors were used."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for k, v in state_dict.items():
        if v.is_floating_point() and not k.endswith('unfold.weights') \
                and not k.endswith('fold.weights'):
            noise = 0.02 * torch.randn(v.shape, generator=g)
            v = (v + noise).abs() if k.endswith('running_var') else v + noise
        out[k] = v.contiguous()
    return out


def official_names(mm_state_dict):
    """mm / timm classifier keys -> the authors' (the converter's inverse)."""
    out = OrderedDict()
    for k, v in mm_state_dict.items():
        k = re.sub(r'^backbone\.', '', k)
        k = re.sub(r'^head\.fc\.', 'head.', k)
        k = re.sub(r'^head\.(proj|norm)\.', r'\1.', k)
        out[k] = v
    return out


def save_official(path, model_sd):
    """A checkpoint as the authors' main.py writes it."""
    torch.save(dict(model=model_sd, model_ema=model_sd, optimizer={},
                    lr_scheduler={}, epoch=299, max_accuracy=83.6,
                    args=argparse.Namespace(model='stvit_small')), path)


def test_import_mmstvit_does_not_import_timm():
    code = ('import sys, mmstvit; assert "timm" not in sys.modules, '
            '"import mmstvit imported timm"; import mmstvit.timm, timm; '
            'print(sorted(timm.list_models("stvit*")))')
    r = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split('\n')[-2] == str(sorted(NAMES))


def test_default_cfgs_and_tags():
    assert set(timm.list_models('stvit*')) == set(NAMES)
    tags = timm.list_models('stvit*', include_tags=True)
    for name in NAMES:
        assert {f'{name}.in1k', f'{name}.in1k_384'} <= set(tags)
        for tag, size, crop in (('in1k', 224, 0.875), ('in1k_384', 384, 1.)):
            cfg = timm.models.get_pretrained_cfg(f'{name}.{tag}')
            assert cfg.input_size == (3, size, size)
            assert cfg.pool_size == (size // 32, size // 32)
            assert cfg.crop_pct == crop and cfg.interpolation == 'bicubic'
            assert cfg.mean == timm.data.IMAGENET_DEFAULT_MEAN
            assert cfg.std == timm.data.IMAGENET_DEFAULT_STD
            assert cfg.num_classes == 1000 and cfg.custom_load
    # the untagged name is the 224 model
    assert timm.models.get_pretrained_cfg('stvit_small').input_size == \
        (3, 224, 224)


def test_default_cfg_shapes_at_224():
    """timm's test_model_default_cfgs for STViT-S at its input size."""
    model = timm.create_model('stvit_small').eval()
    cfg = model.default_cfg
    sd = model.state_dict()
    assert cfg['classifier'] + '.weight' in sd
    assert cfg['first_conv'] + '.weight' in sd
    assert sd[cfg['first_conv'] + '.weight'].shape[1] == 3
    x = torch.randn(1, *cfg['input_size'])
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.shape == (1, 512, *cfg['pool_size'])
        assert pre.shape == (1, model.head_hidden_size) == (1, 1024)
        assert model.forward_head(feats).shape == (1, 1000)
        model.reset_classifier(0)
        assert model.num_classes == 0
        assert torch.allclose(model.forward_head(feats), pre, atol=1e-6)
        model.reset_classifier(0, '')
        assert model(x).shape == (1, 1024, *cfg['pool_size'])
    bare = timm.create_model('stvit_small', num_classes=0, global_pool='')
    with torch.no_grad():
        assert bare.eval()(x[..., :64, :96]).shape == (1, 1024, 2, 3)


@pytest.mark.parametrize('name', NAMES)
def test_timm_contract(name):
    """timm's test_model_forward / _backward / _forward_intermediates:
    finite outputs, a gradient for every parameter, intermediates that
    match feature_info and forward_features, pooled features after
    reset_classifier(0)."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=42)
    size = 32  # stage maps 8x8 .. 1x1; batch 2 for the training BatchNorms
    x = torch.randn(2, 3, size, size)
    model.train()
    out = model(x)
    assert out.shape == (2, 42) and torch.isfinite(out).all()
    out.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f'no gradient for {n}'
        assert torch.isfinite(p.grad).all(), n
    model.eval()
    assert model.num_features == CHANNELS[name][-1]
    assert model.head_hidden_size == 1024
    info = timm.models.FeatureInfo(model.feature_info, 4)
    assert info.channels() == CHANNELS[name]
    assert info.reduction() == [4, 8, 16, 32]
    assert info.module_name() == [f'backbone.layers.{i}' for i in range(4)]
    with torch.no_grad():
        feats = model.forward_features(x)
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, feats)
        for c, r, m in zip(info.channels(), info.reduction(), inter):
            assert m.shape == (2, c, math.ceil(size / r), math.ceil(size / r))
        last2 = model.forward_intermediates(x, indices=2,
                                            intermediates_only=True)
        assert [m.shape[1] for m in last2] == CHANNELS[name][2:]
        nhwc = model.forward_intermediates(x, indices=[-1], output_fmt='NHWC',
                                           intermediates_only=True)
        assert torch.equal(nhwc[0], feats.permute(0, 2, 3, 1))
        pre = model.forward_head(feats, pre_logits=True)
        model.reset_classifier(0)
        assert torch.allclose(model(x), pre, atol=1e-6)


def test_grad_checkpointing_changes_nothing():
    """set_grad_checkpointing(): the same training-mode outputs, gradients
    and BatchNorm statistics."""
    torch.manual_seed(0)
    plain = timm.create_model('stvit_small', num_classes=10).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    assert all(m.with_cp for m in ckpt.modules() if hasattr(m, 'with_cp'))
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for model in (plain, ckpt):
        out = model(x)
        out.square().mean().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    grads = dict(ckpt.named_parameters())
    for n, p in plain.named_parameters():
        torch.testing.assert_close(p.grad, grads[n].grad, rtol=1e-4,
                                   atol=1e-6, msg=n)
    buffers = dict(ckpt.named_buffers())
    for n, b in plain.named_buffers():
        assert torch.allclose(b.float(), buffers[n].float(), atol=1e-6), n


@pytest.mark.parametrize('name', ('stvit_small', 'stvit_large'))
def test_features_only(name):
    """timm's test_model_forward_features: channels and reductions of
    feature_info match the maps; out_indices picks stages; the head is
    gone (its parameters would get no gradient)."""
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.channels() == CHANNELS[name]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert not any(k.startswith('model.head.') for k in model.state_dict())
    x = torch.randn(1, 3, 80, 48)
    with torch.no_grad():
        maps = model(x)
    assert len(maps) == 4
    for c, r, m in zip(CHANNELS[name], [4, 8, 16, 32], maps):
        assert m.shape == (1, c, math.ceil(80 / r), math.ceil(48 / r))
        assert torch.isfinite(m).all()
    three = timm.create_model(name, features_only=True, out_indices=(1, -1))
    assert three.feature_info.channels() == [CHANNELS[name][1],
                                             CHANNELS[name][3]]


def test_same_outputs_as_the_mm_model(tmp_path):
    """One state dict, two models: mmpretrain's ImageClassifier of the
    project's ImageNet config and timm's stvit_small give the same logits;
    the same weights as an official .pth, an mm .pth and a .safetensors
    (official or mm keys) load through pretrained_cfg_overlay."""
    from safetensors.torch import save_file

    from mmstvit.builder import build_model
    mm = build_model(f'{REPO}/configs/stvit/stvit_s_in1k_224.py')
    sd = perturbed(mm.state_dict())
    mm.load_state_dict(sd)
    mm.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = mm(x, mode='tensor')
        mm_maps = mm.backbone(x)

    model = timm.create_model('stvit_small').eval()
    model.load_state_dict(sd)  # the very same keys
    with torch.no_grad():
        assert torch.equal(model(x), expected)

    official = official_names(sd)
    files = {'official.pth': None, 'mm.pth': None,
             'official.safetensors': official, 'mm.safetensors': sd}
    save_official(tmp_path / 'official.pth', official)
    torch.save(dict(meta={}, state_dict=sd), tmp_path / 'mm.pth')
    for fname, tensors in files.items():
        if tensors is not None:
            save_file(dict(tensors), str(tmp_path / fname))
        loaded = timm.create_model(
            'stvit_small.in1k', pretrained=True,
            pretrained_cfg_overlay=dict(file=str(tmp_path / fname))).eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), expected), fname

    # features_only from the same file: the mm backbone's last map
    feats = timm.create_model(
        'stvit_small', features_only=True, pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / 'mm.safetensors')),
        out_indices=(-1, )).eval()
    with torch.no_grad():
        ours = feats(x)
    assert len(ours) == len(mm_maps) == 1
    assert torch.equal(ours[0], mm_maps[0])


def test_features_only_equals_the_mm_backbone():
    """The dense-prediction backbone (stoken_size (16, 8, 2, 1),
    out_indices (1, 2, 3)) as mmdet builds it, and timm's features_only
    model with the same arguments and weights."""
    from mmstvit import STViT
    mm = STViT('small', stoken_size=(16, 8, 2, 1), out_indices=(1, 2, 3))
    mm.load_state_dict(perturbed(mm.state_dict(), seed=1))
    mm.eval()
    model = timm.create_model('stvit_small', features_only=True,
                              stoken_size=(16, 8, 2, 1),
                              out_indices=(1, 2, 3)).eval()
    model.model.backbone.load_state_dict(mm.state_dict())
    x = torch.randn(1, 3, 100, 76)
    with torch.no_grad():
        ours, theirs = model(x), mm(x)
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_pretrained_adapts_classes_and_channels(tmp_path):
    src = timm.create_model('stvit_small')
    sd = perturbed(src.state_dict())
    save_official(tmp_path / 'w.pth', official_names(sd))
    overlay = dict(file=str(tmp_path / 'w.pth'))
    model = timm.create_model('stvit_small', pretrained=True, num_classes=7,
                              in_chans=1, pretrained_cfg_overlay=overlay)
    got = model.state_dict()
    assert got['head.fc.weight'].shape == (7, 1024)
    assert torch.equal(got['head.proj.weight'], sd['head.proj.weight'])
    first = 'backbone.patch_embed.proj.0.weight'
    assert torch.allclose(got[first], sd[first].sum(1, keepdim=True))
    in_memory = timm.create_model(  # timm's own loader, the same filter
        'stvit_small', pretrained=True,
        pretrained_cfg_overlay=dict(state_dict=official_names(sd)))
    assert all(torch.equal(v, sd[k])
               for k, v in in_memory.state_dict().items())
    headless = timm.create_model('stvit_small', pretrained=True,
                                 num_classes=0, pretrained_cfg_overlay=overlay)
    assert isinstance(headless.get_classifier(), torch.nn.Identity)


def test_bad_weights_are_refused(tmp_path):
    with pytest.raises(ValueError, match='pretrained_cfg_overlay'):
        timm.create_model('stvit_small', pretrained=True)
    # another variant's file: every mismatch named, nothing loaded
    sd = timm.create_model('stvit_base').state_dict()
    save_official(tmp_path / 'base.pth', official_names(sd))
    with pytest.raises(CheckpointMismatchError, match='another shape'):
        timm.create_model('stvit_small', pretrained=True,
                          pretrained_cfg_overlay=dict(
                              file=str(tmp_path / 'base.pth')))
    # a global beyond the allow-list is not unpickled
    torch.save(dict(model={}, extra=fractions.Fraction(1, 3)),
               tmp_path / 'evil.pth')
    with pytest.raises(UnsafeCheckpointError, match='fractions.Fraction'):
        timm.create_model('stvit_small', pretrained=True,
                          pretrained_cfg_overlay=dict(
                              file=str(tmp_path / 'evil.pth')))
    # a pickle renamed .safetensors never reaches pickle
    save_official(tmp_path / 'renamed.safetensors', official_names(sd))
    with pytest.raises(ValueError, match='not a readable .safetensors'):
        timm.create_model('stvit_small', pretrained=True,
                          pretrained_cfg_overlay=dict(
                              file=str(tmp_path / 'renamed.safetensors')))


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="global_pool='max'"):
        timm.create_model('stvit_small', global_pool='max')
    with pytest.raises(ValueError, match='out of range'):
        timm.create_model('stvit_small', features_only=True,
                          out_indices=(4, ))
    model = timm.create_model('stvit_small', features_only=True)
    with pytest.raises(RuntimeError, match='no head'):
        model.model.forward_head(torch.zeros(1, 512, 2, 2))


def test_group_matcher_covers_every_parameter():
    model = timm.create_model('stvit_small')
    groups = timm.models.group_parameters(model, model.group_matcher())
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(groups) > 4


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_and_fx_are_not_supported():
    """As timm's EXCLUDE_JIT_FILTERS / EXCLUDE_FX_FILTERS models: the super
    token grid is computed from the input's size in Python (padding to a
    multiple of the super token size, the hh x ww grid, the branches on
    them), which FX's symbolic tracing cannot follow and TorchScript cannot
    compile (nor the kernel plan object the modules read)."""
    model = timm.create_model('stvit_small').eval()
    assert isinstance(model, STViTClassifier)
    with pytest.raises(torch.fx.proxy.TraceError, match='control flow'):
        torch.fx.symbolic_trace(model)
    with pytest.raises(torch.fx.proxy.TraceError, match='control flow'):
        timm.models.create_feature_extractor(
            model, return_nodes=['backbone.layers.3'])
    with pytest.raises(Exception) as jit_error:
        torch.jit.script(model)
    assert not isinstance(jit_error.value, AssertionError)
