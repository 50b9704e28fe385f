# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""fast_paths.py's measurement (its docstring gives the protocol): every
flag of the kernel plan turned off on its own, each variant timed in the
same interleaved rounds, its training step's peak in a fresh process."""
import statistics

import torch

from . import plans
from .memory import in_fresh_process, release_memory, step_peak_mib
from .models import CLS_STOKEN, DET_STOKEN
from .timing import inference_fn, interleaved, log, train_step_fn

VARIANTS = {  # name -> the flags changed from the plan users run
    'all fast paths': {},
    'neighbourhoods as identity convs': dict(neighbourhoods='conv'),
    'neighbourhoods inline (no operator)': dict(neighbourhoods='slices'),
    'no fused attention (sdpa)': dict(sdpa=False),
    'no memory-lean training': dict(lean_training=False),
    'no in-place sums': dict(inplace=False),
    'no oneDNN post-ops': dict(onednn=False),
}
INFERENCE_ONLY = ('inplace', 'onednn')
TRAINING_ONLY = ('lean_training', )
#: a tiny STViT for ``--quick`` (checks the tool, not the speed)
QUICK_ARCH = dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                  num_heads=[1, 2, 3, 4])


def plan(variant: str, inference: bool):
    """The variant's plan, or None where its flag does not apply."""
    flags = VARIANTS[variant]
    only = TRAINING_ONLY if inference else INFERENCE_ONLY
    if any(f in flags for f in only):
        return None
    base = plans.deploy_plan() if inference else plans.fast_plan()
    return plans.replaced(base, **flags)


def settings(quick):
    """``(arch, inference settings (key, (H, W), batch, stoken), training
    setting (key, (H, W), batch))``: the benchmark's, or tiny ones."""
    if quick:
        return (QUICK_ARCH,
                [('224 b8', (64, 64), 2, CLS_STOKEN),
                 ('1280x800 b1', (64, 96), 1, DET_STOKEN)],
                ('1280x800 b2 step', (64, 96), 2))
    return ('s', [('224 b8', (224, 224), 8, CLS_STOKEN),
                  ('1280x800 b1', (800, 1280), 1, DET_STOKEN)],
            ('1280x800 b2 step', (800, 1280), 2))


def build(arch, stoken, kernels, inference):
    """STViT ``arch`` with the plan ``kernels`` (seeded), for inference
    (eval, no gradients) or training."""
    from mmstvit import STViT
    torch.manual_seed(0)
    model = STViT(arch=arch, stoken_size=stoken, drop_path_rate=0.,
                  **{plans.MODEL_ARG: kernels})
    if inference:
        model.requires_grad_(False)
        model.eval()
    return model


def _child_peak(arch, shape, batch, variant):
    model = build(arch, DET_STOKEN, plan(variant, False), False).train()
    step = train_step_fn(model, torch.randn(batch, 3, *shape))
    return step_peak_mib(step, torch.device('cpu'))


def peak_memory(arch, shape, batch, variant):
    """MiB the variant's training step adds at its peak (fresh process);
    None if that process fails."""
    return in_fresh_process(_child_peak, arch, shape, batch, variant)[0]


def time_variants(fns, label, rounds, warmup, results, key):
    """Times ``fns`` (variant -> call) in interleaved rounds and stores each
    variant's median under ``results[variant][key]``; frees the models."""
    log(f'{label}: {len(fns)} variants')
    times = interleaved(fns, torch.device('cpu'), warmup, rounds,
                        label=label)
    for v, t in times.items():
        results[v][key] = statistics.median(t)
    fns.clear()
    release_memory()


def measure(quick, rounds, train_rounds, warmup):
    """Every variant in every setting: ``(results, setting names)``, the
    results variant -> setting -> seconds (or MiB for the peak)."""
    cpu = torch.device('cpu')
    arch, infer, (key, shape, batch) = settings(quick)
    results = {v: {} for v in VARIANTS}
    names = [k for k, *_ in infer] + [key, 'train peak MiB']
    for ikey, ishape, ibatch, stoken in infer:
        fns = {v: inference_fn(build(arch, stoken, plan(v, True), True),
                               torch.randn(ibatch, 3, *ishape), cpu, False)
               for v in VARIANTS if plan(v, True) is not None}
        time_variants(fns, f'inference {ikey}', rounds, warmup, results,
                      ikey)
    fns = {v: train_step_fn(build(arch, DET_STOKEN, plan(v, False),
                                  False).train(),
                            torch.randn(batch, 3, *shape))
           for v in VARIANTS if plan(v, False) is not None}
    time_variants(fns, f'training {key}', train_rounds, warmup, results, key)
    for v in VARIANTS:
        if plan(v, False) is not None:
            log(f'peak memory of the training step: {v}')
            results[v]['train peak MiB'] = peak_memory(arch, shape, batch, v)
    return results, names
