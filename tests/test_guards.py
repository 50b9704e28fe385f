# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""A run that guards its own progress (mmstvit.engine: the resumable loops,
ResumableCheckpointHook, CheckNonFiniteLossHook), on a toy mmengine run
through the config switch (tests/guard_run.py, a second or so per run):

* SIGTERM during an iteration: the iteration finishes, the checkpoint of
  the iterations done is written, the process exits 143 saying so, and
  ``resume`` ends with the weights and optimizer state of the uninterrupted
  run, bit for bit, with no iteration trained twice (iteration- and
  epoch-based, and 2 processes with gloo where only one gets the signal);
* a data error while fetching a batch: the checkpoint of the last completed
  iteration, the error chained, and a resume that loses nothing;
* a loss that turns NaN at a chosen iteration stops the run with the
  iteration, the terms and the learning rate named, and no checkpoint
  with a non-finite tensor exists after;
* a disk that fills while a checkpoint is written (ENOSPC injected), and a
  work dir that vanishes: one message naming the file, the cause, the space
  needed and the checkpoint kept; no temporary file left.

tests/test_resume.py runs the same through tools/train.py and the
toolboxes' own tools/train.py.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from mmstvit.engine import divergence, errors
from mmstvit.weights import load_checkpoint_file

from helpers import REPO, free_port

RUN = osp.join(REPO, 'tests', 'guard_run.py')
LAST = dict(iter='iter_10.pth', epoch='epoch_3.pth')


def toy(work, *args, timeout=240):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, RUN, str(work)] + list(args),
                          capture_output=True, text=True, timeout=timeout,
                          env=env)


def toy_ddp(work, *args):
    """Two processes (gloo); returns both."""
    port = str(free_port())
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    procs = [subprocess.Popen(
        [sys.executable, RUN, str(work), '--world-size', '2', '--rank',
         str(rank), '--port', port] + list(args), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env) for rank in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outs)]


def trained(*outs):
    return [int(line.split()[1]) for out in outs
            for line in out.splitlines() if line.startswith('TRAINED ')]


def differing(a_path, b_path):
    a, b = load_checkpoint_file(a_path), load_checkpoint_file(b_path)
    assert a['meta']['iter'] == b['meta']['iter']
    bad = [k for k in a['state_dict']
           if not torch.equal(a['state_dict'][k], b['state_dict'][k])]
    for i, (sa, sb) in enumerate(zip(a['optimizer']['state'].values(),
                                     b['optimizer']['state'].values())):
        bad += [f'optimizer {i} {k}' for k in sa
                if not torch.equal(torch.as_tensor(sa[k]),
                                   torch.as_tensor(sb[k]))]
    return bad


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """The uninterrupted runs, by loop kind."""
    root = tmp_path_factory.mktemp('guards')
    runs = {}
    for loop in ('iter', 'epoch'):
        proc = toy(root / f'full_{loop}', '--loop', loop)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[loop] = root / f'full_{loop}' / LAST[loop]
    return runs


def out(proc):
    return proc.stdout + proc.stderr


@pytest.mark.parametrize('loop,at', [('iter', 7), ('epoch', 6)])
def test_sigterm_then_resume_is_bit_for_bit(reference, tmp_path, loop, at):
    work = tmp_path / 'work'
    proc = toy(work, '--loop', loop, '--signal-at', str(at))
    assert proc.returncode == 128 + 15, out(proc)[-3000:]
    first = out(proc)
    assert (f'mmstvit: SIGTERM received: training stopped after iteration '
            f'{at}; the checkpoint of the {at} iterations done is '
            f'{work / f"iter_{at}.pth"}. Resume with the same command and '
            '--resume; exit status 143') in first
    assert (work / 'last_checkpoint').read_text() == \
        str(work / f'iter_{at}.pth')
    proc = toy(work, '--loop', loop, '--resume')
    assert proc.returncode == 0, out(proc)[-3000:]
    assert 'mmstvit: exact resume' in out(proc)
    # every iteration trained once: nothing redone, nothing skipped
    total = 10 if loop == 'iter' else 12
    assert sorted(trained(first, out(proc))) == list(range(1, total + 1))
    assert not differing(reference[loop], work / LAST[loop])
    if loop == 'epoch':  # the interim checkpoint went with the next one
        assert not (work / f'iter_{at}.pth').exists()


def test_sigterm_on_one_of_two_processes(tmp_path):
    """Rank 1 alone gets the signal; both stop after the same iteration and
    the 2-process resume equals the 2-process uninterrupted run."""
    full = toy_ddp(tmp_path / 'full')
    assert [code for code, _ in full] == [0, 0], full[0][1][-3000:]
    work = tmp_path / 'work'
    stopped = toy_ddp(work, '--signal-at', '5', '--signal-rank', '1')
    assert [code for code, _ in stopped] == [143, 143], stopped[1][1][-3000:]
    assert 'training stopped after iteration 5' in stopped[0][1]
    resumed = toy_ddp(work, '--resume')
    assert [code for code, _ in resumed] == [0, 0], resumed[0][1][-3000:]
    assert 'random states of 2 process(es)' in resumed[0][1]
    assert sorted(trained(stopped[0][1], resumed[0][1])) == \
        list(range(1, 11))
    assert not differing(tmp_path / 'full' / 'iter_10.pth',
                         work / 'iter_10.pth')


def test_data_error_saves_and_resume_loses_nothing(reference, tmp_path):
    """The 12th sample fetched (the second of iteration 6's batch) raises
    mmcv's error for an image that does not decode."""
    work = tmp_path / 'work'
    proc = toy(work, '--bad-fetch', '12')
    assert proc.returncode == 1, out(proc)[-3000:]
    assert 'CAUSE AssertionError: failed to load image: data/' in proc.stdout
    assert ('mmstvit: training stopped: fetching the batch of iteration 6 '
            '(epoch 1) raised AssertionError: failed to load image') in \
        proc.stderr
    assert f'the checkpoint of the 5 iterations done is {work}/iter_5.pth' \
        in proc.stderr
    assert trained(proc.stdout)[-1] == 5
    proc = toy(work, '--resume')
    assert proc.returncode == 0, out(proc)[-3000:]
    assert not differing(reference['iter'], work / 'iter_10.pth')


def test_nan_loss_stops_and_no_nonfinite_checkpoint(tmp_path):
    work = tmp_path / 'work'
    proc = toy(work, '--nan-from', '3', '--interval', '1', '--keep', '20')
    assert proc.returncode == 1, out(proc)[-3000:]
    assert 'Traceback' not in out(proc)
    assert ('mmstvit: the loss is not finite at iteration 3: loss=nan; '
            'learning rate lr 0.006111. Training stopped; no checkpoint of '
            f'this iteration is written, the last one is {work}/iter_2.pth'
            ) in proc.stderr
    names = sorted(n for n in os.listdir(work) if n.endswith('.pth'))
    assert names == ['iter_1.pth', 'iter_2.pth']
    for name in names:
        sd = load_checkpoint_file(work / name)['state_dict']
        assert all(bool(torch.isfinite(v).all()) for v in sd.values())
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_2.pth')


def test_full_disk_keeps_the_last_checkpoint(tmp_path):
    work = tmp_path / 'work'
    proc = toy(work, '--full-disk-at', 'iter_8.pth')
    assert proc.returncode == 1, out(proc)[-3000:]
    assert 'Traceback' not in out(proc)
    assert (f'mmstvit: cannot write the checkpoint {work}/iter_8.pth: the '
            'disk is full (No space left on device): it needs 2') in \
        proc.stderr
    assert (f'The last good checkpoint, {work}/iter_4.pth, is kept: once '
            'fixed, the same command with --resume goes on from it.') in \
        proc.stderr
    assert sorted(n for n in os.listdir(work) if 'pth' in n) == \
        ['iter_4.pth']
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_4.pth')
    load_checkpoint_file(work / 'iter_4.pth')


def test_vanished_work_dir_is_a_message(tmp_path):
    work = tmp_path / 'work'
    proc = toy(work, '--vanish-at', '6')
    assert proc.returncode == 1, out(proc)[-3000:]
    assert 'Traceback' not in out(proc)
    assert 'its folder no longer exists (deleted, or its file system ' \
        'unmounted)' in proc.stderr
    assert f'The last checkpoint, {work}/iter_4.pth, is gone with its ' \
        'folder.' in proc.stderr


class Scaler:

    def is_enabled(self):
        return True


class Runner:
    """What CheckNonFiniteLossHook reads of a runner."""

    def __init__(self, scaled):
        from mmengine.logging import MessageHub
        self.iter = 0
        self.message_hub = MessageHub.get_instance('test_guards')
        self.optim_wrapper = type('W', (), dict(
            loss_scaler=Scaler() if scaled else None,
            get_lr=lambda self: dict(lr=[0.1, 0.01])))()


@pytest.mark.parametrize('scaled', [False, True])
def test_nonfinite_loss_hook_tolerates_amp_skips(scaled):
    hook = divergence.CheckNonFiniteLossHook(max_amp_skips=3)
    runner = Runner(scaled)
    inf = dict(loss=torch.tensor(float('inf')), acc=torch.tensor(1.))
    stopped_at = None
    for it, outputs in enumerate([inf, inf, dict(loss=torch.tensor(1.))] +
                                 [inf] * 3):
        runner.iter = it
        try:
            hook.after_train_iter(runner, it, outputs=outputs)
        except errors.DivergenceError as e:
            stopped_at = e
            break
    if not scaled:
        assert stopped_at.iteration == 1 and stopped_at.terms == dict(
            loss=float('inf'))
        assert 'learning rate lr 0.01, 0.1' in str(stopped_at)
    else:  # two skips, a finite step, then the third skip in a row
        assert stopped_at.iteration == 6
        assert '(3 in a row, the loss scaler skipping their steps)' in \
            str(stopped_at)
    assert isinstance(stopped_at, FloatingPointError)
