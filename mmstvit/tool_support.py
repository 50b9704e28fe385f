# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The glue of ``tools/train.py`` and ``tools/test.py`` (this module serves
the tools; the model does not use it).

Every problem a user must fix before a run raises :class:`ToolError`, whose
message names the problem and the fix; the tools turn it into their exit
message. The old import path ``mmstvit.utils.launch`` is this module.

* which toolbox a config belongs to (its ``default_scope``) and registering
  that toolbox's modules;
* finding pretrained checkpoints a config names that are not on disk, so the
  tools stop with a clear message before building anything;
* automatic mixed precision (``--amp``) on the device there is;
* distributed runs with CPU processes (gloo), which mmengine 0.10.7 cannot
  start by itself: its ``init_dist`` calls ``torch.cuda.set_device``
  unconditionally (an ``AttributeError`` on a CPU build of torch) and its
  ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to
  ``DistributedDataParallel``, which refuses device ids for CPU modules;
* weights: the authors' files given as ``load_from`` (strict backbone
  check, then loaded converted through a ``stvit-official://`` scheme),
  checkpoints of ``tools/test.py`` that leave part of the model random,
  and ``--unsafe-load``.
"""
import contextlib
import datetime
import os
import os.path as osp
import pickle
import re
import subprocess
from typing import Iterator, List, Optional, Tuple

import torch

from mmstvit.builder import TASKS, detect_task  # noqa: F401 (re-exported)



class ToolError(Exception):
    """A problem with a tool's config, files or environment that the user
    must fix; the message says what and how."""


#: third-party warnings that every run of a tool would print and that no
#: user can act on: (category, message regex, why it is safe to hide)
KNOWN_THIRD_PARTY_WARNINGS = (
    (UserWarning, r'pkg_resources is deprecated as an API',
     'setuptools < 81 is pinned on purpose: mmengine resolves mmdet:: '
     'configs through pkg_resources'),
    (FutureWarning, r'`broadcast_buffers` is deprecated',
     "mmengine's DDP wrappers (and ours for CPU runs) pass "
     'broadcast_buffers=False, its default; torch 2.14 renamed the argument '
     'and prints this once per process; the behaviour is unchanged'),
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator",
     'the configs are written for GPUs (pin_memory=True); on a CPU-only '
     'machine torch ignores it, once per data loader'),
)


def quiet_third_party_warnings() -> None:
    """Hides :data:`KNOWN_THIRD_PARTY_WARNINGS` (for the tools' entry
    points; the project's own warnings and all others still show)."""
    import warnings
    for category, message, _ in KNOWN_THIRD_PARTY_WARNINGS:
        warnings.filterwarnings('ignore', message=message, category=category)


@contextlib.contextmanager
def mm_log_level(level: str = 'ERROR') -> Iterator[None]:
    """Raises mmengine's current logger to ``level`` for a ``with`` block:
    what the toolboxes log while a tool builds or analyses a model (every
    initialised parameter, FLOP counters' operator lists, data preprocessor
    notes) is not the tool's answer."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


# ---------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------


def register_toolbox(task: str) -> None:
    """Registers every module of the toolbox, as its own
    ``register_all_modules`` does, mmstvit's included; raises
    :class:`ToolError` naming the toolbox when it cannot be imported. The
    default scope itself is set by the Runner from ``cfg.default_scope``."""
    if task not in TASKS:
        return
    from mmstvit.registry import register_toolbox as register
    try:
        register(task)
    except ImportError as e:
        raise ToolError(f'mmstvit: this is a {task} config, but {e}') \
            from None


# ---------------------------------------------------------------------------
# what tools/train.py and tools/test.py share
# ---------------------------------------------------------------------------


def add_run_arguments(parser, unsafe_help: str) -> None:
    """The flags both tools take besides their own: ``--work-dir``,
    ``--cfg-options``, ``--launcher``, ``--unsafe-load``, ``--local-rank``."""
    from mmengine.config import DictAction
    parser.add_argument(
        '--work-dir', help='the directory for logs, checkpoints and metrics')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value pairs, e.g. '
        'model.backbone.init_cfg=None or train_cfg.max_iters=100; a list is '
        'key="[a,b]" or key=a,b, no white space')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--unsafe-load', action='store_true', help=unsafe_help)
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or
    # --local_rank; torchrun sets LOCAL_RANK
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_run_args(parser, argv=None):
    """``parser.parse_args`` that also exports ``LOCAL_RANK``."""
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_run_config(config: str):
    """The config of a run and its toolbox, that toolbox imported with every
    module registered (mmstvit's included). Returns ``(cfg, task)``."""
    from mmengine.config import Config
    quiet_third_party_warnings()
    try:
        cfg = Config.fromfile(config)
    except FileNotFoundError as e:
        if 'mmstvit' in str(e) and '.mim' in str(e):
            raise ToolError(
                f'mmstvit: {config} names an mmstvit:: config, but this '
                'mmstvit is a checkout that was never installed (it has no '
                'mmstvit/.mim): run `make install` (or `pip install -e .`) '
                'in it, or install the wheel; or give the path of the '
                f'config in the checkout instead ({e})') from None
        raise
    task = detect_task(cfg)
    register_toolbox(task)
    if task == 'mmdet':
        # fewer recompilations with torch.compile, as mmdet's tools do
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    return cfg, task


def apply_run_arguments(cfg, args) -> None:
    """``--launcher``, ``--cfg-options`` and the work dir (command line >
    config > ./work_dirs/<config name>), as the toolboxes' tools do."""
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])


def build_runner(cfg):
    """The Runner of a config (``runner_type`` honoured)."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)


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
        from mmstvit.weights import OFFICIAL_WEIGHTS_HELP
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
    """None where mmengine's own ``AmpOptimWrapper`` can run, else why not
    and what to use instead.

    mmengine 0.10.7's ``AmpOptimWrapper`` asserts that CUDA, NPU, MLU or MUSA
    is available; mmstvit's ``DeviceAmpOptimWrapper`` (what ``--amp``
    selects, :mod:`mmstvit.engine.amp`) is the same wrapper on those devices
    and runs bfloat16 autocast on a CPU.
    """
    from mmengine.device import (is_cuda_available, is_mlu_available,
                                 is_musa_available, is_npu_available)
    if is_cuda_available() or is_npu_available() or is_mlu_available() or \
            is_musa_available():
        return None
    return ("mmstvit: optim_wrapper.type='AmpOptimWrapper' (mmengine's) "
            'needs a CUDA GPU (or an NPU, MLU or MUSA device), and none is '
            f'available here (torch {torch.__version__}, '
            f'torch.cuda.is_available() = {torch.cuda.is_available()}). '
            'For mixed precision on this CPU (bfloat16 autocast) add --amp, '
            "or set optim_wrapper.type='DeviceAmpOptimWrapper' (mmstvit's: "
            "mmengine's AmpOptimWrapper on a GPU); to train in float32 use "
            "optim_wrapper.type='OptimWrapper'.")


#: what ``--amp`` selects: mmengine's AmpOptimWrapper on accelerators,
#: bfloat16 autocast on a CPU (:mod:`mmstvit.engine.amp`)
AMP_WRAPPER = 'DeviceAmpOptimWrapper'


def apply_amp(cfg) -> None:
    """``--amp``: switches ``OptimWrapper`` to ``DeviceAmpOptimWrapper``
    (dynamic loss scaling where there is a loss scale to keep); a config's
    own ``AmpOptimWrapper`` stays where mmengine can run it and becomes
    ``DeviceAmpOptimWrapper`` where it cannot (a CPU)."""
    from mmengine.logging import print_log
    wrapper = str(cfg.optim_wrapper.get('type', 'OptimWrapper'))
    name = wrapper.split('.')[-1]
    if name == AMP_WRAPPER or (name == 'AmpOptimWrapper'
                               and amp_unavailable_reason() is None):
        print_log(
            'AMP training is already enabled in your config.',
            logger='current',
            level=30)
        return
    if name == 'AmpOptimWrapper':
        print_log(
            f"mmstvit: --amp on a machine without a GPU: the config's "
            f'AmpOptimWrapper runs as {AMP_WRAPPER} (bfloat16 autocast on '
            'the CPU)',
            logger='current',
            level=30)
        cfg.optim_wrapper.type = AMP_WRAPPER
        return
    if name != 'OptimWrapper':
        raise ToolError(
            f'mmstvit: --amp works with optim_wrapper.type=OptimWrapper, '
            f'but the config uses {wrapper!r}.')
    cfg.optim_wrapper.type = AMP_WRAPPER
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def check_amp(cfg) -> None:
    """Raises :class:`ToolError` before anything is built when the config's
    mixed precision cannot run on this machine: mmengine's
    ``AmpOptimWrapper`` without an accelerator, or a ``dtype`` that
    ``DeviceAmpOptimWrapper`` cannot autocast to here."""
    optim_wrapper = cfg.get('optim_wrapper', None) or {}
    name = str(optim_wrapper.get('type', '')).split('.')[-1]
    if name == 'AmpOptimWrapper':
        reason = amp_unavailable_reason()
        if reason:
            raise ToolError(reason)
    elif name == AMP_WRAPPER:
        from mmengine.device import get_device

        from mmstvit.engine.amp import amp_plan
        try:
            amp_plan(
                optim_wrapper.get('device_type', None) or get_device(),
                optim_wrapper.get('dtype', None))
        except (ValueError, TypeError) as e:
            raise ToolError(str(e)) from None


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
        raise ToolError('mmstvit: the environment variable MASTER_ADDR is '
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
    """Waits for every process and destroys the process group, so that its
    threads end while the interpreter still runs. Drop the runner first.

    A gloo process group destroyed during interpreter shutdown sometimes
    aborts the process ("terminate called without an active exception",
    SIGABRT, no Python frame left) after a run that finished well, and
    torchrun then reports the run as failed: 3 of 70 two-process runs on a
    loaded 2-core machine. ``destroy_process_group`` alone is not enough:
    the runner's DDP wrapper still holds the group, and the runner lives in
    reference cycles until the final collection. So the cycles are
    collected first (:func:`release_process_group`).
    """
    import torch.distributed as torch_dist
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        release_process_group()


def release_process_group() -> None:
    """Destroys the process group now, with no barrier (also after an
    error, where another process may never reach one). The DDP wrappers
    that hold it must be unreachable by then; their reference cycles are
    collected first, so that the group is freed here and not during
    interpreter shutdown (see :func:`finish_distributed`)."""
    import gc

    import torch.distributed as torch_dist
    gc.collect()
    torch_dist.destroy_process_group()


# ---------------------------------------------------------------------------
# weights: the authors' format, strict checks, trusted files
# ---------------------------------------------------------------------------


def trust_run_files(cfg, *paths) -> List[str]:
    """``--unsafe-load``: marks the weights files of this run as trusted
    (the given paths, ``load_from`` and every ``Pretrained`` checkpoint the
    model config names), so that they may unpickle beyond the allow-list.
    Returns the local files it marked."""
    from mmstvit.weights import trust
    names = list(paths) + [cfg.get('load_from', None)]
    for key, d in _walk(cfg.get('model', None), 'model'):
        if isinstance(d, dict) and d.get('type') == 'Pretrained':
            names.append(d.get('checkpoint', None))
    local = [n for n in names if isinstance(n, str) and n and
             not is_remote(n)]
    trust(*local)
    return local


def _checkpoint_error(path, e) -> ToolError:
    return ToolError(f'mmstvit: cannot use {path}: {e}')


def _backbone_cfg(cfg):
    model = cfg.get('model', None) or {}
    backbone = model.get('backbone', None)
    if isinstance(backbone, dict) and \
            str(backbone.get('type', '')).split('.')[-1] == 'STViT':
        return backbone
    return None


def check_official_against_config(ckpt, cfg, path: str) -> None:
    """The strict backbone check of ``init_cfg`` for an official file given
    as ``load_from``: builds the config's STViT (no weights) and compares."""
    from mmstvit.models import STViT
    from mmstvit.weights import (CheckpointMismatchError, backbone_state_dict,
                                 check_backbone_state_dict, extract_state_dict)
    backbone_cfg = _backbone_cfg(cfg)
    if backbone_cfg is None:
        return
    kwargs = {k: v for k, v in dict(backbone_cfg).items()
              if k not in ('type', 'init_cfg', 'pretrained')}
    sd, _ = backbone_state_dict(extract_state_dict(ckpt, 'model'))
    try:
        check_backbone_state_dict(
            STViT(**kwargs), sd, path,
            partial_hint='load_from must hold the whole backbone; for a '
            "partial load use the backbone's init_cfg=dict(type="
            "'Pretrained', checkpoint=..., strict=False) instead.")
    except CheckpointMismatchError as e:
        raise _checkpoint_error(path, e) from None


def convert_load_from(cfg, task: str) -> None:
    """Makes ``cfg.load_from`` of the authors' format load converted (for
    fine-tuning from it), after the strict backbone check; refuses to
    *resume* from such a file."""
    from mmstvit.weights import (OFFICIAL_BACKBONE_SCHEME, OFFICIAL_SCHEME,
                                 is_official_checkpoint, load_checkpoint_file)
    path = cfg.get('load_from', None)
    if not isinstance(path, str) or is_remote(path) or \
            path.startswith((OFFICIAL_SCHEME, OFFICIAL_BACKBONE_SCHEME)) or \
            not osp.isfile(osp.expanduser(path)):
        return
    path = osp.expanduser(path)
    try:
        ckpt = load_checkpoint_file(path, mmap=True)
    except (ValueError, pickle.UnpicklingError) as e:
        raise _checkpoint_error(path, e) from None
    if not is_official_checkpoint(ckpt):
        return
    if cfg.get('resume', False):
        raise ToolError(
            f'mmstvit: cannot resume from {path}: it is an official STViT '
            'ImageNet checkpoint, with no mm training state. Start a new run '
            'from it with load_from (or the backbone init_cfg) instead.')
    check_official_against_config(ckpt, cfg, path)
    cfg.load_from = official_load_from(path, task)


def official_load_from(path: str, task: str) -> str:
    """The ``load_from`` that makes the Runner load an official file."""
    from mmstvit.weights import (OFFICIAL_BACKBONE_SCHEME, OFFICIAL_SCHEME,
                                 register_official_scheme)
    register_official_scheme()
    scheme = OFFICIAL_SCHEME if task == 'mmpretrain' else \
        OFFICIAL_BACKBONE_SCHEME
    return scheme + path


def checkpoint_keys(path: str) -> List[str]:
    """The model keys of a local checkpoint (an official file's converted
    to mm names), read memory-mapped."""
    from mmstvit.weights import (convert_official, extract_state_dict,
                                 is_official_checkpoint, load_checkpoint_file)
    ckpt = load_checkpoint_file(path, mmap=True)
    if is_official_checkpoint(ckpt):
        return list(convert_official(ckpt))
    return list(extract_state_dict(ckpt))


def untrained_parts_message(path: str, missing: List[str], task: str,
                            config: str) -> str:
    """What ``tools/test.py`` says for a checkpoint that leaves part of the
    model random."""
    from mmstvit.weights import summarise_keys
    parts = sorted({k.split('.')[0] for k in missing})
    only_backbone = 'backbone' not in parts
    lines = [f'mmstvit: {path} does not hold the weights of the whole '
             f'model: {len(missing)} tensors of {", ".join(parts)} are not '
             'in it and would be evaluated at their random initial values; '
             'stopped.',
             f'  missing: {summarise_keys(missing, 6)}']
    if only_backbone and task in ('mmdet', 'mmseg'):
        lines.append(
            '  It holds backbone weights only (e.g. the ImageNet '
            'classifier of the authors). Train the detector/segmentor '
            f'first: python tools/train.py {config} (its init_cfg loads the '
            'ImageNet weights into the backbone), then test the checkpoint '
            'the run saves; to fine-tune from a file, set it as load_from '
            'in the config.')
    else:
        lines.append('  Test a checkpoint saved by training this config '
                     '(work_dirs/<config>/epoch_N.pth or iter_N.pth).')
    return '\n'.join(lines)


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
    :class:`mmstvit.data.checks.DataError` naming the config key and
    the fix."""
    import time

    from mmengine.logging import print_log

    from mmstvit.data.checks import (check_coco_annotation,
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
    """
    from mmstvit.data.checks import DataError
    if launcher is None:
        launcher = cfg.get('launcher', 'none')
    if launcher_rank(launcher) != 0:
        return
    try:
        check_datasets(cfg, task, splits=splits)
    except DataError as e:
        raise ToolError(f'mmstvit: {e}')
