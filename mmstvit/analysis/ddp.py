# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""benchmark.py's ``--ddp``: STViT-S's training step under
DistributedDataParallel on 2 processes against one process, and with the
parameter layout before the fix (its docstring gives the protocol)."""
import multiprocessing as mp
import os
import socket
import statistics
import warnings

import torch

from .models import DET_STOKEN, build
from .support import release_process_group
from .timing import log, timed, train_step_fn

GRAD_STRIDE_WARNING = 'Grad strides do not match bucket view strides'
RUNS = ('one process', 'ddp', 'ddp_before_fix')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank, world, port, device, shape, batch, threads, warmup, rounds,
            amp, queue):
    import torch.distributed as dist
    os.environ['MASTER_ADDR'] = '127.0.0.1'
    os.environ['MASTER_PORT'] = str(port)
    device = torch.device(device)
    if device.type == 'cuda':
        device = torch.device('cuda', rank)
        torch.cuda.set_device(device)
    torch.set_num_threads(threads)
    dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo',
                            rank=rank, world_size=world)
    try:
        _rounds(rank, device, shape, batch, warmup, rounds, amp, queue)
    finally:
        # the DDP wrappers holding the group went with _rounds' frame
        release_process_group()


def _models(device):
    """The same STViT-S three times: alone, DDP, DDP in the old layout."""
    from mmstvit.models.backbones import kernels
    built = []
    for _ in RUNS:
        torch.manual_seed(0)
        built.append(build('stvit_s', DET_STOKEN).to(device).train())
    kernels.store_contiguous(built[2])  # the layout before the fix
    return built


def _ddp_steps(models, x, device, amp):
    """The DDP steps and the grad-stride warnings their first step raised."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    counts, steps = {}, {}
    for name, model in zip(RUNS[1:], models):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            step = train_step_fn(DDP(model), x, device, amp)
            step()  # the first step builds the buckets and may warn
        counts[name] = sum(GRAD_STRIDE_WARNING in str(w.message)
                           for w in caught)
        steps[name] = step
    return steps, counts


def _rounds(rank, device, shape, batch, warmup, rounds, amp, queue):
    import torch.distributed as dist

    import mmstvit  # noqa: F401
    x = torch.randn(batch, 3, *shape, device=device)
    single, *wrapped = _models(device)
    steps, counts = _ddp_steps(wrapped, x, device, amp)
    single_step = train_step_fn(single, x, device, amp)
    times = {name: [] for name in RUNS}
    for r in range(warmup + rounds):
        # one process alone (rank 0; rank 1 waits at the barrier)
        dist.barrier()
        got = {'one process': timed(single_step, device) if rank == 0
               else None}
        dist.barrier()
        for name in RUNS[1:]:
            dist.barrier()
            got[name] = timed(steps[name], device)
        if r >= warmup and rank == 0:
            for name, value in got.items():
                times[name].append(value)
            log(f'ddp: round {r - warmup + 1}/{rounds}')
    if rank == 0:
        queue.put(dict(times=times, warnings=counts))


def _spawn(device, shape, batch, threads, warmup, rounds, amp):
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_worker,
                    args=(rank, 2, port, str(device), shape, batch, threads,
                          warmup, rounds, amp, queue))
        for rank in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        log(f'the DDP run failed (exit codes '
            f'{[p.exitcode for p in procs]})')
        return None
    return queue.get()


def ddp_benchmark(device, shape, batch, threads, warmup, rounds, amp):
    """The comparison of the module doc on 2 processes: ``setting``,
    ``threads_per_process`` and one row per run (seconds, img/s,
    efficiency, grad-stride warnings); None when it cannot run."""
    if device.type == 'cuda' and torch.cuda.device_count() < 2:
        log('--ddp on CUDA needs 2 GPUs; skipped')
        return None
    per_process = max(threads // 2, 1) if device.type == 'cpu' else threads
    out = _spawn(device, shape, batch, per_process, warmup, rounds, amp)
    if out is None:
        return None
    res = dict(setting=f'{shape[1]}x{shape[0]} b{batch} per process',
               threads_per_process=per_process, rows={})
    single = statistics.median(out['times']['one process'])
    for name, times in out['times'].items():
        med = statistics.median(times)
        processes = 1 if name == 'one process' else 2
        res['rows'][name] = dict(
            seconds=med, seconds_min=min(times), seconds_max=max(times),
            processes=processes, img_s=processes * batch / med,
            efficiency=None if processes == 1 else single / med,
            grad_stride_warnings=out['warnings'].get(name))
    return res
