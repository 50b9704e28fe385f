# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Speed, memory and FLOPs of STViT backbones beside the usual peers.

    python tools/analysis_tools/benchmark.py [--official PATH/TO/stvit.py]
        [--models stvit_s swin_t ...] [--device cpu|cuda] [--threads N]
        [--repeats 5] [--quick] [--out benchmark.json]

For every model, in one process and the same conditions (fp32, eval mode,
``torch.no_grad`` for inference):

* inference throughput (img/s) at 224x224, batch 8 and batch 64, and at
  1280x800, batch 1 (STViT with the detection super token sizes (16,8,2,1);
  (8,4,1,1) at 224, as the ImageNet models);
* one training step (forward, ``sum(mean of every output)``, backward) at
  1280x800, batch 2: its time and peak memory. On CUDA the peak is
  ``torch.cuda.max_memory_allocated`` above what was allocated before the
  step; on the CPU the step runs (and is timed) in a fresh child process and
  the peak is its peak resident memory during the first step (VmHWM, reset
  just before it) above its resident memory just before it, so allocator caches of other models
  do not leak in, and a step that runs out of memory is reported as failed
  instead of ending the run;
* FLOPs (mmengine's FlopAnalyzer, one multiply-add = 1 FLOP) and the GFLOP/s
  achieved at each inference setting.

Each timing is ``--repeats`` runs after ``--warmup`` runs; the table shows the
median and, in brackets, the min-max range. Peers come from the installed
toolboxes: mmdet's SwinTransformer (T/S/B), mmpretrain's ConvNeXt-T and
mmdet's ResNet-50. ``--official`` adds the authors' STViT-S (their
models/stvit.py file from https://github.com/hhb072/STViT, not shipped here).
"""
import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

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


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _outputs(out):
    return out if isinstance(out, (tuple, list)) else (out, )


def time_runs(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def summarise(times, batch):
    ips = sorted(batch / t for t in times)
    return dict(
        img_s=statistics.median(ips), img_s_min=ips[0], img_s_max=ips[-1],
        seconds=statistics.median(times), repeats=len(times))


def count_flops(model, shape):
    from mmengine.analysis import FlopAnalyzer
    x = torch.randn(1, 3, *shape)
    with torch.no_grad():
        return float(FlopAnalyzer(model, (x, )).total())


def inference(model, device, shape, batch, warmup, repeats):
    x = torch.randn(batch, 3, *shape, device=device)

    def step():
        with torch.no_grad():
            model(x)

    return summarise(time_runs(step, device, warmup, repeats), batch)


def train_step_fn(model, x):

    def step():
        model.zero_grad(set_to_none=True)
        loss = sum(o.float().mean() for o in _outputs(model(x)))
        loss.backward()

    return step


def _child_train(name, shape, batch, official, threads, repeats, queue):
    """Runs in a fresh process: one training step's peak RSS growth, then
    the step's time over ``repeats`` more runs."""
    torch.set_num_threads(threads)
    model = build(name, DET_STOKEN if 'stvit' in name else None, official)
    model.train()
    x = torch.randn(batch, 3, *shape)
    step = train_step_fn(model, x)
    before = _rss_kib()
    _reset_peak_rss()
    step()  # also the warm-up
    peak = _peak_rss_kib()
    times = time_runs(step, torch.device('cpu'), 0, repeats)
    queue.put(dict(peak_mib=max(peak - before, 0) / 1024., times=times))


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


def train_step(name, device, shape, batch, official, threads, warmup,
               repeats):
    """``(times, peak MiB)`` of one training step (see the module doc)."""
    if device.type == 'cuda':
        model = build(name, DET_STOKEN if 'stvit' in name else None,
                      official).to(device)
        model.train()  # (not chained: mmdet's Swin.train returns None)
        x = torch.randn(batch, 3, *shape, device=device)
        step = train_step_fn(model, x)
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return time_runs(step, device, max(warmup - 1, 0), repeats), peak
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_child_train,
        args=(name, shape, batch, official, threads, repeats, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        # e.g. -9: killed by the kernel for want of memory; reported, not
        # fatal, so the other models are still measured
        print(f'[benchmark] the training step of {name} failed (exit code '
              f'{proc.exitcode}'
              f'{": out of memory?" if proc.exitcode == -9 else ""})',
              flush=True)
        return None, None
    out = queue.get()
    return out['times'], out['peak_mib']


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Throughput, training step and FLOPs of STViT vs peers')
    parser.add_argument('--models', nargs='+', default=None,
                        help=f'subset of {ALL_MODELS} (default: all; '
                        'official_stvit_s only with --official)')
    parser.add_argument('--official', default=None,
                        help="path to the authors' models/stvit.py")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: all cores)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--quick', action='store_true',
                        help='small shapes and 1 repeat: checks the tool, '
                        'not the speed')
    parser.add_argument('--no-train', action='store_true',
                        help='skip the 1280x800 training step')
    parser.add_argument('--out', default='benchmark.json',
                        help='JSON file for the results')
    return parser.parse_args(argv)


def settings(args):
    if args.quick:
        return dict(
            infer=[('224_b8', (64, 64), 2, CLS_STOKEN),
                   ('224_b64', (64, 64), 4, CLS_STOKEN),
                   ('1280x800_b1', (96, 128), 1, DET_STOKEN)],
            train=('1280x800_b2', (96, 128), 2), warmup=0, repeats=1)
    return dict(
        infer=[('224_b8', (224, 224), 8, CLS_STOKEN),
               ('224_b64', (224, 224), 64, CLS_STOKEN),
               ('1280x800_b1', (800, 1280), 1, DET_STOKEN)],
        train=('1280x800_b2', (800, 1280), 2), warmup=args.warmup,
        repeats=args.repeats)


def run(args):
    import mmstvit  # noqa: F401
    from mmstvit.utils.launch import quiet_third_party_warnings
    quiet_third_party_warnings()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    models = args.models or [m for m in ALL_MODELS
                             if m != 'official_stvit_s' or args.official]
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
            warmup=st['warmup'], repeats=st['repeats'], quick=args.quick,
            dtype='float32'),
        models={})
    for name in models:
        is_stvit = 'stvit' in name
        res = dict(inference={}, flops={})
        print(f'[benchmark] {name}', flush=True)
        for key, shape, batch, stoken in st['infer']:
            model = build(name, stoken if is_stvit else None, args.official)
            model.to(device)
            model.eval()
            r = inference(model, device, shape, batch, st['warmup'],
                          st['repeats'])
            flops = count_flops(model, shape)
            r['gflops_per_img'] = flops / 1e9
            r['gflop_s'] = flops * r['img_s'] / 1e9
            res['inference'][key] = r
            res['flops'][key] = flops
        if not args.no_train:
            key, shape, batch = st['train']
            times, peak = train_step(name, device, shape, batch,
                                     args.official, threads, st['warmup'],
                                     max(st['repeats'] // 2, 1))
            res['train'] = dict(
                setting=key, peak_mib=peak,
                seconds=statistics.median(times) if times else None,
                seconds_min=min(times) if times else None,
                seconds_max=max(times) if times else None)
        res['params_m'] = sum(p.numel() for p in model.parameters()
                              if p.requires_grad) / 1e6
        results['models'][name] = res
    return results


def table(results):
    rows = ['| model | params | GFLOPs 224 | img/s 224 b8 | img/s 224 b64 | '
            'img/s 1280x800 b1 | GFLOP/s 224 b8 | train step 1280x800 b2 | '
            'train peak MiB |', '|' + '---|' * 9]
    for name, r in results['models'].items():
        inf = r['inference']

        def ips(key):
            v = inf[key]
            return f"{v['img_s']:.2f} ({v['img_s_min']:.2f}-{v['img_s_max']:.2f})"

        tr = r.get('train')
        rows.append(
            f"| {name} | {r['params_m']:.2f}M | "
            f"{inf['224_b8']['gflops_per_img']:.2f} | {ips('224_b8')} | "
            f"{ips('224_b64')} | {ips('1280x800_b1')} | "
            f"{inf['224_b8']['gflop_s']:.1f} | "
            + (f"{tr['seconds']:.2f} s | {tr['peak_mib']:.0f} |"
               if tr and tr['peak_mib'] is not None else
               'failed (out of memory?) | - |' if tr else '- | - |'))
    m = results['machine']
    rows.append('')
    rows.append(f"{m['device']} ({m['name']}, {m['threads']} threads), torch "
                f"{m['torch']}, fp32, median of {results['settings']['repeats']}"
                ' runs (min-max)')
    ours, theirs = (results['models'].get('stvit_s'),
                    results['models'].get('official_stvit_s'))
    if ours and theirs:
        rows.append('STViT-S (mmstvit) / STViT-S (authors) at 224 b8: '
                    f"{ours['inference']['224_b8']['img_s'] / theirs['inference']['224_b8']['img_s']:.2f}x")
    swin = results['models'].get('swin_t')
    if ours and swin:
        rows.append('STViT-S / Swin-T at 224 b8: '
                    f"{ours['inference']['224_b8']['img_s'] / swin['inference']['224_b8']['img_s']:.2f}x")
        if ours.get('train', {}).get('peak_mib') and \
                swin.get('train', {}).get('peak_mib'):
            rows.append('train peak memory STViT-S / Swin-T at 1280x800 b2: '
                        f"{ours['train']['peak_mib'] / swin['train']['peak_mib']:.2f}")
    return '\n'.join(rows)


def main(argv=None):
    args = parse_args(argv)
    results = run(args)
    text = table(results)
    results['table'] = text
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=2)
    print(text)
    print(f'\nwritten to {args.out}')
    return results


if __name__ == '__main__':
    main()
