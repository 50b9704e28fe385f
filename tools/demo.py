# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The main job on the embedded toy data, end to end on a CPU.

    python tools/demo.py [--work-dir work_dirs/demo] [--data-root data]
    python -m mmstvit demo ...     (an installed mmstvit; runs and data go
                                    into the current folder)

A quick smoke run (tiny data elsewhere, one iteration; metrics then mean
nothing)::

    python tools/demo.py --work-dir /tmp/demo --data-root /tmp/demo/data \
        --num-train 2 --num-val 2 --iters 1

1. writes the toy data sets if they are absent (data/toy_coco, data/toy_ade);
2. evaluates Mask R-CNN STViT-S and UperNet STViT-S at random init
   (``tools/test.py``), the "before" column;
3. trains both with ``tools/train.py`` (configs/toy/*.py: the real S configs
   with toy data, image scale and schedule);
4. evaluates the trained models with ``tools/test.py --show-dir``;
5. prints bbox mAP, segm mAP and mIoU before and after, and where the
   prediction pictures are; ``<work-dir>/summary.json`` keeps them.

Each step is the command a user would type (``tools/test.py``,
``tools/train.py``), run as a subprocess. The console gets one short line per
phase, a line per logged training iteration (every 20 in the toy configs)
and the summary table last; everything the tools print (the mm logs:
configs, parameter groups, every logged iteration, warnings) goes to
``<work-dir>/<task>/{test_before,train,test_after}.log``, with the command
on its first line; mmengine also keeps its own logs in the run directories.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import time
import warnings
from collections import deque

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
#: where the data and runs go (relative paths) and the tools run: the
#: checkout, or the current folder for an installed package (whose tools
#: and configs are in mmstvit/.mim: python -m mmstvit demo)
HOME = os.getcwd() if osp.basename(ROOT) == '.mim' else ROOT
# setuptools < 81 is pinned on purpose (mmengine needs pkg_resources)
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

TASKS = [
    dict(
        name='det',
        title='Mask R-CNN STViT-S (toy COCO)',
        config='configs/toy/mask_rcnn_stvit_s_toy.py',
        metrics={
            'bbox mAP': 'coco/bbox_mAP',
            'segm mAP': 'coco/segm_mAP'
        },
        show_args=[]),  # mmdet draws every image
    dict(
        name='seg',
        title='UperNet STViT-S (toy ADE)',
        config='configs/toy/upernet_stvit_s_toy.py',
        metrics={'mIoU': 'mIoU'},
        show_args=['--interval', '5']),  # mmseg: every 5th image
]
#: What the trained toy models should reach (issue 4); printed, not enforced.
TARGETS = {'bbox mAP': 0.20, 'mIoU': 50.0}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train and evaluate STViT-S detection and segmentation '
        'on the embedded toy data (CPU)')
    parser.add_argument(
        '--work-dir', default='work_dirs/demo', help='where runs go')
    parser.add_argument(
        '--data-root', default='data', help='where the toy data sets are')
    parser.add_argument(
        '--iters', type=int, default=None,
        help='train this many iterations instead of the configs\' number '
        '(a quick smoke run)')
    parser.add_argument(
        '--tasks', nargs='+', default=['det', 'seg'], choices=['det', 'seg'])
    parser.add_argument(
        '--num-train', type=int, default=None,
        help='generate this many training images (default: the generator\'s '
        '200); with the default --data-root this rewrites data/')
    parser.add_argument(
        '--num-val', type=int, default=None,
        help='generate this many validation images (default: 50)')
    args = parser.parse_args(argv)
    for name in ('iters', 'num_train', 'num_val'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    return args


_TRAIN_LINE = re.compile(r'Iter\(train\)\s*\[\s*(\d+)/(\d+)\]')
_LOSS = re.compile(r'\bloss: ([0-9.eE+-]+)')
_ETA = re.compile(r'\beta: (\S+)')


def progress_line(line, start):
    """The console line for a logged training iteration of mmengine, or
    None for any other log line."""
    m = _TRAIN_LINE.search(line)
    if not m:
        return None
    loss = _LOSS.search(line)
    eta = _ETA.search(line)
    return (f'    iter {int(m.group(1)):>4d}/{m.group(2)}'
            + (f'  loss {float(loss.group(1)):.3f}' if loss else '')
            + f'  {time.time() - start:5.0f} s'
            + (f'  eta {eta.group(1)}' if eta else ''))


def run(cmd, log_path):
    """Runs a tool with its output going to ``log_path`` (the command on
    the first line); prints a progress line for every logged training
    iteration. Stops the demo, showing the end of the log, if it fails.
    Returns the seconds it took."""
    os.makedirs(osp.dirname(log_path), exist_ok=True)
    start = time.time()
    tail = deque(maxlen=40)
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    with open(log_path, 'w') as log:
        log.write('$ ' + ' '.join(shlex.quote(c) for c in cmd) + '\n')
        log.flush()
        proc = subprocess.Popen(
            cmd, cwd=HOME, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors='replace', env=env)
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip('\n'))
            shown = progress_line(line, start)
            if shown:
                print(shown, flush=True)
        proc.wait()
    if proc.returncode != 0:
        print('\n'.join(tail), file=sys.stderr)
        sys.exit(f'demo: `{" ".join(cmd)}` failed with exit code '
                 f'{proc.returncode}; the end of its output is above, all '
                 f'of it in {log_path}')
    return time.time() - start


def in_root(path):
    """A file of the checkout (tools/..., configs/...) as the tools are
    given it: relative where they run in the checkout, else absolute."""
    return path if HOME == ROOT else osp.join(ROOT, path)


def plural(n, word):
    return f'{n} {word}' + ('' if n == 1 else 's')


def fmt_metric(metric, value):
    if value is None:
        return 'n/a'
    return f'{value:.2f}' if metric == 'mIoU' else f'{value:.3f}'


def metrics_text(task, values):
    return ', '.join(f'{m} {fmt_metric(m, values.get(m))}'
                     for m in task['metrics'])


def data_options(args):
    """--cfg-options that point the toy configs at --data-root."""
    if osp.abspath(args.data_root) == osp.join(HOME, 'data'):
        return []
    coco = osp.join(osp.abspath(args.data_root), 'toy_coco') + '/'
    ade = osp.join(osp.abspath(args.data_root), 'toy_ade') + '/'
    return {
        'det': [
            f'train_dataloader.dataset.data_root={coco}',
            f'val_dataloader.dataset.data_root={coco}',
            f'test_dataloader.dataset.data_root={coco}',
            f'val_evaluator.ann_file={coco}annotations/instances_val.json',
            f'test_evaluator.ann_file={coco}annotations/instances_val.json',
        ],
        'seg': [
            f'train_dataloader.dataset.data_root={ade}',
            f'val_dataloader.dataset.data_root={ade}',
            f'test_dataloader.dataset.data_root={ade}',
        ]
    }


def random_init_checkpoint(config, path):
    """The model of ``config`` at its (seeded) random init, saved as an mm
    checkpoint, so that tools/test.py can evaluate it."""
    import torch

    from mmstvit.builder import build_model
    from mmstvit.cli.quiet import mm_log_level
    torch.manual_seed(0)
    # init_weights reports every parameter: not for the console
    with mm_log_level('ERROR'), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = build_model(osp.join(ROOT, config), keep_init_cfg=True)
        model.init_weights()
    os.makedirs(osp.dirname(path), exist_ok=True)
    torch.save(dict(state_dict=model.state_dict(), meta=dict(demo='init')),
               path)


def schedule(config, iters=None):
    """(training iterations, logging interval) of a toy config."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, config))
    every = cfg.default_hooks.logger.interval
    iters = iters or cfg.train_cfg.max_iters
    return iters, min(every, iters)


def latest_metrics(test_dir):
    """The metrics mmengine wrote for the newest test run under test_dir."""
    files = sorted(
        glob.glob(osp.join(test_dir, '*', '*.json')), key=osp.getmtime)
    for path in reversed(files):
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError:
                continue
        if isinstance(data, dict):
            return data
    raise SystemExit(f'demo: no metrics json found under {test_dir}')


def last_checkpoint(work_dir):
    path = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(path):
        raise SystemExit(f'demo: training wrote no checkpoint in {work_dir}')
    with open(path) as f:
        return f.read().strip()


def pictures(show_dir):
    found = []
    for ext in ('png', 'jpg'):
        found += glob.glob(osp.join(show_dir, '**', f'*.{ext}'),
                           recursive=True)
    return sorted(found)


def make_data(args):
    """Step 1: the toy data sets, written if absent."""
    from mmstvit.data.toy_data import format_report, generate_toy_data
    sizes = {
        k: v
        for k, v in (('num_train', args.num_train), ('num_val', args.num_val))
        if v is not None
    }
    print('[data]', flush=True)
    report = generate_toy_data(root=args.data_root, **sizes)
    print('\n'.join('  ' + line for line in format_report(report)),
          flush=True)


def cfg_opts(options):
    return ['--cfg-options'] + options if options else []


def evaluate(task, checkpoint, wd, wd_abs, phase, extra, show_dir=None):
    """``tools/test.py`` of ``task``'s config with ``checkpoint``: the
    seconds it took and the task's metrics."""
    show = ['--show-dir', show_dir] + task['show_args'] if show_dir else []
    seconds = run([
        sys.executable, in_root('tools/test.py'), in_root(task['config']),
        checkpoint, '--work-dir', osp.join(wd, phase)
    ] + show + cfg_opts(extra), osp.join(wd_abs, f'{phase}.log'))
    found = latest_metrics(osp.join(wd_abs, phase))
    return seconds, {k: found.get(v) for k, v in task['metrics'].items()}


def train(task, args, wd, wd_abs, extra):
    """``tools/train.py`` of ``task``'s config: seconds and checkpoint."""
    options = list(extra)
    if args.iters is not None:
        options += [
            f'train_cfg.max_iters={args.iters}',
            f'train_cfg.val_interval={args.iters}',
            f'default_hooks.checkpoint.interval={args.iters}'
        ]
    iters, every = schedule(task['config'], args.iters)
    print(f'  train {plural(iters, "iteration")} (a line every '
          f'{plural(every, "iteration")}):', flush=True)
    seconds = run(
        [sys.executable, in_root('tools/train.py'), in_root(task['config']),
         '--work-dir', wd] + cfg_opts(options), osp.join(wd_abs, 'train.log'))
    ckpt = last_checkpoint(wd_abs)
    print(f'  trained in {seconds:.0f} s: {ckpt}', flush=True)
    return seconds, ckpt


def run_task(task, args, extra, work_root):
    """Steps 2-4 for one task: its summary entry."""
    name = task['name']
    wd = osp.join(args.work_dir, name)
    wd_abs = osp.join(work_root, name)
    print(f'[{name}] {task["title"]}: {task["config"]}', flush=True)
    print('  evaluate at random init ...', end=' ', flush=True)
    init_ckpt = osp.join(wd_abs, 'random_init.pth')
    random_init_checkpoint(task['config'], init_ckpt)
    t_before, before = evaluate(task, init_ckpt, wd, wd_abs, 'test_before',
                                extra)
    print(f'{metrics_text(task, before)} ({t_before:.0f} s)', flush=True)
    t_train, ckpt = train(task, args, wd, wd_abs, extra)
    print('  evaluate the trained model ...', end=' ', flush=True)
    show_dir = osp.join(wd_abs, 'pictures')
    t_after, after = evaluate(task, ckpt, wd, wd_abs, 'test_after', extra,
                              show_dir)
    pics = pictures(show_dir) or pictures(osp.join(wd_abs, 'test_after'))
    print(f'{metrics_text(task, after)} ({t_after:.0f} s), '
          f'{plural(len(pics), "picture")}', flush=True)
    return dict(
        title=task['title'], config=task['config'], checkpoint=ckpt,
        before=before, after=after,
        seconds=dict(test_before=round(t_before, 1), train=round(t_train, 1),
                     test_after=round(t_after, 1)),
        pictures=pics,
        logs={k: osp.join(wd_abs, f'{k}.log')
              for k in ('test_before', 'train', 'test_after')})


def print_summary(summary, out):
    """Step 5: the metrics before and after, the pictures, the targets."""
    print('\n' + '=' * 72)
    print('mmstvit demo: STViT-S trained from random init on the toy data')
    print(f'{"model":34s} {"metric":9s} {"before":>8s} {"after":>8s}')
    for name, t in summary['tasks'].items():
        for metric in t['before']:
            b, a = t['before'][metric], t['after'][metric]
            print(f'{t["title"]:34s} {metric:9s} '
                  f'{fmt_metric(metric, b):>8s} {fmt_metric(metric, a):>8s}')
    for name, t in summary['tasks'].items():
        pics = t['pictures']
        print(f'{t["title"]}: {len(pics)} prediction pictures'
              + (f', e.g. {pics[0]}' if pics else ''))
        s = t['seconds']
        print(f'  time: test {s["test_before"]:.0f}s, train {s["train"]:.0f}s,'
              f' test {s["test_after"]:.0f}s')
    for metric, target in TARGETS.items():
        for t in summary['tasks'].values():
            if metric in t['after']:
                value = t['after'][metric]
                ok = value is not None and value >= target
                print(f'target {metric} >= {target:g}: '
                      f'{"met" if ok else "NOT met"}')
    print(f'total {summary["total_seconds"] / 60:.1f} min; summary: {out}')
    print('=' * 72)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    work_root = osp.join(HOME, args.work_dir) if not osp.isabs(
        args.work_dir) else args.work_dir
    print('mmstvit demo: STViT-S Mask R-CNN and UperNet from random init on '
          f'the toy data (CPU); full logs under {work_root}/<task>/*.log',
          flush=True)
    make_data(args)
    opts = data_options(args)
    summary = dict(tasks={})
    for task in TASKS:
        if task['name'] in args.tasks:
            extra = list(opts[task['name']]) if opts else []
            summary['tasks'][task['name']] = run_task(task, args, extra,
                                                      work_root)
    summary['total_seconds'] = round(time.time() - t0, 1)
    os.makedirs(work_root, exist_ok=True)
    out = osp.join(work_root, 'summary.json')
    with open(out, 'w') as f:
        json.dump(summary, f, indent=2)
    print_summary(summary, out)
    return summary


if __name__ == '__main__':
    main()
