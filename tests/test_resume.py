# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""A run interrupted at a checkpoint and resumed with ``--resume`` ends with
the weights of the uninterrupted run, bit for bit (``torch.equal`` on every
tensor), through ``tools/train.py`` (ResumableCheckpointHook on by default):
a toy segmentation and a toy detection run (iteration-based, with
``num_workers`` 0 and 2, a validation between the checkpoint and the next
iteration), and a toy classification run (epoch-based; persistent workers
resumed within an epoch). A process killed with SIGKILL while it writes a
checkpoint leaves no file under the checkpoint's name and resumes; a
checkpoint that does not load and one that does not fit the config stop the
tool with a message (no traceback).

Each run is a few 32-64 pixel images through a 4-stage STViT with 16-64
channels; the uninterrupted runs are shared between tests (module-scoped).
Resuming from ``iter_2.pth`` of the uninterrupted run is what a run killed
after saving it would do: the files on disk are the same.
"""
import os
import os.path as osp
import re
import shutil
import signal
import sys

import pytest
import torch

from mmstvit.weights import load_checkpoint_file

from helpers import REPO, write_cls_case
from test_tools import (CLS_CFG, DET_CFG, SCRATCH, TINY_ARCH,
                        _mmpretrain_ready, assert_clean_exit, run)

TRAIN = osp.join(REPO, 'tools', 'train.py')

SEG_TRAIN = """
_base_ = {base!r}
model = dict(backbone=dict(drop_path_rate=0.1))
# a parameter group per parameter (no decay on norms), as the paper configs
optim_wrapper = dict(paramwise_cfg=dict(norm_decay_mult=0.))
train_dataloader = dict(
    num_workers={workers}, persistent_workers={persistent},
    dataset=dict(pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
        dict(type='RandomCrop', crop_size=(24, 24)),
        dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]))
train_cfg = dict(max_iters=4, val_interval=2)
"""

DET_TRAIN = DET_CFG.replace('drop_path_rate=0.', 'drop_path_rate=0.1') + """
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=(64, 64), ratio_range=(0.75, 1.25),
         keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')]
train_dataloader = dict(
    batch_size=2, num_workers=WORKERS, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(data_root='DATA/', metainfo=metainfo,
                 ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
train_cfg = dict(_delete_=True, type=LOOP, max_iters=4,
                 val_interval=2)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False,
                        begin=0, end=4)]
default_hooks = dict(checkpoint=dict(type=HOOK, by_epoch=False, interval=2),
                     logger=dict(interval=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=SEED)
"""

CLS_TRAIN = """
_base_ = {base!r}
model = dict(backbone=dict(drop_path_rate=0.1))
train_dataloader = dict(
    num_workers={workers},
    dataset=dict(pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='RandomResizedCrop', scale=32),
        dict(type='RandomFlip', prob=0.5, direction='horizontal'),
        dict(type='PackInputs')]))
train_cfg = dict(_delete_=True, by_epoch=True, max_epochs=2, val_interval=1)
default_hooks = dict(checkpoint=dict(by_epoch={by_epoch}, interval=1))
"""


def train(cfg, work, cwd, *args, options=(), tool=TRAIN):
    env = dict(PYTHONPATH=str(cwd) + os.pathsep + REPO)
    return run([sys.executable, tool, str(cfg), '--work-dir', str(work)] +
               list(args) + ['--cfg-options'] + list(options) +
               ['model.backbone.init_cfg=None'],
               cwd=cwd, env=env)


def out(proc):
    return proc.stdout + proc.stderr


def assert_ok(proc):
    assert proc.returncode == 0, out(proc)[-4000:]


def differing(a_path, b_path):
    """The tensors (weights and optimizer state) that are not equal."""
    a, b = load_checkpoint_file(a_path), load_checkpoint_file(b_path)
    assert a['meta']['iter'] == b['meta']['iter']
    assert a['state_dict'].keys() == b['state_dict'].keys()
    bad = [k for k in a['state_dict']
           if not torch.equal(a['state_dict'][k], b['state_dict'][k])]
    for i, (sa, sb) in enumerate(zip(a['optimizer']['state'].values(),
                                     b['optimizer']['state'].values())):
        bad += [f'optimizer state {i} {k}' for k in sa
                if not torch.equal(torch.as_tensor(sa[k]),
                                   torch.as_tensor(sb[k]))]
    return bad


def assert_same_weights(a_path, b_path):
    bad = differing(a_path, b_path)
    assert not bad, f'{len(bad)} tensors differ, e.g. {bad[:5]}'


def resume_from_copy(work, ckpt, name):
    """A work dir holding only ``ckpt`` (as a run killed right after saving
    it and before writing last_checkpoint would leave it)."""
    os.makedirs(work)
    shutil.copy(ckpt, work / name)


# ---------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def seg_runs(seg_case):
    """Uninterrupted 4-iteration runs of the tiny segmentor (random crop
    and flip, dropout, drop path), checkpoints at 2 and 4, validation at 2:
    num_workers -> (config, work dir, output)."""
    root, base = seg_case
    runs = {}
    for workers in (0, 2):
        cfg = root / f'seg_w{workers}.py'
        cfg.write_text(SEG_TRAIN.format(base=str(base), workers=workers,
                                        persistent=workers > 0))
        work = root / f'seg_full_w{workers}'
        proc = train(cfg, work, root)
        assert_ok(proc)
        runs[workers] = (cfg, work, out(proc))
    return runs


@pytest.mark.parametrize('workers', [0, 2])
def test_seg_resume_is_bit_for_bit(seg_runs, workers, seg_case):
    root, _ = seg_case
    cfg, full, full_out = seg_runs[workers]
    assert 'Iter(train) [4/4]' in full_out and 'mIoU' in full_out
    work = root / f'seg_resumed_w{workers}'
    resume_from_copy(work, full / 'iter_2.pth', 'iter_2.pth')
    proc = train(cfg, work, root, '--resume')  # auto: finds iter_2.pth
    text = out(proc)
    assert_ok(proc)
    assert 'resumed epoch: 0, iter: 2' in text
    assert f'mmstvit: resuming from {work / "iter_2.pth"}' in text
    assert 'mmstvit: exact resume' in text, text[-3000:]
    assert 'Iter(train) [1/4]' not in text
    assert_same_weights(full / 'iter_4.pth', work / 'iter_4.pth')
    if workers == 2:
        # the control: the random streams shape the weights (the workers'
        # augmentations differ from the main process's)
        assert differing(seg_runs[0][1] / 'iter_4.pth', full / 'iter_4.pth')


@pytest.fixture(scope='module')
def det_case(tmp_path_factory):
    from mmstvit.data.toy_data import generate_toy_coco
    root = tmp_path_factory.mktemp('det')
    generate_toy_coco(root / 'toy_coco', num_train=4, num_val=1)
    return root


@pytest.mark.parametrize('workers', [0, 2])
def test_det_resume_is_bit_for_bit(det_case, workers):
    """Mask R-CNN (RPN and RoI sampling draw from torch's generator, the
    aspect-ratio batch sampler groups the infinite sampler's order). With 2
    workers through mmdet's own tools/train.py (the hook named in the
    config) and a seed left to chance (randomness.seed=None, mmdet's
    default): the resumed run's loader is built with a new seed, and the
    hook puts the checkpoint's back."""
    import mmdet
    root = det_case
    cfg = root / f'det_w{workers}.py'
    cfg.write_text(
        DET_TRAIN.replace('ARCH', repr(TINY_ARCH)).replace(
            'DATA', str(root / 'toy_coco')).replace(
                'WORKERS', str(workers)).replace(
                    'SEED', 'None' if workers else '0').replace(
                        # what a user names for the toolbox's own tools
                        'HOOK', repr('ResumableCheckpointHook'
                                     if workers else 'CheckpointHook')).replace(
                            'LOOP', repr('ResumableIterBasedTrainLoop'
                                         if workers else
                                         'IterBasedTrainLoop')))
    tool = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools',
                    'train.py') if workers else TRAIN
    full = root / f'det_full_w{workers}'
    proc = train(cfg, full, root, tool=tool)
    assert_ok(proc)
    assert 'coco/bbox_mAP' in out(proc)
    work = root / f'det_resumed_w{workers}'
    proc = train(cfg, work, root, '--resume', str(full / 'iter_2.pth'),
                 tool=tool)
    text = out(proc)
    assert_ok(proc)
    assert 'resumed epoch: 0, iter: 2' in text
    assert 'mmstvit: exact resume' in text, text[-3000:]
    if workers:
        assert 'seeds of the sampler and workers' in text, text[-3000:]
    assert_same_weights(full / 'iter_4.pth', work / 'iter_4.pth')


@pytest.mark.skipif(
    not _mmpretrain_ready(),
    reason='mmpretrain needs torchvision and STViTClsHead')
@pytest.mark.parametrize('workers', [0, 2])
def test_cls_epoch_based_resume_is_bit_for_bit(tmp_path, workers):
    """Two epochs of two batches. Without workers: checkpoints per epoch,
    resumed at the start of epoch 2. With 2 persistent workers (the tool's
    mmpretrain default): checkpoints per iteration, resumed after the first
    batch of epoch 2 (the workers start from their states at the start of
    that epoch and draw its first batch again, untrained)."""
    base = write_cls_case(tmp_path, CLS_CFG)
    cfg = tmp_path / 'cls.py'
    cfg.write_text(CLS_TRAIN.format(base=str(base), workers=workers,
                                    by_epoch=not workers))
    full = tmp_path / 'full'
    proc = train(cfg, full, tmp_path)
    assert_ok(proc)
    first, last = (('epoch_1.pth', 'epoch_2.pth') if not workers else
                   ('iter_3.pth', 'iter_4.pth'))
    work = tmp_path / 'resumed'
    resume_from_copy(work, full / first, first)
    proc = train(cfg, work, tmp_path, '--resume')
    text = out(proc)
    assert_ok(proc)
    assert 'mmstvit: exact resume' in text, text[-3000:]
    if workers:
        assert 'after batch 1 of epoch 2' in text, text[-3000:]
        assert '2 persistent data workers' in text, text[-3000:]
        assert 'resumed epoch: 1, iter: 3' in text
    else:
        assert 'at the start of epoch 2' in text, text[-3000:]
    assert_same_weights(full / last, work / last)


# ---------------------------------------------------------------------------
# killed while writing; checkpoints that do not load or fit
# ---------------------------------------------------------------------------

DIE_WHILE_SAVING = '''
import os
import signal

from mmstvit.engine import atomic_files

_write = atomic_files._write_chunks


def _write_half_then_die(f, data):
    """Writes half of iter_4.pth, then the process is killed (SIGKILL: no
    clean-up of any kind), as a preempted job is."""
    if '.iter_4.pth.tmp-' in f.name:
        f.write(data[:len(data) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    _write(f, data)


atomic_files._write_chunks = _write_half_then_die
'''


def config_importing(base, root, module: str, code: str, hook=None):
    """``root/<module>.py`` holding ``code``, and a config over ``base``
    that imports it beside mmstvit (and adds the custom hook ``hook``);
    returns the config's path."""
    (root / f'{module}.py').write_text(code)
    cfg = root / f'{base.stem}_{module}.py'
    text = (f'_base_ = {str(base)!r}\n'
            f"custom_imports = dict(imports=['mmstvit', {module!r}], "
            'allow_failed_imports=False)\n')
    if hook is not None:
        text += f'custom_hooks = [dict(type={hook!r})]\n'
    cfg.write_text(text)
    return cfg


def test_killed_while_saving_leaves_no_torn_checkpoint(seg_runs, seg_case):
    root, _ = seg_case
    cfg, full, _ = seg_runs[0]
    dying = config_importing(cfg, root, 'die_while_saving', DIE_WHILE_SAVING)
    work = root / 'seg_killed'
    proc = train(dying, work, root)
    assert proc.returncode == -signal.SIGKILL, out(proc)[-3000:]
    names = sorted(os.listdir(work))
    leftovers = [n for n in names if n.startswith('.iter_4.pth.tmp-')]
    assert leftovers and 'iter_4.pth' not in names, names
    assert 0 < (work / leftovers[0]).stat().st_size < \
        (full / 'iter_4.pth').stat().st_size
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_2.pth')
    load_checkpoint_file(work / 'iter_2.pth')

    proc = train(cfg, work, root, '--resume')
    text = out(proc)
    assert_ok(proc)
    assert f'removed {work / leftovers[0]}, the unfinished write of ' \
        'iter_4.pth' in text
    assert f'resuming from {work / "iter_2.pth"} (epoch 0, iteration 2; ' \
        'last_checkpoint names it)' in text, text[-3000:]
    assert not [n for n in os.listdir(work) if '.tmp-' in n]
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_4.pth')
    assert_same_weights(full / 'iter_4.pth', work / 'iter_4.pth')


SIGTERM_AT_3 = """
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class SigtermAt3(Hook):
    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # mid-iteration
"""


def test_sigterm_then_resume_through_the_tool(seg_runs, seg_case):
    """SIGTERM during iteration 3 of tools/train.py: it finishes the
    iteration, writes iter_3.pth, exits 143 saying so; --resume trains
    iteration 4 only and ends as the uninterrupted run."""
    root, _ = seg_case
    cfg, full, _ = seg_runs[0]
    stopping = config_importing(cfg, root, 'sigterm_at_3', SIGTERM_AT_3,
                                hook='SigtermAt3')
    work = root / 'seg_sigterm'
    proc = train(stopping, work, root)
    assert proc.returncode == 143, out(proc)[-3000:]
    assert 'Traceback' not in out(proc)
    assert ('mmstvit: SIGTERM received: training stopped after iteration 3; '
            f'the checkpoint of the 3 iterations done is {work}/iter_3.pth'
            ) in out(proc)
    proc = train(cfg, work, root, '--resume')
    text = out(proc)
    assert_ok(proc)
    assert 'resumed epoch: 0, iter: 3' in text
    assert 'Iter(train) [3/4]' not in text and 'Iter(train) [4/4]' in text
    assert_same_weights(full / 'iter_4.pth', work / 'iter_4.pth')


def test_resume_of_a_file_that_does_not_load(seg_runs, seg_case, train_tool,
                                             keep_local_rank):
    """Stopped before anything is built (in this process: the tool's
    exit message)."""
    root, _ = seg_case
    cfg, full, _ = seg_runs[0]
    work = root / 'seg_torn'
    resume_from_copy(work, full / 'iter_2.pth', 'iter_2.pth')
    data = (full / 'iter_4.pth').read_bytes()
    (work / 'iter_4.pth').write_bytes(data[:len(data) // 2])
    with pytest.raises(SystemExit) as e:
        train_tool.main([str(cfg), '--work-dir', str(work), '--resume',
                         str(work / 'iter_4.pth')] + SCRATCH)
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert str(e.value).splitlines() == [
        f'mmstvit: cannot resume from {work / "iter_4.pth"}: it is not a '
        'complete PyTorch file (RuntimeError: PytorchStreamReader failed '
        'reading zip archive: failed finding central directory); a process '
        'killed while writing it leaves such a file.',
        f'The newest checkpoint that loads is {work / "iter_2.pth"} (epoch 0,'
        f' iteration 2): resume from it with --resume {work / "iter_2.pth"}']
    assert sorted(os.listdir(work)) == ['iter_2.pth', 'iter_4.pth']


def test_resume_with_a_changed_config_says_what_differs(seg_runs, seg_case):
    root, _ = seg_case
    cfg, full, _ = seg_runs[0]
    proc = train(cfg, root / 'seg_frozen', root, '--resume',
                 str(full / 'iter_2.pth'),
                 options=['model.backbone.frozen_stages=1'])
    assert_clean_exit(
        proc, f'cannot resume from {full / "iter_2.pth"}: it does not fit '
        'this config', 'the optimizer differs: the checkpoint holds ',
        'parameter groups with', 'The config lines that changed since that '
        'run saved it:', f'load_from={full / "iter_2.pth"} without --resume')
    assert re.search(r'^ +\+ +frozen_stages=1,$', out(proc), re.M)
