# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What ResumableCheckpointHook costs per checkpoint: size and save time of
a training checkpoint (weights, AdamW state, schedule, the config text) as
mmengine's CheckpointHook writes it (in place, no fsync) and as
ResumableCheckpointHook writes it (plus the random states of the process
and of two persistent data workers; temporary file, fsync, rename).

Example::

    python tools/analysis_tools/checkpoint_cost.py \\
        configs/upernet_stvit_s_160k_ade20k.py

Interleaved rounds, medians; the files go to ``--out`` (removed after).
"""
import argparse
import os
import os.path as osp
import pickle
import shutil
import statistics
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config', nargs='?',
                   default=osp.join(ROOT, 'configs',
                                    'upernet_stvit_s_160k_ade20k.py'))
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--out', default=None,
                   help='folder for the files (default: a temporary one '
                   'under ./work_dirs)')
    return p.parse_args()


def training_checkpoint(config):
    """A checkpoint as Runner.save_checkpoint makes it, of the config's
    model after one AdamW step."""
    import warnings

    import torch
    from mmengine.config import Config

    from mmstvit.builder import build_model
    from mmstvit.cli.quiet import mm_log_level
    cfg = Config.fromfile(config)
    with mm_log_level(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the heads' deprecation notes
        model = build_model(cfg, sync_bn_as_bn=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return dict(
        meta=dict(epoch=0, iter=1000, cfg=cfg.pretty_text, seed=0),
        state_dict=model.state_dict(),
        message_hub=dict(log_scalars={}, runtime_info={}, resumed_keys={}),
        optimizer=optimizer.state_dict(),
        param_schedulers=[dict(last_epoch=1000)]), sum(
            p.numel() for p in model.parameters())


def resume_state():
    """The entry ResumableCheckpointHook adds: one process, two persistent
    workers."""
    from mmstvit.engine import rng_state
    from mmstvit.engine.checkpoint_hook import STATE_FORMAT
    workers = {i: rng_state.capture(cuda=False) for i in range(2)}
    mine = dict(rng=rng_state.capture(), seeds=dict(sampler=0, workers=0),
                num_workers=2, workers=workers)
    return dict(format=STATE_FORMAT, world_size=1,
                loop='IterBasedTrainLoop', epoch_batches_done=0,
                ranks=[mine])


def save_rounds(ways, rounds, out):
    """Saves with each way of ``ways`` (name, save(path)) in interleaved
    rounds (the order alternating): name -> seconds per round, name ->
    file size."""
    from mmstvit.cli.quiet import mm_log_level
    times = {name: [] for name, _ in ways}
    sizes = {}
    for r in range(rounds):
        for name, fn in (ways if r % 2 == 0 else ways[::-1]):
            path = osp.join(out, f'{name.split()[0]}_{r}.pth')
            with mm_log_level():  # FileClient's deprecation notes
                t0 = time.perf_counter()
                fn(path)
                times[name].append(time.perf_counter() - t0)
            sizes[name] = os.path.getsize(path)
            os.remove(path)
    return times, sizes


def report(args, n_params, ways, times, sizes, state, capture_ms):
    from mmstvit.engine import rng_state
    print(f'{osp.relpath(args.config, ROOT)}: {n_params / 1e6:.2f}M '
          'parameters, AdamW state; '
          f'{args.rounds} interleaved rounds, median (min-max)')
    print(f'{"":26s} {"file size":>16s} {"save time":>22s}')
    for name, _ in ways:
        t = times[name]
        print(f'{name:26s} {sizes[name]:>12,d} B   '
              f'{statistics.median(t):7.3f} s '
              f'({min(t):.3f}-{max(t):.3f})')
    added = sizes[ways[1][0]] - sizes[ways[0][0]]
    one = len(pickle.dumps(rng_state.capture()))
    worker = len(pickle.dumps(rng_state.capture(cuda=False)))
    print(f'added by the resume state: {added:,d} B in the file '
          f'({len(pickle.dumps(state)):,d} B pickled: {one:,d} B for the '
          f'process, {worker:,d} B for each data worker); capturing the '
          f'states takes {capture_ms:.2f} ms')


def main():
    args = parse_args()
    from mmengine.runner.checkpoint import save_checkpoint

    from mmstvit.cli.quiet import quiet_third_party_warnings
    quiet_third_party_warnings()

    from mmstvit.engine import rng_state
    from mmstvit.engine.atomic_files import BACKEND_NAME
    from mmstvit.engine.checkpoint_hook import STATE_KEY
    os.makedirs('work_dirs', exist_ok=True)
    out = args.out or tempfile.mkdtemp(prefix='checkpoint_cost_',
                                       dir='work_dirs')
    os.makedirs(out, exist_ok=True)
    ckpt, n_params = training_checkpoint(args.config)
    state = resume_state()
    t0 = time.perf_counter()
    for _ in range(100):
        rng_state.capture()
    capture_ms = (time.perf_counter() - t0) * 10

    def plain(path):
        save_checkpoint(ckpt, path)

    def resumable(path):
        ckpt[STATE_KEY] = state
        try:
            save_checkpoint(ckpt, path,
                            backend_args=dict(backend=BACKEND_NAME))
        finally:
            del ckpt[STATE_KEY]

    ways = [('mmengine CheckpointHook', plain),
            ('ResumableCheckpointHook', resumable)]
    times, sizes = save_rounds(ways, args.rounds, out)
    if args.out is None:
        shutil.rmtree(out)
    report(args, n_params, ways, times, sizes, state, capture_ms)


if __name__ == '__main__':
    main()
