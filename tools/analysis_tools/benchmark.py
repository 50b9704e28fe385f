# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Speed, memory and FLOPs of STViT backbones beside the usual peers.

    python tools/analysis_tools/benchmark.py [--models stvit_s swin_t ...]
        [--device cpu|cuda] [--amp] [--threads N] [--rounds 5]
        [--train-rounds 3] [--ddp] [--compile] [--official PATH/TO/stvit.py]
        [--quick] [--out benchmark.json]

The protocol, and why
---------------------
Figures are compared between models, so every model is timed in **one
process, warm, in interleaved rounds**: all the models of a setting are
built, each runs ``--warmup`` times, then each round times one call of every
model in turn (CUDA synchronised around it; not ``torch.utils.benchmark``,
whose ``timeit`` adds two warm-up calls to every measurement: see
:func:`interleaved`). The figure is the **median over rounds**, shown with the
min-max range of the rounds. On a shared virtual machine the speed drifts by
10-20% over minutes; interleaving spreads that drift over all models
alike, and the median drops a round that another job disturbed. An earlier
version timed each model's training step in a fresh child process, one model
after another: those figures moved by more than the differences between
models from one run to the next (STViT-S vs Swin-T: 12.42 vs 11.20 s there,
7.08 vs 8.02 s in one process). Peak memory is the one thing measured in a
fresh child process per model (its own step, not timed), so that allocator
caches of other models do not leak in: on CPU the growth of the peak
resident memory (VmHWM) during one step, on CUDA
``torch.cuda.max_memory_allocated`` above what was allocated before it.

Settings (fp32, or ``--amp`` for fp16 autocast on CUDA):

* inference (eval mode, ``torch.no_grad``) at 224x224 batch 8 and 64, and at
  1280x800 batch 1; STViT with the ImageNet super token sizes (8, 4, 1, 1) at
  224 and the detection ones (16, 8, 2, 1) at 1280x800;
* one training step (forward, ``sum(mean of every output)``, backward) at
  1280x800 batch 2: seconds per step and per image, and peak memory;
* FLOPs (mmengine's FlopAnalyzer, one multiply-add = 1 FLOP) and the GFLOP/s
  achieved at each inference setting;
* ``--ddp``: the training step of STViT-S under DistributedDataParallel with
  2 processes (gloo on CPU, each with half the threads; nccl on 2 GPUs)
  against one process with the same threads and per-process batch, in the
  same interleaved rounds, and the same DDP run with the parameters laid out
  as before the layout fix (contiguous), with the number of "Grad strides do
  not match bucket view strides" warnings each raised. Parallel efficiency =
  one process's step time / the DDP step time (1.0: the second process adds
  its images at no cost);
* ``--compile``: ``torch.compile`` (inductor) of STViT-S for inference at
  224 batch 8 and for the training step: the compile time (the first call)
  and the speed against eager, interleaved. It is a benchmark, not a test
  (about 1 and 2 minutes of compiling on 2 cores). The 3x3 super-token
  gathers/scatters are opaque operators under compile; before they were,
  inductor's code generation for STViT-S inference had not finished after
  20 minutes (nested masked loads of their padded slices).

Peers come from the installed toolboxes: mmdet's SwinTransformer (T/S/B),
mmpretrain's ConvNeXt-T and mmdet's ResNet-50. ``--official`` adds the
authors' STViT-S (their models/stvit.py from https://github.com/hhb072/STViT,
not shipped here).
"""
import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import socket
import statistics
import sys
import time
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from mmstvit.engine.deploy import switch_to_deploy  # noqa: E402

DET_STOKEN = (16, 8, 2, 1)
CLS_STOKEN = (8, 4, 1, 1)
SWIN = {
    'swin_t': dict(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    'swin_s': dict(embed_dims=96, depths=[2, 2, 18, 2],
                   num_heads=[3, 6, 12, 24]),
    'swin_b': dict(embed_dims=128, depths=[2, 2, 18, 2],
                   num_heads=[4, 8, 16, 32]),
}
ALL_MODELS = ['stvit_s', 'stvit_b', 'stvit_l', 'official_stvit_s', 'swin_t',
              'swin_s', 'swin_b', 'convnext_t', 'resnet50']
GRAD_STRIDE_WARNING = 'Grad strides do not match bucket view strides'


def log(msg):
    """Progress for the person watching (stderr, so stdout is the tables)."""
    print(f'[benchmark {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr,
          flush=True)


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------


class _OfficialBackbone(torch.nn.Module):
    """The authors' STViT without its classification tail."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        from mmstvit.utils.official import official_backbone_features
        return tuple(official_backbone_features(self.model, x))


def build(name, stoken_size, official=None):
    """The backbone ``name`` (a module returning its stage outputs)."""
    if name.startswith('stvit_'):
        from mmstvit import STViT
        return STViT(arch=name[-1], stoken_size=stoken_size,
                     drop_path_rate=0.)
    if name == 'official_stvit_s':
        from mmstvit.utils.official import build_official_model
        return _OfficialBackbone(
            build_official_model(official, 'small', stoken_size=stoken_size))
    if name in SWIN:
        from mmdet.models.backbones import SwinTransformer
        return SwinTransformer(
            window_size=7, drop_path_rate=0., out_indices=(0, 1, 2, 3),
            **SWIN[name])
    if name == 'convnext_t':
        from mmpretrain.models.backbones import ConvNeXt
        return ConvNeXt(arch='tiny', out_indices=(0, 1, 2, 3),
                        gap_before_final_norm=False, drop_path_rate=0.)
    if name == 'resnet50':
        from mmdet.models.backbones import ResNet
        return ResNet(depth=50, out_indices=(0, 1, 2, 3))
    raise KeyError(f'benchmark: unknown model {name!r}; choose from '
                   f'{", ".join(ALL_MODELS)}')


def stoken_for(name, stoken):
    return stoken if 'stvit' in name else None


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------


def _outputs(out):
    return out if isinstance(out, (tuple, list)) else (out, )


def autocast(device, amp):
    """Autocast for ``amp``: False (off), True (fp16, the ``--amp`` of this
    benchmark) or a dtype (``torch.bfloat16`` for CPU AMP in gpu_check)."""
    if isinstance(amp, torch.dtype):
        return torch.autocast(device.type, dtype=amp)
    return torch.autocast(device.type, dtype=torch.float16, enabled=amp)


def inference_fn(model, x, device, amp):

    def step():
        with torch.no_grad(), autocast(device, amp):
            model(x)

    return step


def train_step_fn(model, x, device=None, amp=False):
    device = device or x.device

    def step():
        model.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = sum(o.float().mean() for o in _outputs(model(x)))
        loss.backward()

    return step


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


#: the clock of :func:`timed`: wall time; tools that measure on a shared
#: machine may switch to ``time.process_time`` (CPU seconds, one thread)
CLOCK = time.perf_counter


def timed(fn, device):
    """Seconds one call of ``fn`` takes (by :data:`CLOCK`), CUDA
    synchronised around it."""
    _sync(device)
    t = CLOCK()
    fn()
    _sync(device)
    return CLOCK() - t


def interleaved(fns, device, warmup, rounds, label=''):
    """Times every function of ``fns`` (name -> callable) in ``rounds``
    interleaved rounds after ``warmup`` calls each; returns name -> the
    list of per-round seconds (one call per model and round).

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
    _sync(device)
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
        if rounds > 1:
            log(f'{label}: round {r + 1}/{rounds}')
    return times


def summary(times, batch):
    ips = sorted(batch / t for t in times)
    return dict(img_s=statistics.median(ips), img_s_min=ips[0],
                img_s_max=ips[-1], seconds=statistics.median(times),
                seconds_min=min(times), seconds_max=max(times),
                rounds=len(times))


def count_flops(model, shape, device):
    from mmengine.analysis import FlopAnalyzer

    from mmstvit.models.backbones.kernels import use_kernels
    from mmstvit.tool_support import mm_log_level
    x = torch.randn(1, 3, *shape, device=device)
    # "unsupported operator" lists, per model; STViT counted with the
    # paper's protocol (its reference plan)
    with mm_log_level('ERROR'), torch.no_grad(), use_kernels(model,
                                                              'reference'):
        analyzer = FlopAnalyzer(model, (x, ))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        return float(analyzer.total())


# ---------------------------------------------------------------------------
# peak memory: one training step in a fresh process
# ---------------------------------------------------------------------------


def _child_peak(name, device, shape, batch, official, threads, amp, queue):
    torch.set_num_threads(threads)
    device = torch.device(device)
    model = build(name, stoken_for(name, DET_STOKEN), official).to(device)
    model.train()
    x = torch.randn(batch, 3, *shape, device=device)
    queue.put(step_peak_mib(train_step_fn(model, x, device, amp), device))


def step_peak_mib(step, device):
    """MiB one call of ``step`` adds at its peak: on CUDA
    ``torch.cuda.max_memory_allocated`` above what was allocated before it,
    on CPU the growth of the process's peak resident memory (VmHWM; memory
    the allocator kept from earlier work is reused and not counted, hence
    the fresh process of :func:`peak_memory`)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    before = _rss_kib()
    _reset_peak_rss()
    step()
    return max(_peak_rss_kib() - before, 0) / 1024.


def _reset_peak_rss():
    """Linux: restart the process's peak RSS (VmHWM) from its current RSS."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')


def _peak_rss_kib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return float(line.split()[1])
    raise RuntimeError('benchmark: no VmHWM in /proc/self/status')


def _rss_kib():
    with open('/proc/self/statm') as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf('SC_PAGE_SIZE') / 1024.


def peak_memory(name, device, shape, batch, official, threads, amp):
    """MiB one training step adds at its peak, in a fresh process; None if
    that process fails (e.g. killed for want of memory: reported, not
    fatal, so the other models are still measured)."""
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_peak,
                       args=(name, str(device), shape, batch, official,
                             threads, amp, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        log(f'the training step of {name} failed in its own process (exit '
            f'code {proc.exitcode}'
            f'{": out of memory?" if proc.exitcode == -9 else ""})')
        return None
    return queue.get()


# ---------------------------------------------------------------------------
# DDP: 2 processes against 1
# ---------------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, device, shape, batch, threads, warmup,
                rounds, amp, queue):
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
        _ddp_rounds(rank, device, shape, batch, warmup, rounds, amp, queue)
    finally:
        # the DDP wrappers holding the group went with _ddp_rounds' frame
        from mmstvit.tool_support import release_process_group
        release_process_group()


def _ddp_rounds(rank, device, shape, batch, warmup, rounds, amp, queue):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    import mmstvit  # noqa: F401
    x = torch.randn(batch, 3, *shape, device=device)
    torch.manual_seed(0)
    single = build('stvit_s', DET_STOKEN).to(device).train()
    torch.manual_seed(0)
    fixed = build('stvit_s', DET_STOKEN).to(device).train()
    torch.manual_seed(0)
    before = build('stvit_s', DET_STOKEN).to(device).train()
    from mmstvit.models.backbones import kernels
    kernels.store_contiguous(before)  # the layout before the fix
    counts = {}
    steps = {}
    for name, model in (('ddp', fixed), ('ddp_before_fix', before)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            wrapped = DDP(model)
            step = train_step_fn(wrapped, x, device, amp)
            step()  # the first step builds the buckets and may warn
        counts[name] = sum(GRAD_STRIDE_WARNING in str(w.message)
                           for w in caught)
        steps[name] = step
    single_step = train_step_fn(single, x, device, amp)
    times = {'one process': [], 'ddp': [], 'ddp_before_fix': []}
    for r in range(warmup + rounds):
        # one process alone (rank 0; rank 1 waits at the barrier)
        dist.barrier()
        t = timed(single_step, device) if rank == 0 else None
        dist.barrier()
        got = {'one process': t}
        for name in ('ddp', 'ddp_before_fix'):
            dist.barrier()
            got[name] = timed(steps[name], device)
        if r >= warmup and rank == 0:
            for name, value in got.items():
                times[name].append(value)
            log(f'ddp: round {r - warmup + 1}/{rounds}')
    if rank == 0:
        queue.put(dict(times=times, warnings=counts))


def ddp_benchmark(device, shape, batch, threads, warmup, rounds, amp):
    """The DDP comparison of the module doc, on 2 processes."""
    if device.type == 'cuda' and torch.cuda.device_count() < 2:
        log('--ddp on CUDA needs 2 GPUs; skipped')
        return None
    per_process = max(threads // 2, 1) if device.type == 'cpu' else threads
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_ddp_worker,
                    args=(rank, 2, port, str(device), shape, batch,
                          per_process, warmup, rounds, amp, queue))
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
    out = queue.get()
    res = dict(setting=f'{shape[1]}x{shape[0]} b{batch} per process',
               threads_per_process=per_process, rows={})
    single = statistics.median(out['times']['one process'])
    for name, times in out['times'].items():
        med = statistics.median(times)
        res['rows'][name] = dict(
            seconds=med, seconds_min=min(times), seconds_max=max(times),
            processes=1 if name == 'one process' else 2,
            img_s=(1 if name == 'one process' else 2) * batch / med,
            efficiency=None if name == 'one process' else single / med,
            grad_stride_warnings=out['warnings'].get(name))
    return res


# ---------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------


def compile_benchmark(device, warmup, rounds, train_rounds, amp, train_shape,
                      train_batch, infer_shape=(224, 224), infer_batch=8):
    """Eager against ``torch.compile`` for STViT-S: compile time and
    speed, inference and training step, interleaved."""
    if device.type == 'cpu':
        # inductor imports cpp_extension, which says "No CUDA runtime is
        # found" when a CUDA toolkit is installed but no GPU: nothing to
        # act on for a CPU benchmark
        logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)
    res = {}
    for kind in ('inference', 'train'):
        torch.manual_seed(0)
        if kind == 'inference':
            model = build('stvit_s', CLS_STOKEN).to(device).eval()
            x = torch.randn(infer_batch, 3, *infer_shape, device=device)
            make = inference_fn
            setting = f'{infer_shape[0]} b{infer_batch}'
        else:
            model = build('stvit_s', DET_STOKEN).to(device).train()
            x = torch.randn(train_batch, 3, *train_shape, device=device)
            make = train_step_fn
            setting = f'{train_shape[1]}x{train_shape[0]} b{train_batch}'
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


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


def release_memory():
    """Frees what the models of a finished setting held and hands glibc's
    free heap back to the system, so the next setting (and the children
    spawned for peak memory) start from a small process."""
    import ctypes
    import gc
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def save(results, path):
    """Writes the results so far (a long run that stops keeps them)."""
    with open(path, 'w') as f:
        json.dump(results, f, indent=2)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Throughput, training step, memory and FLOPs of STViT '
        'vs peers (one process, warm, interleaved rounds, medians)')
    parser.add_argument('--models', nargs='+', default=None,
                        help=f'subset of {ALL_MODELS} (default: all; '
                        'official_stvit_s only with --official)')
    parser.add_argument('--official', default=None,
                        help="path to the authors' models/stvit.py")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu')
    parser.add_argument('--amp', action='store_true',
                        help='fp16 autocast (CUDA)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: all cores)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed calls per model before the rounds')
    parser.add_argument('--rounds', type=int, default=5,
                        help='interleaved rounds of the inference settings')
    parser.add_argument('--train-rounds', type=int, default=3,
                        help='interleaved rounds of the training step')
    parser.add_argument('--repeats', type=int, default=None,
                        help=argparse.SUPPRESS)  # the old name of --rounds
    parser.add_argument('--no-infer', action='store_true',
                        help='skip the inference settings')
    parser.add_argument('--no-train', action='store_true',
                        help='skip the 1280x800 training step')
    parser.add_argument('--no-memory', action='store_true',
                        help='skip the peak-memory processes')
    parser.add_argument('--no-flops', action='store_true',
                        help='skip the FLOP counts')
    parser.add_argument('--ddp', action='store_true',
                        help='also 2-process DDP against one process '
                        '(STViT-S training step)')
    parser.add_argument('--compile', action='store_true',
                        help='also torch.compile against eager (STViT-S)')
    parser.add_argument('--quick', action='store_true',
                        help='small shapes and 1 round: checks the tool, '
                        'not the speed')
    parser.add_argument('--out', default='benchmark.json',
                        help='JSON file for the results')
    args = parser.parse_args(argv)
    if args.repeats is not None:
        args.rounds = args.repeats
    if args.amp and args.device == 'cpu':
        parser.error('--amp is fp16 autocast on CUDA; on the CPU the '
                     'benchmark runs fp32 (drop --amp)')
    return args


def settings(args):
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


def run(args):
    import mmstvit  # noqa: F401
    from mmstvit.tool_support import quiet_third_party_warnings
    quiet_third_party_warnings()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
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
    st = settings(args)
    results = dict(
        machine=dict(
            device=str(device),
            name=(torch.cuda.get_device_name(device) if device.type == 'cuda'
                  else platform.processor() or platform.machine()),
            cpu_count=os.cpu_count(), threads=threads,
            torch=torch.__version__, python=platform.python_version()),
        settings=dict(
            protocol='one process, warm, interleaved rounds, median '
            '(one call per model and round); peak memory in a fresh process '
            'per model',
            warmup=st['warmup'], rounds=st['rounds'],
            train_rounds=st['train_rounds'], quick=args.quick,
            dtype='float16 autocast' if args.amp else 'float32'),
        models={name: dict(inference={}, flops={}) for name in models})
    for name in models:
        model = build(name, stoken_for(name, CLS_STOKEN), args.official)
        results['models'][name]['params_m'] = sum(
            p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    if not args.no_infer:
        for key, shape, batch, stoken in st['infer']:
            log(f'inference {key}: {len(models)} models')
            built = {}
            fns = {}
            for name in models:
                model = build(name, stoken_for(name, stoken), args.official)
                model.to(device).eval()
                switch_to_deploy(model)  # STViT: as infer.py / test.py run it
                built[name] = model
                x = torch.randn(batch, 3, *shape, device=device)
                fns[name] = inference_fn(model, x, device, args.amp)
            times = interleaved(fns, device, st['warmup'], st['rounds'],
                                label=f'inference {key}')
            for name in models:
                r = summary(times[name], batch)
                if not args.no_flops:
                    flops = count_flops(built[name], shape, device)
                    r['gflops_per_img'] = flops / 1e9
                    r['gflop_s'] = flops * r['img_s'] / 1e9
                    results['models'][name]['flops'][key] = flops
                results['models'][name]['inference'][key] = r
            del built, fns
            release_memory()
            save(results, args.out)
    if not args.no_train:
        key, shape, batch = st['train']
        # peak memory first, while this process holds no training models:
        # each child needs up to 10 GB at 1280x800 batch 2
        peaks = {}
        if not args.no_memory:
            for name in models:
                log(f'peak memory of one training step: {name}')
                peaks[name] = peak_memory(name, device, shape, batch,
                                          args.official, threads, args.amp)
        log(f'training step {key}: {len(models)} models')
        fns = {}
        for name in models:
            model = build(name, stoken_for(name, DET_STOKEN), args.official)
            model.to(device)
            model.train()  # (not chained: mmdet's Swin.train returns None)
            x = torch.randn(batch, 3, *shape, device=device)
            fns[name] = train_step_fn(model, x, device, args.amp)
        times = interleaved(fns, device, max(st['warmup'], 1),
                            st['train_rounds'], label=f'train {key}')
        del fns, model, x
        release_memory()
        for name in models:
            r = summary(times[name], batch)
            results['models'][name]['train'] = dict(
                setting=key, seconds=r['seconds'],
                seconds_min=r['seconds_min'], seconds_max=r['seconds_max'],
                s_per_img=r['seconds'] / batch, peak_mib=peaks.get(name))
        save(results, args.out)
    if args.ddp:
        key, shape, batch = st['train']
        log('ddp: STViT-S, 2 processes against 1')
        results['ddp'] = ddp_benchmark(device, shape, batch, threads,
                                       max(st['warmup'], 1),
                                       st['train_rounds'], args.amp)
        save(results, args.out)
    if args.compile:
        key, shape, batch = st['train']
        ishape, ibatch = st['infer'][0][1:3]
        results['compile'] = compile_benchmark(
            device, max(st['warmup'], 1), st['rounds'], st['train_rounds'],
            args.amp, shape, batch, ishape, ibatch)
    return results


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------

LABELS = {'official_stvit_s': "official_stvit_s (authors' code)",
          'swin_t': 'swin_t (mmdet)', 'swin_s': 'swin_s (mmdet)',
          'swin_b': 'swin_b (mmdet)', 'convnext_t': 'convnext_t (mmpretrain)',
          'resnet50': 'resnet50 (mmdet)'}


def _range(v, fmt='{:.2f}'):
    return (fmt.format(v['img_s']) + ' (' + fmt.format(v['img_s_min']) +
            '-' + fmt.format(v['img_s_max']) + ')')


def table(results):
    rows = []
    m = results['machine']
    s = results['settings']
    models = results['models']
    have_infer = any(r['inference'] for r in models.values())
    if have_infer:
        rows += ['| model | params | GFLOPs 224 | img/s 224 b8 | img/s 224 b64 '
                 '| img/s 1280x800 b1 | GFLOP/s 224 b8 |', '|' + '---|' * 7]
        for name, r in models.items():
            inf = r['inference']
            gf = inf['224_b8'].get('gflops_per_img')
            rate = inf['224_b8'].get('gflop_s')
            rows.append(
                f"| {LABELS.get(name, name)} | {r['params_m']:.2f}M | "
                f"{'-' if gf is None else f'{gf:.2f}'} | "
                f"{_range(inf['224_b8'])} | {_range(inf['224_b64'])} | "
                f"{_range(inf['1280x800_b1'])} | "
                f"{'-' if rate is None else f'{rate:.1f}'} |")
        rows.append('')
    if any('train' in r for r in models.values()):
        rows += ['| model | train step 1280x800 b2 | s / image | '
                 'train peak MiB |', '|' + '---|' * 4]
        for name, r in models.items():
            tr = r['train']
            peak = tr['peak_mib']
            rows.append(
                f"| {LABELS.get(name, name)} | {tr['seconds']:.2f} s "
                f"({tr['seconds_min']:.2f}-{tr['seconds_max']:.2f}) | "
                f"{tr['s_per_img']:.2f} | "
                f"{'-' if peak is None else f'{peak:.0f}'} |")
        rows.append('')
    rows.append(
        f"{m['device']} ({m['name']}, {m['threads']} threads), torch "
        f"{m['torch']}, {s['dtype']}; {s['protocol']}: "
        f"{s['rounds']} inference rounds, {s['train_rounds']} training "
        'rounds (min-max of the rounds in brackets)')
    ours = models.get('stvit_s')
    for other, label in (('official_stvit_s', 'STViT-S (authors)'),
                         ('swin_t', 'Swin-T')):
        theirs = models.get(other)
        if not (ours and theirs):
            continue
        if ours['inference'] and theirs['inference']:
            ratio = (ours['inference']['224_b8']['img_s'] /
                     theirs['inference']['224_b8']['img_s'])
            rows.append(f'STViT-S / {label} img/s at 224 b8: {ratio:.2f}x')
        if 'train' in ours and 'train' in theirs:
            rows.append(
                f'STViT-S / {label} training step time at 1280x800 b2: '
                f"{ours['train']['seconds'] / theirs['train']['seconds']:.2f}")
    ddp = results.get('ddp')
    if ddp:
        rows += ['', f"DDP, STViT-S training step at {ddp['setting']}, "
                 f"{ddp['threads_per_process']} thread(s) per process:", '',
                 '| run | processes | step s | img/s | parallel efficiency '
                 '| grad-stride warnings |', '|' + '---|' * 6]
        names = {'one process': 'one process (no DDP)',
                 'ddp': 'DDP, parameters channels last (now)',
                 'ddp_before_fix': 'DDP, parameters contiguous (before)'}
        for name, r in ddp['rows'].items():
            eff = r['efficiency']
            warn = r['grad_stride_warnings']
            rows.append(
                f"| {names[name]} | {r['processes']} | {r['seconds']:.2f} "
                f"({r['seconds_min']:.2f}-{r['seconds_max']:.2f}) | "
                f"{r['img_s']:.2f} | {'-' if eff is None else f'{eff:.2f}'} "
                f"| {'-' if warn is None else warn} |")
    comp = results.get('compile')
    if comp:
        rows += ['', 'torch.compile (inductor) of STViT-S against eager:', '',
                 '| | setting | eager s | compiled s | speed-up | compile s |',
                 '|' + '---|' * 6]
        for kind, r in comp.items():
            er, cr = r['eager_range'], r['compiled_range']
            rows.append(
                f"| {kind} | {r['setting']} | {r['eager_s']:.3f} "
                f"({er[0]:.3f}-{er[1]:.3f}) | {r['compiled_s']:.3f} "
                f"({cr[0]:.3f}-{cr[1]:.3f}) | {r['speedup']:.2f}x | "
                f"{r['compile_s']:.0f} |")
    return '\n'.join(rows)


def main(argv=None):
    args = parse_args(argv)
    results = run(args)
    text = table(results)
    results['table'] = text
    save(results, args.out)
    print(text)
    print(f'\nwritten to {args.out}')
    return results


if __name__ == '__main__':
    main()
