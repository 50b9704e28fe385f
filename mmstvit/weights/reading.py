# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Every weights file mmstvit opens goes through :func:`load_checkpoint_file`.

Weights files are untrusted input (people download them from shared
drives), and a ``.pth`` is a pickle: unpickling it can run any code. So:

* a file whose first bytes are a safetensors header is read with
  ``safetensors`` (tensors only, nothing to run), whatever its name;
* a pickle (``.pth``) is read with ``torch.load(weights_only=True)`` and
  exactly the globals of :func:`~mmstvit.weights.allowed_globals`; a file
  that needs more is refused with :class:`UnsafeCheckpointError`;
* ``weights_only=False`` only for a file trusted by name (``unsafe=True``,
  :func:`~mmstvit.weights.trust`), never as a fallback;
* a file named ``.safetensors`` that is a pickle is refused
  (:class:`NotSafetensorsError`), never unpickled.
"""
import logging
import os
import os.path as osp
import pickle
import re
from collections import OrderedDict
from typing import List, Optional

import torch
from mmengine.logging import print_log

from .convert import (convert_official_state_dict, mm_to_official_state_dict,
                      state_dict_names)
from .errors import (OFFICIAL_WEIGHTS_HELP, NotSafetensorsError,
                     UnsafeCheckpointError)
from .safetensors_file import (KINDS, SUFFIX, read_safetensors,
                               safetensors_keys, sniff_format)
from .state_dicts import extract_state_dict, is_official_checkpoint
from .trust import allowed_globals, allowed_names, is_trusted


def download(url: str) -> str:
    """``url`` in torch's hub cache (``<hub>/checkpoints``), fetched once."""
    from torch.hub import download_url_to_file, get_dir
    from urllib.parse import urlparse
    folder = osp.join(get_dir(), 'checkpoints')
    os.makedirs(folder, exist_ok=True)
    path = osp.join(folder, osp.basename(urlparse(url).path))
    if not osp.isfile(path):
        download_url_to_file(url, path, progress=True)
    return path


def _local_file(filename) -> str:
    filename = str(filename)
    if filename.startswith(('http://', 'https://')):
        filename = download(filename)
    if not osp.isfile(osp.expanduser(filename)):
        raise FileNotFoundError(
            f'STViT checkpoint not found: {filename!r} (looked for '
            f'{osp.abspath(osp.expanduser(filename))}). '
            f'{OFFICIAL_WEIGHTS_HELP}')
    return osp.expanduser(filename)


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


def _safetensors_checkpoint(filename: str, map_location) -> dict:
    """A safetensors file as a checkpoint dict: ``{'model': ..., 'meta':
    ...}`` for the authors' key names (so it converts as their ``.pth``
    does), else ``{'state_dict': ..., 'meta': ...}`` (an mm checkpoint)."""
    sd, meta = read_safetensors(filename, map_location)
    entry = 'model' if state_dict_names(sd) == 'official' else 'state_dict'
    return {entry: sd, 'meta': meta}


def _torch_load(filename: str, map_location, unsafe: bool, mmap: bool):
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


def load_checkpoint_file(filename, map_location='cpu', *,
                         unsafe: bool = False, mmap: bool = False):
    """Reads a weights file: safetensors by content, else weights-only with
    the allow-list.

    Args:
        filename (str | Path): A local file; ``http(s)://`` URLs are
            downloaded (into torch's hub cache) and then read the same way.
        map_location: As for ``torch.load`` (for safetensors: a device).
        unsafe (bool): The caller trusts this pickle: unpickle it fully
            (``weights_only=False``), with a warning. Also done for files
            marked with :func:`~mmstvit.weights.trust`. Never otherwise,
            and never for a file named ``.safetensors``.
        mmap (bool): Memory-map the tensors (cheap look at a big file).

    Returns:
        What the file holds; a safetensors file as ``{'state_dict': tensors,
        'meta': metadata}`` (``'model'`` instead of ``'state_dict'`` when
        its keys are the authors').

    Raises:
        FileNotFoundError: no such file (the message says where the
            official weights come from).
        UnsafeCheckpointError: the file holds globals beyond the allow-list
            (nothing of it was executed).
        NotSafetensorsError: named ``.safetensors`` but a pickle.
        ValueError: not a readable file (truncated download ...).
    """
    filename = _local_file(filename)
    fmt = sniff_format(filename)
    if fmt == 'safetensors':
        return _safetensors_checkpoint(filename, map_location)
    if filename.endswith(SUFFIX):
        raise NotSafetensorsError(filename, KINDS[fmt])
    return _torch_load(filename, map_location, unsafe, mmap)


def load_state_dict(path, which: Optional[str] = None, *,
                    names: Optional[str] = None, map_location='cpu',
                    unsafe: bool = False) -> 'OrderedDict[str, torch.Tensor]':
    """A flat state dict (``{name: tensor}``) from any weights file mmstvit
    reads: ``.safetensors`` (never pickled), the authors' ``.pth`` and mm
    checkpoints (weights-only, through the allow-list).

    Args:
        path (str | Path): The file (or an ``http(s)://`` URL).
        which (str, optional): The entry of a ``.pth`` that holds the
            weights (``'model_ema'``, ...); default ``state_dict``, else
            ``model``, else the file itself.
        names (str, optional): ``None``: the keys as stored (``module.``
            dropped); ``'official'``: the authors' names, those of a bare
            :class:`~mmstvit.STViT` plus ``proj``/``norm``/``head`` (what a
            timm ``stvit_*`` loads); ``'mm'``: mmpretrain's classifier
            names (``backbone.*``, ``head.fc.*``).
        map_location, unsafe: As for :func:`load_checkpoint_file`.

    Raises:
        The errors of :func:`load_checkpoint_file`, ``KeyError`` for a
        ``which`` the file does not have, ``ValueError`` for ``names``.
    """
    if names not in (None, 'official', 'mm'):
        raise ValueError(f"names must be None, 'official' or 'mm', got "
                         f'{names!r}')
    ckpt = load_checkpoint_file(path, map_location, unsafe=unsafe)
    sd = extract_state_dict(ckpt, which, source=str(path))
    stored = state_dict_names(sd)
    if names == 'official' and stored == 'mm':
        return mm_to_official_state_dict(sd)
    if names == 'mm' and stored == 'official':
        return convert_official_state_dict(sd)
    return sd


def checkpoint_format(path: str) -> str:
    """``'official'``, ``'mm'`` or ``'other'`` for a local checkpoint file
    (read memory-mapped, or only its header for safetensors, so big files
    cost little). A safetensors file is ``'official'`` when its keys are the
    authors', else ``'mm'``."""
    path = _local_file(path)
    if sniff_format(path) == 'safetensors':
        keys = dict.fromkeys(safetensors_keys(path))
        return 'official' if state_dict_names(keys) == 'official' else 'mm'
    ckpt = load_checkpoint_file(path, mmap=True)
    if is_official_checkpoint(ckpt):
        return 'official'
    if isinstance(ckpt, dict) and 'state_dict' in ckpt:
        return 'mm'
    return 'other'
