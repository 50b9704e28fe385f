# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The benchmark of tools/analysis_tools/benchmark.py: speed, memory and
FLOPs of STViT backbones beside the usual peers (its docstring gives the
protocol). :func:`run` returns the results that :func:`.tables.benchmark`
prints."""
import os
import platform

import torch

from . import compiled, ddp
from .memory import release_memory
from .models import (ALL_MODELS, CLS_STOKEN, DET_STOKEN, build, count_flops,
                     stoken_for, trainable_params)
from .speed import fresh_train_peak, inference_times, training_times
from .support import machine, quiet_warnings, save
from .timing import log, summary

PROTOCOL = ('one process, warm, interleaved rounds, median (one call per '
            'model and round); peak memory in a fresh process per model')


def settings(args):
    """The inference settings ``(key, (H, W), batch, stoken)``, the
    training setting ``(key, (H, W), batch)`` and the rounds of a run."""
    if args.quick:
        return dict(
            infer=[('224_b8', (64, 64), 2, CLS_STOKEN),
                   ('224_b64', (64, 64), 4, CLS_STOKEN),
                   ('1280x800_b1', (96, 128), 1, DET_STOKEN)],
            train=('1280x800_b2', (96, 128), 2), warmup=0, rounds=1,
            train_rounds=1)
    return dict(
        infer=[('224_b8', (224, 224), 8, CLS_STOKEN),
               ('224_b64', (224, 224), 64, CLS_STOKEN),
               ('1280x800_b1', (800, 1280), 1, DET_STOKEN)],
        train=('1280x800_b2', (800, 1280), 2), warmup=args.warmup,
        rounds=args.rounds, train_rounds=args.train_rounds)


def chosen_models(args):
    """The models of the run; ``SystemExit`` naming what is wrong."""
    models = args.models or [m for m in ALL_MODELS
                             if m != 'official_stvit_s' or args.official]
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        raise SystemExit(f'benchmark: unknown model(s) {unknown}; choose '
                         f'from {", ".join(ALL_MODELS)}')
    if 'official_stvit_s' in models and not args.official:
        raise SystemExit('benchmark: official_stvit_s needs --official '
                         'PATH/TO/models/stvit.py (github.com/hhb072/STViT)')
    if args.official and not os.path.isfile(args.official):
        raise SystemExit(f'benchmark: --official {args.official} does not '
                         'exist')
    return models


def _inference(results, models, st, device, args):
    """Every inference setting, with FLOPs and GFLOP/s unless
    ``--no-flops``; saved after each setting."""
    for key, shape, batch, stoken in st['infer']:
        log(f'inference {key}: {len(models)} models')
        times, built = inference_times(
            models, (f'inference {key}', shape, batch, stoken), device,
            args.amp, st['warmup'], st['rounds'], args.official)
        for name in models:
            r = summary(times[name], batch)
            if not args.no_flops:
                # counted on an undeployed twin: the paper's protocol runs
                # the reference plan, which a deployed model cannot take
                twin = build(name, stoken_for(name, stoken),
                             args.official).to(device)
                twin.eval()  # (not chained: mmdet's ResNet.train is None)
                flops = count_flops(twin, shape, device)
                r['gflops_per_img'] = flops / 1e9
                r['gflop_s'] = flops * r['img_s'] / 1e9
                results['models'][name]['flops'][key] = flops
            results['models'][name]['inference'][key] = r
        del built
        release_memory()
        save(results, args.out)


def _training(results, models, st, device, threads, args):
    """The training step: peak memory first (fresh processes, while this
    one holds no training models: each child needs up to 10 GB at 1280x800
    batch 2), then the interleaved rounds."""
    key, shape, batch = st['train']
    peaks = {}
    for name in (() if args.no_memory else models):
        log(f'peak memory of one training step: {name}')
        peaks[name] = fresh_train_peak(name, device, shape, batch,
                                       args.official, threads, args.amp)
    log(f'training step {key}: {len(models)} models')
    times, _ = training_times(models, (f'train {key}', shape, batch), device,
                              args.amp, max(st['warmup'], 1),
                              st['train_rounds'], args.official)
    for name in models:
        r = summary(times[name], batch)
        results['models'][name]['train'] = dict(
            setting=key, seconds=r['seconds'],
            seconds_min=r['seconds_min'], seconds_max=r['seconds_max'],
            s_per_img=r['seconds'] / batch, peak_mib=peaks.get(name))
    save(results, args.out)


def _header(device, threads, st, args, models):
    return dict(
        machine=machine(device, cpu_count=os.cpu_count(), threads=threads,
                        torch=torch.__version__,
                        python=platform.python_version()),
        settings=dict(
            protocol=PROTOCOL, warmup=st['warmup'], rounds=st['rounds'],
            train_rounds=st['train_rounds'], quick=args.quick,
            dtype='float16 autocast' if args.amp else 'float32'),
        models={name: dict(inference={}, flops={}) for name in models})


def run(args):
    """The benchmark of ``args`` (benchmark.py's arguments): the results
    dict, also saved to ``args.out`` after each part."""
    import mmstvit  # noqa: F401
    quiet_warnings()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    models = chosen_models(args)
    st = settings(args)
    results = _header(device, threads, st, args, models)
    for name in models:
        results['models'][name]['params_m'] = trainable_params(
            build(name, stoken_for(name, CLS_STOKEN), args.official)) / 1e6
    if not args.no_infer:
        _inference(results, models, st, device, args)
    if not args.no_train:
        _training(results, models, st, device, threads, args)
    key, shape, batch = st['train']
    if args.ddp:
        log('ddp: STViT-S, 2 processes against 1')
        results['ddp'] = ddp.ddp_benchmark(device, shape, batch, threads,
                                           max(st['warmup'], 1),
                                           st['train_rounds'], args.amp)
        save(results, args.out)
    if args.compile:
        ishape, ibatch = st['infer'][0][1:3]
        results['compile'] = compiled.compile_benchmark(
            device, max(st['warmup'], 1), st['rounds'], st['train_rounds'],
            args.amp, shape, batch, ishape, ibatch)
    return results
