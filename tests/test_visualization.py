# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The super token and attention visualisations (mmstvit.visualization and
tools/visualize_*.py): outputs, exact maths at feature resolution, loading
both checkpoint formats, and the user errors."""
import argparse
import itertools
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mmstvit.visualization import super_tokens as vis
from mmstvit.visualization import (VisualizationError, hard_assignment,
                                   pixel_attention, visualize_attention,
                                   visualize_super_tokens)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))

import visualize_attention as attn_tool  # noqa: E402
import visualize_super_tokens as st_tool  # noqa: E402

TINY_ARCH = dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                 num_heads=[1, 1, 2, 2])
STOKEN = (8, 4, 2, 1)

SEG_CONFIG = f"""
custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
    seg_pad_val=255, size=(64, 64))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='STViT', arch={TINY_ARCH!r}, stoken_size={STOKEN!r},
        drop_path_rate=0.1, out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint='does/not/exist.pth')),
    decode_head=dict(
        type='FCNHead', in_channels=64, channels=16, num_convs=1,
        num_classes=4, norm_cfg=norm_cfg),
    train_cfg=dict(), test_cfg=dict(mode='whole'))
"""

RESNET_CONFIG = """
model = dict(type='EncoderDecoder',
             backbone=dict(type='ResNetV1c', depth=18))
"""


def make_image(path, width=200, height=150, seed=0):
    """A picture with a few flat shapes on a gradient, so that super tokens
    have edges to follow."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // max(1, width - 1),
                    yy * 255 // max(1, height - 1),
                    np.full_like(xx, 90)], -1).astype(np.uint8)
    for _ in range(4):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        r = rng.integers(10, max(11, min(width, height) // 3))
        img[(xx - cx)**2 + (yy - cy)**2 < r * r] = rng.integers(0, 255, 3)
    Image.fromarray(img).save(path)
    return str(path)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp('vis')
    cfg = d / 'tiny_seg.py'
    cfg.write_text(SEG_CONFIG)
    return dict(dir=d, config=str(cfg),
                image=make_image(d / 'scene.png', 200, 150))


@pytest.fixture(scope='module')
def model(files):
    torch.manual_seed(0)
    return vis.build_stvit_from_config(files['config'])


def png_size(path):
    assert osp.getsize(path) > 0
    with Image.open(path) as im:
        im.load()
        return im.size


# ------------------------------------------------------------- the tools --
def test_super_tokens_writes_input_sized_pngs(files, model, tmp_path):
    paths = visualize_super_tokens(None, files['image'], str(tmp_path),
                                   model=model)
    names = sorted(osp.basename(p) for p in paths)
    # stages 0, 1, 2 have super tokens; stage 3 (size 1) does not
    assert names == sorted(f'scene_stage{i}_{k}.png' for i in (0, 1, 2)
                           for k in ('initial', 'learned'))
    for p in paths:
        assert png_size(p) == (200, 150)


def test_super_tokens_one_stage_block_and_resize(files, model, tmp_path):
    # a picture larger than max_size is computed smaller, drawn at its size
    img = make_image(tmp_path / 'big.jpg', 301, 223, seed=3)
    paths = visualize_super_tokens(None, img, str(tmp_path / 'o'),
                                   model=model, stage=1, block=-1,
                                   max_size=128)
    assert [osp.basename(p) for p in paths] == [
        'big_stage1_initial.png', 'big_stage1_learned.png']
    for p in paths:
        assert png_size(p) == (301, 223)


def test_attention_writes_input_sized_pngs(files, model, tmp_path):
    paths = visualize_attention(None, files['image'], str(tmp_path),
                                model=model)
    assert len(paths) == 10  # 3x3 grid + montage
    for p in paths[:-1]:
        assert png_size(p) == (200, 150)
    assert paths[-1].endswith('scene_attn_stage2_grid.png')
    assert png_size(paths[-1])[0] > 0


@pytest.mark.parametrize('stage,head', [(2, 'mean'), (2, 1), (3, 'mean'),
                                        (1, 0)])
def test_attention_maps_are_distributions(files, model, tmp_path, stage,
                                          head):
    pts = [(0, 0), (199, 149), (100, 75), (37.5, 120)]
    paths, out = visualize_attention(
        None, files['image'], str(tmp_path), model=model, points=pts,
        stage=stage, head=head, return_maps=True)
    assert len(paths) == len(pts) + 1
    maps, mass = out['maps'], out['mass']
    fh, fw = vis.feature_size(150, 200, stage)
    assert maps.shape == (len(pts), fh, fw)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(len(pts)),
                               rtol=0, atol=1e-4)
    # before the padding is dropped, nearly all mass is on the map already
    assert ((mass > 0.5) & (mass < 1 + 1e-4)).all()
    s = vis.stage_stride(stage)
    assert out['queries'] == [(min(fh - 1, int(y) // s),
                               min(fw - 1, int(x) // s)) for x, y in pts]


def test_cli_subprocess(files, tmp_path):
    out = tmp_path / 'cli'
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
               os.environ.get('PYTHONPATH', ''))
    r = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'visualize_super_tokens.py'),
         files['config'], files['image'], '--out-dir', str(out),
         '--stage', '2', '--device', 'cpu'],
        capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    printed = r.stdout.split()
    assert [osp.basename(p) for p in printed] == [
        'scene_stage2_initial.png', 'scene_stage2_learned.png']
    for p in printed:
        assert png_size(p) == (200, 150)


def test_attention_cli_in_process(files, tmp_path, capsys):
    rc = attn_tool.main([files['config'], files['image'], '--out-dir',
                         str(tmp_path), '--points', '10,20', '150.5,100',
                         '--head', '0', '--block', '0'])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 3
    for p in printed[:2]:
        assert png_size(p) == (200, 150)


# ------------------------------------------------- maths, at feature size --
def _features(model, image, stage, block=-1):
    x, _ = vis.preprocess(vis.read_image(image), model)
    blocks = model.backbone.layers[stage].blocks
    j = block % len(blocks)
    feat = vis.capture_attention_inputs(model.backbone, x, [(stage, j)])
    return blocks[j].attn, feat[(stage, j)]


@pytest.mark.parametrize('stage', [0, 1, 2])
def test_hard_assignment_is_a_valid_neighbour(files, model, stage):
    attn, x = _features(model, files['image'], stage)
    with torch.no_grad():
        sampling = attn.associate(x)
    hh, ww, H, W, H0, W0 = sampling.grid
    sh, sw = attn.stoken_size
    a = hard_assignment(sampling.assoc, sampling.grid, attn.stoken_size)
    assert a['ids'].shape == (1, H0, W0) == tuple(x.shape[:1]) + tuple(
        x.shape[2:])
    rows, cols = a['rows'][0], a['cols'][0]
    yy, xx = torch.meshgrid(torch.arange(H0), torch.arange(W0),
                            indexing='ij')
    # exactly one of the 3x3 super tokens around the pixel's own cell
    assert ((rows - yy // sh).abs() <= 1).all()
    assert ((cols - xx // sw).abs() <= 1).all()
    assert ((rows >= 0) & (rows < hh) & (cols >= 0) & (cols < ww)).all()
    assert torch.equal(a['ids'][0], rows * ww + cols)
    # and an in-grid neighbour of largest association, pixel by pixel
    assoc = sampling.assoc[0]
    for y, x_ in itertools.product(range(H0), range(W0)):
        i, j = y // sh, x_ // sw
        p = (y % sh) * sw + x_ % sw
        in_grid = [k for k in range(9) if 0 <= i + k // 3 - 1 < hh
                   and 0 <= j + k % 3 - 1 < ww]
        best = max(assoc[i * ww + j, p, k].item() for k in in_grid)
        k = (rows[y, x_].item() - i + 1) * 3 + cols[y, x_].item() - j + 1
        assert k in in_grid and k == a['k'][0, y, x_].item()
        assert assoc[i * ww + j, p, k].item() == best


def test_initial_assignment_is_the_grid():
    a = vis.initial_assignment((3, 4, 12, 16, 10, 15), (4, 4))
    assert a['ids'].shape == (1, 10, 15)
    assert a['rows'][0, 9, 0] == 2 and a['cols'][0, 0, 14] == 3
    assert a['ids'][0, 5, 9] == 1 * 4 + 2


def naive_pixel_attention(attn, x, query):
    """The pixel attention written out term by term, in float64:
    A(p, q) = sum_k sum_k' Q_p[k] Attn(S_n(p,k), S_n(q,k')) Q_q[k'] / Z."""
    sampling = attn.associate(x)
    hh, ww, H, W, H0, W0 = sampling.grid
    sh, sw = attn.stoken_size
    assoc = sampling.assoc[0].double()
    A = attn.stoken_refine.attention_weights(sampling.stokens)[0].mean(0)
    A = A.double()

    def nb(i, j, k):
        r, c = i + k // 3 - 1, j + k % 3 - 1
        return r * ww + c if 0 <= r < hh and 0 <= c < ww else None

    Z = torch.zeros(hh * ww, dtype=torch.float64)
    for i, j, p, k in itertools.product(range(hh), range(ww),
                                        range(sh * sw), range(9)):
        m = nb(i, j, k)
        if m is not None:
            Z[m] += assoc[i * ww + j, p, k]
    py, px = query
    ci, cj = py // sh, px // sw
    qp = assoc[ci * ww + cj, (py % sh) * sw + px % sw]
    valid = [k for k in range(9) if nb(ci, cj, k) is not None]
    qp_sum = sum(qp[k] for k in valid)
    out = torch.zeros(H, W, dtype=torch.float64)
    for y, x_ in itertools.product(range(H), range(W)):
        i, j = y // sh, x_ // sw
        qq = assoc[i * ww + j, (y % sh) * sw + x_ % sw]
        tot = 0.
        for k in valid:
            for k2 in range(9):
                m2 = nb(i, j, k2)
                if m2 is not None:
                    tot += qp[k] / qp_sum * A[nb(ci, cj, k), m2] * qq[k2] / \
                        Z[m2]
        out[y, x_] = tot
    total = out.sum()  # 1: every super token's column sums to 1 over q
    out = out[:H0, :W0]
    return out / out.sum(), total


def test_pixel_attention_matches_the_formula():
    torch.manual_seed(1)
    from mmstvit.models.backbones.stvit import StokenAttention
    attn = StokenAttention(8, (3, 2), num_heads=2).eval()
    x = torch.randn(1, 8, 7, 9)  # padded to 9 x 10: 3 x 5 super tokens
    queries = [(0, 0), (6, 8), (3, 4), (5, 1)]
    with torch.no_grad():
        res = pixel_attention(attn, x, torch.tensor(queries))
        for n, q in enumerate(queries):
            ref, total = naive_pixel_attention(attn, x, q)
            torch.testing.assert_close(res['maps'][n].double(), ref,
                                       rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(total, torch.tensor(
                1., dtype=torch.float64), rtol=0, atol=1e-5)


def test_pixel_attention_size_one_is_token_attention():
    torch.manual_seed(2)
    from mmstvit.models.backbones.stvit import StokenAttention
    attn = StokenAttention(12, 1, num_heads=3).eval()
    x = torch.randn(1, 12, 5, 6)
    with torch.no_grad():
        w = attn.stoken_refine.attention_weights(x)[0]  # (heads, 30, 30)
        res = pixel_attention(attn, x, torch.tensor([(0, 0), (4, 5),
                                                     (2, 3)]))
        one = pixel_attention(attn, x, torch.tensor([(2, 3)]), head=2)
    idx = [0, 29, 2 * 6 + 3]
    torch.testing.assert_close(res['maps'], w.mean(0)[idx].view(3, 5, 6))
    torch.testing.assert_close(one['maps'][0], w[2, idx[2]].view(5, 6))


def test_neighbouring_super_tokens_get_different_colours():
    # regions that can touch belong to super tokens at most 3 rows and 3
    # columns apart
    for r, c in itertools.product(range(4), range(4)):
        base = vis.token_colours(np.array([r]), np.array([c]))[0]
        for dr, dc in itertools.product(range(-3, 4), repeat=2):
            if (dr, dc) == (0, 0):
                continue
            other = vis.token_colours(np.array([r + 4 + dr]),
                                      np.array([c + 4 + dc]))[0]
            assert tuple(base) != tuple(other), (r, c, dr, dc)


def test_learned_picture_outlines_every_region_change(files, model):
    pic = vis.read_image(files['image'])
    maps, net = vis.super_token_maps(model, pic, [0], {0: 0})
    a = maps[0]['learned']
    rows = vis.to_image_grid(a['rows'].numpy(), 4, net, pic.shape[:2])
    cols = vis.to_image_grid(a['cols'].numpy(), 4, net, pic.shape[:2])
    assert rows.shape == pic.shape[:2]
    out = vis.render_partition(pic, rows, cols)
    ids = rows * 1000 + cols
    change = np.zeros(ids.shape, bool)
    change[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    assert (out[change] == 255).all()


# ------------------------------------------------------------- weights --
def _reference_backbone(files):
    torch.manual_seed(5)
    m = vis.build_stvit_from_config(files['config']).backbone
    for p in m.parameters():
        p.data.normal_()
    return m


def test_loads_our_mm_checkpoint_and_the_official_file(files, tmp_path):
    ref = _reference_backbone(files)
    sd = ref.state_dict()
    mm = {'meta': {}, 'state_dict': {
        **{f'backbone.{k}': v for k, v in sd.items()},
        'decode_head.conv_seg.weight': torch.zeros(4, 16, 1, 1)}}
    torch.save(mm, tmp_path / 'mm.pth')
    official = {'model': {**sd, 'head.weight': torch.zeros(10, 1024),
                          'proj.weight': torch.zeros(1024, 64, 1, 1)},
                'model_ema': dict(sd), 'epoch': 3,
                'args': argparse.Namespace(model='stvit_tiny')}
    torch.save(official, tmp_path / 'official.pth')
    for name in ('mm.pth', 'official.pth'):
        m = vis.build_stvit_from_config(files['config'],
                                        str(tmp_path / name)).backbone
        for k, v in m.state_dict().items():
            assert torch.equal(v, sd[k]), (name, k)
    # and the tool runs on it
    paths = visualize_attention(files['config'], files['image'],
                                str(tmp_path / 'o'),
                                checkpoint=str(tmp_path / 'official.pth'),
                                grid=2)
    assert len(paths) == 5


def test_wrong_checkpoint_fails_clearly(files, tmp_path):
    from mmstvit import STViT
    other = STViT(dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                       num_heads=[1, 1, 1, 1]))
    torch.save({'state_dict': {f'backbone.{k}': v
                               for k, v in other.state_dict().items()}},
               tmp_path / 'other.pth')
    with pytest.raises(VisualizationError, match='cannot load checkpoint .*'
                       'another model'):
        vis.build_stvit_from_config(files['config'],
                                    str(tmp_path / 'other.pth'))
    with pytest.raises(VisualizationError, match='no such file'):
        vis.build_stvit_from_config(files['config'], str(tmp_path / 'x.pth'))


# -------------------------------------------------------------- errors --
def run_cli(tool, argv, capsys):
    rc = tool.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
    return err


def test_missing_and_unreadable_images(files, tmp_path, capsys):
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'not a picture at all')
    for tool in (st_tool, attn_tool):
        err = run_cli(tool, [files['config'], str(tmp_path / 'nope.jpg'),
                             '--out-dir', str(tmp_path)], capsys)
        assert err.startswith(f'error: cannot read image '
                              f'{tmp_path / "nope.jpg"}: ')
        err = run_cli(tool, [files['config'], str(bad), '--out-dir',
                             str(tmp_path)], capsys)
        assert err.startswith(f'error: cannot read image {bad}: ')


def test_config_without_stvit(files, tmp_path, capsys):
    cfg = tmp_path / 'resnet.py'
    cfg.write_text(RESNET_CONFIG)
    for tool in (st_tool, attn_tool):
        err = run_cli(tool, [str(cfg), files['image'], '--out-dir',
                             str(tmp_path)], capsys)
        assert err == (f'error: config {cfg} has backbone type ResNetV1c; '
                       "these tools need type='STViT'")
    err = run_cli(st_tool, [str(tmp_path / 'none.py'), files['image'],
                            '--out-dir', str(tmp_path)], capsys)
    assert 'cannot read config' in err


def test_bad_stages_blocks_and_heads(files, tmp_path, capsys):
    base = [files['config'], files['image'], '--out-dir', str(tmp_path)]
    err = run_cli(st_tool, base + ['--stage', '4'], capsys)
    assert 'out of range' in err and '4 stages (0-3)' in err
    err = run_cli(st_tool, base + ['--stage', '3'], capsys)
    assert 'stage 3 has super token size 1x1' in err
    assert 'stages with super tokens: 0 (8x8), 1 (4x4), 2 (2x2)' in err
    err = run_cli(attn_tool, base + ['--stage', '7'], capsys)
    assert 'out of range' in err
    err = run_cli(attn_tool, base + ['--block', '1'], capsys)
    assert 'stage 2 has 1 block (0-0)' in err
    err = run_cli(attn_tool, base + ['--head', '2'], capsys)
    assert 'stage 2 has 2 heads (0-1)' in err
    err = run_cli(attn_tool, base + ['--points', '200,10'], capsys)
    assert 'outside the 200x150 image' in err
    err = run_cli(st_tool, base + ['--device', 'nodevice'], capsys)
    assert err.startswith('error: cannot use device nodevice')


def test_too_small_images(files, model, tmp_path, capsys):
    # stage 0: 8x8 super tokens of 4 px need (8-1)*4+1 = 29 px
    small = make_image(tmp_path / 'small.png', 28, 40)
    err = run_cli(st_tool, [files['config'], small, '--out-dir',
                            str(tmp_path), '--stage', '0'], capsys)
    assert 'too small for stage 0' in err and 'the minimum is 29x29' in err
    # without --stage, the stages that fit are drawn (1 and 2), 0 skipped
    paths = visualize_super_tokens(None, small, str(tmp_path), model=model,
                                   log=lambda m: None)
    assert [osp.basename(p) for p in paths] == [
        f'small_stage{i}_{k}.png' for i in (1, 2)
        for k in ('initial', 'learned')]
    for p in paths:
        assert png_size(p) == (28, 40)
    tiny = make_image(tmp_path / 'tiny.png', 16, 16)
    err = run_cli(st_tool, [files['config'], tiny, '--out-dir',
                            str(tmp_path)], capsys)
    assert 'too small for stage 2' in err and 'minimum is 17x17' in err
    # attention at stage 2 (2x2 super tokens of 16 px): 17 px
    err = run_cli(attn_tool, [files['config'], tiny, '--out-dir',
                              str(tmp_path)], capsys)
    assert 'too small for stage 2' in err and 'minimum is 17x17' in err
    # stage 3 has size 1: any image works
    paths = visualize_attention(None, tiny, str(tmp_path), model=model,
                                stage=3, grid=1)
    assert png_size(paths[0]) == (16, 16)


# ------------------------------------------------- the real config files --
# every task's S config: (file, stages with super tokens)
REAL_CONFIGS = [('mask_rcnn_stvit_s_1x.py', (0, 1, 2)),
                ('upernet_stvit_s_160k_ade20k.py', (0, 1, 2)),
                ('stvit_s_in1k_224.py', (0, 1))]


@pytest.mark.parametrize('name,stages', REAL_CONFIGS,
                         ids=[name for name, _ in REAL_CONFIGS])
def test_real_config(name, stages, tmp_path):
    path = osp.join(ROOT, 'configs', name)
    assert osp.isfile(path), f'configs/{name} is missing'
    img = make_image(tmp_path / 'photo.jpg', 200, 150)
    model = vis.build_stvit_from_config(path)
    paths = visualize_super_tokens(None, img, str(tmp_path), model=model)
    assert [osp.basename(p) for p in paths] == [
        f'photo_stage{i}_{k}.png' for i in stages
        for k in ('initial', 'learned')]
    for p in paths:
        assert png_size(p) == (200, 150)
    paths, out = visualize_attention(None, img, str(tmp_path), model=model,
                                     grid=2, return_maps=True)
    assert len(paths) == 5
    assert png_size(paths[0]) == (200, 150)
    torch.testing.assert_close(out['maps'].sum((1, 2)), torch.ones(4),
                               rtol=0, atol=1e-4)
