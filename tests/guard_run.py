# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""A toy mmengine run through the config switch of mmstvit.engine.guards
(the resumable loop, ResumableCheckpointHook, CheckNonFiniteLossHook), for
tests/test_guards.py: a 2-layer net with dropout on data with random
augmentations (Python, numpy and torch random numbers), a second or so per
run. Faults are injected from the command line: a signal that this process
sends itself during an iteration, a loss that turns NaN, a disk that is full
when a checkpoint is written. ``--world-size 2`` starts a gloo process group
(rank from ``--rank``) and trains under DistributedDataParallel.

Prints ``TRAINED <iteration>`` after each iteration, and ends as
tools/train.py does: a TrainingError's message and exit 1, a signal's exit
status.
"""
import argparse
import errno
import os
import random
import signal
import sys

import numpy as np
import torch
from torch import nn

import mmstvit  # noqa: F401
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner

from mmstvit.engine import atomic_files, errors, guards


class ToyNet(BaseModel):

    def __init__(self, nan_from=0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5),
                                 nn.Linear(16, 1))
        self.nan_from = nan_from
        self.steps = 0

    def forward(self, inputs, targets=None, mode='loss'):
        out = self.net(torch.stack(inputs) if isinstance(inputs, list)
                       else inputs)
        if mode != 'loss':
            return out
        self.steps += 1
        loss = ((out.squeeze(1) - targets) ** 2).mean()
        aux = out.abs().mean() * 0.1
        if self.nan_from and self.steps >= self.nan_from:
            loss = loss * float('nan')
        return dict(loss=loss, loss_aux=aux)


class ToyData(torch.utils.data.Dataset):
    """Samples whose augmentation draws from all three generators; with
    ``bad_fetch`` the sample fetched as number ``bad_fetch`` (1-based, in
    this process) raises mmcv's error for an image that does not decode."""

    def __init__(self, bad_fetch=0):
        self.bad_fetch = bad_fetch
        self.fetched = 0

    def __len__(self):
        return 8

    def __getitem__(self, i):
        self.fetched += 1
        if self.fetched == self.bad_fetch:
            raise AssertionError(f'failed to load image: data/{i}.jpg')
        x = torch.full((4, ), float(i)) + torch.randn(4) * 0.1
        x = x * random.uniform(0.9, 1.1) + float(np.random.rand())
        return dict(inputs=x, targets=torch.tensor(float(i % 3)))


class Faults(Hook):
    priority = 'VERY_HIGH'

    def __init__(self, signal_at, signal_rank, rank, vanish_at):
        self.signal_at, self.signal_rank, self.rank = (signal_at, signal_rank,
                                                       rank)
        self.vanish_at = vanish_at

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.vanish_at:
            import shutil
            shutil.rmtree(runner.work_dir)  # unmounted, deleted
        if runner.iter + 1 == self.signal_at and self.rank == \
                self.signal_rank:
            os.kill(os.getpid(), signal.SIGTERM)  # mid-iteration

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        print(f'TRAINED {runner.iter + 1}', flush=True)


def full_disk_at(name):
    """The disk fills while ``name`` is written (after half of it)."""
    write = atomic_files._write_chunks

    def chunks(f, data):
        if atomic_files.final_name_of(f.name) == name:
            f.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(f, data)

    atomic_files._write_chunks = chunks


def config(args):
    epoch = args.loop == 'epoch'
    sampler = 'DefaultSampler' if epoch else 'InfiniteSampler'
    train_cfg = dict(by_epoch=True, max_epochs=3) if epoch else dict(
        type='IterBasedTrainLoop', max_iters=10)
    return dict(
        train_dataloader=dict(
            batch_size=2, num_workers=args.workers,
            persistent_workers=args.workers > 0,
            sampler=dict(type=sampler, shuffle=True),
            collate_fn=dict(type='default_collate'),
            dataset=ToyData(args.bad_fetch)),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=args.lr)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.5,
                              by_epoch=False, begin=0, end=10)],
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', by_epoch=epoch,
                            interval=1 if epoch else args.interval,
                            max_keep_ckpts=args.keep),
            logger=dict(type='LoggerHook', interval=1)),
        log_processor=dict(by_epoch=epoch),
        randomness=dict(seed=args.seed),
        env_cfg=dict(mp_cfg=dict(mp_start_method='fork')))


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument('work_dir')
    p.add_argument('--loop', choices=['iter', 'epoch'], default='iter')
    p.add_argument('--resume', action='store_true')
    p.add_argument('--workers', type=int, default=0)
    p.add_argument('--signal-at', type=int, default=0)
    p.add_argument('--signal-rank', type=int, default=0)
    p.add_argument('--nan-from', type=int, default=0)
    p.add_argument('--full-disk-at', default=None)
    p.add_argument('--bad-fetch', type=int, default=0)
    p.add_argument('--vanish-at', type=int, default=0)
    p.add_argument('--lr', type=float, default=0.01)
    p.add_argument('--interval', type=int, default=4)
    p.add_argument('--keep', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--rank', type=int, default=0)
    p.add_argument('--world-size', type=int, default=1)
    p.add_argument('--port', type=int, default=29500)
    return p.parse_args()


def build(args):
    torch.manual_seed(1234)  # the same initial weights in every run
    model = ToyNet(args.nan_from)
    if args.world_size > 1:
        import torch.distributed as dist
        from mmengine.model import MMDistributedDataParallel
        os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(args.port))
        dist.init_process_group('gloo', rank=args.rank,
                                world_size=args.world_size)
        model = MMDistributedDataParallel(module=model, device_ids=None)
    cfg = config(args)
    guards.use_in_config(cfg_view := _Cfg(cfg))
    return Runner(model=model, work_dir=args.work_dir, resume=args.resume,
                  custom_hooks=cfg_view.get('custom_hooks') + [
                      Faults(args.signal_at, args.signal_rank, args.rank,
                             args.vanish_at)],
                  **{k: v for k, v in cfg.items() if k != 'custom_hooks'})


class _Cfg(dict):
    """A dict with the attribute access of an mmengine Config."""

    def __getattr__(self, name):
        return self[name]

    def __setattr__(self, name, value):
        self[name] = value


def main():
    args = parse_args()
    torch.set_num_threads(1)
    if args.full_disk_at:
        full_disk_at(args.full_disk_at)
    runner = build(args)
    try:
        try:
            runner.train()
        except OSError as e:  # as tools/train.py
            raise errors.explain_machine_error(e, runner) from e
    except errors.TrainingError as e:
        cause = e.__cause__
        if cause is not None:
            print(f'CAUSE {type(cause).__name__}: {cause}', flush=True)
        sys.exit(str(e))


if __name__ == '__main__':
    main()
