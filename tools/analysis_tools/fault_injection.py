# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Kill a toy training run at random moments, resume it each time, and
compare where it ends with an uninterrupted run (a benchmark, not a test).

A tiny STViT segmentor trains on the toy ADE set (``tools/misc/
make_toy_data.py``'s generator: random resize, crop and flip, drop path,
dropout; validation every 4 iterations; a checkpoint every ``--interval``
iterations, the last 3 kept) through ``tools/train.py``. The faulty run is
started with ``--resume`` again and again and stopped ``--kills`` times: at
a random moment of its training, or, with probability
``--write-kill-prob``, while it writes a checkpoint (the writes are slowed
to ``--write-seconds`` so that a kill can land in one, as on a slow shared
file system); with SIGKILL (no clean-up of any kind: a crash, the OOM
killer) or, with probability ``--sigterm-prob``, with SIGTERM (a scheduler's
preemption: the run finishes its iteration, writes a checkpoint and exits
143). After each stop every checkpoint on disk is loaded. In the end it
prints the largest difference between the final weights and the
uninterrupted run's (0 when the resume is exact), how many iterations were
trained twice (after SIGKILLs: those since the last checkpoint; after
SIGTERMs: 0), and how many torn checkpoints were found under a final
name.

``--hook plain`` runs mmengine's own CheckpointHook instead of
ResumableCheckpointHook (the state of things before it).

Example::

    python tools/analysis_tools/fault_injection.py --kills 10

Progress lines while it runs, the answer last; each process's full log is
in ``--out`` (``reference.log``, ``attempt_NN.log``).
"""
import argparse
import os
import os.path as osp
import random
import re
import signal
import subprocess
import sys
import threading
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

CONFIG = """
default_scope = 'mmseg'
custom_imports = dict(imports=['mmstvit', 'fault_hooks'],
                      allow_failed_imports=False)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
        seg_pad_val=255, size=(64, 64)),
    backbone=dict(
        type='STViT',
        arch=dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                  num_heads=[1, 1, 1, 1]),
        stoken_size=[4, 2, 1, 1], drop_path_rate=0.1),
    decode_head=dict(
        type='FCNHead', in_channels=64, in_index=3, channels=16,
        num_convs=1, concat_input=False, dropout_ratio=0.1, num_classes=4,
        norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
    train_cfg=dict(), test_cfg=dict(mode='whole'))
dataset = dict(
    type='BaseSegDataset', data_root={data!r}, img_suffix='.jpg',
    seg_map_suffix='.png', reduce_zero_label=False,
    metainfo=dict(classes=('background', 'circle', 'rectangle', 'triangle')))
train_dataloader = dict(
    batch_size=2, num_workers={workers}, persistent_workers={persistent},
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        data_prefix=dict(img_path='images/training',
                         seg_map_path='annotations/training'),
        pipeline=[
            dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
            dict(type='RandomResize', scale=(96, 96), ratio_range=(0.8, 1.2),
                 keep_ratio=True),
            dict(type='RandomCrop', crop_size=(64, 64)),
            dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')],
        **dataset))
val_dataloader = dict(
    batch_size=1, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        data_prefix=dict(img_path='images/validation',
                         seg_map_path='annotations/validation'),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(96, 96), keep_ratio=True),
            dict(type='LoadAnnotations'), dict(type='PackSegInputs')],
        **dataset))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01))
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=1.0, begin=0,
                        end={iters}, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters={iters}, val_interval=4)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type={hook!r}, by_epoch=False, interval={interval},
                    max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'))
env_cfg = dict(cudnn_benchmark=False,
               mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
"""

#: imported by the runs (custom_imports): slow checkpoint writes that
#: announce themselves, and mmengine's own hook under a name the tools do
#: not replace
FAULT_HOOKS = '''
import os
import sys
import time

from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from mmstvit.engine import atomic_files

SECONDS = float(os.environ.get('FAULT_WRITE_SECONDS', '0.5'))
STEPS = 8


def slow_write(f, data, final):
    print(f'FAULT-INJECTION writing {final}', file=sys.stderr, flush=True)
    step = -(-len(data) // STEPS)
    for start in range(0, len(data), step):
        f.write(data[start:start + step])
        f.flush()
        time.sleep(SECONDS / STEPS)


def atomic_chunks(f, data):
    slow_write(f, data, atomic_files.final_name_of(f.name) or f.name)


def plain_put(self, obj, filepath):
    os.makedirs(os.path.dirname(str(filepath)) or '.', exist_ok=True)
    with open(filepath, 'wb') as f:
        slow_write(f, obj, os.path.basename(str(filepath)))


atomic_files._write_chunks = atomic_chunks
LocalBackend.put = plain_put


@HOOKS.register_module()
class PlainCheckpointHook(CheckpointHook):
    """mmengine's CheckpointHook as it is."""
'''

ITER = re.compile(r'Iter\(train\) \[\s*(\d+)/\d+\]')
RESUMED = re.compile(r'resumed epoch: \d+, iter: (\d+)')
WRITING = re.compile(r'FAULT-INJECTION writing (\S+)')


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--kills', type=int, default=10)
    p.add_argument('--iters', type=int, default=24)
    p.add_argument('--interval', type=int, default=2,
                   help='iterations between checkpoints')
    p.add_argument('--workers', type=int, default=2,
                   help='data loader workers (persistent)')
    p.add_argument('--write-kill-prob', type=float, default=0.5,
                   help='share of the kills aimed at a checkpoint write')
    p.add_argument('--write-seconds', type=float, default=0.5,
                   help='how long each checkpoint write takes')
    p.add_argument('--sigterm-prob', type=float, default=0.4,
                   help='share of the kills that are SIGTERM (preemption) '
                   'instead of SIGKILL')
    p.add_argument('--sigterm-timeout', type=float, default=120,
                   help='seconds a SIGTERMed run has to stop by itself')
    p.add_argument('--hook', choices=['resumable', 'plain'],
                   default='resumable')
    p.add_argument('--seed', type=int, default=0,
                   help='seed of the kill schedule')
    p.add_argument('--out', default='work_dirs/fault_injection')
    return p.parse_args()


def say(msg):
    print(msg, flush=True)


class Attempt:
    """One training process, its output teed into a log file and parsed."""

    def __init__(self, cmd, log_path, env, cwd):
        self.log = open(log_path, 'w')
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=env, cwd=cwd, bufsize=1)
        self.last_iter = None
        self.resumed_from = 0
        self.writes = []  # (time, name)
        self.iter_times = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.log.write(line)
            now = time.monotonic()
            with self.lock:
                m = ITER.search(line)
                if m:
                    self.last_iter = int(m.group(1))
                    self.iter_times.append(now)
                m = RESUMED.search(line)
                if m:
                    self.resumed_from = int(m.group(1))
                m = WRITING.search(line)
                if m:
                    self.writes.append((now, m.group(1)))
        self.log.flush()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        return self.wait()

    def terminate(self, timeout):
        """SIGTERM; the exit code, or None (then SIGKILLed) when the run
        did not stop within ``timeout`` seconds."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        return self.wait()

    def wait(self):
        code = self.proc.wait()
        self.reader.join()
        self.log.close()
        return code


def check_work_dir(work):
    """(files that are named as checkpoints and do not load, temporary
    files, checkpoints)."""
    from mmstvit.engine.atomic_files import final_name_of
    from mmstvit.engine.resume import checkpoint_problem
    torn, temps, ckpts = [], [], []
    if not osp.isdir(work):
        return torn, temps, ckpts
    for name in sorted(os.listdir(work), key=lambda n: [
            int(t) if t.isdigit() else t for t in re.split(r'(\d+)', n)]):
        if final_name_of(name):
            temps.append(name)
        elif name.endswith('.pth'):
            ckpts.append(name)
            if checkpoint_problem(osp.join(work, name)):
                torn.append(name)
    marker = osp.join(work, 'last_checkpoint')
    if osp.isfile(marker):
        target = open(marker).read().strip()
        if not target:
            torn.append('last_checkpoint (empty)')
        elif checkpoint_problem(target):
            torn.append(f'last_checkpoint -> {osp.basename(target)}')
    return torn, temps, ckpts


def weight_difference(a_path, b_path):
    import torch

    from mmstvit.weights import load_checkpoint_file
    a = load_checkpoint_file(a_path)['state_dict']
    b = load_checkpoint_file(b_path)['state_dict']
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    diff = max((float((a[k].double() - b[k].double()).abs().max())
                for k in a if a[k].is_floating_point()), default=0.0)
    return diff, len(unequal), len(a)


class Faulty:
    """The state of the faulty run over its attempts."""

    def __init__(self, args, out):
        self.args, self.out = args, out
        self.rng = random.Random(args.seed)
        self.work = osp.join(out, 'faulty')
        self.trained = 0  # iterations trained by all attempts together
        self.kills = self.sigterms = 0
        self.aimed_at_writes = self.landed_in_writes = 0
        self.redone_after_sigterm = 0
        self.torn_seen, self.temps_seen = set(), set()
        self.failure = None
        self.last_stop = None  # (how, iteration reached) of the last kill
        self.previous_stop = None  # the same, of the attempt before


def prepare(args):
    """The toy data, config and hooks under ``--out``; (out, train command,
    environment)."""
    out = osp.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    from mmstvit.data.toy_data import generate_toy_ade
    data = osp.join(out, 'toy_ade')
    generate_toy_ade(data, num_train=16, num_val=2)
    hook = 'ResumableCheckpointHook' if args.hook == 'resumable' else \
        'PlainCheckpointHook'
    cfg = osp.join(out, 'toy_seg.py')
    with open(cfg, 'w') as f:
        f.write(CONFIG.format(data=data + '/', workers=args.workers,
                              persistent=args.workers > 0, iters=args.iters,
                              interval=args.interval, hook=hook))
    with open(osp.join(out, 'fault_hooks.py'), 'w') as f:
        f.write(FAULT_HOOKS)
    env = dict(os.environ, PYTHONPATH=out + os.pathsep + ROOT,
               OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1',
               FAULT_WRITE_SECONDS=str(args.write_seconds))
    return out, [sys.executable, osp.join(ROOT, 'tools', 'train.py'), cfg], env


def reference_run(args, out, train, env):
    ref = osp.join(out, 'reference')
    if osp.isfile(osp.join(ref, f'iter_{args.iters}.pth')):
        say('uninterrupted run: kept from before')
        return ref
    t0 = time.monotonic()
    code = Attempt(train + ['--work-dir', ref], osp.join(
        out, 'reference.log'), env, out).wait()
    if code != 0:
        sys.exit(f'the uninterrupted run failed (exit {code}); see '
                 f'{out}/reference.log')
    say(f'uninterrupted run: {time.monotonic() - t0:.0f} s')
    return ref


def wait_for(att, ready):
    """Polls until ``ready()`` or the attempt ended."""
    while att.proc.poll() is None:
        with att.lock:
            if ready():
                return True
        time.sleep(0.005)
    return False


def aim(state, att):
    """Waits for the moment of the kill; says which moment it was."""
    args, rng = state.args, state.rng
    if rng.random() < args.write_kill_prob:
        # the first checkpoint write from now on
        if wait_for(att, lambda: bool(att.writes)):
            delay = rng.uniform(0.05, 0.95) * args.write_seconds
            time.sleep(delay)
            return (f'during the write of {att.writes[0][1]} (after '
                    f'{delay:.2f} s of {args.write_seconds:.2f})')
        return ''
    # after a random number of iterations of this attempt, somewhere
    # within the next one
    target = rng.randint(1, max(1, 2 * args.interval))
    wait_for(att, lambda: len(att.iter_times) >= target)
    time.sleep(rng.uniform(0, 0.3))
    return f'after {target} iteration{"s" if target > 1 else ""} of this ' \
        'attempt'


def stop(state, att, how):
    """Kills the attempt (SIGKILL or SIGTERM); the outcome's text."""
    state.kills += 1
    state.aimed_at_writes += how.startswith('during the write')
    if state.rng.random() >= state.args.sigterm_prob:
        att.kill()
        state.last_stop = ('SIGKILL', None)
        return f'SIGKILL {how}'
    state.sigterms += 1
    code = att.terminate(state.args.sigterm_timeout)
    with att.lock:
        reached = att.last_iter or att.resumed_from
    state.last_stop = ('SIGTERM', reached)
    if code != 128 + signal.SIGTERM:
        state.failure = (f'a SIGTERM {how} ended the run with '
                         f'{"no exit" if code is None else f"exit {code}"}, '
                         f'not 143')
    return f'SIGTERM {how}: exit {code}'


def one_attempt(state, number, train, env):
    """Starts the faulty run once more, kills it (while kills are left) or
    lets it finish; prints a line; False when the run is over."""
    log = osp.join(state.out, f'attempt_{number:02d}.log')
    att = Attempt(train + ['--work-dir', state.work, '--resume'], log, env,
                  state.out)
    how = aim(state, att) if state.kills < state.args.kills else None
    if how is not None and att.proc.poll() is None:
        outcome = stop(state, att, how)
    else:
        code = att.wait()
        outcome = f'exit {code}'
        if code != 0:
            state.failure = f'attempt {number} failed (exit {code}): see {log}'
    with att.lock:
        reached = att.last_iter or att.resumed_from
        resumed = att.resumed_from
    account(state, number, resumed, reached, outcome)
    return not (state.failure or outcome == 'exit 0')


def account(state, number, resumed, reached, outcome):
    """Books the attempt (iterations trained, redone after a SIGTERM, what
    is on disk) and prints its line."""
    previous = state.previous_stop
    if previous and previous[0] == 'SIGTERM':
        state.redone_after_sigterm += max(0, previous[1] - resumed)
    state.previous_stop = state.last_stop if outcome.startswith('SIG') \
        else None
    state.trained += max(0, reached - resumed)
    torn, temps, ckpts = check_work_dir(state.work)
    # each start removes leftovers (a plain run's torn files stay)
    state.landed_in_writes += bool(outcome.startswith('SIG') and
                                   (temps or torn))
    state.torn_seen.update(torn)
    state.temps_seen.update(temps)
    say(f'attempt {number:2d}: resumed at iteration {resumed:2d}, '
        f'reached {reached:2d}; {outcome}; on disk: '
        f'{", ".join(ckpts) or "nothing"}' +
        (f'; leftover {", ".join(temps)}' if temps else '') +
        (f'; TORN (does not load): {", ".join(torn)}' if torn else ''))


def report(state, ref):
    args = state.args
    say('')
    torn = (f'  torn checkpoints under a final name: {len(state.torn_seen)}'
            + (f' ({", ".join(sorted(state.torn_seen))} did not load after a'
               ' kill)' if state.torn_seen else ''))
    if state.failure:
        say(f'result: {state.failure}')
        say(torn)
        sys.exit(1)
    last = f'iter_{args.iters}.pth'
    diff, unequal, total = weight_difference(
        osp.join(ref, last), osp.join(state.work, last))
    say(f'result ({args.hook} checkpoints, {state.kills} kills: '
        f'{state.kills - state.sigterms} SIGKILL, {state.sigterms} SIGTERM; '
        f'{state.landed_in_writes} during a checkpoint write, '
        f'{state.aimed_at_writes} aimed at one):')
    say(f'  final weights vs the uninterrupted run: max |diff| {diff:.3g}, '
        f'{unequal} of {total} tensors differ')
    say(f'  iterations trained twice: {state.trained - args.iters} '
        f'({state.trained} trained for {args.iters}); after a SIGTERM: '
        f'{state.redone_after_sigterm}')
    say(torn)
    say(f'  unfinished temporary files left by kills (removed at the next '
        f'start): {len(state.temps_seen)}')


def main():
    args = parse_args()
    out, train, env = prepare(args)
    say(f'fault injection: {args.hook} checkpoints, {args.iters} iterations, '
        f'a checkpoint every {args.interval}, {args.workers} workers, '
        f'{args.kills} kills ({args.sigterm_prob:.0%} SIGTERM); logs in '
        f'{out}')
    ref = reference_run(args, out, train, env)
    state = Faulty(args, out)
    if osp.isdir(state.work):
        import shutil
        shutil.rmtree(state.work)
    number = 1
    while one_attempt(state, number, train, env):
        number += 1
    report(state, ref)


if __name__ == '__main__':
    main()
