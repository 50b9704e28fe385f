# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Peak memory of one step: on CUDA ``max_memory_allocated`` above what
was allocated before it, on a CPU the growth of peak resident memory
(VmHWM, Linux), which needs a fresh process (:func:`in_fresh_process`)."""
import ctypes
import gc
import multiprocessing as mp
import os

import torch


def step_peak_mib(step, device):
    """MiB one call of ``step`` adds at its peak on ``device``."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    before = rss_kib()
    reset_peak_rss()
    step()
    return max(peak_rss_kib() - before, 0) / 1024.


def reset_peak_rss():
    """Linux: restart the process's peak RSS (VmHWM) from its current RSS."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')


def peak_rss_kib():
    """The process's peak resident memory (VmHWM), KiB."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return float(line.split()[1])
    raise RuntimeError('benchmark: no VmHWM in /proc/self/status')


def rss_kib():
    """The process's resident memory now, KiB."""
    with open('/proc/self/statm') as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf('SC_PAGE_SIZE') / 1024.


def _put_result(queue, target, args):
    queue.put(target(*args))


def in_fresh_process(target, *args):
    """``target(*args)`` run in a fresh (spawned) process: its result, or
    ``(None, exit code)`` when that process fails (e.g. killed for want of
    memory: reported by the caller, not fatal). ``target`` must be a
    module-level function; returns ``(result, 0)``."""
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=_put_result, args=(queue, target, args))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return None, proc.exitcode
    return queue.get(), 0


def release_memory():
    """Frees what the models of a finished setting held and hands glibc's
    free heap back to the system, so the next setting (and the children
    spawned for peak memory) start from a small process."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc
