# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The parts of ResumableCheckpointHook, in this process (no training):
random states through the weights-only reader, atomic writes, the choice of
the checkpoint to resume from and its messages, what does not fit, the data
loader's seeds and persistent workers' states. (The runs themselves:
tests/test_resume.py.)"""
import logging
import os
import pickle
import random

import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmstvit  # noqa: F401
from mmstvit.engine import atomic_files, loader_state, rng_state
from mmstvit.engine.checkpoint_hook import use_in_config
from mmstvit.engine.resume import (ResumeError, choose_resume_checkpoint,
                                   config_changes, find_checkpoints,
                                   fit_problems)
from mmstvit.weights import load_checkpoint_file


def draws():
    return (random.random(), float(np.random.rand()), float(np.random.randn()),
            torch.rand(3))


def test_random_states_survive_the_weights_only_reader(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    np.random.randn()  # numpy keeps the second Gaussian of a pair
    state = rng_state.capture()
    expected = draws()
    torch.save(dict(state=state), tmp_path / 's.pth')
    loaded = load_checkpoint_file(tmp_path / 's.pth')['state']
    draws()
    assert rng_state.restore(loaded) is None
    got = draws()
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
    # kilobytes, not megabytes
    assert len(pickle.dumps(state)) < 20_000
    assert rng_state.describe(state) == 'Python, numpy, torch CPU'


def test_atomic_write(tmp_path, monkeypatch):
    path = tmp_path / 'sub' / 'iter_4.pth'
    atomic_files.atomic_write(path, b'x' * 100)
    assert path.read_bytes() == b'x' * 100
    tmp = atomic_files.temporary_name(path)
    assert os.path.basename(tmp) == f'.iter_4.pth.tmp-{os.getpid()}'
    assert atomic_files.final_name_of(tmp) == 'iter_4.pth'
    assert atomic_files.final_name_of('iter_4.pth') is None

    # an error mid-write keeps the old file and leaves nothing beside it
    def fail(f, data):
        f.write(data[:10])
        raise OSError('disk full')

    monkeypatch.setattr(atomic_files, '_write_chunks', fail)
    with pytest.raises(OSError, match='disk full'):
        atomic_files.atomic_write(path, b'y' * 100)
    assert path.read_bytes() == b'x' * 100
    assert os.listdir(path.parent) == ['iter_4.pth']
    monkeypatch.undo()

    # the backend mmengine writers use with backend_args
    from mmengine.fileio import get_file_backend
    backend = get_file_backend(
        str(tmp_path), backend_args=dict(backend='atomic_local'))
    backend.put_text('a', tmp_path / 'last_checkpoint')
    backend.put(b'b', tmp_path / 'f.pth')
    assert (tmp_path / 'last_checkpoint').read_text() == 'a'
    assert backend.get(tmp_path / 'f.pth') == b'b'

    # what a killed writer leaves is removed at the next start
    (tmp_path / '.iter_6.pth.tmp-123').write_bytes(b'half')
    (tmp_path / '.hidden').write_bytes(b'')
    assert atomic_files.remove_leftovers(tmp_path) == ['.iter_6.pth.tmp-123']
    assert (tmp_path / '.hidden').exists()


def ckpt(path, it, **extra):
    torch.save(dict(state_dict=dict(w=torch.zeros(2)),
                    meta=dict(epoch=0, iter=it), **extra), path)
    return str(path)


def torn(path, it):
    ckpt(path, it)
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])
    return str(path)


def test_choose_the_checkpoint_to_resume(tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    # nothing to resume: it says so and starts from the beginning
    path, notes = choose_resume_checkpoint(str(work))
    assert path is None and notes[0][0] == logging.WARNING
    assert 'training starts from the beginning' in notes[0][1]

    c2, c4 = ckpt(work / 'iter_2.pth', 2), ckpt(work / 'iter_4.pth', 4)
    (work / '.iter_6.pth.tmp-99').write_bytes(b'half')  # never a candidate
    (work / 'best_mIoU_iter_4.pth').write_bytes(b'')
    assert find_checkpoints([str(work)]) == [c4, c2]

    # no last_checkpoint: the newest checkpoint, and why
    path, notes = choose_resume_checkpoint(str(work))
    assert path == c4
    assert notes == [(logging.INFO, f'mmstvit: resuming from {c4} (epoch 0, '
                      f'iteration 4; the newest checkpoint; '
                      f'{work / "last_checkpoint"} does not exist)')]
    # last_checkpoint is what mmengine follows
    (work / 'last_checkpoint').write_text(c2)
    path, notes = choose_resume_checkpoint(str(work))
    assert path == c2 and 'last_checkpoint names it' in notes[0][1]
    # empty (rewritten in place by a crashed mmengine run)
    (work / 'last_checkpoint').write_text('')
    assert choose_resume_checkpoint(str(work))[0] == c4
    # names a torn file: skipped, named, the next one taken
    torn(work / 'iter_6.pth', 6)
    (work / 'last_checkpoint').write_text(str(work / 'iter_6.pth'))
    path, notes = choose_resume_checkpoint(str(work))
    assert path == c4
    assert notes[0][0] == logging.WARNING and notes[0][1].startswith(
        f'mmstvit: not resuming from {work / "iter_6.pth"}: it is not a '
        'complete PyTorch file')
    assert 'the newest checkpoint that loads' in notes[1][1]

    # an explicit file that does not load: the newest older one is named
    with pytest.raises(ResumeError) as e:
        choose_resume_checkpoint(str(work), str(work / 'iter_6.pth'))
    assert str(e.value).splitlines()[1] == (
        f'The newest checkpoint that loads is {c4} (epoch 0, iteration 4): '
        f'resume from it with --resume {c4}')
    with pytest.raises(ResumeError, match='there is no such file'):
        choose_resume_checkpoint(str(work), str(work / 'iter_8.pth'))
    assert choose_resume_checkpoint(str(work), c2)[0] == c2

    # checkpoints, none of which loads: never a silent start from scratch
    for name in ('iter_2.pth', 'iter_4.pth'):
        torn(work / name, 0)
    with pytest.raises(ResumeError) as e:
        choose_resume_checkpoint(str(work))
    assert 'found checkpoints of this run, and none of them loads' in str(
        e.value)
    assert str(work / 'iter_2.pth') in str(e.value)
    # files that are not training checkpoints
    torch.save(dict(model=dict(w=torch.zeros(1))), work / 'iter_2.pth')
    with pytest.raises(ResumeError, match='official STViT ImageNet'):
        choose_resume_checkpoint(str(work), str(work / 'iter_2.pth'))


def test_what_does_not_fit(tmp_path):
    from mmengine.optim import OptimWrapper
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    saved = dict(state_dict=model.state_dict(),
                 optimizer=wrapper.state_dict())
    assert fit_problems(saved, model, wrapper) == []
    # fewer parameters to optimise (frozen since the checkpoint was saved)
    fewer = OptimWrapper(torch.optim.SGD(model[1].parameters(), lr=0.1))
    problems = fit_problems(saved, model, fewer)
    assert problems == [
        'the optimizer differs: the checkpoint holds 1 parameter group with '
        '4 parameters, this config builds 1 parameter group with 2 parameters '
        '(parameters frozen or unfrozen, or other paramwise settings, since '
        'the checkpoint was saved)']
    other = torch.nn.Sequential(torch.nn.Linear(2, 4))
    problems = fit_problems(saved, other, None)
    assert len(problems) == 1 and problems[0].startswith(
        'the model is another one: 2 checkpoint tensors are not in the model '
        '(1.weight, 1.bias); 2 tensors have other shapes (0.weight: '
        'checkpoint (3, 2), model (4, 2)')
    assert config_changes(
        "load_from = None\nmodel = dict(\n    frozen_stages=-1,\n)\n",
        "load_from = 'x.pth'\nmodel = dict(\n    frozen_stages=1,\n)\n") == [
            '-    frozen_stages=-1,', '+    frozen_stages=1,']


def test_use_in_config():
    cfg = Config(dict(default_hooks=dict(
        checkpoint=dict(type='CheckpointHook', interval=5, max_keep_ckpts=2))))
    assert use_in_config(cfg)
    assert cfg.default_hooks.checkpoint == dict(
        type='ResumableCheckpointHook', interval=5, max_keep_ckpts=2)
    cfg = Config(dict())
    assert use_in_config(cfg)  # the Runner's default hook, replaced
    assert cfg.default_hooks.checkpoint == dict(
        type='ResumableCheckpointHook', interval=1)
    cfg = Config(dict(default_hooks=dict(checkpoint=None)))
    assert not use_in_config(cfg) and cfg.default_hooks.checkpoint is None
    cfg = Config(dict(default_hooks=dict(checkpoint=dict(type='MyHook'))))
    assert not use_in_config(cfg)


def test_guards_use_in_config():
    """The loop (named or chosen by by_epoch), the hook and the divergence
    check; other loops and a check already there are left alone."""
    from mmstvit.engine import guards
    cfg = Config(dict(train_cfg=dict(by_epoch=True, max_epochs=2)))
    assert guards.use_in_config(cfg) == dict(loop=True, checkpoint=True,
                                             divergence=True)
    assert cfg.train_cfg == dict(type='ResumableEpochBasedTrainLoop',
                                 max_epochs=2)
    assert cfg.custom_hooks == [dict(type='CheckNonFiniteLossHook')]
    cfg = Config(dict(train_cfg=dict(type='IterBasedTrainLoop', max_iters=4),
                      custom_hooks=[dict(type='CheckNonFiniteLossHook',
                                         max_amp_skips=3)]))
    assert guards.use_in_config(cfg) == dict(loop=True, checkpoint=True,
                                             divergence=False)
    assert cfg.train_cfg.type == 'ResumableIterBasedTrainLoop'
    assert len(cfg.custom_hooks) == 1
    cfg = Config(dict(train_cfg=dict(type='MyLoop', max_iters=4)))
    assert not guards.use_resumable_loop(cfg) and \
        cfg.train_cfg.type == 'MyLoop'


@pytest.mark.parametrize('toolbox', ['mmdet', 'mmseg', 'mmpretrain'])
def test_every_toolbox_builds_the_hook(toolbox):
    """By its name in mmengine's root registry, as the toolboxes' own
    tools/train.py build it from default_hooks."""
    import importlib
    try:
        registry = importlib.import_module(f'{toolbox}.registry')
    except Exception as e:  # noqa: BLE001 - mmpretrain needs torchvision
        pytest.skip(f'{toolbox} does not import: {e}')
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(toolbox):
        hook = registry.HOOKS.build(
            dict(type='ResumableCheckpointHook', interval=3, by_epoch=False))
    assert type(hook).__name__ == 'ResumableCheckpointHook'
    assert hook.interval == 3 and hook.filename_tmpl == 'iter_{}.pth'


class Numbers(torch.utils.data.Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(x=torch.tensor([i, random.randint(0, 10**6)]))


def build_loader(workers=2, sampler='DefaultSampler', seed=7):
    from mmengine.runner import Runner
    return Runner.build_dataloader(
        dict(dataset=Numbers(), batch_size=2, num_workers=workers,
             persistent_workers=workers > 0,
             collate_fn=dict(type='default_collate'),
             sampler=dict(type=sampler, shuffle=False)),
        seed=seed)


def test_loader_seeds():
    loader = build_loader(workers=0, sampler='InfiniteSampler')
    assert loader_state.loader_seeds(loader) == dict(sampler=7, workers=7)
    # a run resumed with another seed (randomness.seed=None): the loop sees
    # it and builds the loader again with the checkpoint's
    other = build_loader(workers=0, sampler='InfiniteSampler', seed=5)
    assert loader_state.loader_seeds(other) == dict(sampler=5, workers=5)
    again = build_loader(workers=0, sampler='InfiniteSampler', seed=7)
    assert [b['x'][:, 0].tolist() for _, b in zip(range(5), loader)] == \
        [b['x'][:, 0].tolist() for _, b in zip(range(5), again)]


def test_persistent_workers_continue_from_their_states():
    """Epoch 2 of a run with persistent workers, and a new loader whose
    workers start from the states the first run's had after epoch 1: the
    same random draws."""

    def epoch(loader, table):
        values = []
        for b in loader:
            assert isinstance(b, loader_state.WorkerBatch) and set(b) == {'x'}
            table[b.worker_rng[0]] = b.worker_rng[1]
            values.append(b['x'][:, 1].tolist())
        return values

    first = build_loader()
    assert loader_state.track_worker_states(first, None)
    table = {}
    first_epoch = epoch(first, table)
    saved = dict(table)
    second_epoch = epoch(first, table)
    assert first_epoch != second_epoch  # the streams go on
    first._iterator._shutdown_workers()

    resumed = build_loader()
    loader_state.track_worker_states(resumed, saved)
    assert epoch(resumed, {}) == second_epoch
    resumed._iterator._shutdown_workers()
    # workers that start afresh each epoch need nothing
    assert not loader_state.track_worker_states(build_loader(workers=0), {})
