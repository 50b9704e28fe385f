# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The tools' command-line layer (mmstvit/cli): a config path with a typo
(one line with the nearest names, exit 2), the pre-flight image check
(fast mode: truncated and empty files named) and a file that breaks after
the check (one line naming it and its sample index)."""
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmstvit.cli import config_path, errors, preflight
from mmstvit.data import image_files
from mmstvit.data.checks import DataError
from mmstvit.data.errors import DataLoadError, NameLoadErrors

from helpers import REPO, SEG_CFG, TINY_ARCH, load_script

TYPO = 'configs/mask_rcnn_stvit_s_1z.py'
NEAREST = 'configs/mask_rcnn_stvit_s_1x.py'


def _jpeg(path, size=(48, 40), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3),
                                 dtype=np.uint8)).save(path, quality=90)
    return path


def _png(path, size=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3),
                                 dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------
# a config path with a typo
# ---------------------------------------------------------------------------


def test_nearest_configs_by_path_and_by_scope(monkeypatch):
    monkeypatch.chdir(REPO)
    assert config_path.nearest_configs(TYPO)[0] == NEAREST
    scoped = config_path.nearest_configs('mmstvit::toy/upernet_stvit_s_tyo.py')
    assert scoped[0] == 'mmstvit::toy/upernet_stvit_s_toy.py'
    assert all(n.startswith('mmstvit::') for n in scoped)


@pytest.mark.parametrize('tool', ['train', 'test', 'infer'])
def test_config_typo_is_one_line_with_nearest_names(tool, monkeypatch,
                                                     capsys):
    monkeypatch.chdir(REPO)
    module = load_script(f'tools/{tool}.py')
    argv = [TYPO] + {'train': [], 'test': ['x.pth'], 'infer': ['a.jpg']}[tool]
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f'mmstvit: config {TYPO} does not exist')
    assert f'nearest: {NEAREST}' in lines[0]


def test_config_typo_through_python_m_mmstvit(capsys):
    from mmstvit import __main__ as entry
    with pytest.raises(SystemExit) as e:
        entry.main(['train', 'mmstvit::toy/upernet_stvit_s_tyo.py'])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'mmstvit::toy/upernet_stvit_s_tyo.py does not exist' in err
    assert 'nearest: mmstvit::toy/upernet_stvit_s_toy.py' in err


def test_config_typo_exits_2_without_traceback():
    proc = subprocess.run(
        [sys.executable, osp.join('tools', 'train.py'), 'configs/nope.py'],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'configs/nope.py does not exist' in lines[0]
    assert 'nearest: configs/' in lines[0]


def test_exit_with_keeps_code_1_messages():
    e = errors.exit_with(errors.ToolError('mmstvit: fix it'))
    assert e.code == 'mmstvit: fix it'  # printed by Python, status 1


# ---------------------------------------------------------------------------
# the pre-flight image check
# ---------------------------------------------------------------------------


def test_fast_check_finds_truncated_jpeg_and_empty_png(tmp_path):
    good_jpg = _jpeg(tmp_path / 'good.jpg')
    good_png = _png(tmp_path / 'good.png')
    data = good_jpg.read_bytes()
    (tmp_path / 'cut.jpg').write_bytes(data[:len(data) * 2 // 3])
    (tmp_path / 'empty.png').write_bytes(b'')
    png = good_png.read_bytes()
    (tmp_path / 'cut.png').write_bytes(png[:len(png) // 2])
    (tmp_path / 'text.jpg').write_bytes(b'not an image at all')
    assert image_files.image_problem(str(good_jpg)) is None
    assert image_files.image_problem(str(good_png)) is None
    assert 'no end marker (FFD9)' in image_files.image_problem(
        str(tmp_path / 'cut.jpg'))
    assert image_files.image_problem(str(tmp_path / 'empty.png')) == \
        'empty file (0 bytes)'
    assert 'no IEND' in image_files.image_problem(str(tmp_path / 'cut.png'))
    assert 'cannot be read as an image' in image_files.image_problem(
        str(tmp_path / 'text.jpg'))
    with pytest.raises(DataError) as e:
        image_files.check_images(str(tmp_path), 'x.data_prefix.img_path')
    msg = str(e.value)
    assert msg.startswith(f'4 of 6 images in {tmp_path} '
                          '(x.data_prefix.img_path) cannot be read')
    for name in ('cut.jpg', 'empty.png', 'cut.png', 'text.jpg'):
        assert str(tmp_path / name) in msg
    assert 'good.jpg' not in msg and 'good.png' not in msg


def test_fast_check_reads_header_sizes(tmp_path):
    data = bytearray(_jpeg(tmp_path / 'a.jpg').read_bytes())
    sof = data.find(b'\xff\xc0')
    data[sof + 5:sof + 7] = b'\x00\x00'  # height 0
    (tmp_path / 'a.jpg').write_bytes(bytes(data))
    assert 'size 48x0' in image_files.image_problem(str(tmp_path / 'a.jpg'))


def test_full_mode_decodes_what_fast_mode_cannot_see(tmp_path):
    """Broken compressed data before an intact end marker passes the fast
    check (as documented) and fails the full one."""
    data = _png(tmp_path / 'a.png', size=(64, 64)).read_bytes()
    idat = data.find(b'IDAT') + 8
    broken = data[:idat] + bytes(200) + data[idat + 200:]
    (tmp_path / 'a.png').write_bytes(broken)
    assert image_files.image_problem(str(tmp_path / 'a.png'), 'fast') is None
    assert 'cannot be read' in image_files.image_problem(
        str(tmp_path / 'a.png'), 'full')


def test_check_datasets_names_the_truncated_file(tmp_path):
    from mmengine.config import Config
    (tmp_path / 'img').mkdir()
    data = _jpeg(tmp_path / 'img' / '0.jpg').read_bytes()
    _jpeg(tmp_path / 'img' / '1.jpg', seed=1)
    (tmp_path / 'img' / '0.jpg').write_bytes(data[:-40])
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='BaseSegDataset', data_root=str(tmp_path),
        data_prefix=dict(img_path='img')))))
    preflight.check_datasets(cfg, 'mmseg', images='off')  # not looked at
    with pytest.raises(errors.ToolError) as e:
        preflight.stop_on_bad_data(cfg, 'mmseg', ('train', ),
                                   launcher='none', images='fast')
    assert str(tmp_path / 'img' / '0.jpg') in str(e.value)
    assert 'train_dataloader.dataset.data_prefix.img_path' in str(e.value)
    assert '1.jpg' not in str(e.value)


# ---------------------------------------------------------------------------
# a file that breaks during the run
# ---------------------------------------------------------------------------


def test_data_load_error_survives_a_dataloader_worker(tmp_path):
    """In a worker process torch re-raises the error in the main process
    from its text only; the file and index are read back from it."""
    import torch
    from mmengine.registry import init_default_scope
    from mmseg.datasets import BaseSegDataset
    init_default_scope('mmseg')
    (tmp_path / 'img').mkdir()
    for i in range(3):
        _png(tmp_path / 'img' / f'{i}.png', seed=i)
    (tmp_path / 'img' / '2.png').write_bytes(b'garbage')
    ds = BaseSegDataset(
        data_root=str(tmp_path), data_prefix=dict(img_path='img'),
        img_suffix='.png', pipeline=[dict(
            type='NameLoadErrors', transform=dict(type='LoadImageFromFile'))])
    loader = torch.utils.data.DataLoader(
        ds, batch_size=1, num_workers=1, collate_fn=lambda x: x)
    with pytest.raises(DataLoadError) as e:
        list(loader)
    assert e.value.path == str(tmp_path / 'img' / '2.png')
    assert e.value.index == 2
    assert 'failed to load image' in e.value.cause
    with pytest.raises(DataLoadError) as e:  # in this process: chained
        ds[2]
    assert isinstance(e.value.__cause__, AssertionError)
    assert str(e.value).startswith(
        f'cannot load {tmp_path / "img" / "2.png"} (sample index 2): ')


def test_name_load_errors_wraps_only_loading_transforms():
    from mmengine.config import Config
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='RepeatDataset', times=2, dataset=dict(pipeline=[
            dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
            dict(type='RandomFlip', prob=0.5)])))))
    preflight.name_load_errors(cfg, ('train', ))
    pipeline = cfg.train_dataloader.dataset.dataset.pipeline
    assert [t['type'] for t in pipeline] == [
        'NameLoadErrors', 'NameLoadErrors', 'RandomFlip']
    assert pipeline[1]['transform']['type'] == 'LoadAnnotations'
    assert NameLoadErrors(lambda r: r)({'img_path': 'a'}) == {'img_path': 'a'}


CORRUPT_HOOK = '''
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class CorruptAfterCheck(Hook):
    """Breaks one image after the pre-flight check passed."""

    def __init__(self, path):
        self.path = path

    def before_train(self, runner):
        with open(self.path, 'wb') as f:
            f.write(b'garbage')
'''


def test_file_corrupted_after_the_check_ends_in_one_line(tmp_path):
    root = tmp_path
    (root / 'data' / 'img').mkdir(parents=True)
    (root / 'data' / 'ann').mkdir(parents=True)
    for i in range(4):
        _png(root / 'data' / 'img' / f'{i}.png', seed=i)
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(
            root / 'data' / 'ann' / f'{i}.png')
    (root / 'corrupt_after_check.py').write_text(CORRUPT_HOOK)
    bad = root / 'data' / 'img' / '3.png'
    cfg = root / 'tiny_seg.py'
    cfg.write_text(
        SEG_CFG.replace('ARCH', repr(TINY_ARCH)).replace(
            "'DATA'", repr(str(root / 'data'))).replace(
            "imports=['mmstvit']", "imports=['mmstvit', 'corrupt_after_check']")
        + f'custom_hooks = [dict(type="CorruptAfterCheck", path={str(bad)!r})]\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root), os.environ.get('PYTHONPATH', REPO)]), OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'train.py'), str(cfg),
         '--work-dir', str(root / 'work'), '--cfg-options',
         'model.backbone.init_cfg=None', 'train_cfg.max_iters=4'],
        cwd=str(root), env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert 'Traceback' not in out, out[-3000:]
    assert '4 images readable (fast check)' in out  # the check passed
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f'mmstvit: cannot load {bad} (sample index 3): ')
    assert 'fix the file and run with --resume' in last


# ---------------------------------------------------------------------------
# CPU processes under slurm and MPI: mmengine's init_dist reads the launcher
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('launcher, env', [
    ('slurm', dict(SLURM_PROCID='0', SLURM_NTASKS='1', SLURM_LOCALID='0',
                   SLURM_NODELIST='localhost')),
    ('mpi', dict(OMPI_COMM_WORLD_RANK='0', OMPI_COMM_WORLD_SIZE='1',
                 OMPI_COMM_WORLD_LOCAL_RANK='0')),
])
def test_cpu_process_group_from_the_launchers_environment(
        launcher, env, monkeypatch):
    import multiprocessing as mp

    import torch.distributed as torch_dist
    from mmengine.config import Config

    from mmstvit.cli import dist
    from helpers import free_port
    if torch_dist.is_initialized():
        pytest.fail('a process group is already running in this process')
    for var in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_PORT'):
        monkeypatch.setenv(var, '')  # so that undo removes what mmengine
        monkeypatch.delenv(var)  # sets
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl',
                                                 port=port))))
    if launcher == 'mpi':
        monkeypatch.setenv('MASTER_PORT', str(port))
    start_method = mp.get_start_method(allow_none=True)
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    try:
        assert dist.setup_cpu_distributed(cfg, launcher)
        assert torch_dist.get_backend() == 'gloo'
        assert torch_dist.get_world_size() == 1
        assert os.environ['RANK'] == '0' and os.environ['WORLD_SIZE'] == '1'
        assert cfg.model_wrapper_cfg.type == 'CPUDistributedDataParallel'
        assert mp.get_start_method(allow_none=True) == start_method
    finally:
        if torch_dist.is_initialized():
            dist.release_process_group()


def test_mpi_without_master_addr_is_a_tool_error(monkeypatch):
    from mmstvit.cli import dist
    monkeypatch.delenv('MASTER_ADDR', raising=False)
    monkeypatch.setenv('OMPI_COMM_WORLD_LOCAL_RANK', '0')
    monkeypatch.setenv('MASTER_PORT', '29500')
    with pytest.raises(errors.ToolError, match='MASTER_ADDR is not set'):
        dist.init_cpu_process_group('mpi', {})
