# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What differs between the two OpenMMLab stacks (``make test STACK=all``
runs this file on each; :mod:`mmstvit.compat` lists the differences): the
same assertions hold on the upstream stack and on the onedl fork.

* exact resume through mmstvit's loop (also with the fork's
  ``fast_forward_on_resume=True``), with and without data workers;
* ``mmdet::``/``mmseg::``/``mmpretrain::`` bases resolve;
* a pickle that needs more than weights is refused on every path mmengine
  loads through, the fork's ``_safe_torch_load`` included (its unsafe retry
  never runs the file's code);
* numpy 2 and the shared mmcv 2.1.0 (with its ops);
* mmseg's test pictures follow ``interval``; importing the toolboxes prints
  nothing;
* ``tools/install.sh`` answers ``--help``, refuses unknown options and an
  environment that holds the other stack; ``tools/misc/stack_check.py``
  names the stack.
"""
import importlib.metadata
import io
import os
import os.path as osp
import subprocess
import sys

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

import mmstvit  # noqa: F401  (the loaders, the loops, compat)
from mmstvit import compat
from mmstvit.weights import UnsafeCheckpointError, load_checkpoint_file

from helpers import REPO, load_script

STACK = compat.stack()
OTHER = 'upstream' if STACK == 'onedl' else 'onedl'
stack_check = load_script('tools/misc/stack_check.py', 'stack_check')


def test_the_stack_is_the_one_installed():
    names = stack_check.stack_names(REPO)
    assert names == {
        'upstream': {'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain'},
        'onedl': {'onedl-mmengine', 'onedl-mmdetection',
                  'onedl-mmsegmentation', 'onedl-mmpretrain'}}
    assert stack_check.held_stack(REPO) == STACK
    assert stack_check.installed_versions(names[STACK]).keys() == \
        names[STACK]
    assert stack_check.installed_versions(names[OTHER]) == {}
    import mmengine
    dist = 'onedl-mmengine' if STACK == 'onedl' else 'mmengine'
    assert mmengine.__version__ == importlib.metadata.version(dist)


def test_numpy_2_and_the_shared_mmcv(tmp_path):
    """numpy 2 on both stacks; a checkpoint with the numpy objects that
    mmengine's message hub stores reads through the weights-only reader;
    mmcv is the 2.1.0 wheel with its compiled ops."""
    assert int(np.__version__.split('.')[0]) >= 2, np.__version__
    saved = dict(state_dict=dict(w=torch.arange(3.)),
                 meta=dict(loss=np.float64(0.5), hist=np.arange(4),
                           dtype=np.dtype('float32'), n=np.int64(3)))
    torch.save(saved, tmp_path / 'c.pth')
    got = load_checkpoint_file(tmp_path / 'c.pth')
    assert torch.equal(got['state_dict']['w'], torch.arange(3.))
    assert got['meta']['loss'] == 0.5 and got['meta']['n'] == 3
    assert np.array_equal(got['meta']['hist'], np.arange(4))
    assert got['meta']['dtype'] == np.dtype('float32')
    assert mmcv.__version__ == '2.1.0'
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8]), iou_threshold=0.5)
    assert keep.tolist() == [0]


@pytest.mark.parametrize('base, scope', [
    ('mmdet::_base_/default_runtime.py', 'mmdet'),
    ('mmseg::_base_/default_runtime.py', 'mmseg'),
    ('mmpretrain::_base_/default_runtime.py', 'mmpretrain'),
])
def test_toolbox_bases_resolve(tmp_path, base, scope):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(f'_base_ = {base!r}\nx = 1\n')
    cfg = Config.fromfile(str(cfg_file))
    assert cfg.default_scope == scope and cfg.x == 1
    from mmengine.config.utils import MODULE2PACKAGE
    expected = dict(
        upstream=dict(mmdet='mmdet', mmseg='mmsegmentation',
                      mmpretrain='mmpretrain'),
        onedl=dict(mmdet='onedl-mmdetection', mmseg='onedl-mmsegmentation',
                   mmpretrain='onedl-mmpretrain'))[STACK]
    assert MODULE2PACKAGE[scope] == expected[scope]


class Payload:
    """Unpickled unsafely, it writes a file (stands in for any code)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


def test_no_loader_path_runs_a_pickle(tmp_path, capsys):
    """A file that needs more than weights: mmengine's local loader, and on
    the fork its ``_safe_torch_load`` (the loaders of ``open-mmlab://``
    files, ``pavi://``, ``s3://``; a path or a buffer), refuse it and never
    run it; a checkpoint of weights and numpy objects loads through each."""
    from mmengine.runner import checkpoint as ck
    marker = tmp_path / 'ran'
    evil = tmp_path / 'evil.pth'
    torch.save(dict(state_dict=dict(w=torch.ones(2)),
                    extra=Payload(str(marker))), evil)
    good = tmp_path / 'good.pth'
    torch.save(dict(state_dict=dict(w=torch.ones(2)),
                    meta=dict(v=np.float64(1.))), good)
    readers = [lambda f: ck.CheckpointLoader.load_checkpoint(str(f))]
    if STACK == 'onedl':
        assert ck._safe_torch_load is compat.safe_torch_load
        readers += [lambda f: ck._safe_torch_load(str(f)),
                    lambda f: ck._safe_torch_load(
                        io.BytesIO(open(f, 'rb').read()))]
    else:  # upstream mmengine has no such reader: nothing to route
        assert not hasattr(ck, '_safe_torch_load')
        assert compat.route_checkpoint_reader(ck) is False
    for read in readers:
        with pytest.raises(UnsafeCheckpointError):
            read(evil)
        assert not marker.exists()
        assert torch.equal(read(good)['state_dict']['w'], torch.ones(2))
    out = capsys.readouterr()
    assert 'Falling back to weights_only=False' not in out.out + out.err


# ------------------------------------------------ exact resume, a toy run --
class NoisyData(Dataset):
    """Each item draws from the process's (or worker's) torch generator, as
    random augmentations do."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return dict(inputs=torch.full((4,), i / 6) + torch.rand(4),
                    label=torch.tensor(float(i % 2)))


class DropoutModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.lin = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5),
                                 nn.Linear(8, 1))

    def forward(self, inputs, label, mode='tensor'):
        out = self.lin(inputs).squeeze(-1)
        if mode == 'loss':
            return dict(loss=((out - label)**2).mean())
        return out


def toy_runner(work_dir, workers, loop_args, resume_from=None):
    torch.manual_seed(3)  # the model's initial weights
    return Runner(
        model=DropoutModel(), work_dir=str(work_dir),
        experiment_name=f'toy_{work_dir.name}',
        train_dataloader=dict(
            dataset=NoisyData(), batch_size=2, num_workers=workers,
            persistent_workers=False,
            sampler=dict(type='InfiniteSampler', shuffle=True),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        train_cfg=dict(type='ResumableIterBasedTrainLoop', max_iters=5,
                       **loop_args),
        default_hooks=dict(
            checkpoint=dict(type='ResumableCheckpointHook', interval=2,
                            by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=3), load_from=resume_from,
        resume=resume_from is not None, default_scope='mmengine')


LOOP_ARGS = [dict()] + ([dict(fast_forward_on_resume=True)]
                        if STACK == 'onedl' else [])


@pytest.mark.parametrize('loop_args', LOOP_ARGS, ids=str)
@pytest.mark.parametrize('workers', [0, 2])
def test_resume_is_bit_for_bit(tmp_path, workers, loop_args):
    """Resumed from iteration 2 of 5 (a partial pass of 3 batches: the
    sampler and the workers' random augmentations continue mid-pass) ==
    uninterrupted, on this stack; the fork's fast-forward is not used.
    (The runners' default scope is dropped afterwards: later tests build
    models of the toolboxes' scopes.)"""
    with DefaultScope.overwrite_default_scope('mmengine'):
        full = toy_runner(tmp_path / 'full', workers, loop_args)
        full.train()
        expected = {k: v.clone() for k, v in full.model.state_dict().items()}
        resumed = toy_runner(tmp_path / 'resumed', workers, loop_args,
                             resume_from=str(tmp_path / 'full' / 'iter_2.pth'))
        resumed.train()
    assert resumed.iter == 5
    got = resumed.model.state_dict()
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert differ == []
    # the iterations after the checkpoint changed every weight
    at_2 = load_checkpoint_file(tmp_path / 'full' / 'iter_2.pth')
    assert all(not torch.equal(at_2['state_dict'][k], expected[k])
               for k in expected)


# ------------------------------------------ mmseg pictures, quiet imports --
class Recorder:

    def __init__(self):
        self.drawn = []

    def add_datasample(self, name, image, data_sample=None, step=0, **_):
        self.drawn.append((name, step, image.shape))


def test_seg_test_pictures_follow_the_interval(tmp_path):
    """``SegVisualizationHook(interval=2)``: the images of every 2nd test
    batch, named ``test_<image>`` at the run's iteration (as mmseg 1.2)."""
    from mmengine.visualization import Visualizer
    from mmseg.registry import HOOKS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    for i in range(4):
        mmcv.imwrite(np.full((5, 6, 3), i, np.uint8), str(tmp_path / f'{i}.png'))
    Visualizer.get_instance('test_stacks')  # the hook takes the current one
    hook = HOOKS.get('mmseg.SegVisualizationHook')(draw=True, interval=2)
    hook._visualizer = Recorder()

    class FakeRunner:
        iter = 7

    for batch in range(2):
        outputs = []
        for i in (2 * batch, 2 * batch + 1):
            sample = SegDataSample()
            sample.set_metainfo(dict(img_path=str(tmp_path / f'{i}.png')))
            outputs.append(sample)
        hook.after_test_iter(FakeRunner(), batch, {}, outputs)
    assert hook._visualizer.drawn == [('test_2.png', 7, (5, 6, 3)),
                                      ('test_3.png', 7, (5, 6, 3))]


def test_importing_the_toolboxes_prints_nothing():
    code = ('import mmstvit, mmdet.datasets, mmdet.datasets.transforms, '
            'mmseg.datasets, mmpretrain.datasets; print("done")')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == 'done\n', proc.stdout


# ------------------------------------------------------------ install.sh --
def install_sh(*args, **env):
    return subprocess.run(
        ['bash', osp.join(REPO, 'tools', 'install.sh'), *args],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHON=sys.executable, **env))


def test_install_sh_help_and_unknown_options():
    proc = install_sh('--help')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('usage: bash tools/install.sh')
    for option in ('--stack upstream', '--stack onedl', '--force', '--check'):
        assert option in proc.stdout
    proc = install_sh('--frobnicate')
    assert proc.returncode == 2
    assert "unknown option '--frobnicate'" in proc.stderr
    proc = install_sh('--stack', 'conda')
    assert proc.returncode == 2 and "unknown stack 'conda'" in proc.stderr
    assert install_sh('--stack').returncode == 2


def test_install_sh_refuses_the_other_stack():
    """Nothing is installed: the check comes first, names what this
    environment holds and how to start clean."""
    proc = install_sh('--stack', OTHER)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    held = 'onedl-mmengine' if STACK == 'onedl' else 'mmengine'
    assert held in proc.stderr and f'the {OTHER} stack' in proc.stderr
    assert 'python3 -m venv' in proc.stderr
    assert f'make install STACK={OTHER}' in proc.stderr
    assert 'pip' not in proc.stdout  # no pip ran
    proc = install_sh('--check', '--stack', STACK)
    assert proc.returncode in (0, 1), proc.stderr  # installs nothing
    assert f'the {STACK} stack' in proc.stdout
