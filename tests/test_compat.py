# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The torch >= 2.6 fix for mmengine checkpoints (mmstvit.utils.compat).

The checkpoints come from real (tiny, CPU, seconds) mmengine Runner runs.
"""
import argparse
import copy
import io
import pickle
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

import mmstvit  # noqa: F401  (applies the fix)
from mmstvit.utils import compat

needs_new_torch = pytest.mark.skipif(
    not compat.needs_fix(), reason='torch < 2.6 loads without weights_only')


class ToyData(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(
            inputs=torch.randn(4, generator=g),
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
        model=ToyModel(),
        work_dir=str(work_dir),
        experiment_name=f'toy_{work_dir.name}',
        train_dataloader=dict(
            dataset=ToyData(),
            sampler=dict(type='InfiniteSampler', shuffle=True, seed=seed),
            batch_size=2,
            num_workers=0,
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=dict(
            type='LinearLR',
            start_factor=0.5,
            by_epoch=False,
            begin=0,
            end=max_iters),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=seed),
        load_from=resume_from,
        resume=resume_from is not None,
        default_scope='mmengine')


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    """A 4-iteration run with checkpoints at iterations 2 and 4."""
    work_dir = tmp_path_factory.mktemp('toy_full')
    runner = make_runner(work_dir)
    runner.train()
    final = {k: v.clone() for k, v in runner.model.state_dict().items()}
    return work_dir, final, runner.iter


@contextmanager
def without_safe_globals():
    """torch's allow-list emptied for the duration (restored after)."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        yield
    finally:
        torch.serialization.add_safe_globals(saved)


@needs_new_torch
def test_applied_on_import():
    assert compat.is_applied()
    assert compat.apply() is True  # idempotent
    names = [n for _, n in compat.safe_globals()]
    assert len(names) == len(set(names))
    for n in ('mmengine.logging.history_buffer.HistoryBuffer',
              'numpy._core.multiarray._reconstruct',
              'numpy.core.multiarray._reconstruct', 'numpy.ndarray',
              'numpy.dtype', 'builtins.getattr', 'argparse.Namespace'):
        assert n in names
    # the real getattr is never allowed, only the restricted stand-in
    assert getattr not in [g for g, _ in compat.safe_globals()]


@needs_new_torch
def test_checkpoint_needs_the_fix(uninterrupted):
    """A Runner checkpoint holds HistoryBuffer/numpy objects: torch's
    default weights-only load refuses it without the fix."""
    work_dir, _, _ = uninterrupted
    ckpt = str(work_dir / 'iter_2.pth')
    # with the fix every global of the file is allowed ...
    assert torch.serialization.get_unsafe_globals_in_checkpoint(ckpt) == []
    with without_safe_globals():
        # ... and exactly these would be refused without it
        unsafe = set(
            torch.serialization.get_unsafe_globals_in_checkpoint(ckpt))
        assert 'mmengine.logging.history_buffer.HistoryBuffer' in unsafe
        assert unsafe <= {n for _, n in compat.safe_globals()}, unsafe
        with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
            torch.load(ckpt)
        # and so does mmengine's resume
        runner = make_runner(work_dir.parent / 'toy_nofix')
        with pytest.raises(pickle.UnpicklingError):
            runner.resume(ckpt)
    loaded = torch.load(ckpt)  # weights_only=True, with the fix
    hub = loaded['message_hub']
    assert isinstance(hub['log_scalars']['train/loss'], HistoryBuffer)
    assert hub['log_scalars']['train/loss'].mean() > 0
    assert loaded['meta']['iter'] == 2


def test_resume_matches_uninterrupted_run(uninterrupted, tmp_path):
    """Resuming from iteration 2 ends at iteration 4 with exactly the
    weights of the run that was never interrupted."""
    work_dir, final, full_iters = uninterrupted
    runner = make_runner(tmp_path, resume_from=str(work_dir / 'iter_2.pth'))
    runner.train()
    assert runner.iter == full_iters == 4
    resumed = runner.model.state_dict()
    for k, v in final.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=0)
    # the resumed message hub carried the logged history forward
    assert runner.message_hub.get_scalar('train/loss').current() > 0


@needs_new_torch
def test_survives_other_safe_globals_contexts(uninterrupted):
    """``with safe_globals([np.ndarray, ...])`` elsewhere (e.g. when loading
    the authors' files) removes those objects on exit; ours stay."""
    work_dir, _, _ = uninterrupted
    with torch.serialization.safe_globals(
        [np.ndarray, np.dtype, HistoryBuffer, argparse.Namespace]):
        pass
    assert compat.is_applied()
    torch.load(str(work_dir / 'iter_4.pth'))


@needs_new_torch
def test_restricted_getattr_refuses_other_attributes():
    assert compat.history_buffer_getattr(HistoryBuffer, 'mean') is \
        HistoryBuffer.mean
    for obj, name in ((HistoryBuffer, '__init__'), (HistoryBuffer,
                                                    '__class__'),
                      (np.ndarray, 'tofile'), (torch, 'load')):
        with pytest.raises(pickle.UnpicklingError):
            compat.history_buffer_getattr(obj, name)

    class Evil:

        def __reduce__(self):
            return getattr, (np.ndarray, 'tofile')

    buf = io.BytesIO()
    torch.save({'x': Evil()}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match='refuses getattr'):
        torch.load(buf)


@needs_new_torch
def test_numpy_and_namespace_values_load(tmp_path):
    obj = dict(
        a=np.arange(3, dtype=np.int64),
        b=np.float32(1.5),
        c=np.zeros((2, 2), dtype=np.float16),
        d=np.array([True, False]),
        args=argparse.Namespace(lr=0.1, model='stvit_small'))
    torch.save(obj, tmp_path / 'x.pth')
    out = torch.load(tmp_path / 'x.pth')
    np.testing.assert_array_equal(out['a'], obj['a'])
    assert out['b'] == np.float32(1.5) and out['c'].dtype == np.float16
    assert out['args'].model == 'stvit_small'
    # objects beyond the allowed ones are still refused
    torch.save({'f': copy.deepcopy}, tmp_path / 'y.pth')
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / 'y.pth')


def test_no_effect_on_old_torch(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, '__version__', '2.5.1+cpu')
    monkeypatch.setattr(torch.serialization, 'add_safe_globals',
                        lambda g: calls.append(g))
    assert compat.needs_fix() is False
    assert compat.apply() is False
    assert compat.is_applied() is False
    assert calls == []
