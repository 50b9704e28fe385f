# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Train an STViT model with mmdet, mmseg or mmpretrain.

One entry point for the three toolboxes: the config's ``default_scope``
says which. Same flags and behaviour as each toolbox's ``tools/train.py``,
plus: missing pretrained weights stop the run at once with a clear message,
``--amp`` also trains on a CPU (bfloat16 autocast; mmengine's
AmpOptimWrapper with fp16 and dynamic loss scaling on a GPU), distributed
runs also work with CPU processes (gloo) when there is no GPU, and
checkpoints are written by ``ResumableCheckpointHook`` (atomic files;
``--resume`` continues bit for bit, says which file it resumes from and why
a file does not do).

Examples::

    python tools/train.py configs/mask_rcnn_stvit_s_1x.py
    python tools/train.py CONFIG --resume               # latest in work_dir
    python tools/train.py CONFIG --cfg-options model.backbone.init_cfg=None
    bash tools/dist_train.sh CONFIG 8 --amp
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmstvit  # noqa: E402,F401  (registers STViT, the safe loaders)
from mmengine.config import ConfigDict  # noqa: E402

from mmstvit.builder import detect_task  # noqa: E402
from mmstvit.cli import (amp, dist, load_from, preflight,  # noqa: E402
                         pretrained, run_args, run_config)
from mmstvit.cli.errors import ToolError, exit_with  # noqa: E402
from mmstvit.data.errors import DataLoadError  # noqa: E402
from mmstvit.engine import errors, guards, resume  # noqa: E402
from mmstvit.models.backbones.kernels import describe_run  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train an STViT detector, segmentor or classifier')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint; without a path, resume from '
        'the latest checkpoint in the work directory')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='automatic mixed precision: on a GPU mmengine\'s AmpOptimWrapper '
        '(fp16 autocast, dynamic loss scaling); on a CPU bfloat16 autocast '
        'without loss scaling (optim_wrapper.dtype=float16 gives fp16 with '
        'a GradScaler, slow on most CPUs). See mmstvit/engine/amp.py')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by the real batch size '
        '(auto_scale_lr.base_batch_size in the config)')
    parser.add_argument(
        '--data-check',
        choices=preflight.DATA_CHECK_MODES,
        default='fast',
        help='the image files of the train and val data sets, before the '
        'run: fast (end markers and headers, no decoding; default), full '
        '(decode every image) or off. See docs/training.md')
    run_args.add_run_arguments(
        parser,
        unsafe_help='trust the weights files of this run (load_from, '
        '--resume, the Pretrained init_cfg checkpoints): unpickle them fully '
        '(weights_only=False) even if they hold objects beyond weights. '
        'Loading such a file can run any code it holds; only for files from '
        'a source you trust')
    return run_args.parse_run_args(parser, argv)


def set_default_dataloader_cfg(cfg, fields):
    """mmpretrain's train.py defaults: default_collate, pin_memory and
    persistent workers (where there are workers)."""
    for field in fields:
        if cfg.get(field, None) is None:
            continue
        loader = ConfigDict(
            pin_memory=True,
            persistent_workers=True,
            collate_fn=dict(type='default_collate'))
        loader.update(cfg[field])
        if not loader.get('num_workers', 0):
            loader['persistent_workers'] = False
        cfg[field] = loader


def merge_args(cfg, args, task):
    """Applies the command line to the config, as the toolboxes do."""
    if task == 'mmpretrain':
        set_default_dataloader_cfg(
            cfg, ('train_dataloader', 'val_dataloader', 'test_dataloader'))
    run_args.apply_run_arguments(cfg, args)

    if args.amp:
        amp.apply_amp(cfg)

    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and \
                'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise SystemExit(
                'mmstvit: --auto-scale-lr needs auto_scale_lr = dict('
                'enable=False, base_batch_size=...) in the config')

    # resume: a given checkpoint > the latest one in work_dir
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    # atomic, finite checkpoints; resume bit for bit; a clean stop on
    # SIGTERM/SIGUSR1/SIGINT; a non-finite loss stops the run
    guards.use_in_config(cfg)

    if args.unsafe_load or cfg.get('unsafe_load', False):
        load_from.trust_run_files(cfg)
    return cfg


def keep_seed_of_resumed_run(cfg):
    """``--resume``: a file that does not load stops the run here, naming
    the newest older checkpoint that does (ResumableCheckpointHook logs the
    choice when the run starts). With ``randomness.seed=None`` (a new seed
    per run) the run takes the seed of the run it resumes, so that its
    sampler and workers are built with it."""
    path, _ = resume.choose_resume_checkpoint(cfg.work_dir,
                                              cfg.get('load_from', None))
    if cfg.get('randomness', None) is None:
        cfg.randomness = dict(seed=None)
    if path is not None and cfg.randomness.get('seed', None) is None:
        cfg.randomness.seed = resume.checkpoint_seed(path)


def check_before_build(cfg, data_check='fast'):
    """Stops (exit code 1, no traceback) on what would fail later."""
    if cfg.get('resume', False):
        keep_seed_of_resumed_run(cfg)
    amp.check_amp(cfg)
    missing = pretrained.find_missing_pretrained(cfg, load_from=True)
    if missing:
        raise SystemExit(pretrained.missing_pretrained_message(missing))
    task = detect_task(cfg)
    # load_from: weights-only read, the authors' format converted after the
    # strict backbone check
    load_from.convert_load_from(cfg, task)
    preflight.stop_on_bad_data(cfg, task, ('train', 'val'), images=data_check)
    # a file that fails later is named, with its sample index
    preflight.name_load_errors(cfg, ('train', 'val'))


def data_error_message(e: DataLoadError) -> str:
    """The one line a data error during the run ends with."""
    if e.saved_checkpoint:
        then = (f'the last completed iteration was saved to '
                f'{e.saved_checkpoint}; fix the file and run with --resume')
    else:
        then = ('fix the file and run with --resume (it continues from the '
                'last checkpoint of the work dir)')
    return f'mmstvit: {e}; {then}'


def main(argv=None):
    """Runs the tool; a :class:`~mmstvit.cli.errors.ToolError`, a
    :class:`~mmstvit.engine.resume.ResumeError` or a
    :class:`~mmstvit.engine.errors.TrainingError` (a problem the user must
    fix) ends it with one message, no traceback; a
    :class:`~mmstvit.data.errors.DataLoadError` (a file that failed during
    the run) names the file, its sample index and the checkpoint saved; a
    signal ends it with ``128 + signal`` after the checkpoint
    (``TrainingInterrupted``)."""
    try:
        return run(argv)
    except (ToolError, resume.ResumeError) as e:
        raise exit_with(e) from None
    except errors.TrainingDataError as e:
        cause = e.__cause__
        if isinstance(cause, DataLoadError):
            cause.saved_checkpoint = e.checkpoint
            raise SystemExit(data_error_message(cause)) from None
        raise SystemExit(str(e)) from None
    except DataLoadError as e:
        raise SystemExit(data_error_message(e)) from None
    except errors.TrainingError as e:
        raise SystemExit(str(e)) from None


def run(argv=None):
    args = parse_args(argv)
    cfg, task = run_config.load_run_config(args.config)
    cfg = merge_args(cfg, args, task)
    check_before_build(cfg, args.data_check)
    dist.setup_cpu_distributed(cfg, args.launcher)

    runner = run_config.build_runner(cfg)
    # which device, precision and STViT kernels this run trains with
    runner.logger.info(describe_run(runner.model, cfg.get('optim_wrapper')))
    try:
        runner.train()
    except OSError as e:  # a full disk, a vanished work dir: a message
        raise errors.explain_machine_error(e, runner) from e
    del runner  # its DDP wrapper holds the process group (finish_distributed)
    dist.finish_distributed()


if __name__ == '__main__':
    main()
