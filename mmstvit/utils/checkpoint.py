# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Every weights file mmstvit opens goes through :func:`load_checkpoint_file`.

Weights files are untrusted input (people download them from shared
drives), and a ``.pth`` is a pickle: unpickling it can run any code. So:

* **One reader, one allow-list.** :func:`load_checkpoint_file` always uses
  ``torch.load(weights_only=True)`` with exactly the globals of
  :func:`allowed_globals`: what the authors' STViT files hold
  (``argparse.Namespace`` in ``args``, numpy scalars) and what mmengine's own
  checkpoints hold (``HistoryBuffer`` state, numpy arrays and scalars). A
  file that needs anything else is refused with
  :class:`UnsafeCheckpointError`, which names the globals it holds.
* **Unsafe loading only by name.** ``weights_only=False`` happens only for a
  file the user trusts explicitly: ``unsafe=True`` here,
  ``init_cfg=dict(type='Pretrained', ..., unsafe_load=True)`` for the
  backbone, or ``--unsafe-load`` of the tools (which calls :func:`trust` on
  the files of that run). Never as a fallback.
* **mmengine goes through it too.** :func:`install_mmengine_loaders`
  replaces mmengine's loaders of local files and of ``http(s)://`` URLs
  (``load_from``, ``resume``, ``Pretrained`` inits of necks and heads, the
  toolboxes' inferencers) with this reader. ``import mmstvit`` arranges it
  for when ``mmengine.runner.checkpoint`` is imported.
* **Strict backbone loading.** :func:`load_stvit_state_dict` loads the
  authors' files and mm checkpoints into an ``STViT``: every backbone tensor
  must be found with the right shape, or it stops and lists what is missing
  or mismatched (and names the variant a file of another variant holds).
  ``strict=False`` (``init_cfg=dict(..., strict=False)``) allows a partial
  load, never an empty one.

The authors' files (``stvit-{small,base,large}-{224,384}.pth``) are a
``torch.save`` of a dict with ``model`` (the state dict), usually
``model_ema``, ``optimizer``, ``lr_scheduler``, ``epoch``, ``scaler``,
``max_accuracy`` and ``args`` (an ``argparse.Namespace``).
"""
import argparse
import logging
import os
import os.path as osp
import pickle
import re
import threading
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from mmengine.logging import print_log

OFFICIAL_WEIGHTS_HELP = (
    'The official STViT ImageNet weights (stvit-small-224.pth, '
    'stvit-base-224.pth, stvit-large-224.pth and the -384 files) are in the '
    "authors' Google Drive folder linked from the README of "
    'github.com/hhb072/STViT (folder id 1uaT5OarQd9iPrnFufHocHpM3zhyTcetB). '
    'Download the one you need into pretrained/ (e.g. '
    'pretrained/stvit-small-224.pth); they load as they are, or convert one '
    'to an mm checkpoint with: python tools/model_converters/stvit_to_mm.py '
    'pretrained/stvit-small-224.pth pretrained/stvit-small-224_mm.pth')

#: how a user loads a file that needs more than the allow-list
UNSAFE_HOW = (
    'Only if you trust where this file comes from (loading it can run any '
    'code it holds): pass --unsafe-load to tools/train.py, tools/test.py or '
    "the other tools, or set unsafe_load=True in the backbone's "
    "init_cfg=dict(type='Pretrained', ...). Better: re-save its weights "
    'alone where you trust it, e.g. torch.save({"state_dict": '
    'model.state_dict()}, "clean.pth").')

# classification tail of the authors' model, not part of a dense backbone
CLS_TAIL_PREFIXES = ('proj.', 'norm.', 'head.')

#: buffers that are bookkeeping, not weights: absent from some files
NOT_WEIGHTS = ('num_batches_tracked', )


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model it is loaded into."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A weights file that holds objects beyond the allow-list.

    Attributes:
        filename (str): The file.
        globals (list[str]): The globals it holds that are not allowed.
    """

    def __init__(self, filename: str, names: List[str], detail: str = ''):
        self.filename = filename
        self.globals = list(names)
        shown = ', '.join(names[:8]) if names else detail or 'unknown'
        super().__init__(
            f'mmstvit refuses to unpickle {filename}: it holds {shown}, '
            'beyond the tensors, argparse.Namespace, numpy and mmengine '
            'HistoryBuffer objects that weights files need. '
            f'{UNSAFE_HOW}')


# ---------------------------------------------------------------------------
# the allow-list
# ---------------------------------------------------------------------------

#: statistics methods that mmengine's ``HistoryBuffer`` registers by default
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def history_buffer_getattr(obj, name):
    """``getattr`` restricted to what mmengine checkpoints need.

    Registered as ``builtins.getattr`` for the weights-only unpickler:
    ``HistoryBuffer.__getstate__`` stores its statistics methods, which
    pickle writes as ``getattr(HistoryBuffer, 'mean')``; anything else is
    refused (a real ``getattr`` would let a file reach any attribute of any
    allowed object).
    """
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and (
            name in _HISTORY_BUFFER_METHODS
            or name in HistoryBuffer._statistics_methods) and \
            not name.startswith('_') and callable(
                getattr(HistoryBuffer, name, None)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'mmstvit: weights-only load refuses getattr({obj!r}, {name!r}); '
        'only the statistics methods of mmengine.logging.HistoryBuffer are '
        'allowed')


def _numpy_globals() -> List[Tuple[Callable, str]]:
    import numpy as np
    try:  # numpy >= 2
        multiarray = np._core.multiarray
    except AttributeError:  # numpy 1.x
        multiarray = np.core.multiarray
    allowed = []
    # files written with numpy 1 name numpy.core, with numpy 2 numpy._core
    for fn in ('_reconstruct', 'scalar'):
        obj = getattr(multiarray, fn)
        allowed += [(obj, f'numpy.core.multiarray.{fn}'),
                    (obj, f'numpy._core.multiarray.{fn}')]
    allowed += [(np.ndarray, 'numpy.ndarray'), (np.dtype, 'numpy.dtype')]
    # A dtype is rebuilt with numpy.dtype(...) and then BUILD, which the
    # unpickler only allows for allow-listed classes: the dtype's class.
    seen = set()
    for code in ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8',
                 'uint16', 'uint32', 'uint64', 'float16', 'float32',
                 'float64', 'longdouble', 'complex64', 'complex128',
                 'clongdouble'):
        cls = type(np.dtype(code))
        if cls is np.dtype or cls in seen:  # numpy < 1.20 has no classes
            continue
        seen.add(cls)
        allowed.append((cls, f'{cls.__module__}.{cls.__qualname__}'))
    return allowed


def allowed_globals() -> List[Tuple[Callable, str]]:
    """The ``(object, 'module.name')`` pairs a weights file may hold."""
    from mmengine.logging import HistoryBuffer
    hb = 'mmengine.logging.history_buffer.HistoryBuffer'
    allowed = [(HistoryBuffer, hb)]
    for name in _HISTORY_BUFFER_METHODS:
        allowed.append((getattr(HistoryBuffer, name), f'{hb}.{name}'))
    allowed.append((history_buffer_getattr, 'builtins.getattr'))
    allowed += _numpy_globals()
    allowed.append((argparse.Namespace, 'argparse.Namespace'))
    return allowed


def allowed_names() -> List[str]:
    return [name for _, name in allowed_globals()]


# ---------------------------------------------------------------------------
# trust, by name only
# ---------------------------------------------------------------------------

_trusted = set()
_trust_lock = threading.Lock()


def _key(path) -> str:
    return osp.realpath(osp.expanduser(str(path)))


def trust(*paths) -> None:
    """Marks files whose loading may unpickle anything (``--unsafe-load``)."""
    with _trust_lock:
        _trusted.update(_key(p) for p in paths if p)


def untrust_all() -> None:
    with _trust_lock:
        _trusted.clear()


def is_trusted(path) -> bool:
    return _key(path) in _trusted


# ---------------------------------------------------------------------------
# the reader
# ---------------------------------------------------------------------------


def _unsafe_globals(filename: str, error: Exception) -> List[str]:
    """The globals of ``filename`` that are not allowed (best effort)."""
    allowed = set(allowed_names())
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
        names = [g for g in found if g not in allowed]
        if names:
            return names
    except Exception:  # noqa: BLE001 - legacy (non-zip) files
        pass
    return re.findall(r'GLOBAL ([\w.]+)', str(error))[:8] or \
        re.findall(r'global[^\w]+([\w.]+)', str(error))[:8]


def load_checkpoint_file(filename, map_location='cpu', *,
                         unsafe: bool = False, mmap: bool = False):
    """Reads a weights file: weights-only, with :func:`allowed_globals`.

    Args:
        filename (str | Path): A local file; ``http(s)://`` URLs are
            downloaded (into torch's hub cache) and then read the same way.
        map_location: As for ``torch.load``.
        unsafe (bool): The caller trusts this file: unpickle it fully
            (``weights_only=False``), with a warning. Also done for files
            marked with :func:`trust`. Never done otherwise.
        mmap (bool): Memory-map the tensors (cheap look at a big file).

    Raises:
        FileNotFoundError: no such file (the message says where the
            official weights come from).
        UnsafeCheckpointError: the file holds globals beyond the allow-list
            (nothing of it was executed).
        ValueError: not a readable PyTorch file (truncated download ...).
    """
    filename = str(filename)
    if filename.startswith(('http://', 'https://')):
        filename = _download(filename)
    if not osp.isfile(osp.expanduser(filename)):
        raise FileNotFoundError(
            f'STViT checkpoint not found: {filename!r} (looked for '
            f'{osp.abspath(osp.expanduser(filename))}). '
            f'{OFFICIAL_WEIGHTS_HELP}')
    filename = osp.expanduser(filename)
    if unsafe or is_trusted(filename):
        print_log(
            f'mmstvit: loading {filename} with weights_only=False because '
            'you marked it as trusted: any code it holds runs now.',
            logger='current', level=logging.WARNING)
        return torch.load(filename, map_location=map_location,
                          weights_only=False, mmap=mmap or None)
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(filename, map_location=map_location,
                              weights_only=True, mmap=mmap or None)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            filename, _unsafe_globals(filename, e),
            str(e).splitlines()[0][:200]) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise ValueError(
            f'{filename!r} is not a readable PyTorch checkpoint '
            f'({type(e).__name__}: {str(e)[:200]}). Is the download '
            f'complete? {OFFICIAL_WEIGHTS_HELP}') from e


def _download(url: str) -> str:
    """``url`` in torch's hub cache (``<hub>/checkpoints``), fetched once."""
    from torch.hub import download_url_to_file, get_dir
    from urllib.parse import urlparse
    folder = osp.join(get_dir(), 'checkpoints')
    os.makedirs(folder, exist_ok=True)
    path = osp.join(folder, osp.basename(urlparse(url).path))
    if not osp.isfile(path):
        download_url_to_file(url, path, progress=True)
    return path


# ---------------------------------------------------------------------------
# mmengine's loaders
# ---------------------------------------------------------------------------


def _mmengine_local(filename, map_location=None):
    return load_checkpoint_file(filename, map_location)


def _mmengine_http(filename, map_location=None, model_dir=None,
                   progress=None):
    return load_checkpoint_file(filename, map_location)


def install_mmengine_loaders(module=None) -> None:
    """Makes mmengine read local files and ``http(s)://`` URLs with
    :func:`load_checkpoint_file` (``load_from``, ``resume``, ``Pretrained``
    inits, inferencers). ``torchvision://``, ``open-mmlab://`` and
    ``mmcls://`` resolve to URLs and so are read by it too."""
    import mmengine.runner.checkpoint as ckpt_mod
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes='', loader=_mmengine_local, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), loader=_mmengine_http, force=True)
    # load_from_torchvision/openmmlab/mmcls call this module-level name
    ckpt_mod.load_from_http = _mmengine_http
    register_official_scheme()


# ---------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------


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
    ckpt = load_checkpoint_file(path, mmap=True)
    if is_official_checkpoint(ckpt):
        return 'official'
    if isinstance(ckpt, dict) and 'state_dict' in ckpt:
        return 'mm'
    return 'other'


#: prefixes that wrappers put in front of every key of a model they hold:
#: DataParallel / DistributedDataParallel and the EMA wrappers (mmengine's
#: ExponentialMovingAverage, timm's ModelEmaV2) ``module.``, torch.compile
#: ``_orig_mod.``. They are not part of the model's names: keys and
#: ``prefix`` are compared without them.
WRAPPER_PREFIXES = ('module.', '_orig_mod.')
#: entries of a checkpoint file that hold a state dict, as the trainers
#: users meet write them (mmengine, the STViT authors / DeiT, timm, and the
#: EMA copies of each); ``which`` picks one
STATE_DICT_ENTRIES = ('state_dict', 'model', 'model_ema', 'state_dict_ema',
                      'ema_state_dict', 'ema')


def strip_wrappers(name: str) -> str:
    """``name`` without the :data:`WRAPPER_PREFIXES` in front of it
    (``module.backbone.x`` -> ``backbone.x``; also nested ones)."""
    while name.startswith(WRAPPER_PREFIXES):
        name = name.split('.', 1)[1]
    return name


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def state_dict_entries(checkpoint) -> List[str]:
    """The entries of a checkpoint dict that are state dicts."""
    if not isinstance(checkpoint, dict):
        return []
    return [k for k, v in checkpoint.items()
            if isinstance(k, str) and _is_state_dict(v)]


def extract_state_dict(checkpoint, which: Optional[str] = None,
                       source: str = 'this file'
                       ) -> 'OrderedDict[str, torch.Tensor]':
    """The model weights of an official or mm checkpoint, with the
    :data:`WRAPPER_PREFIXES` (``module.``) of the keys removed.

    Args:
        checkpoint: What :func:`load_checkpoint_file` returned.
        which: The entry that holds them: ``'model'`` or ``'model_ema'``
            for the authors' files, ``'state_dict'`` for mm checkpoints,
            any other name of :func:`state_dict_entries` (EMA copies:
            ``'ema_state_dict'`` of mmengine's EMAHook, ``'state_dict_ema'``
            of timm). Default: ``state_dict``, else ``model``, else the
            file itself when it is a plain state dict.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatchError(
            f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    if which is not None:
        if which not in checkpoint:
            raise KeyError(f'checkpoint has no {which!r} entry; it has '
                           f'{sorted(map(str, checkpoint))}')
        sd = checkpoint[which]
    else:
        for key in ('state_dict', 'model'):
            if key in checkpoint and isinstance(checkpoint[key], dict):
                sd = checkpoint[key]
                break
        else:
            sd = checkpoint
    if not _is_state_dict(sd):
        entries = [e for e in state_dict_entries(checkpoint) if e != which]
        hint = (' It holds state dicts under ' + ', '.join(
            f"{e!r} (which={e!r})" for e in entries) + ': name the one to '
            "load with init_cfg=dict(..., which=...)." if entries else '')
        found = sorted(map(str, sd))[:8] if isinstance(sd, dict) else \
            type(sd).__name__
        raise CheckpointMismatchError(
            f'{source} holds no state dict (looked for '
            + (f'"{which}"' if which else '"state_dict", "model" and plain '
               'tensors') + f'; found keys {found}).{hint}')
    return OrderedDict((strip_wrappers(k), v) for k, v in sd.items())


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


OFFICIAL_SCHEME = 'stvit-official://'
OFFICIAL_BACKBONE_SCHEME = 'stvit-official-backbone://'


def load_from_stvit_official(filename: str, map_location=None):
    """mmengine checkpoint loader for ``stvit-official[-backbone]://PATH``:
    reads the authors' file and returns it as an mm checkpoint."""
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
        (' (backbone only: the ImageNet classification tail is dropped)'
         if backbone_only else ''),
        logger='current')
    meta = dict(converted_from=path, epoch=ckpt.get('epoch', None))
    return dict(state_dict=sd, meta=meta)


def register_official_scheme():
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes=[OFFICIAL_SCHEME, OFFICIAL_BACKBONE_SCHEME],
        loader=load_from_stvit_official,
        force=True)


# ---------------------------------------------------------------------------
# STViT backbones: strict loading
# ---------------------------------------------------------------------------


def _dotted(prefix: str) -> str:
    return prefix if prefix.endswith('.') else prefix + '.'


def prefixes_holding(state_dict: Dict[str, torch.Tensor],
                     own_keys: Iterable[str]) -> List[Tuple[str, int]]:
    """``[(prefix, n)]``: the prefixes under which ``state_dict`` holds
    tensors named as the model's (``own_keys``), most tensors first
    (``''``: under the model's own names)."""
    own = set(_weights(own_keys))
    counts: Dict[str, int] = {}
    for key in state_dict:
        i = 0
        while True:
            if key[i:] in own:
                counts[key[:i]] = counts.get(key[:i], 0) + 1
                break
            j = key.find('.', i)
            if j < 0:
                break
            i = j + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _key_groups(state_dict, n=6) -> str:
    counts: Dict[str, int] = {}
    for key in state_dict:
        head = key.split('.', 1)[0] + ('.' if '.' in key else '')
        counts[head] = counts.get(head, 0) + 1
    groups = sorted(counts.items(), key=lambda kv: -kv[1])
    text = ', '.join(f'{k!r} ({v})' for k, v in groups[:n])
    return text + (f' and {len(groups) - n} more' if len(groups) > n else '')


def _suggestion(candidates, total: int) -> str:
    """A sentence naming the prefixes that would load (``candidates`` of
    :func:`prefixes_holding`)."""
    if not candidates:
        return 'None of its keys names a tensor of this STViT backbone.'
    where = ' and '.join(
        f'{p!r} ({n} of {total} tensors)' if p else
        f'their own names ({n} of {total} tensors)'
        for p, n in candidates[:4])
    use = ' or '.join(f'prefix={p!r}' if p else 'no prefix'
                      for p, _ in candidates[:4])
    return f"The backbone's tensors are under {where}: use {use}."


def backbone_state_dict(state_dict: Dict[str, torch.Tensor],
                        prefix: Optional[str] = None,
                        own_keys: Optional[Iterable[str]] = None,
                        source: str = 'the checkpoint',
                        entries: Iterable[str] = ()):
    """Selects the backbone keys of a state dict whose wrapper prefixes are
    removed (:func:`extract_state_dict`). Returns ``(backbone_sd,
    dropped_keys)``.

    ``prefix`` is what mmengine's ``Pretrained`` takes: the start of the
    backbone's keys in the file, with or without its final dot
    (``'backbone'``, ``'backbone.'``), and with or without the ``module.``
    of DataParallel/DDP (``'module.backbone.'``): keys and prefix are
    compared without :data:`WRAPPER_PREFIXES`. Without a prefix:
    ``backbone.`` when keys start with it (mm checkpoints), else the
    authors' keys minus the classification tail.

    Raises:
        CheckpointMismatchError: ``prefix`` starts no key, or (with
            ``own_keys``, the backbone's state dict keys) the file holds
            the backbone only under another prefix. The message says
            which prefix loads it.
    """
    own_keys = set(own_keys) if own_keys is not None else None
    total = len(_weights(own_keys)) if own_keys is not None else 0
    candidates = prefixes_holding(state_dict, own_keys) \
        if own_keys is not None else []
    wanted = strip_wrappers(_dotted(prefix)) if prefix else ''
    if prefix and wanted:
        sd = OrderedDict((k[len(wanted):], v) for k, v in state_dict.items()
                         if k.startswith(wanted))
        if not sd:
            same = '' if wanted == _dotted(prefix) else \
                f' (the same as {wanted!r}: wrapper prefixes such as ' \
                "'module.' are left out on both sides)"
            entry = wanted.split('.', 1)[0]
            not_entry = (f' {entry!r} is an entry of the file, not the '
                         f'start of a key: which={entry!r} picks it.'
                         if entry in entries else '')
            raise CheckpointMismatchError(
                f'no key of {source} starts with {prefix!r}{same}; its keys '
                f'start with {_key_groups(state_dict)}.{not_entry}'
                + (' ' + _suggestion(candidates, total)
                   if own_keys is not None else ''))
        if own_keys is not None and not any(k in own_keys for k in sd) \
                and candidates:
            raise CheckpointMismatchError(
                f'{source} holds no tensor of this STViT backbone under '
                f'prefix {prefix!r}. {_suggestion(candidates, total)}')
        dropped = [k for k in state_dict if not k.startswith(wanted)]
        return sd, dropped
    if any(k.startswith('backbone.') for k in state_dict):
        return backbone_state_dict(state_dict, 'backbone.', own_keys,
                                   source, entries)
    sd, dropped = OrderedDict(), []
    for k, v in state_dict.items():
        (dropped.append(k) if k.startswith(CLS_TAIL_PREFIXES) else
         sd.__setitem__(k, v))
    if own_keys is not None and not any(k in own_keys for k in sd) and \
            candidates:
        raise CheckpointMismatchError(
            f'{source} holds no tensor of this STViT backbone under its own '
            f"names or under 'backbone.'. {_suggestion(candidates, total)}"
            " (init_cfg=dict(type='Pretrained', checkpoint=..., "
            'prefix=...))')
    return sd, dropped


def describe_stvit(state_dict: Dict[str, torch.Tensor],
                   arch_zoo: Optional[dict] = None) -> Optional[dict]:
    """Reads the variant (embed dims, depths) off a backbone state dict;
    ``arch`` is its name in ``arch_zoo`` (``STViT.arch_zoo``) or None."""
    dims, depths = {}, {}
    pat = re.compile(r'^layers\.(\d+)\.blocks\.(\d+)\.norm1\.norm\.weight$')
    for k, v in state_dict.items():
        m = pat.match(k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            dims[i] = int(v.shape[0])
            depths[i] = max(depths.get(i, 0), j + 1)
    if not dims:
        return None
    n = max(dims) + 1
    info = dict(embed_dims=[dims.get(i) for i in range(n)],
                depths=[depths.get(i) for i in range(n)], arch=None)
    for name, a in (arch_zoo or {}).items():
        if len(name) > 1 and a['embed_dims'] == info['embed_dims'] and \
                a['depths'] == info['depths']:
            info['arch'] = name
    return info


def _variant_str(info):
    if info is None:
        return 'an unknown model'
    name = f"STViT-{info['arch']}" if info['arch'] else 'a custom STViT'
    return (f"{name} (embed_dims {info['embed_dims']}, depths "
            f"{info['depths']})")


def _other_variant(theirs, ours) -> bool:
    """The file holds another variant (not a part of this one): a known
    arch other than the model's, other widths, or more stages or blocks."""
    if not (theirs and ours):
        return False
    if theirs['arch'] and theirs['arch'] != ours['arch']:
        return True
    if len(theirs['embed_dims']) > len(ours['embed_dims']):
        return True
    for key in ('embed_dims', 'depths'):
        for a, b in zip(theirs[key], ours[key]):
            if a is not None and b is not None and (
                    a > b if key == 'depths' else a != b):
                return True
    return False


def _summarise(keys, n=12):
    keys = list(keys)
    s = ', '.join(keys[:n])
    return s + (f' ... (+{len(keys) - n} more)' if len(keys) > n else '')


def _weights(keys: Iterable[str]) -> List[str]:
    return [k for k in keys if not k.endswith(NOT_WEIGHTS)]


def check_backbone_state_dict(model, sd: Dict[str, torch.Tensor],
                              source: str, strict: bool = True,
                              partial_hint: Optional[str] = None) -> dict:
    """Checks a backbone state dict against an ``STViT`` before loading.

    Raises :class:`CheckpointMismatchError` when a tensor has another shape
    (naming the variant the file holds), when nothing matches, and, with
    ``strict``, when a backbone tensor is missing or the file holds keys the
    backbone does not have. Returns ``missing``, ``unexpected`` and
    ``matched`` (a count).
    """
    own = model.state_dict()
    arch_zoo = getattr(type(model), 'arch_zoo', None)
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape))
                  for k, v in sd.items() if k in own and v.shape != own[k].shape]
    missing = _weights(k for k in own if k not in sd)
    unexpected = [k for k in sd if k not in own]
    matched = len([k for k in sd if k in own]) - len(mismatched)
    theirs, ours = describe_stvit(sd, arch_zoo), describe_stvit(own, arch_zoo)
    other_variant = _other_variant(theirs, ours)
    if mismatched or matched == 0 or (strict and other_variant):
        detail = '; '.join(f'{k}: checkpoint {a} vs model {b}'
                           for k, a, b in mismatched[:3])
        if not detail:
            detail = (f'{len(missing)} of the {len(_weights(own))} backbone '
                      f'tensors are not in the file (e.g. {missing[:3]}), '
                      f'{len(unexpected)} file keys are unknown to the model '
                      f'(e.g. {unexpected[:3]})')
        hint = ''
        if theirs and theirs.get('arch'):
            hint = (f" Build the backbone with arch='{theirs['arch']}' or "
                    f'load a checkpoint of {_variant_str(ours)}.')
        raise CheckpointMismatchError(
            f'{source} holds {_variant_str(theirs)}, but the model is '
            f'{_variant_str(ours)}: {detail}.{hint}')
    if strict and (missing or unexpected):
        lines = [f'{source} does not hold every tensor of this '
                 f'{_variant_str(ours)} backbone, so part of it would stay '
                 'randomly initialised; stopped.']
        if missing:
            lines.append(f'missing from the file ({len(missing)}): '
                         f'{_summarise(missing)}')
        if unexpected:
            lines.append(f'in the file but not in the backbone '
                         f'({len(unexpected)}): {_summarise(unexpected)}')
        lines.append(partial_hint or (
            'If a partial load is what you want, say so: '
            "init_cfg=dict(type='Pretrained', checkpoint=..., strict=False)."
        ))
        raise CheckpointMismatchError('\n  '.join(lines))
    return dict(missing=missing, unexpected=unexpected, matched=matched)


def load_stvit_state_dict(model, filename: str, prefix: Optional[str] = None,
                          map_location='cpu', which: Optional[str] = None,
                          strict: bool = True, unsafe: bool = False,
                          logger='current'):
    """Loads an official or mm STViT checkpoint into an ``STViT`` backbone.

    ``which`` picks the entry of the file (:func:`extract_state_dict`),
    ``prefix`` the backbone's keys in it (:func:`backbone_state_dict`: the
    forms mmengine's ``Pretrained`` takes, with or without ``module.``).
    Drops the authors' classification tail (``proj``, ``norm``, ``head``)
    and the non-backbone parts of mm checkpoints, then checks the rest with
    :func:`check_backbone_state_dict` (``strict``: every backbone tensor,
    with its shape) before loading. Logs what it loaded and left out.
    """
    ckpt = load_checkpoint_file(filename, map_location, unsafe=unsafe)
    sd = extract_state_dict(ckpt, which, source=str(filename))
    own = model.state_dict()
    sd, dropped = backbone_state_dict(
        sd, prefix, own_keys=own.keys(), source=str(filename),
        entries=state_dict_entries(ckpt))
    res = check_backbone_state_dict(model, sd, str(filename), strict=strict)
    model.load_state_dict(
        OrderedDict((k, v) for k, v in sd.items() if k in own), strict=False)
    msgs = [f'STViT: loaded {res["matched"]}/{len(own)} backbone tensors '
            f'from {filename}']
    if dropped:
        msgs.append(f'not loaded (not part of the backbone): '
                    f'{_summarise(dropped)}')
    if res['unexpected']:
        msgs.append(f'not loaded (unknown to this backbone): '
                    f'{_summarise(res["unexpected"])}')
    if res['missing']:
        msgs.append(f'missing from the checkpoint, left as initialised '
                    f'(strict=False): {_summarise(res["missing"])}')
    level = logging.WARNING if res['missing'] or res['unexpected'] else \
        logging.INFO
    print_log('\n  '.join(msgs), logger=logger, level=level)
    return dict(missing=res['missing'], unexpected=res['unexpected'],
                dropped=dropped)


def missing_model_weights(model_keys: Iterable[str],
                          ckpt_keys: Iterable[str]) -> List[str]:
    """Weights of a model that a checkpoint's state dict does not hold
    (``module.`` prefixes of either side ignored)."""
    have = {re.sub(r'^module\.', '', k) for k in ckpt_keys}
    return _weights(k for k in model_keys
                    if re.sub(r'^module\.', '', k) not in have)


__all__ = [
    'CheckpointMismatchError', 'UnsafeCheckpointError', 'allowed_globals',
    'load_checkpoint_file', 'trust', 'is_trusted', 'install_mmengine_loaders',
    'is_official_checkpoint', 'checkpoint_format', 'extract_state_dict',
    'convert_official', 'load_stvit_state_dict', 'check_backbone_state_dict',
    'backbone_state_dict', 'strip_wrappers', 'prefixes_holding',
    'state_dict_entries', 'WRAPPER_PREFIXES',
    'missing_model_weights', 'OFFICIAL_WEIGHTS_HELP'
]
