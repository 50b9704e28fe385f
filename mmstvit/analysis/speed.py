# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Speed of a set of backbones in one setting: inference and training step
in the same interleaved rounds (:mod:`.timing`), peak memory of the step
(:mod:`.memory`)."""
import torch

from .memory import in_fresh_process, release_memory, step_peak_mib
from .models import DET_STOKEN, build_for
from .timing import inference_fn, interleaved, log, summary, train_step_fn


def inference_times(names, setting, device, amp, warmup, rounds,
                    official=None):
    """Times inference of the models ``names`` in ``setting`` (``(label,
    (H, W), batch, stoken)``) in interleaved rounds; returns ``(name ->
    seconds per round, name -> model)`` (eval, deploy plan)."""
    label, shape, batch, stoken = setting
    models, fns = {}, {}
    for name in names:
        models[name] = build_for(name, stoken, device, False, official)
        x = torch.randn(batch, 3, *shape, device=device)
        fns[name] = inference_fn(models[name], x, device, amp)
    return interleaved(fns, device, warmup, rounds, label=label), models


def training_times(names, setting, device, amp, warmup, rounds,
                   official=None, peaks=False):
    """Times one training step of the models ``names`` in ``setting``
    (``(label, (H, W), batch)``, detection super tokens) in interleaved
    rounds; returns ``(name -> seconds per round, name -> peak MiB)``, the
    peaks measured in this process after the rounds when ``peaks`` (else
    empty)."""
    label, shape, batch = setting
    fns = {}
    for name in names:
        model = build_for(name, DET_STOKEN, device, True, official)
        x = torch.randn(batch, 3, *shape, device=device)
        fns[name] = train_step_fn(model, x, device, amp)
    times = interleaved(fns, device, warmup, rounds, label=label)
    peak = {}
    for name in (names if peaks else ()):
        release_memory()
        peak[name] = step_peak_mib(fns[name], device)
    del fns, model, x
    release_memory()
    return times, peak


def step_row(times, batch):
    """Seconds of a training step: median, min and max over the rounds."""
    r = summary(times, batch)
    return dict(seconds=r['seconds'], seconds_min=r['seconds_min'],
                seconds_max=r['seconds_max'])


def _child_peak(name, device, shape, batch, official, threads, amp):
    torch.set_num_threads(threads)
    device = torch.device(device)
    model = build_for(name, DET_STOKEN, device, True, official)
    x = torch.randn(batch, 3, *shape, device=device)
    return step_peak_mib(train_step_fn(model, x, device, amp), device)


def fresh_train_peak(name, device, shape, batch, official, threads, amp):
    """MiB one training step of ``name`` adds at its peak, in a fresh
    process; None if that process fails (reported, not fatal, so the other
    models are still measured)."""
    peak, code = in_fresh_process(_child_peak, name, str(device), shape,
                                  batch, official, threads, amp)
    if code:
        log(f'the training step of {name} failed in its own process (exit '
            f'code {code}{": out of memory?" if code == -9 else ""})')
    return peak
