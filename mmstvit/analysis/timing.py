# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Timing in **one process, warm, interleaved rounds** (benchmark.py's
docstring says why): every function runs ``warmup`` times, then each round
times one call of each in turn; the figure is the median over rounds."""
import statistics
import time

import torch

from .support import logger

log = logger('benchmark')

#: the clock of :func:`timed`: wall time, or CPU seconds of this process
#: after :func:`use_cpu_time`
CLOCK = time.perf_counter


def use_cpu_time():
    """One thread, timed by CPU seconds (``time.process_time``): steadier
    than wall time on a machine that other work shares."""
    global CLOCK
    torch.set_num_threads(1)
    CLOCK = time.process_time


def outputs(out):
    """A model's outputs as a tuple (a backbone returns a tuple of maps)."""
    return out if isinstance(out, (tuple, list)) else (out, )


def autocast(device, amp):
    """Autocast for ``amp``: False (off), True (fp16, the benchmark's
    ``--amp``) or a dtype (``torch.bfloat16`` for CPU AMP)."""
    if isinstance(amp, torch.dtype):
        return torch.autocast(device.type, dtype=amp)
    return torch.autocast(device.type, dtype=torch.float16, enabled=amp)


def inference_fn(model, x, device, amp):
    """One inference call of ``model`` on ``x`` (``torch.no_grad``)."""

    def step():
        with torch.no_grad(), autocast(device, amp):
            model(x)

    return step


def train_step_fn(model, x, device=None, amp=False):
    """One training step of ``model`` on ``x``: forward, the sum of the
    means of every output as the loss, backward."""
    device = device or x.device

    def step():
        model.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = sum(o.float().mean() for o in outputs(model(x)))
        loss.backward()

    return step


def sync(device):
    """Waits for the device's work (CUDA); nothing to wait for on a CPU."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device):
    """Seconds one call of ``fn`` takes (by :data:`CLOCK`), CUDA
    synchronised around it."""
    sync(device)
    t = CLOCK()
    fn()
    sync(device)
    return CLOCK() - t


def interleaved(fns, device, warmup, rounds, label=''):
    """Times every function of ``fns`` (name -> callable) in ``rounds``
    interleaved rounds after ``warmup`` calls each; returns name -> the
    list of per-round seconds (one call per function and round).

    Not ``torch.utils.benchmark.Timer``: its ``timeit`` runs two warm-up
    calls before every measurement, which triples the cost of a round of
    multi-second training steps, and its ``blocked_autorange`` repeats a
    call until a minimum time has passed, which does not interleave. The
    loop below does what remains of it: the thread count is set once for
    the process, CUDA is synchronised around each call.
    """
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
        if rounds > 1:
            log(f'{label}: round {r + 1}/{rounds}')
    return times


def summary(times, batch):
    """Median, min and max over the rounds of images/s and seconds."""
    ips = sorted(batch / t for t in times)
    return dict(img_s=statistics.median(ips), img_s_min=ips[0],
                img_s_max=ips[-1], seconds=statistics.median(times),
                seconds_min=min(times), seconds_max=max(times),
                rounds=len(times))
