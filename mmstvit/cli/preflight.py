# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The data checks before a run, on rank 0 of the job only: data roots,
COCO annotation files, label maps and (``--data-check fast|full``) the
image files of each data set; and the naming of the loading transforms,
so that a file that fails later in the run is named with its index."""
import os.path as osp
import time
from typing import Iterator, Optional, Tuple

from mmstvit.utils.paths import is_remote

from .dist import launcher_rank
from .errors import ToolError

#: ``--data-check`` choices: the image check's mode, or ``off``
DATA_CHECK_MODES = ('fast', 'full', 'off')


def _inner_dataset(ds):
    """The dataset dict inside wrappers (RepeatDataset, ClassBalanced...)."""
    while isinstance(ds, dict) and 'data_root' not in ds and isinstance(
            ds.get('dataset', None), dict):
        ds = ds['dataset']
    return ds


def _datasets(cfg, splits) -> Iterator[Tuple[str, dict]]:
    for split in splits:
        loader = cfg.get(f'{split}_dataloader', None)
        ds = _inner_dataset(loader.get('dataset', None)) \
            if isinstance(loader, dict) else None
        if isinstance(ds, dict):
            yield f'{split}_dataloader.dataset', ds


def _seg_num_classes(ds, task) -> Optional[int]:
    classes = (ds.get('metainfo', None) or {}).get('classes', None)
    if classes:
        return len(classes)
    if task != 'mmseg':
        return None
    from mmseg.registry import DATASETS
    cls = DATASETS.get(ds.get('type', ''))
    classes = getattr(cls, 'METAINFO', {}).get('classes', None)
    return len(classes) if classes else None


def _log(path, what, t0) -> None:
    from mmengine.logging import print_log
    print_log(f'mmstvit: data check: {path}: {what} '
              f'({time.perf_counter() - t0:.1f} s)', logger='current')


def _image_folders(ds, key) -> Iterator[Tuple[str, str]]:
    """``(folder, config key)`` of a data set's images (and label maps)."""
    root = str(ds.get('data_root', None) or '')
    prefix = ds.get('data_prefix', None) or {}
    if isinstance(prefix, str):
        prefix = dict(img_path=prefix)
    for name in ('img', 'img_path', 'seg_map_path'):
        sub = prefix.get(name, None)
        if isinstance(sub, str) and not is_remote(osp.join(root, sub)):
            yield osp.join(root, sub), f'{key}.data_prefix.{name}'


def _check_dataset(ds, key, task, seen, images, max_label_maps) -> None:
    from mmstvit.data.checks import (check_coco_annotation, check_data_root,
                                     check_seg_label_maps)
    from mmstvit.data.image_files import check_images
    root = ds.get('data_root', None)
    if root is not None and not is_remote(str(root)):
        check_data_root(root, f'{key}.data_root')
    root = '' if root is None else str(root)
    ann = ds.get('ann_file', None)
    if (ann and str(ds.get('type', '')).endswith('CocoDataset')
            and not is_remote(str(ann))):
        path = ann if osp.isabs(ann) else osp.join(root, ann)
        if path not in seen:
            seen.add(path)
            t0 = time.perf_counter()
            info = check_coco_annotation(path)
            _log(path, f"{info['num_images']} images, "
                 f"{info['num_annotations']} annotations, "
                 f"{info['num_categories']} categories", t0)
    seg_dir = (ds.get('data_prefix', None) or {}).get('seg_map_path', None) \
        if isinstance(ds.get('data_prefix', None), dict) else None
    num_classes = _seg_num_classes(ds, task) if task == 'mmseg' and seg_dir \
        else None
    path = osp.join(root, seg_dir) if seg_dir else None
    if num_classes and path not in seen:
        seen.add(path)
        # reduce_zero_label: stored 0 is "unlabelled", classes 1..N
        extra = 1 if ds.get('reduce_zero_label', False) else 0
        t0 = time.perf_counter()
        n = check_seg_label_maps(
            path, num_classes + extra, ignore_index=ds.get('ignore_index', 255),
            max_files=max_label_maps, suffix=ds.get('seg_map_suffix', '.png'))
        _log(path, f'{n} label maps with classes in range', t0)
    if images == 'off':
        return
    for folder, what in _image_folders(ds, key):
        if ('images', folder) not in seen and osp.isdir(folder):
            seen.add(('images', folder))
            t0 = time.perf_counter()
            n = check_images(folder, what, images)
            _log(folder, f'{n} images readable ({images} check)', t0)


def check_datasets(cfg, task: str, splits=('train', 'val', 'test'),
                   max_label_maps: int = 200, images: str = 'off') -> None:
    """Checks the data the config names, before anything is built: the data
    roots exist, COCO annotation files are COCO, label maps hold classes in
    range and, with ``images='fast'`` or ``'full'``, that the image files
    can be read (:mod:`mmstvit.data.image_files`). Logs one line per file
    or folder checked; raises :class:`mmstvit.data.checks.DataError`
    naming the config key (or the file) and the fix."""
    if images not in DATA_CHECK_MODES:
        raise ValueError(f'images must be one of {DATA_CHECK_MODES}')
    seen = set()
    for key, ds in _datasets(cfg, splits):
        _check_dataset(ds, key, task, seen, images, max_label_maps)


def stop_on_bad_data(cfg, task: str, splits, launcher=None,
                     images: str = 'off') -> None:
    """:func:`check_datasets` on rank 0 of the job only, raising
    :class:`ToolError` with its message when the data cannot be used (the
    tools exit with it: exit code 1, no traceback).

    The other ranks go on to start the process group, where they wait for
    rank 0; when rank 0 stops instead, the launcher ends them too (torchrun
    does, srun with ``--kill-on-bad-exit=1`` as in tools/slurm_train.sh,
    mpirun does), so a bad file stops the whole job with one message and
    costs one parse of each annotation file per job, not one per process.

    Args:
        launcher (str, optional): ``none``, ``pytorch``, ``slurm`` or
            ``mpi``; by default ``cfg.launcher`` (set by the tools from
            ``--launcher``).
        images (str): the image check, ``'off'``, ``'fast'`` or ``'full'``.
    """
    from mmstvit.data.checks import DataError
    if launcher is None:
        launcher = cfg.get('launcher', 'none')
    if launcher_rank(launcher) != 0:
        return
    try:
        check_datasets(cfg, task, splits=splits, images=images)
    except DataError as e:
        raise ToolError(f'mmstvit: {e}') from None


def _name_pipeline_loads(ds) -> None:
    from mmstvit.data.errors import is_loading_transform
    if not isinstance(ds, dict):
        return
    pipeline = ds.get('pipeline', None)
    if isinstance(pipeline, list):
        ds['pipeline'] = [
            dict(type='NameLoadErrors', transform=t)
            if is_loading_transform(t) else t for t in pipeline]
    _name_pipeline_loads(ds.get('dataset', None))
    for inner in ds.get('datasets', None) or []:
        _name_pipeline_loads(inner)


def name_load_errors(cfg, splits=('train', 'val')) -> None:
    """Wraps each loading transform of the splits' pipelines in
    ``NameLoadErrors`` (:mod:`mmstvit.data.errors`): a file that fails to
    load during the run raises ``DataLoadError`` naming it and the sample's
    index."""
    import mmstvit.data.errors  # noqa: F401 (registers NameLoadErrors)
    for split in splits:
        loader = cfg.get(f'{split}_dataloader', None)
        if isinstance(loader, dict):
            _name_pipeline_loads(loader.get('dataset', None))
