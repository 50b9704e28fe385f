# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Helpers shared by ``tools/train.py`` and ``tools/test.py``.

* which toolbox a config belongs to (its ``default_scope``) and registering
  that toolbox's modules;
* finding pretrained checkpoints a config names that are not on disk, so the
  tools stop with a clear message before building anything;
* whether automatic mixed precision can run here;
* distributed runs with CPU processes (gloo), which mmengine 0.10.7 cannot
  start by itself: its ``init_dist`` calls ``torch.cuda.set_device``
  unconditionally (an ``AttributeError`` on a CPU build of torch) and its
  ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to
  ``DistributedDataParallel``, which refuses device ids for CPU modules;
* recognising the authors' checkpoint format and loading it converted
  through a ``stvit-official://`` checkpoint scheme.
"""
import datetime
import os
import os.path as osp
import pickle
import re
import subprocess
from collections import OrderedDict
from typing import List, Optional, Tuple

import torch

TASKS = ('mmdet', 'mmseg', 'mmpretrain')

# ---------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------


def detect_task(cfg) -> str:
    """The toolbox of a config: its ``default_scope``, else the scope of
    ``model.type`` (``'mmdet.MaskRCNN'``), else ``'mmengine'``."""
    scope = cfg.get('default_scope', None)
    if scope in TASKS:
        return scope
    model = cfg.get('model', None)
    mtype = model.get('type', None) if isinstance(model, dict) else None
    if isinstance(mtype, str) and '.' in mtype:
        prefix = mtype.split('.', 1)[0]
        if prefix in TASKS:
            return prefix
    return 'mmengine'


def register_toolbox(task: str) -> None:
    """Registers every module of the toolbox, as its own
    ``register_all_modules`` does; the default scope itself is set by the
    Runner from ``cfg.default_scope``."""
    if task not in TASKS:
        return
    import importlib
    try:
        utils = importlib.import_module(f'{task}.utils')
        utils.register_all_modules(init_default_scope=False)
    except ImportError as e:
        hint = ''
        if 'torchvision' in str(e):
            hint = (' mmpretrain imports torchvision: install the '
                    'torchvision release built for your torch '
                    f'({torch.__version__}).')
        raise SystemExit(f'mmstvit: this is a {task} config, but {task} '
                         f'cannot be imported: {e}.{hint}') from None
    except RuntimeError as e:  # e.g. a torchvision built for another torch
        raise SystemExit(f'mmstvit: this is a {task} config, but {task} '
                         f'cannot be imported: {e}') from None


# ---------------------------------------------------------------------------
# pretrained checkpoints that are not on disk
# ---------------------------------------------------------------------------

_REMOTE = re.compile(r'^[A-Za-z][\w.+-]*:')


def is_remote(path: str) -> bool:
    """http(s)://, s3://, open-mmlab://, torchvision://, mmcls:// ..."""
    return bool(_REMOTE.match(path)) and not re.match(r'^[A-Za-z]:[\\/]', path)


def _walk(obj, key):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f'{key}.{k}' if key else str(k))
        yield key, obj
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f'{key}[{i}]')


def find_missing_pretrained(cfg,
                            load_from: bool = True
                            ) -> List[Tuple[str, str, str]]:
    """Local checkpoints named by the config that do not exist.

    Looks at every ``init_cfg`` of type ``Pretrained`` in ``cfg.model`` (a
    dict or a list of dicts, at any depth), at string ``pretrained=``
    arguments and, with ``load_from=True``, at ``cfg.load_from``.

    Returns:
        list of ``(config key, path, how to go without it)``.
    """
    missing = []

    def check(key, path, without):
        if not isinstance(path, str) or not path or is_remote(path):
            return
        if not osp.isfile(osp.expanduser(path)):
            missing.append((key, path, without))

    for key, d in _walk(cfg.get('model', None), 'model'):
        if not isinstance(d, dict):
            continue
        init = d.get('init_cfg', None)
        inits = init if isinstance(init, (list, tuple)) else [init]
        for i, ic in enumerate(inits):
            if isinstance(ic, dict) and ic.get('type') == 'Pretrained':
                sub = (f'{key}.init_cfg'
                       if not isinstance(init, (list, tuple)) else
                       f'{key}.init_cfg[{i}]')
                check(f'{sub}.checkpoint', ic.get('checkpoint'),
                      f'{key}.init_cfg=None')
        if isinstance(d.get('pretrained', None), str):
            check(f'{key}.pretrained', d['pretrained'],
                  f'{key}.pretrained=None')
    if load_from:
        check('load_from', cfg.get('load_from', None), 'load_from=None')
    return missing


def missing_pretrained_message(missing,
                               help_text: Optional[str] = None) -> str:
    if help_text is None:
        from mmstvit.utils.checkpoint import OFFICIAL_WEIGHTS_HELP
        help_text = OFFICIAL_WEIGHTS_HELP
    lines = [
        'mmstvit: checkpoint file(s) named in the config do not exist '
        '(stopped before building the model):'
    ]
    for key, path, _ in missing:
        lines.append(f'  {key} = {path!r}  (looked for '
                     f'{osp.abspath(osp.expanduser(path))})')
    lines.append(help_text)
    opts = ' '.join(w for _, _, w in missing)
    lines.append(f'To go without them (e.g. train from scratch), add: '
                 f'--cfg-options {opts}')
    return '\n'.join(lines)


# ---------------------------------------------------------------------------
# automatic mixed precision
# ---------------------------------------------------------------------------


def amp_unavailable_reason() -> Optional[str]:
    """None where mmengine's ``AmpOptimWrapper`` can run, else why not.

    mmengine 0.10.7's ``AmpOptimWrapper`` asserts that CUDA, NPU, MLU or MUSA
    is available (its ``torch.cuda.amp.GradScaler`` has no CPU path), so
    ``--amp`` cannot train on a CPU, not even with bfloat16 autocast.
    """
    from mmengine.device import (is_cuda_available, is_mlu_available,
                                 is_musa_available, is_npu_available)
    if is_cuda_available() or is_npu_available() or is_mlu_available() or \
            is_musa_available():
        return None
    return ('mmstvit: --amp (AmpOptimWrapper) needs a CUDA GPU (or an NPU, '
            'MLU or MUSA device), and none is available here '
            f'(torch {torch.__version__}, torch.cuda.is_available() = '
            f'{torch.cuda.is_available()}). mmengine 0.10.7 runs mixed '
            'precision training only on such devices. Train in fp32 on this '
            'machine by leaving out --amp (and keep '
            "optim_wrapper.type='OptimWrapper'), or run on a GPU machine "
            'with a CUDA build of torch.')


def apply_amp(cfg) -> None:
    """``--amp``: switches ``OptimWrapper`` to ``AmpOptimWrapper``."""
    from mmengine.logging import print_log
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper == 'AmpOptimWrapper':
        print_log(
            'AMP training is already enabled in your config.',
            logger='current',
            level=30)
        return
    if wrapper != 'OptimWrapper':
        raise SystemExit(
            f'mmstvit: --amp works with optim_wrapper.type=OptimWrapper, '
            f'but the config uses {wrapper!r}.')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


# ---------------------------------------------------------------------------
# distributed runs on CPU
# ---------------------------------------------------------------------------


def cuda_usable() -> bool:
    return torch.cuda.is_available()


def _register_cpu_ddp():
    from mmengine.model import MMDistributedDataParallel
    from mmengine.model.utils import revert_sync_batchnorm
    from mmengine.registry import MODEL_WRAPPERS

    if 'CPUDistributedDataParallel' in MODEL_WRAPPERS.module_dict:
        return MODEL_WRAPPERS.get('CPUDistributedDataParallel')

    @MODEL_WRAPPERS.register_module()
    class CPUDistributedDataParallel(MMDistributedDataParallel):
        """``MMDistributedDataParallel`` for CPU processes (gloo).

        Drops the ``device_ids`` the Runner passes (DDP refuses them for CPU
        modules) and turns SyncBN layers back into BatchNorm, since torch's
        SyncBatchNorm only runs on accelerators: each process then normalises
        with its own batch statistics.
        """

        def __init__(self,
                     module,
                     device_ids=None,
                     output_device=None,
                     **kwargs):
            from mmengine.logging import print_log
            from torch.nn.modules.batchnorm import SyncBatchNorm
            if any(isinstance(m, SyncBatchNorm) for m in module.modules()):
                print_log(
                    'mmstvit: SyncBatchNorm only runs on accelerators; this '
                    'CPU run uses plain BatchNorm (statistics per process)',
                    logger='current',
                    level=30)
                module = revert_sync_batchnorm(module)
            super().__init__(module=module, **kwargs)

    return CPUDistributedDataParallel


def _set_env_slurm(port=None):
    proc_id = int(os.environ['SLURM_PROCID'])
    ntasks = int(os.environ['SLURM_NTASKS'])
    node_list = os.environ['SLURM_NODELIST']
    local_rank = os.environ.get('SLURM_LOCALID', '0')
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        os.environ['MASTER_ADDR'] = subprocess.getoutput(
            f'scontrol show hostname {node_list} | head -n1')
    os.environ['WORLD_SIZE'] = str(ntasks)
    os.environ['LOCAL_RANK'] = str(local_rank)
    os.environ['RANK'] = str(proc_id)


def _set_env_mpi():
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        raise SystemExit('mmstvit: the environment variable MASTER_ADDR is '
                         'not set (needed by --launcher mpi)')
    os.environ['WORLD_SIZE'] = os.environ['OMPI_COMM_WORLD_SIZE']
    os.environ['RANK'] = os.environ['OMPI_COMM_WORLD_RANK']
    os.environ['LOCAL_RANK'] = os.environ['OMPI_COMM_WORLD_LOCAL_RANK']


def setup_cpu_distributed(cfg, launcher: str) -> bool:
    """Prepares a distributed run for CPU processes when CUDA is absent.

    Sets ``env_cfg.dist_cfg.backend='gloo'``, starts the process group
    itself (the Runner then finds it started and skips mmengine's
    ``init_dist``) and makes the Runner wrap the model with
    ``CPUDistributedDataParallel``. Returns False (and changes nothing) for
    non-distributed runs or where CUDA is available.
    """
    if launcher == 'none' or cuda_usable():
        return False
    import torch.distributed as torch_dist
    from mmengine.logging import print_log

    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        print_log(
            f"mmstvit: no CUDA device, using the 'gloo' backend instead of "
            f"{dist_cfg.get('backend', 'nccl')!r} for this CPU "
            'distributed run',
            logger='current')
    dist_cfg['backend'] = 'gloo'

    if not torch_dist.is_initialized():
        kwargs = {
            k: v
            for k, v in dist_cfg.items()
            if k not in ('backend', 'port', 'init_backend')
        }
        if kwargs.get('timeout') is not None:
            kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
        if launcher == 'slurm':
            _set_env_slurm(dist_cfg.get('port'))
        elif launcher == 'mpi':
            _set_env_mpi()
        elif launcher != 'pytorch':
            raise ValueError(f'Invalid launcher type: {launcher}')
        torch_dist.init_process_group(backend='gloo', **kwargs)

    _register_cpu_ddp()
    wrapper = cfg.get('model_wrapper_cfg', None)
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type='CPUDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    elif wrapper.get('type', 'MMDistributedDataParallel') in (
            'MMDistributedDataParallel', 'mmengine.MMDistributedDataParallel'):
        wrapper['type'] = 'CPUDistributedDataParallel'
    return True


def finish_distributed() -> None:
    """Waits for every process and destroys the process group.

    Without it, CPU (gloo) processes sometimes abort at interpreter exit
    ("terminate called without an active exception") after a run that
    finished well, and torchrun then reports the run as failed.
    """
    import torch.distributed as torch_dist
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()


# ---------------------------------------------------------------------------
# the authors' checkpoint format
# ---------------------------------------------------------------------------

OFFICIAL_SCHEME = 'stvit-official://'
OFFICIAL_BACKBONE_SCHEME = 'stvit-official-backbone://'


def _peek(path: str):
    from mmstvit.utils.compat import apply
    apply()
    try:
        return torch.load(
            path, map_location='cpu', weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError):
        from mmstvit.utils.checkpoint import load_checkpoint_file
        return load_checkpoint_file(path)


def is_official_checkpoint(ckpt) -> bool:
    """The authors' format: a dict with ``model`` (a state dict) and no
    ``state_dict``."""
    return (isinstance(ckpt, dict) and 'state_dict' not in ckpt
            and isinstance(ckpt.get('model', None), dict)
            and len(ckpt['model']) > 0 and all(
                isinstance(v, torch.Tensor) for v in ckpt['model'].values()))


def checkpoint_format(path: str) -> str:
    """``'official'``, ``'mm'`` or ``'other'`` for a local checkpoint file
    (read memory-mapped, so big files cost little)."""
    ckpt = _peek(path)
    if is_official_checkpoint(ckpt):
        return 'official'
    if isinstance(ckpt, dict) and 'state_dict' in ckpt:
        return 'mm'
    return 'other'


def convert_official(ckpt, backbone_only: bool = False) -> 'OrderedDict':
    """An mm state dict from an official checkpoint dict (its ``model``).

    Keys are mapped by :func:`mmstvit.utils.convert_official_state_dict`.
    ``backbone_only`` keeps only ``backbone.*`` (detectors, segmentors).
    """
    from mmstvit.utils.convert import convert_official_state_dict
    sd = ckpt['model'] if is_official_checkpoint(ckpt) else ckpt
    out = convert_official_state_dict(sd)
    if backbone_only:
        out = OrderedDict(
            (k, v) for k, v in out.items() if k.startswith('backbone.'))
    return out


def load_from_stvit_official(filename: str, map_location=None):
    """mmengine checkpoint loader for ``stvit-official[-backbone]://PATH``:
    reads the authors' file and returns it as an mm checkpoint."""
    from mmengine.logging import print_log

    from mmstvit.utils.checkpoint import load_checkpoint_file
    backbone_only = filename.startswith(OFFICIAL_BACKBONE_SCHEME)
    path = filename[
        len(OFFICIAL_BACKBONE_SCHEME if backbone_only else OFFICIAL_SCHEME):]
    ckpt = load_checkpoint_file(path, map_location=map_location or 'cpu')
    if not is_official_checkpoint(ckpt):
        raise ValueError(f'{path} is not in the STViT authors\' format (a '
                         'dict with "model" and no "state_dict")')
    sd = convert_official(ckpt, backbone_only=backbone_only)
    print_log(
        f'mmstvit: {path} is an official STViT checkpoint; converted '
        f"{len(ckpt['model'])} tensors of its 'model' entry to "
        f'{len(sd)} mm keys' +
        (' (backbone only: the ImageNet classification tail is dropped and '
         'the necks and heads of this model are not in the file)'
         if backbone_only else ''),
        logger='current',
        level=30 if backbone_only else 20)
    meta = dict(converted_from=path, epoch=ckpt.get('epoch', None))
    return dict(state_dict=sd, meta=meta)


def register_official_scheme():
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes=[OFFICIAL_SCHEME, OFFICIAL_BACKBONE_SCHEME],
        loader=load_from_stvit_official,
        force=True)


def convert_load_from(cfg, task: str) -> None:
    """Makes ``cfg.load_from`` of the authors' format load converted (for
    fine-tuning from it); refuses to *resume* from such a file."""
    path = cfg.get('load_from', None)
    if not isinstance(path, str) or is_remote(path) or \
            path.startswith((OFFICIAL_SCHEME, OFFICIAL_BACKBONE_SCHEME)) or \
            not osp.isfile(osp.expanduser(path)):
        return
    path = osp.expanduser(path)
    if checkpoint_format(path) != 'official':
        return
    if cfg.get('resume', False):
        raise SystemExit(
            f'mmstvit: cannot resume from {path}: it is an official STViT '
            'ImageNet checkpoint, with no mm training state. Start a new run '
            'from it with load_from (or the backbone init_cfg) instead.')
    cfg.load_from = official_load_from(path, task)


def official_load_from(path: str, task: str) -> str:
    """The ``load_from`` that makes the Runner load an official file."""
    register_official_scheme()
    scheme = OFFICIAL_SCHEME if task == 'mmpretrain' else \
        OFFICIAL_BACKBONE_SCHEME
    return scheme + path


# ---------------------------------------------------------------------------
# data checks before building anything
# ---------------------------------------------------------------------------


def _inner_dataset(ds):
    """The dataset dict inside wrappers (RepeatDataset, ClassBalanced...)."""
    while isinstance(ds, dict) and 'data_root' not in ds and isinstance(
            ds.get('dataset', None), dict):
        ds = ds['dataset']
    return ds


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


def check_datasets(cfg, task: str, splits=('train', 'val', 'test'),
                   max_label_maps: int = 200) -> None:
    """Checks the data the config names, before anything is built: the data
    roots exist, COCO annotation files are COCO, label maps hold classes in
    range. Logs one line per file or folder checked; raises
    :class:`mmstvit.datasets.checks.DataError` naming the config key and
    the fix."""
    import time

    from mmengine.logging import print_log

    from mmstvit.datasets.checks import (check_coco_annotation,
                                         check_data_root,
                                         check_seg_label_maps)

    def log(path, what, t0):
        print_log(
            f'mmstvit: data check: {path}: {what} '
            f'({time.perf_counter() - t0:.1f} s)',
            logger='current')
    seen = set()
    for split in splits:
        loader = cfg.get(f'{split}_dataloader', None)
        if not isinstance(loader, dict):
            continue
        ds = _inner_dataset(loader.get('dataset', None))
        if not isinstance(ds, dict):
            continue
        key = f'{split}_dataloader.dataset'
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
                log(path, f"{info['num_images']} images, "
                    f"{info['num_annotations']} annotations, "
                    f"{info['num_categories']} categories", t0)
        prefix = ds.get('data_prefix', None) or {}
        seg_dir = prefix.get('seg_map_path', None)
        if task == 'mmseg' and seg_dir:
            num_classes = _seg_num_classes(ds, task)
            path = osp.join(root, seg_dir)
            if num_classes and path not in seen:
                seen.add(path)
                # reduce_zero_label: stored 0 is "unlabelled", classes 1..N
                extra = 1 if ds.get('reduce_zero_label', False) else 0
                t0 = time.perf_counter()
                n = check_seg_label_maps(
                    path, num_classes + extra,
                    ignore_index=ds.get('ignore_index', 255),
                    max_files=max_label_maps,
                    suffix=ds.get('seg_map_suffix', '.png'))
                log(path, f'{n} label maps with classes in range', t0)


# each launcher's environment variable with the rank of the process, set
# before the process starts (so before any process group exists)
LAUNCHER_RANK_VARS = dict(
    pytorch='RANK', slurm='SLURM_PROCID', mpi='OMPI_COMM_WORLD_RANK')


def launcher_rank(launcher: str) -> int:
    """The rank of this process in a job started by ``launcher`` (``RANK``
    from torchrun, ``SLURM_PROCID`` from srun, ``OMPI_COMM_WORLD_RANK``
    from mpirun); 0 for ``'none'`` and where the variable is not set."""
    var = LAUNCHER_RANK_VARS.get(launcher, None)
    try:
        return int(os.environ.get(var, 0)) if var else 0
    except ValueError:
        return 0


def stop_on_bad_data(cfg, task: str, splits, launcher=None) -> None:
    """:func:`check_datasets` on rank 0 of the job only, ending the tool with
    its message (exit code 1, no traceback) when the data cannot be used.

    The other ranks go on to start the process group, where they wait for
    rank 0; when rank 0 stops instead, the launcher ends them too (torchrun
    does, srun with ``--kill-on-bad-exit=1`` as in tools/slurm_train.sh,
    mpirun does), so a bad file stops the whole job with one message and
    costs one parse of each annotation file per job, not one per process.

    Args:
        launcher (str, optional): ``none``, ``pytorch``, ``slurm`` or
            ``mpi``; by default ``cfg.launcher`` (set by the tools from
            ``--launcher``).
    """
    from mmstvit.datasets.checks import DataError
    if launcher is None:
        launcher = cfg.get('launcher', 'none')
    if launcher_rank(launcher) != 0:
        return
    try:
        check_datasets(cfg, task, splits=splits)
    except DataError as e:
        raise SystemExit(f'mmstvit: {e}')
