# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The paper's ablation study ("Ablations of STViT") as configs.

* The default STViT is unchanged: its state-dict keys and shapes are pinned
  (the authors' checkpoints load as they are).
* Each component switch builds what it says (keys, shapes, errors), and the
  new modules compute what they say (relative position bias, APE, ConvFFN
  without shortcut).
* Every row's classifier counts, by get_flops.py's protocol at 224, within
  3% of the paper's params and FLOPs.
* Every row's classifier, Mask R-CNN and UperNet config changes only the
  component, builds and takes a training step on a small CPU input.

The kernel plans with the switches on are compared in
``tests/test_fast_paths.py`` (``test_fast_plan_equals_plain_ablations``).
"""
import copy
import functools
import glob
import hashlib
import os.path as osp
import sys

import pytest
import torch

from mmstvit import STViT
from mmstvit.models.backbones import ablation

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis_tools'))

import get_flops  # noqa: E402
from test_configs import (_cls_batch, _det_batch, _few_rois,  # noqa: E402
                          _seg_batch, build_without_weights, load)

# row: backbone switches, classifier projection, the paper's params (M) and
# FLOPs (G) at 224, and ours as get_flops.py counts them (pinned)
ROWS = {
    'sta4stage': (dict(stem='patch', pos_embed=None, ffn='mlp'), None,
                  (24.1, 3.97), (24.132, 3.969)),
    'convstem': (dict(pos_embed=None, ffn='mlp'), None, (24.2, 4.26),
                 (24.195, 4.260)),
    'projection': (dict(pos_embed=None, ffn='mlp'), 1024, (25.2, 4.29),
                   (25.233, 4.286)),
    'cpe': (dict(ffn='mlp'), 1024, (25.3, 4.30), (25.286, 4.303)),
    'ape': (dict(pos_embed='ape', ffn='mlp'), None, (24.2, 4.26),
            (24.396, 4.260)),
    'rpe': (dict(pos_embed='rpe', ffn='mlp'), 1024, (25.3, 4.29),
            (25.272, 4.286)),
    'noshortcut': (dict(ffn='conv_no_shortcut'), 1024, (25.4, 4.37),
                   (25.496, 4.365)),
}
COMPONENT_KEYS = {'stem', 'pos_embed', 'ffn', 'rel_pos_grid'}


def cfg_path(kind, row):
    name = dict(cls=f'stvit_s_{row}_in1k_224',
                det=f'mask_rcnn_stvit_s_{row}_1x',
                seg=f'upernet_stvit_s_{row}_160k_ade20k')[kind]
    return f'configs/ablations/{name}.py'


BASES = dict(cls='configs/stvit/stvit_s_in1k_224.py',
             det='configs/mask_rcnn/mask_rcnn_stvit_s_1x.py',
             seg='configs/upernet/upernet_stvit_s_160k_ade20k.py')


@functools.lru_cache(maxsize=None)
def base_model(task):
    """The STViT-S config's model dict (read once: loading a config that
    names mmdet::/mmseg::/mmpretrain:: bases takes about a second)."""
    return load(BASES[task]).model.to_dict()


def test_every_row_has_three_configs():
    found = sorted(
        osp.relpath(p, ROOT)
        for p in glob.glob(osp.join(ROOT, 'configs', 'ablations', '*.py')))
    assert found == sorted(
        cfg_path(k, r) for r in ROWS for k in ('cls', 'det', 'seg'))


# ------------------------------------------------ the default is STViT --
@pytest.mark.parametrize('arch,n,digest', [
    ('small', 469, '48b92141504cdb7a'),
    ('base', 719, 'd963a13accce1ea9'),
    ('large', 901, '60cfff2b9331e044'),
])
def test_default_state_dict_is_the_authors(arch, n, digest):
    """Every key, in order, with its shape: as before the ablation switches
    (the digest was taken on main before they existed)."""
    sd = STViT(arch).state_dict()
    text = '\n'.join(f'{k}:{tuple(v.shape)}' for k, v in sd.items())
    assert len(sd) == n
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == digest


# ------------------------------------------------------ the switches --
TINY = dict(embed_dims=[16, 32, 48, 64], depths=[1, 2, 1, 1],
            num_heads=[1, 2, 3, 4])


def keys(**kw):
    return STViT(TINY, **kw).state_dict()


def test_switches_build_what_they_say():
    default = keys()
    # the baseline's patch embedding: 4x4 stride-4 conv + LayerNorm
    sd = keys(stem='patch')
    assert sd['patch_embed.proj.weight'].shape == (16, 3, 4, 4)
    assert 'patch_embed.norm.norm.weight' in sd
    assert not any(k.startswith('patch_embed.proj.0') for k in sd)
    # no CPE: no pos_embed in any block
    sd = keys(pos_embed=None)
    assert not any('pos_embed' in k for k in sd)
    assert set(sd) == {k for k in default if '.pos_embed.' not in k}
    # APE: one table at stride 4 of the 224 input, no CPE
    sd = keys(pos_embed='ape')
    assert sd['ape.absolute_pos_embed'].shape == (1, 16, 56, 56)
    assert keys(pos_embed='ape', pretrain_img_size=(64, 96))[
        'ape.absolute_pos_embed'].shape == (1, 16, 16, 24)
    # RPE: a table per block and head over the super token grid at 224
    # (stoken_size (16, 8, 2, 1): grids 4, 4, 7, 7), no CPE
    sd = keys(pos_embed='rpe')
    table = 'attn.stoken_refine.rpe.relative_position_bias_table'
    assert sd[f'layers.0.blocks.0.{table}'].shape == (7 * 7, 1)
    assert sd[f'layers.2.blocks.0.{table}'].shape == (13 * 13, 3)
    sd = keys(pos_embed='rpe', stoken_size=(8, 4, 1, 1))
    assert sd[f'layers.2.blocks.0.{table}'].shape == (27 * 27, 3)
    assert sd[f'layers.3.blocks.0.{table}'].shape == (13 * 13, 4)
    sd = keys(pos_embed='rpe', rel_pos_grid=(7, 7, 14, (7, 5)))
    assert sd[f'layers.3.blocks.0.{table}'].shape == (13 * 9, 4)
    assert not any('pos_embed' in k for k in sd)
    # layer-wise lr decay: the position table with the stem, the bias
    # tables with their blocks
    m = STViT(TINY, pos_embed='ape')
    assert m.get_layer_depth('ape.absolute_pos_embed') == (0, 7)
    assert m.get_layer_depth(f'layers.1.blocks.1.{table}') == (3, 7)
    # the FFN: no depthwise conv, or the same parameters without shortcut
    assert not any('mlp2.conv' in k for k in keys(ffn='mlp'))
    assert set(keys(ffn='conv_no_shortcut')) == set(default)


def test_bad_switches_name_the_choices():
    with pytest.raises(ValueError, match=r"stem must be one of \['conv', "
                       r"'patch'\], got 'swin'"):
        STViT(TINY, stem='swin')
    with pytest.raises(ValueError, match="pos_embed must be one of"):
        STViT(TINY, pos_embed='sine')
    with pytest.raises(ValueError, match=r"ffn must be one of \['conv', "
                       r"'conv_no_shortcut', 'mlp'\]"):
        STViT(TINY, ffn='glu')
    with pytest.raises(ValueError, match="only used with pos_embed='rpe'"):
        STViT(TINY, rel_pos_grid=(7, 7, 14, 7))
    with pytest.raises(ValueError, match='one entry per stage'):
        STViT(TINY, pos_embed='rpe', rel_pos_grid=(7, 7))


def test_relative_position_bias_offsets_and_clipping():
    rpe = ablation.RelativePositionBias(2, (3, 3))
    table = rpe.relative_position_bias_table
    with torch.no_grad():
        table.copy_(torch.randn_like(table))
    for h, w in ((3, 3), (2, 5), (6, 4), (1, 1)):
        bias = rpe(h, w)
        assert bias.shape == (2, h * w, h * w)
        for q in range(h * w):
            for k in range(h * w):
                dy = max(-2, min(2, q // w - k // w)) + 2
                dx = max(-2, min(2, q % w - k % w)) + 2
                assert torch.equal(bias[:, q, k], table[dy * 5 + dx])


def test_attention_adds_the_bias():
    """The attention logits get the bias, in both plans."""
    from mmstvit.models.backbones.modules import MultiheadConvAttention
    torch.manual_seed(0)
    m = MultiheadConvAttention(8, 2, rpe=ablation.RelativePositionBias(
        2, (3, 3))).eval()
    x = torch.randn(1, 8, 4, 5)
    q, k, v = m.qkv_heads(x)
    logits = (q @ k.transpose(-1, -2)) * m.scale + m.rpe(4, 5)
    assert torch.allclose(m.attention_weights(x), logits.softmax(-1),
                          atol=1e-6)
    from mmstvit.models.backbones import kernels
    outs = []
    for plan in (kernels.FAST, kernels.PLAIN):
        m.kernels = plan
        with torch.no_grad():
            outs.append(m(x))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_ape_is_the_table_resized_and_no_shortcut_is_the_conv():
    ape = ablation.AbsolutePositionEmbedding(4, (6, 6))
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(ape(x), x + ape.absolute_pos_embed)
    y = torch.zeros(1, 4, 9, 12)
    ref = torch.nn.functional.interpolate(
        ape.absolute_pos_embed, size=(9, 12), mode='bicubic',
        align_corners=False)
    assert torch.allclose(ape(y), ref)
    from mmstvit.models.backbones.modules import ConvFFN
    ffn = ConvFFN(4, 8, shortcut=False)
    a = torch.randn(2, 8, 6, 6)
    h = torch.nn.functional.gelu(a)
    assert torch.allclose(ffn.hidden(a), ffn.conv.conv(h), atol=1e-6)
    ffn.shortcut = True  # STViT's ConvFFN: h + DWConv(h)
    assert torch.allclose(ffn.hidden(a), h + ffn.conv.conv(h), atol=1e-6)


@pytest.mark.parametrize('switches', [
    dict(stem='patch', pos_embed=None, ffn='mlp'),
    dict(pos_embed='ape', ffn='conv_no_shortcut'),
    dict(pos_embed='rpe', rel_pos_grid=(2, 2, 2, 2)),
])
def test_every_plan_runs_the_switches(switches):
    """Inference in the reference plan (FLOP counting) and deployed (in
    place, oneDNN) gives the fast plan's outputs."""
    torch.manual_seed(0)
    fast = STViT(TINY, **switches).eval()
    x = torch.randn(1, 3, 75, 61)
    with torch.no_grad():
        ref = fast(x)
        for other in (copy.deepcopy(fast).set_kernels('reference'),
                      copy.deepcopy(fast).switch_to_deploy()):
            for a, b in zip(other(x), ref):
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


# ------------------------------------------------ the paper's counts --
def test_every_row_counts_as_the_paper():
    """get_flops.py on every row's classifier at 224 (the protocol of the
    main table): params and FLOPs within 3% of the paper's, and pinned to
    what they measure now (STViT-S itself: test_analysis_tools)."""
    for row, (_, _, paper, ours) in ROWS.items():
        r = get_flops.measure(osp.join(ROOT, cfg_path('cls', row)))
        params, flops = r['params'] / 1e6, r['flops'] / 1e9
        assert r['shape'] == (224, 224)
        assert get_flops.PAPER[f'stvit_s_{row}_in1k_224'] == paper
        assert abs(params - paper[0]) / paper[0] < 0.03, (row, params)
        assert abs(flops - paper[1]) / paper[1] < 0.03, (row, flops)
        assert abs(params - ours[0]) < 1e-3, (row, params)
        assert abs(flops - ours[1]) < 1e-3, (row, flops)


# ----------------------------------------------- the configs, stepped --
def _changed(cfg, task):
    """The config's model against STViT-S's: the backbone keys that differ,
    and whether anything else but the head's projection is the same."""
    a, b = cfg.model.to_dict(), copy.deepcopy(base_model(task))
    bb_a, bb_b = a.pop('backbone'), b.pop('backbone')
    diff = {k for k in set(bb_a) | set(bb_b) if bb_a.get(k) != bb_b.get(k)}
    if 'head' in a:
        a['head'].pop('projection'), b['head'].pop('projection')
    return diff, a == b


def _step(cfg, task):
    torch.manual_seed(0)
    _few_rois(cfg.model)
    model = build_without_weights(cfg).train()
    size = 64
    batch = dict(det=_det_batch, seg=_seg_batch, cls=_cls_batch)[task](model,
                                                                      size)
    loss, _ = model.parse_losses(model(**batch, mode='loss'))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    return model


@pytest.mark.parametrize('row', list(ROWS))
def test_row_configs_change_only_the_component_and_train(row):
    switches, projection = ROWS[row][:2]
    pretrained = f'work_dirs/stvit_s_{row}_in1k_224/epoch_300.pth'
    for task in ('cls', 'det', 'seg'):
        cfg = load(cfg_path(task, row))
        diff, same_rest = _changed(cfg, task)
        assert same_rest, (row, task)
        bb = cfg.model.backbone
        assert diff - {'init_cfg'} <= COMPONENT_KEYS, (row, task, diff)
        for k, v in switches.items():
            assert bb.get(k, 'cpe' if k == 'pos_embed' else 'conv') == v
        if task == 'cls':
            assert cfg.model.head.projection == projection
            assert 'init_cfg' not in diff
        else:  # from this row's own ImageNet model
            assert bb.init_cfg == dict(type='Pretrained',
                                       checkpoint=pretrained)
            if row == 'rpe':
                assert tuple(bb.rel_pos_grid) == (7, 7, 14, 7)
        if row in ('ape', 'rpe'):  # no weight decay on the position table
            key = dict(ape='absolute_pos_embed',
                       rpe='relative_position_bias_table')[row]
            custom = cfg.optim_wrapper.paramwise_cfg.custom_keys
            assert custom[key] == dict(decay_mult=0.)
        if task != 'cls' and row == 'projection':
            continue  # + Conv Stem's backbone: stepped there
        model = _step(cfg, task)
        grads = {n: p.grad for n, p in model.named_parameters()
                 if p.requires_grad}
        assert all(g is not None for n, g in grads.items()
                   if n.startswith('backbone.layers.0'))
        for name in ('ape.absolute_pos_embed', 'relative_position_bias_table',
                     'patch_embed.proj.weight'):
            # (a 1x1 super token grid gives its bias no gradient)
            hits = [g for n, g in grads.items() if n.endswith(name)]
            assert not hits or any(g.abs().sum() > 0 for g in hits), \
                (row, task, name)
