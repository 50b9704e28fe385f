# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Run an STViT model on an image or a folder of images.

    python tools/infer.py CONFIG IMAGE_OR_DIR [--weights CKPT] \
        [--out-dir DIR] [--device cpu|cuda] [--score-thr 0.3]

Any detection, segmentation or classification config with an STViT
backbone (this repo's or your own); the config's toolbox runs it with its
own inferencer (mmdet ``DetInferencer``, mmseg ``MMSegInferencer``,
mmpretrain ``ImageClassificationInferencer``). Writes under ``--out-dir``
(default ``outputs/<config name>``):

* ``vis/``: the pictures with the predictions drawn;
* ``preds/<image>.json`` and ``predictions.json``: the predictions (boxes,
  scores, classes and masks as COCO RLE; the classes present in the label
  map with their share of the pixels, the map itself as ``preds/<image>.png``;
  the top-5 classes);
* ``infer.log``: the toolboxes' own messages.

``--weights``: an mm checkpoint (``tools/train.py``'s ``iter_*.pth`` /
``epoch_*.pth``), or an official STViT file (``stvit-small-224.pth``: the
classifier as it is; for detection and segmentation only the backbone has
weights then). Without it the model has random weights (a dry run).

Examples::

    python tools/infer.py configs/mask_rcnn_stvit_s_1x.py demo.jpg \
        --weights work_dirs/mask_rcnn_stvit_s_1x/epoch_12.pth
    python tools/infer.py configs/stvit_s_in1k_224.py photos/ \
        --weights pretrained/stvit-small-224.pth
"""
import argparse
import contextlib
import logging
import os
import os.path as osp
import sys
import time
import warnings

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
# setuptools < 81 is pinned on purpose (mmengine needs pkg_resources): its
# deprecation notice at every import is not for the user of this tool
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Detect, segment or classify images with an STViT model')
    parser.add_argument('config', help='config file with an STViT backbone')
    parser.add_argument('inputs', help='an image file or a folder of images')
    parser.add_argument(
        '--weights',
        help='checkpoint: an mm checkpoint or an official STViT file '
        '(default: random weights)')
    parser.add_argument(
        '--out-dir',
        help='where pictures and predictions go (default: '
        'outputs/<config name>)')
    parser.add_argument(
        '--device',
        default=None,
        help='cpu, cuda or cuda:N (default: cuda when available, else cpu)')
    parser.add_argument(
        '--score-thr',
        type=float,
        default=0.3,
        help='detection: draw (and count) objects with at least this score')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value pairs')
    return parser.parse_args(argv)


def _fail(msg):
    raise SystemExit(f'mmstvit infer: {msg}')


@contextlib.contextmanager
def logs_to(path):
    """Warnings, mm log lines and the toolboxes' prints (mmengine prints
    "Loads checkpoint by ...") go to ``path`` instead of the console."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    handler = logging.FileHandler(path, mode='w')
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter('%(levelname)s %(message)s'))
    consoles = [
        h for h in logger.handlers if isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
    ]
    levels = [h.level for h in consoles]
    for h in consoles:
        h.setLevel(logging.ERROR)
    logger.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(handler.stream), \
            contextlib.redirect_stderr(handler.stream):
        warnings.simplefilter('always')
        try:
            yield caught
        finally:
            for w in caught:
                handler.stream.write(f'WARNING {w.category.__name__}: '
                                     f'{w.message} ({w.filename}:'
                                     f'{w.lineno})\n')
            logger.removeHandler(handler)
            handler.close()
            for h, level in zip(consoles, levels):
                h.setLevel(level)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    from mmstvit.cli.config_path import ConfigPathError, check_config_path
    from mmstvit.cli.errors import exit_with
    try:
        check_config_path(args.config)
    except ConfigPathError as e:
        raise exit_with(e) from None
    from mmengine.config import Config

    import mmstvit  # noqa: F401
    from mmstvit.inference import (TASK_NAMES, InputError, infer,
                                   list_images, require_stvit,
                                   resolve_checkpoint, summary_line)
    from mmstvit.builder import detect_task
    from mmstvit.cli.run_config import register_toolbox

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    task = detect_task(cfg)
    try:
        require_stvit(cfg, args.config, task)
        images = list_images(args.inputs)
    except InputError as e:
        _fail(str(e))
    try:
        weights, note = resolve_checkpoint(args.weights, task)
    except InputError as e:
        _fail(f'--weights {e}')
    device = args.device
    if device is None:
        import torch
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    out_dir = args.out_dir or osp.join(
        'outputs', osp.splitext(osp.basename(args.config))[0])
    os.makedirs(out_dir, exist_ok=True)

    print(f'mmstvit infer: {TASK_NAMES[task]} with {args.config}, '
          f'{len(images)} image{"s" if len(images) > 1 else ""}, {device}, '
          + (f'weights {args.weights}' if args.weights else
             'random weights (no --weights: a dry run)'), flush=True)
    if note:
        print(f'  {note}')
    register_toolbox(task)
    log = osp.join(out_dir, 'infer.log')
    with logs_to(log):
        results = infer(cfg, images, task, out_dir, weights=weights,
                        device=device, score_thr=args.score_thr)
    for r in results:
        print('  ' + summary_line(r, task))
    print(f'pictures: {osp.join(out_dir, "vis")}/  predictions: '
          f'{osp.join(out_dir, "preds")}/ and '
          f'{osp.join(out_dir, "predictions.json")}  '
          f'({time.time() - start:.1f} s; messages of the toolbox in {log})')
    return results


if __name__ == '__main__':
    main()
