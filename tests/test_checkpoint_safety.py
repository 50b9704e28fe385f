# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Weights files are untrusted input: one weights-only reader with one
allow-list for every file the project opens, unsafe loading only when asked
for by name, strict backbone loading, and mmengine's own loads (load_from,
resume) going through the same reader."""
import argparse
import datetime
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader, load_checkpoint
from torch.utils.data import Dataset

import mmstvit  # noqa: F401  (installs the reader into mmengine)
from mmstvit import STViT
from mmstvit import weights as ck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1])


class RunsCode:
    """Unpickling this creates ``path``: the proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f'touch {self.path}', )


def evil_file(tmp_path, content):
    marker = tmp_path / 'CODE_RAN'
    path = tmp_path / 'evil.pth'
    torch.save({**content, 'payload': RunsCode(marker)}, path)
    return path, marker


def tiny_sd():
    torch.manual_seed(0)
    m = STViT(TINY)
    for p in m.parameters():
        p.data.normal_()
    return m.state_dict()


# ------------------------------------------------------------ allow-list --
def test_one_allow_list_with_what_weights_files_need():
    names = ck.allowed_names()
    assert len(names) == len(set(names))
    for n in ('mmengine.logging.history_buffer.HistoryBuffer',
              'numpy._core.multiarray._reconstruct',
              'numpy.core.multiarray._reconstruct', 'numpy.ndarray',
              'numpy.dtype', 'builtins.getattr', 'argparse.Namespace'):
        assert n in names
    # the real getattr is never allowed, only the restricted stand-in
    assert getattr not in [g for g, _ in ck.allowed_globals()]
    # and the reader leaves torch's global allow-list as it found it
    before = list(torch.serialization.get_safe_globals())
    torch.save({'a': argparse.Namespace(x=1)}, io.BytesIO())
    assert torch.serialization.get_safe_globals() == before


def test_numpy_namespace_and_history_buffer_load(tmp_path):
    hb = HistoryBuffer()
    hb.update(1.5)
    obj = dict(a=np.arange(3, dtype=np.int64), b=np.float32(1.5),
               c=np.zeros((2, 2), dtype=np.float16), d=np.array([True]),
               args=argparse.Namespace(lr=0.1, model='stvit_small'), hb=hb)
    torch.save(obj, tmp_path / 'x.pth')
    out = ck.load_checkpoint_file(tmp_path / 'x.pth')
    np.testing.assert_array_equal(out['a'], obj['a'])
    assert out['b'] == np.float32(1.5) and out['c'].dtype == np.float16
    assert out['args'].model == 'stvit_small'
    assert isinstance(out['hb'], HistoryBuffer) and out['hb'].mean() == 1.5


def test_restricted_getattr_refuses_other_attributes(tmp_path):
    assert ck.history_buffer_getattr(HistoryBuffer, 'mean') is \
        HistoryBuffer.mean
    for obj, name in ((HistoryBuffer, '__init__'),
                      (HistoryBuffer, '__class__'), (np.ndarray, 'tofile'),
                      (torch, 'load')):
        with pytest.raises(pickle.UnpicklingError):
            ck.history_buffer_getattr(obj, name)

    class Evil:

        def __reduce__(self):
            return getattr, (np.ndarray, 'tofile')

    torch.save({'x': Evil()}, tmp_path / 'g.pth')
    with pytest.raises(ck.UnsafeCheckpointError):
        ck.load_checkpoint_file(tmp_path / 'g.pth')


# ------------------------------------------------- code never runs --------
def test_reader_refuses_code_and_names_the_global(tmp_path):
    path, marker = evil_file(tmp_path, {'state_dict': tiny_sd()})
    with pytest.raises(ck.UnsafeCheckpointError) as e:
        ck.load_checkpoint_file(path)
    assert not marker.exists()
    assert 'system' in ' '.join(e.value.globals)  # posix.system / os.system
    msg = str(e.value)
    assert str(path) in msg and '--unsafe-load' in msg and \
        'unsafe_load=True' in msg


def test_backbone_init_cfg_refuses_code(tmp_path):
    path, marker = evil_file(tmp_path, {'model': tiny_sd()})
    m = STViT(TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ck.UnsafeCheckpointError, match='system'):
        m.init_weights()
    assert not marker.exists()


def test_mmengine_load_from_and_resume_refuse_code(tmp_path):
    """mmengine's loaders (load_from, resume, Pretrained inits of necks and
    heads, the inferencers) are the project's reader."""
    from mmstvit.weights.mmengine_loader import load_from_http, load_from_local
    assert CheckpointLoader._schemes[''] is load_from_local
    assert CheckpointLoader._schemes['https://'] is load_from_http
    import mmengine.runner.checkpoint as mod
    assert mod.load_from_http is load_from_http
    path, marker = evil_file(tmp_path, {'state_dict': {}})
    with pytest.raises(ck.UnsafeCheckpointError):
        load_checkpoint(nn.Linear(2, 2), str(path))
    runner = make_runner(tmp_path / 'r')
    with pytest.raises(ck.UnsafeCheckpointError):
        runner.resume(str(path))
    assert not marker.exists()


def test_tools_refuse_code(tmp_path):
    """tools/test.py, tools/train.py (load_from and --resume), the
    visualization tools and the converter stop with the message; the
    payload never runs."""
    from PIL import Image
    path, marker = evil_file(tmp_path, {'model': tiny_sd()})
    cfg = os.path.join(ROOT, 'configs', 'stvit_s_in1k_224.py')
    image = tmp_path / 'img.png'
    Image.new('RGB', (64, 64)).save(image)
    runs = [
        ['tools/test.py', cfg, str(path)],
        ['tools/train.py', cfg, '--cfg-options', f'load_from={path}',
         'model.backbone.init_cfg=None'],
        ['tools/train.py', cfg, '--resume', str(path),
         '--cfg-options', 'model.backbone.init_cfg=None'],
        ['tools/visualize_super_tokens.py', cfg, str(image), '--out-dir',
         str(tmp_path), '--checkpoint', str(path)],
        ['tools/model_converters/stvit_to_mm.py', str(path),
         str(tmp_path / 'out.pth')],
    ]
    for argv in runs:
        r = subprocess.run([sys.executable] + argv, cwd=ROOT, text=True,
                           capture_output=True, timeout=300)
        out = r.stdout + r.stderr
        assert r.returncode != 0, (argv, out[-2000:])
        assert 'refuses to unpickle' in out and 'system' in out, \
            (argv, out[-2000:])
        assert not marker.exists(), argv
    assert not (tmp_path / 'out.pth').exists()


# ------------------------------------------------- opt-in, by name only --
def harmless_extra(tmp_path):
    """A file holding a global beyond the allow-list that runs nothing."""
    path = tmp_path / 'extra.pth'
    torch.save({'model': tiny_sd(), 'when': datetime.date(2023, 6, 1)}, path)
    return path


def test_unsafe_load_only_when_asked_by_name(tmp_path):
    path = harmless_extra(tmp_path)
    with pytest.raises(ck.UnsafeCheckpointError, match='datetime.date'):
        ck.load_checkpoint_file(path)
    assert ck.load_checkpoint_file(path, unsafe=True)['when'].year == 2023
    # the init_cfg key
    m = STViT(TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ck.UnsafeCheckpointError):
        m.init_weights()
    m = STViT(TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                  unsafe_load=True))
    m.init_weights()
    assert torch.equal(m.state_dict()['patch_embed.proj.0.weight'],
                       tiny_sd()['patch_embed.proj.0.weight'])
    # trust(), which --unsafe-load of the tools calls, covers mmengine's
    # loads too; only the files named
    mm = tmp_path / 'extra_mm.pth'
    torch.save({'state_dict': tiny_sd(), 'when': datetime.date(2023, 6, 1)},
               mm)
    with pytest.raises(ck.UnsafeCheckpointError):
        load_checkpoint(STViT(TINY), str(mm), strict=True)
    ck.trust(mm)
    try:
        assert load_checkpoint(STViT(TINY), str(mm), strict=True)
        other = tmp_path / 'other.pth'
        torch.save({'x': datetime.date(2020, 1, 1)}, other)
        with pytest.raises(ck.UnsafeCheckpointError):
            ck.load_checkpoint_file(other)
    finally:
        ck.untrust_all()
    with pytest.raises(ck.UnsafeCheckpointError):
        ck.load_checkpoint_file(mm)


def test_tools_unsafe_load_flag(tmp_path):
    """--unsafe-load trusts the run's files: the converter reads the file
    with the extra global only with the flag."""
    path = harmless_extra(tmp_path)
    tool = 'tools/model_converters/stvit_to_mm.py'
    r = subprocess.run([sys.executable, tool, str(path),
                        str(tmp_path / 'a.pth')], cwd=ROOT, text=True,
                       capture_output=True, timeout=120)
    assert r.returncode != 0 and 'datetime.date' in r.stderr
    r = subprocess.run([sys.executable, tool, str(path),
                        str(tmp_path / 'a.pth'), '--unsafe-load'], cwd=ROOT,
                       text=True, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'a.pth').exists()


def test_train_unsafe_load_trusts_the_run_files(tmp_path):
    from mmengine.config import Config

    from mmstvit.cli.load_from import trust_run_files
    cfg = Config(dict(
        load_from=str(tmp_path / 'a.pth'),
        model=dict(backbone=dict(type='STViT', init_cfg=dict(
            type='Pretrained', checkpoint=str(tmp_path / 'b.pth'))),
            neck=dict(init_cfg=dict(type='Pretrained',
                                    checkpoint='https://x/y.pth')))))
    try:
        marked = trust_run_files(cfg, str(tmp_path / 'c.pth'))
        assert sorted(marked) == sorted(
            str(tmp_path / n) for n in ('a.pth', 'b.pth', 'c.pth'))
        assert ck.is_trusted(tmp_path / 'b.pth')
        assert not ck.is_trusted(tmp_path / 'd.pth')
    finally:
        ck.untrust_all()


# ------------------------------------------------------ strict loading --
def test_partial_checkpoint_is_refused_with_the_list(tmp_path):
    sd = tiny_sd()
    keep = 'patch_embed.proj.0.weight'
    torch.save({'model': {keep: sd[keep]}}, tmp_path / 'one.pth')
    m = STViT(TINY, init_cfg=dict(type='Pretrained',
                                  checkpoint=str(tmp_path / 'one.pth')))
    with pytest.raises(ck.CheckpointMismatchError) as e:
        m.init_weights()
    msg = str(e.value)
    assert 'missing from the file' in msg and 'patch_embed.proj.3.weight' \
        in msg and 'strict=False' in msg
    # nothing was loaded
    assert not torch.equal(m.state_dict()[keep], sd[keep])

    # the explicit opt-in loads what is there and says what is not
    m = STViT(TINY, init_cfg=dict(type='Pretrained', strict=False,
                                  checkpoint=str(tmp_path / 'one.pth')))
    m.init_weights()
    assert torch.equal(m.state_dict()[keep], sd[keep])

    # even non-strict, a file that matches nothing is refused
    torch.save({'model': {'foo.weight': torch.zeros(3)}},
               tmp_path / 'none.pth')
    m = STViT(TINY, init_cfg=dict(type='Pretrained', strict=False,
                                  checkpoint=str(tmp_path / 'none.pth')))
    with pytest.raises(ck.CheckpointMismatchError, match='an unknown model'):
        m.init_weights()


def test_num_batches_tracked_is_not_required(tmp_path):
    sd = {k: v for k, v in tiny_sd().items()
          if not k.endswith('num_batches_tracked')}
    torch.save({'model': sd}, tmp_path / 'w.pth')
    m = STViT(TINY, init_cfg=dict(type='Pretrained',
                                  checkpoint=str(tmp_path / 'w.pth')))
    m.init_weights()
    for k, v in sd.items():
        assert torch.equal(m.state_dict()[k], v)


def test_wrong_variant_is_refused_naming_it(tmp_path):
    small = STViT('small').state_dict()
    torch.save({'model': small}, tmp_path / 's.pth')
    m = STViT('base', init_cfg=dict(type='Pretrained',
                                    checkpoint=str(tmp_path / 's.pth'),
                                    strict=False))
    with pytest.raises(ck.CheckpointMismatchError,
                       match=r"STViT-small .*arch='small'"):
        m.init_weights()


def test_unknown_init_cfg_key_is_an_error():
    m = STViT(TINY, init_cfg=dict(type='Pretrained', checkpoint='x.pth',
                                  strcit=False))
    with pytest.raises(KeyError, match='strcit'):
        m.init_weights()


# ------------------------------------------- mmengine runs still resume --
class ToyData(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(4, generator=g),
                    label=torch.tensor(float(i % 2)))


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, inputs, label, mode='tensor'):
        out = self.lin(inputs).squeeze(-1)
        if mode == 'loss':
            return dict(loss=((out - label)**2).mean())
        return out


def make_runner(work_dir, max_iters=4, seed=0, resume_from=None):
    torch.manual_seed(seed)
    return Runner(
        model=ToyModel(), work_dir=str(work_dir),
        experiment_name=f'toy_{work_dir.name}',
        train_dataloader=dict(
            dataset=ToyData(),
            sampler=dict(type='InfiniteSampler', shuffle=True, seed=seed),
            batch_size=2, num_workers=0,
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=dict(type='LinearLR', start_factor=0.5,
                             by_epoch=False, begin=0, end=max_iters),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2,
                            by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=seed), load_from=resume_from,
        resume=resume_from is not None, default_scope='mmengine')


def test_runner_checkpoints_need_the_allow_list_and_resume(tmp_path):
    """A Runner checkpoint holds HistoryBuffer/numpy objects that torch's
    bare weights-only load refuses; the reader loads it and a resumed run
    ends exactly like the uninterrupted one."""
    full = make_runner(tmp_path / 'full')
    full.train()
    final = {k: v.clone() for k, v in full.model.state_dict().items()}
    ckpt = str(tmp_path / 'full' / 'iter_2.pth')
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(ckpt))
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in unsafe
    assert unsafe <= set(ck.allowed_names()), unsafe
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)
    loaded = ck.load_checkpoint_file(ckpt)
    assert loaded['meta']['iter'] == 2
    assert loaded['message_hub']['log_scalars']['train/loss'].mean() > 0

    resumed = make_runner(tmp_path / 'resumed', resume_from=ckpt)
    resumed.train()
    assert resumed.iter == 4
    for k, v in final.items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v,
                                   rtol=0, atol=0)


# ------------------------------------------------------ lean import -------
def _run_python(code, tmp_path, env_path=None):
    env = dict(os.environ)
    if env_path:
        env['PYTHONPATH'] = os.pathsep.join(
            [str(env_path), ROOT, env.get('PYTHONPATH', '')])
    else:
        env['PYTHONPATH'] = os.pathsep.join([ROOT, env.get('PYTHONPATH', '')])
    return subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, env=env, cwd=str(tmp_path), timeout=300)


def test_import_mmstvit_imports_no_toolbox(tmp_path):
    code = ('import sys; import mmstvit; '
            'print(sorted({m.split(".")[0] for m in sys.modules} & '
            '{"mmdet", "mmseg", "mmpretrain", "torchvision"}))')
    r = _run_python(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == '[]'


def test_a_broken_toolbox_stops_only_its_own_features(tmp_path):
    """mmseg whose import raises RuntimeError (as a torchvision or mmcv
    built for another torch does): mmstvit, mmdet and mmpretrain work,
    mmseg's own error reaches its users, and the tools name it."""
    fake = tmp_path / 'fake' / 'mmseg'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text(
        'raise RuntimeError("mmcv ops built for another torch")\n')
    code = '\n'.join([
        'import mmstvit',
        'import mmdet.registry, mmpretrain',
        'from mmstvit.registry import registered_toolboxes',
        'print("registered", registered_toolboxes())',
        'm = mmdet.registry.MODELS.build(dict(type="mmdet.STViT", '
        f'arch={TINY!r}))',
        'print("built", type(m).__name__)',
        'from mmstvit.models.heads import STViTClsHead',
        'print("head", STViTClsHead.__name__)',
        'try:',
        '    import mmseg',
        'except RuntimeError as e:',
        '    print("mmseg raised", e)',
        'from mmstvit.cli import ToolError, run_config',
        'try:',
        '    run_config.register_toolbox("mmseg")',
        'except ToolError as e:',
        '    print("tool:", e)',
    ])
    r = _run_python(code, tmp_path, env_path=tmp_path / 'fake')
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "registered ['mmdet', 'mmpretrain']" in out
    assert 'built STViT' in out and 'head STViTClsHead' in out
    assert 'mmseg raised mmcv ops built for another torch' in out
    assert 'tool: mmstvit: this is a mmseg config, but mmseg cannot be ' \
        'imported: RuntimeError: mmcv ops built for another torch' in out


def test_head_without_mmpretrain_names_it(tmp_path):
    fake = tmp_path / 'fake' / 'mmpretrain'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('raise RuntimeError("broken")\n')
    code = '\n'.join([
        'import mmstvit',
        'try:',
        '    from mmstvit.models.heads import STViTClsHead',
        'except ImportError as e:',
        '    print("head:", e)',
    ])
    r = _run_python(code, tmp_path, env_path=tmp_path / 'fake')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'head: mmstvit: STViTClsHead needs mmpretrain, which cannot be ' \
        'imported (RuntimeError: broken)' in r.stdout


def test_toolboxes_imported_before_or_after_get_the_modules(tmp_path):
    code = '\n'.join([
        'import mmseg.registry',  # before
        'import mmstvit',
        'import mmpretrain.registry',  # after
        'from mmstvit.registry import registered_toolboxes',
        'print(registered_toolboxes())',
        'import mmpretrain.registry as r',
        'print("STViTClsHead" in r.MODELS.module_dict)',
    ])
    r = _run_python(code, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    # (mmseg imports mmdet's registry itself)
    assert {'mmseg', 'mmpretrain'} <= set(eval(lines[-2]))
    assert lines[-1] == 'True'
