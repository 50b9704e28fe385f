# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What the per-iteration checks of mmstvit's training guards cost, against
one training step of STViT-S (a benchmark, not a test).

Per iteration the resumable loops (mmstvit.engine.loops) snapshot the
random states before fetching a batch (only when the loader has no
workers), ask every process whether a signal came or a fetch failed
(nothing to ask in one process; one ``all_reduce`` of two integers in a
distributed run), and CheckNonFiniteLossHook checks the loss terms (one
stack, ``isfinite`` and copy to the host; one more ``all_reduce`` of one
integer in a distributed run). Checkpoints add a finiteness pass over the
weights, once per checkpoint (measured too, for scale).

Times are CPU seconds of one thread (``time.process_time``), robust to a
shared machine; the all_reduce is timed between 2 CPU processes (gloo).

Example::

    python tools/analysis_tools/guard_overhead.py
"""
import argparse
import os
import os.path as osp
import sys
import time

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--size', type=int, default=224, help='image side')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--steps', type=int, default=2)
    p.add_argument('--repeats', type=int, default=2000,
                   help='calls of each check timed')
    p.add_argument('--no-ddp', action='store_true',
                   help='skip the 2-process all_reduce timing')
    return p.parse_args()


def cpu_time(fn, n):
    fn()
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


def step_time(args):
    """CPU seconds of one training step (forward, backward, AdamW) of the
    STViT-S backbone with a mean over its outputs as the loss."""
    from mmstvit import STViT
    model = STViT(arch='small').train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size)

    def step():
        opt.zero_grad(set_to_none=True)
        sum(o.float().mean() for o in model(x)).backward()
        opt.step()
    return cpu_time(step, args.steps), model


def allreduce_worker(rank, port, n, queue):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=2)
    from mmstvit.engine.divergence import any_process
    from mmstvit.engine.preemption import SignalGuard
    guard = SignalGuard(())

    def both():  # the loop's agreement and CheckNonFiniteLossHook's
        guard.agree(False)
        any_process(False)
    t = cpu_time(both, n)
    wall0 = time.perf_counter()
    for _ in range(n):
        both()
    wall = (time.perf_counter() - wall0) / n
    if rank == 0:
        queue.put((t, wall))
    dist.destroy_process_group()


def allreduce_time(n):
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    queue = mp.get_context('spawn').SimpleQueue()
    mp.spawn(allreduce_worker, args=(port, n, queue), nprocs=2, join=True)
    return queue.get()


def main():
    args = parse_args()
    torch.set_num_threads(1)
    from mmstvit.engine import divergence, rng_state
    from mmstvit.engine.preemption import SignalGuard
    step, model = step_time(args)
    outputs = dict(loss=torch.tensor(1.), loss_cls=torch.tensor(.5),
                   loss_bbox=torch.tensor(.3), loss_mask=torch.tensor(.2),
                   acc=torch.tensor(90.))
    guard = SignalGuard(())
    checks = [
        ('random-state snapshot before a fetch (num_workers=0 only)',
         cpu_time(rng_state.snapshot, args.repeats)),
        ('signal/fetch agreement, 1 process',
         cpu_time(guard.agree, args.repeats)),
        ('loss terms finite (CheckNonFiniteLossHook)',
         cpu_time(lambda: divergence.nonfinite_terms(outputs),
                  args.repeats)),
    ]
    if not args.no_ddp:
        cpu, wall = allreduce_time(args.repeats // 4)
        checks.append(('the two all_reduces (signals, loss), 2 gloo '
                       f'processes (CPU; wall {wall * 1e6:.0f} us)', cpu))
    per_iter = sum(t for _, t in checks)
    print(f'training step, STViT-S {args.size}x{args.size} batch '
          f'{args.batch}: {step:.3f} CPU s (one thread)')
    for name, t in checks:
        print(f'  {name}: {t * 1e6:.1f} us ({t / step:.4%} of the step)')
    print(f'per iteration, all checks: {per_iter * 1e6:.1f} us = '
          f'{per_iter / step:.4%} of the step')
    ckpt = cpu_time(lambda: divergence.nonfinite_tensors(model), 5)
    print(f'per checkpoint, weights finite ({len(model.state_dict())} '
          f'tensors): {ckpt * 1e3:.1f} ms')


if __name__ == '__main__':
    main()
