# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Export an STViT model to ONNX and check it with onnxruntime.

    python tools/deployment/export_onnx.py CONFIG --shape H W \
        [--checkpoint CKPT] [--part model|features|backbone] [--out FILE]

What exports, by the config's toolbox (``--part``, default first):

* mmpretrain: ``model`` (the classifier's logits) or ``backbone``;
* mmseg: ``model`` (the segmentor's logits at the input size) or
  ``backbone``;
* mmdet: ``features`` (backbone + FPN) or ``backbone``. Mask R-CNN's whole
  forward does not export faithfully with torch's exporter (the message
  says why).

The exported graph takes one fixed-size float NCHW input, as the model's
data preprocessor leaves it (normalised RGB; the tool prints mean and std).
After exporting, the tool runs the ONNX file with onnxruntime and the model
with PyTorch on the same random input and prints the largest difference of
every output; it exits with status 1 when the largest relative difference
exceeds ``--rtol``.

The super-token neighbourhoods are exported as slices and pads; the
authors' identity-kernel convolutions (9x the work of a copy) only with
``--reference-graph``.
"""
import argparse
import os
import os.path as osp
import sys
import warnings

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)
# setuptools < 81 is pinned on purpose (mmengine needs pkg_resources): its
# deprecation notice at every import is not for the user of this tool
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export an STViT classifier, segmentor, detector '
        'features or backbone to ONNX and check it with onnxruntime')
    parser.add_argument('config', help='config file of an STViT model')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        required=True,
        help='input height and width of the exported graph')
    parser.add_argument(
        '--checkpoint',
        help='weights to export: an mm checkpoint or an official STViT file '
        '(default: random weights)')
    parser.add_argument(
        '--part',
        choices=['model', 'features', 'backbone'],
        help='what to export; default: model (classification, '
        'segmentation), features (detection)')
    parser.add_argument(
        '--out',
        help='ONNX file to write (default: '
        'work_dirs/onnx/<config>_<part>_<H>x<W>.onnx)')
    parser.add_argument(
        '--batch-size', type=int, default=1, help='batch size of the input')
    parser.add_argument(
        '--opset', type=int, default=17, help='ONNX opset version')
    parser.add_argument(
        '--reference-graph',
        action='store_true',
        help="export the authors' graph (identity-kernel convolutions for "
        'the super-token neighbourhoods) instead of the plain one')
    parser.add_argument(
        '--rtol',
        type=float,
        default=1e-4,
        help='largest accepted relative difference between onnxruntime and '
        'PyTorch (max |diff| / max |PyTorch output|)')
    parser.add_argument(
        '--no-check',
        action='store_true',
        help='do not run the exported file with onnxruntime')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value pairs')
    args = parser.parse_args(argv)
    if min(args.shape) < 1 or args.batch_size < 1:
        parser.error('--shape and --batch-size must be positive')
    if not osp.isfile(args.config):
        parser.error(f'config not found: {args.config}')
    return args


def build_model(cfg, task, checkpoint=None):
    """The config's model in eval mode (SyncBN reverted), with
    ``checkpoint`` loaded by mmengine, or its random init."""
    import importlib

    import torch
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    init_default_scope(task)
    registry = importlib.import_module(f'{task}.registry').MODELS
    model_cfg = cfg.model.copy()
    if task == 'mmpretrain':
        model_cfg.setdefault('data_preprocessor',
                             cfg.get('data_preprocessor', None))
    torch.manual_seed(0)
    model = registry.build(model_cfg)
    model = revert_sync_batchnorm(model)
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu',
                        logger='current')
    return model.eval()


def _size(path):
    return os.path.getsize(path) / 2**20


def main(argv=None):
    args = parse_args(argv)
    from mmengine.config import Config
    from mmengine.logging import MMLogger

    import mmstvit  # noqa: F401
    from mmstvit import export
    from mmstvit.builder import detect_task
    from mmstvit.cli.run_config import register_toolbox
    from mmstvit.inference import (InputError, require_stvit,
                                   resolve_checkpoint)

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    task = detect_task(cfg)
    try:
        require_stvit(cfg, args.config, task)
        checkpoint, note = resolve_checkpoint(args.checkpoint, task)
    except InputError as e:
        raise SystemExit(f'mmstvit: {e}')
    part = args.part or export.PARTS[task][0]
    if task == 'mmdet' and part == 'model':
        raise SystemExit(f'mmstvit: {export.DETECTOR_REASON}')
    if part not in export.PARTS[task]:
        raise SystemExit(
            f'mmstvit: --part {part} is not available for an {task} config; '
            f'choose one of {", ".join(export.PARTS[task])}')
    register_toolbox(task)
    # mm's own INFO lines (model building, checkpoint loading) stay quiet
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')
    try:
        return export_and_check(args, cfg, task, part, checkpoint, note)
    finally:
        logger.setLevel(level)


def export_and_check(args, cfg, task, part, checkpoint, note):
    import torch

    from mmstvit import export
    from mmstvit.builder import TASKS

    H, W = args.shape
    stem = osp.splitext(osp.basename(args.config))[0]
    out = args.out or osp.join('work_dirs', 'onnx',
                               f'{stem}_{part}_{H}x{W}.onnx')
    what = dict(
        model=dict(mmpretrain='classifier logits',
                   mmseg='segmentor logits at the input size'),
        features=dict(mmdet='backbone + neck feature maps'),
        backbone={t: 'STViT backbone stage maps' for t in TASKS})
    print(f'mmstvit export: {args.config} -> {what[part][task]} '
          f'(--part {part}), input {args.batch_size}x3x{H}x{W}, '
          + (f'weights {args.checkpoint}' if args.checkpoint else
             'random weights (no --checkpoint)'), flush=True)

    if note:
        print(f'  {note}')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = build_model(cfg, task, checkpoint)
    module = export.export_module(model, task, part)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(args.batch_size, 3, H, W, generator=generator)

    log_file = osp.splitext(out)[0] + '.log'
    info = export.export_onnx(
        module, inputs, out, opset=args.opset,
        reference=args.reference_graph, log_file=log_file)
    n_eye = export.identity_kernel_convs(out)
    nodes = sum(export.op_counts(out).values())
    print(f'  exported in {info["seconds"]:.1f} s: {out} '
          f'({_size(out):.1f} MiB, opset {args.opset}, {nodes} nodes, '
          f'{n_eye} identity-kernel convolutions'
          + (', reference graph' if args.reference_graph else '') + ')')
    print(f'  {info["warnings"]} exporter warnings (shape-dependent '
          f'branches fixed to {H}x{W}) in {log_file}')
    print(f'  input: {export.describe_input(cfg, task)}')
    if args.no_check:
        return dict(out=out, rows=None, identity_kernel_convs=n_eye)

    rows = check_with_onnxruntime(module, inputs, out, args.rtol)
    return dict(out=out, rows=rows, identity_kernel_convs=n_eye)


def check_with_onnxruntime(module, inputs, out, rtol):
    """Runs ``out`` in onnxruntime and ``module`` in PyTorch on ``inputs``,
    prints the difference of each output and returns the rows
    (:func:`mmstvit.export.compare_with_onnxruntime`); ``SystemExit(1)``
    when the largest relative difference is over ``rtol``."""
    from mmstvit import export
    timings = {}
    rows = export.compare_with_onnxruntime(
        module, inputs, out, timings=timings)
    print(f'  onnxruntime vs PyTorch on the same input (onnxruntime: '
          f'{timings["onnxruntime_ms"]:.0f} ms per run on this CPU):')
    for row in rows:
        if 'onnx_shape' in row:
            print(f'    {row["name"]} {row["shape"]}: onnxruntime gives shape '
                  f'{row["onnx_shape"]}')
            continue
        print(f'    {row["name"]} {tuple(row["shape"])}: max|diff| '
              f'{row["max_abs_diff"]:.2e}, max|PyTorch| '
              f'{row["max_abs_ref"]:.2e}, relative {row["relative"]:.2e}')
    worst = max(row['relative'] for row in rows)
    ok = worst <= rtol
    print(f'  largest relative difference {worst:.2e} '
          f'{"<=" if ok else ">"} {rtol:g}: '
          f'{"ok" if ok else "MISMATCH"}')
    if not ok:
        raise SystemExit(1)
    return rows


if __name__ == '__main__':
    main()
