# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Test (and evaluate) an STViT model with mmdet, mmseg or mmpretrain.

One entry point for the three toolboxes: the config's ``default_scope``
says which, and ``--out``, ``--show``, ``--show-dir`` and ``--tta`` behave
as in that toolbox's ``tools/test.py``:

* ``--out``: mmdet and mmpretrain dump predictions to a ``.pkl`` file
  (mmpretrain: ``--out-item metrics`` dumps the metrics instead); mmseg
  writes the predicted maps into the directory ``--out``.
* ``--show-dir DIR``: pictures of the predictions, drawn by the toolbox's
  visualization hook (``default_hooks.visualization``), under the run's
  work dir / timestamp (mmdet, mmpretrain) or in ``DIR`` (mmseg).
* ``--tta``: test-time augmentation with the config's ``tta_model`` and
  ``tta_pipeline`` (mmdet and mmpretrain make default ones if absent).

CHECKPOINT may be an mm checkpoint or, for a classification config, one of
the authors' original files (``stvit-small-224.pth`` ...), which is
converted while it loads. It must hold every weight of the model: an
ImageNet file on a detection or segmentation config (random neck and heads)
is refused with what to do instead. Checkpoints are read weights-only;
``--unsafe-load`` unpickles a trusted file beyond that.
"""
import argparse
import os.path as osp
import pickle
import sys
import warnings
from copy import deepcopy

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmstvit  # noqa: E402,F401  (registers STViT, the safe loaders)
from mmengine.config import ConfigDict  # noqa: E402

from mmstvit.builder import TASKS  # noqa: E402
from mmstvit.cli import (dist, load_from, preflight, run_args,  # noqa: E402
                         run_config)
from mmstvit.cli.errors import ToolError, exit_with  # noqa: E402
from mmstvit.cli.pretrained import walk_config  # noqa: E402
from mmstvit.utils.paths import is_remote  # noqa: E402
from mmstvit.weights import (checkpoint_format,  # noqa: E402
                             missing_model_weights)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) an STViT detector, segmentor or '
        'classifier')
    parser.add_argument('config', help='test config file path')
    parser.add_argument(
        'checkpoint',
        help='checkpoint file: an mm checkpoint or an official STViT file')
    parser.add_argument(
        '--out',
        type=str,
        help='mmdet/mmpretrain: dump predictions to this .pkl file; mmseg: '
        'save the predicted maps in this directory')
    parser.add_argument(
        '--out-item',
        choices=['metrics', 'pred'],
        help='mmpretrain: what --out holds (default: predictions)')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where pictures of the predictions are saved (mmdet, '
        'mmpretrain: relative to work_dir/timestamp)')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--interval',
        type=int,
        default=None,
        help='with --show/--show-dir: draw every this many samples '
        '(mmpretrain, default 1) or batches (mmseg, default: the hook\'s '
        'interval, 50 in its configs); mmdet draws every image')
    parser.add_argument(
        '--tta', action='store_true', help='test-time augmentation')
    run_args.add_run_arguments(
        parser,
        unsafe_help='trust the checkpoint: unpickle it fully '
        '(weights_only=False) even if it holds objects beyond weights. '
        'Loading such a file can run any code it holds; only for files from '
        'a source you trust')
    args = run_args.parse_run_args(parser, argv)
    if args.out_item is not None and args.out is None:
        parser.error('--out-item needs --out')
    return args


# ---------------------------------------------------------------------------
# visualization
# ---------------------------------------------------------------------------


def _visualization_hook(cfg):
    hooks = cfg.get('default_hooks', None) or {}
    if 'visualization' not in hooks:
        raise SystemExit(
            'mmstvit: --show/--show-dir need a visualization hook in '
            "default_hooks, e.g. visualization=dict(type='"
            "DetVisualizationHook') (mmdet), 'SegVisualizationHook' (mmseg) "
            "or 'VisualizationHook' (mmpretrain)")
    return hooks['visualization']


def trigger_visualization(cfg, args, task):
    hook = _visualization_hook(cfg)
    if task == 'mmpretrain':
        hook['enable'] = True
        hook['show'] = args.show
        hook['wait_time'] = args.wait_time
        hook['out_dir'] = args.show_dir
        hook['interval'] = args.interval if args.interval else 1
        return
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if task == 'mmseg' and args.interval:
        hook['interval'] = args.interval
    if args.show_dir:
        if task == 'mmseg':
            cfg.visualizer['save_dir'] = args.show_dir
        else:
            hook['test_out_dir'] = args.show_dir


# ---------------------------------------------------------------------------
# test-time augmentation
# ---------------------------------------------------------------------------


def _innermost_dataset(dataset_cfg):
    while 'dataset' in dataset_cfg:
        dataset_cfg = dataset_cfg['dataset']
    return dataset_cfg


def _has_mask_head(model_cfg):
    return any(
        key.endswith('mask_head') and sub is not None
        for key, sub in walk_config(model_cfg, 'model'))


def apply_tta(cfg, task):
    if task == 'mmseg':
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise SystemExit('mmstvit: --tta needs tta_model and '
                             'tta_pipeline in an mmseg config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
        return
    if 'tta_model' not in cfg:
        if task == 'mmdet':
            warnings.warn('Cannot find ``tta_model`` in config, we will set '
                          'it as default.')
            cfg.tta_model = dict(
                type='DetTTAModel',
                tta_cfg=dict(
                    nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
        elif task == 'mmpretrain':
            cfg.tta_model = dict(type='mmpretrain.AverageClsScoreTTA')
        else:
            raise SystemExit('mmstvit: --tta needs tta_model in the config')
    if 'tta_pipeline' not in cfg:
        test_data_cfg = _innermost_dataset(cfg.test_dataloader.dataset)
        pipeline = deepcopy(test_data_cfg.pipeline)
        if task == 'mmdet':
            warnings.warn('Cannot find ``tta_pipeline`` in config, we will '
                          'set it as default.')
            last = dict(
                type='PackDetInputs',
                meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                           'scale_factor', 'flip', 'flip_direction'))
        elif task == 'mmpretrain':
            last = pipeline[-1]
        else:
            raise SystemExit('mmstvit: --tta needs tta_pipeline in the '
                             'config')
        pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[[
                dict(type='RandomFlip', prob=1.),
                dict(type='RandomFlip', prob=0.)
            ], [last]])
        cfg.tta_pipeline = pipeline
    if task == 'mmdet' and cfg.tta_model.get('type') in (
            'DetTTAModel', 'mmdet.DetTTAModel') and _has_mask_head(cfg.model):
        raise SystemExit(
            "mmstvit: --tta: mmdet 3.3's DetTTAModel merges boxes only; it "
            'cannot merge instance masks (mmdet fails with "TTA of instance '
            'segmentation does not support now"). Test Mask R-CNN without '
            '--tta.')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def set_checkpoint(cfg, checkpoint, task):
    """``load_from``; the authors' files are converted while loading."""
    if is_remote(checkpoint):
        cfg.load_from = checkpoint
        return
    if not osp.isfile(osp.expanduser(checkpoint)):
        raise SystemExit(
            f'mmstvit: checkpoint not found: {checkpoint!r} (looked for '
            f'{osp.abspath(osp.expanduser(checkpoint))})')
    checkpoint = osp.expanduser(checkpoint)
    try:
        fmt = checkpoint_format(checkpoint)
    except (ValueError, EOFError, pickle.UnpicklingError) as e:
        raise SystemExit(f'mmstvit: cannot read {checkpoint}: {e}') from None
    if fmt == 'official':
        cfg.load_from = load_from.official_load_from(checkpoint, task)
    else:
        cfg.load_from = checkpoint


def check_checkpoint_covers_model(runner, checkpoint, task, config):
    """Stops when the checkpoint leaves part of the built model at its
    random initial values (an ImageNet file on a detection config ...)."""
    if is_remote(checkpoint):
        return
    model = runner.model
    while hasattr(model, 'module'):  # DDP, TTA wrappers
        model = model.module
    keys = load_from.checkpoint_keys(osp.expanduser(checkpoint))
    missing = missing_model_weights(model.state_dict().keys(), keys)
    if missing:
        raise SystemExit(load_from.untrained_parts_message(
            checkpoint, missing, task, config))


def merge_args(cfg, args, task):
    if task == 'mmpretrain':
        loader = ConfigDict(
            pin_memory=True, collate_fn=dict(type='default_collate'))
        loader.update(cfg.test_dataloader)
        cfg.test_dataloader = loader
    run_args.apply_run_arguments(cfg, args)

    if args.unsafe_load or cfg.get('unsafe_load', False):
        load_from.trust_run_files(cfg, args.checkpoint)
    set_checkpoint(cfg, args.checkpoint, task)

    if args.show or args.show_dir:
        if task not in TASKS:
            raise SystemExit('mmstvit: --show/--show-dir need an mmdet, mmseg '
                             'or mmpretrain config')
        trigger_visualization(cfg, args, task)
    if args.tta:
        apply_tta(cfg, task)

    if args.out is not None:
        if task == 'mmseg':
            cfg.test_evaluator['output_dir'] = args.out
            cfg.test_evaluator['keep_results'] = True
        elif not args.out.endswith(('.pkl', '.pickle')) and \
                args.out_item != 'metrics':
            raise SystemExit('mmstvit: --out must be a .pkl or .pickle file')
    return cfg


def add_dump_metric(runner, args, task):
    if args.out is None or task == 'mmseg' or args.out_item == 'metrics':
        return
    if task == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=args.out))
    else:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))


def main(argv=None):
    """Runs the tool; a :class:`~mmstvit.cli.errors.ToolError` (a
    problem the user must fix) or a
    :class:`~mmstvit.data.errors.DataLoadError` (a file that cannot be
    loaded) ends it with its message, no traceback."""
    from mmstvit.data.errors import DataLoadError
    try:
        return run(argv)
    except ToolError as e:
        raise exit_with(e) from None
    except DataLoadError as e:
        raise SystemExit(f'mmstvit: {e}; fix the file and test again') \
            from None


def run(argv=None):
    args = parse_args(argv)
    cfg, task = run_config.load_run_config(args.config)
    cfg = merge_args(cfg, args, task)
    preflight.stop_on_bad_data(cfg, task, ('test', ))
    preflight.name_load_errors(cfg, ('test', ))
    dist.setup_cpu_distributed(cfg, args.launcher)

    # the STViT backbones run their inference-only deploy plan (after the
    # checkpoint is loaded), as tools/infer.py serves them
    cfg.custom_hooks = list(cfg.get('custom_hooks', None) or []) + [
        dict(type='STViTDeployHook')]
    runner = run_config.build_runner(cfg)
    check_checkpoint_covers_model(runner, args.checkpoint, task, args.config)
    add_dump_metric(runner, args, task)
    metrics = runner.test()
    if args.out is not None and args.out_item == 'metrics':
        import mmengine
        from mmengine.dist import is_main_process
        if is_main_process():
            mmengine.dump(metrics, args.out)
    del runner  # its DDP wrapper holds the process group (finish_distributed)
    dist.finish_distributed()
    return metrics


if __name__ == '__main__':
    main()
