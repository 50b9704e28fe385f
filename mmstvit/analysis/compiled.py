# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""benchmark.py's ``--compile``: ``torch.compile`` (inductor) of STViT-S
against eager, compile time and speed, inference and training step."""
import logging
import statistics

import torch

from .models import CLS_STOKEN, DET_STOKEN, build
from .timing import inference_fn, interleaved, log, timed, train_step_fn


def _setting(kind, device, train_shape, train_batch, infer_shape,
             infer_batch):
    """``(model, input, step maker, setting name)`` of ``kind``."""
    torch.manual_seed(0)
    if kind == 'inference':
        model = build('stvit_s', CLS_STOKEN).to(device).eval()
        x = torch.randn(infer_batch, 3, *infer_shape, device=device)
        return model, x, inference_fn, f'{infer_shape[0]} b{infer_batch}'
    model = build('stvit_s', DET_STOKEN).to(device).train()
    x = torch.randn(train_batch, 3, *train_shape, device=device)
    return (model, x, train_step_fn,
            f'{train_shape[1]}x{train_shape[0]} b{train_batch}')


def compile_benchmark(device, warmup, rounds, train_rounds, amp, train_shape,
                      train_batch, infer_shape=(224, 224), infer_batch=8):
    """Eager against compiled per kind (``inference``, ``train``): the
    medians and ranges of both, the speed-up and the compile seconds."""
    if device.type == 'cpu':
        # inductor imports cpp_extension, which says "No CUDA runtime is
        # found" when a CUDA toolkit is installed but no GPU: nothing to
        # act on for a CPU benchmark
        logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)
    res = {}
    for kind in ('inference', 'train'):
        model, x, make, setting = _setting(kind, device, train_shape,
                                           train_batch, infer_shape,
                                           infer_batch)
        compiled = torch.compile(model)
        eager_fn = make(model, x, device, amp)
        compiled_fn = make(compiled, x, device, amp)
        log(f'compile: compiling STViT-S for {kind} ({setting}); this '
            'takes minutes on a small CPU')
        first = timed(compiled_fn, device)
        times = interleaved(dict(eager=eager_fn, compiled=compiled_fn),
                            device, warmup,
                            rounds if kind == 'inference' else train_rounds,
                            label=f'compile {kind}')
        eager, comp = (statistics.median(times['eager']),
                       statistics.median(times['compiled']))
        res[kind] = dict(
            setting=setting, eager_s=eager, compiled_s=comp,
            eager_range=[min(times['eager']), max(times['eager'])],
            compiled_range=[min(times['compiled']), max(times['compiled'])],
            speedup=eager / comp, compile_s=max(first - comp, 0.),
            first_call_s=first)
        del compiled, compiled_fn
        torch._dynamo.reset()
    return res
