# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""tools/model_converters/stvit_to_mm.py and convert_official_state_dict:
an official-format file converts and loads into configs/stvit_s_in1k_224.py
with every tensor unchanged; ``--ema`` picks ``model_ema``; bad inputs stop
with a message naming the fix; check_official.py refuses a missing source."""
import argparse
import copy
import os.path as osp
from collections import OrderedDict

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

import mmstvit  # noqa: F401
from mmstvit.weights import (convert_official_state_dict, load_checkpoint_file,
                             mm_to_official_state_dict)

from helpers import load_script

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def converter():
    return load_script('tools/model_converters/stvit_to_mm.py', 'stvit_to_mm')


def in1k_model():
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'stvit_s_in1k_224.py'))
    init_default_scope(cfg.default_scope)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None
    model_cfg.data_preprocessor = cfg.data_preprocessor
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model.eval()


def randomized(state_dict, seed):
    """Seeded weights far from the init (BN statistics included), so that a
    wrongly mapped tensor changes the logits. The authors' fixed
    identity-kernel buffers of their unfold/fold (``attn.unfold.weights``,
    never trained) keep their values."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for k, v in state_dict.items():
        if v.is_floating_point() and not k.endswith('fold.weights'):
            v = torch.randn(v.shape, generator=g) * 0.05
            if k.endswith('running_var'):
                v = v.abs() + 0.5
            elif k.endswith(('norm.weight', 'bn.weight')):
                v = v + 1.0
        out[k] = v.clone()
    return out


def official_file(path, model_sd, ema_sd=None):
    """An official checkpoint as the authors' main.py writes it."""
    ckpt = dict(
        model=model_sd, optimizer={}, lr_scheduler={}, epoch=299,
        args=argparse.Namespace(model='stvit_small'))
    if ema_sd is not None:
        ckpt['model_ema'] = ema_sd
    torch.save(ckpt, path)


def test_converted_official_file_loads_every_tensor_unchanged(tmp_path):
    """An official file (the authors' key names, ``model`` and
    ``model_ema``) converts with stvit_to_mm.py, loads strictly into
    configs/stvit_s_in1k_224.py with every tensor unchanged, and gives the
    logits of that model. (That the same tensors give the authors' own
    logits is checked against their code by
    tools/analysis_tools/check_official.py, which needs their file.)"""
    template = mm_to_official_state_dict(in1k_model().state_dict())
    assert {'proj.weight', 'norm.running_var', 'head.weight',
            'layers.0.blocks.0.attn.unfold.weights'} <= set(template)
    plain = randomized(template, seed=0)
    ema = randomized(template, seed=1)
    src = tmp_path / 'stvit-small-224.pth'
    official_file(src, plain, ema)

    tool = converter()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    logits = {}
    for which, sd, flags in (('model', plain, []),
                             ('model_ema', ema, ['--ema'])):
        dst = tmp_path / f'{which}_mm.pth'
        tool.main([str(src), str(dst)] + flags)
        ckpt = load_checkpoint_file(dst, map_location='cpu')
        assert ckpt['meta']['weights'] == which
        assert ckpt['meta']['converted_from'] == 'stvit-small-224.pth'
        assert ckpt['meta']['epoch'] == 299

        ours = in1k_model()
        load_checkpoint(ours, str(dst), map_location='cpu', strict=True)
        # round trip: every official tensor sits, unchanged, in the model
        mm_sd = ours.state_dict()
        assert len(mm_sd) == len(sd)
        for key, value in convert_official_state_dict(sd).items():
            torch.testing.assert_close(mm_sd[key], value, rtol=0, atol=0)
        with torch.no_grad():
            logits[which] = ours(x, mode='tensor')
        assert logits[which].shape == (1, 1000)
        assert torch.isfinite(logits[which]).all()
    assert not torch.allclose(logits['model'], logits['model_ema'])
    # the two conversions differ: --ema really took model_ema
    plain, ema = (load_checkpoint_file(tmp_path / f)['state_dict']
                  for f in ('model_mm.pth', 'model_ema_mm.pth'))
    assert not torch.equal(plain['head.fc.weight'], ema['head.fc.weight'])


def small_official_sd():
    return OrderedDict([
        ('patch_embed.proj.0.weight', torch.randn(4, 3, 3, 3)),
        ('layers.0.blocks.0.layer_scale_1', torch.randn(1, 4, 1, 1)),
        ('proj.weight', torch.randn(8, 4, 1, 1)),
        ('norm.running_var', torch.rand(8) + 0.5),
        ('head.weight', torch.randn(10, 8)),
        ('head.bias', torch.randn(10)),
    ])


def test_key_mapping_and_ddp_prefix():
    sd = small_official_sd()
    out = convert_official_state_dict(
        OrderedDict(('module.' + k, v) for k, v in sd.items()))
    assert list(out) == [
        'backbone.patch_embed.proj.0.weight',
        'backbone.layers.0.blocks.0.layer_scale_1', 'head.proj.weight',
        'head.norm.running_var', 'head.fc.weight', 'head.fc.bias'
    ]
    for (_, theirs), ours in zip(sd.items(), out.values()):
        assert ours is theirs


def test_missing_model_ema_is_an_error(tmp_path, capsys):
    src = tmp_path / 'official.pth'
    official_file(src, small_official_sd())
    with pytest.raises(SystemExit, match="no 'model_ema' entry.*drop --ema"):
        converter().main([str(src), str(tmp_path / 'out.pth'), '--ema'])
    assert not (tmp_path / 'out.pth').exists()
    # without --ema the same file converts
    converter().main([str(src), str(tmp_path / 'out.pth')])
    assert set(load_checkpoint_file(tmp_path / 'out.pth')) == {
        'state_dict', 'meta'}
    assert 'wrote 6 tensors (model)' in capsys.readouterr().out


def test_bad_inputs_say_what_to_do(tmp_path):
    tool = converter()
    with pytest.raises(SystemExit, match='does not exist.*Google Drive'):
        tool.main([str(tmp_path / 'nope.pth'), str(tmp_path / 'out.pth')])
    torch.save(dict(state_dict={}, meta={}), tmp_path / 'mm.pth')
    with pytest.raises(SystemExit, match="not an official STViT checkpoint"):
        tool.main([str(tmp_path / 'mm.pth'), str(tmp_path / 'out.pth')])
    official_file(tmp_path / 'official.pth', small_official_sd())
    with pytest.raises(SystemExit, match='dst must differ'):
        tool.main([str(tmp_path / 'official.pth')] * 2)
    with pytest.raises(SystemExit, match='exists; pass --force'):
        tool.main([str(tmp_path / 'official.pth'), str(tmp_path / 'mm.pth')])
    tool.main([
        str(tmp_path / 'official.pth'),
        str(tmp_path / 'mm.pth'), '--force'
    ])
    assert 'head.fc.weight' in load_checkpoint_file(
        tmp_path / 'mm.pth')['state_dict']
    # a foreign key is named, not silently dropped
    official_file(tmp_path / 'foreign.pth',
                  OrderedDict(fc_extra=torch.zeros(1)))
    with pytest.raises(KeyError, match="unexpected key 'fc_extra'"):
        tool.main([str(tmp_path / 'foreign.pth'), str(tmp_path / 'f.pth')])


def test_check_official_needs_the_authors_file(tmp_path):
    """tools/analysis_tools/check_official.py (the comparison with the
    authors' code) names what to pass when their file is missing."""
    import subprocess
    import sys
    proc = subprocess.run([
        sys.executable,
        osp.join(ROOT, 'tools', 'analysis_tools', 'check_official.py'),
        '--official-src', str(tmp_path / 'stvit.py')
    ],
                          capture_output=True,
                          text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert 'stvit.py does not exist' in proc.stderr
    assert 'github.com/hhb072/STViT' in proc.stderr
