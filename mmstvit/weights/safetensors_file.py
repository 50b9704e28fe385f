# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""``.safetensors`` files: tensors and string metadata only, read and
written with the ``safetensors`` library (Hugging Face), never pickled.

A safetensors file starts with the byte length of its JSON header (8 bytes,
little endian) and the header's ``{``; :func:`sniff_format` tells it from
PyTorch's zip checkpoints (``PK``) and legacy pickles (``0x80``) by those
bytes, whatever the file is called.
"""
import json
import os
import os.path as osp
import struct
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch

SUFFIX = '.safetensors'
#: what each sniffed format is, for messages
KINDS = {'torch-zip': 'a PyTorch zip checkpoint (torch.save)',
         'pickle': 'a pickle (legacy torch.save)',
         'unknown': 'no known weights format'}


def sniff_format(path) -> str:
    """``'safetensors'``, ``'torch-zip'``, ``'pickle'`` or ``'unknown'``,
    from the first bytes of the file ``path``."""
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(9)
    if head[:4] == b'PK\x03\x04':
        return 'torch-zip'
    if head[:1] == b'\x80':
        return 'pickle'
    if len(head) == 9 and head[8:9] == b'{':
        (n, ) = struct.unpack('<Q', head[:8])
        if 2 <= n <= size - 8:
            return 'safetensors'
    return 'unknown'


def _device(map_location) -> str:
    if isinstance(map_location, (str, torch.device)):
        return str(map_location)
    return 'cpu'


def read_safetensors(path, map_location='cpu'
                     ) -> Tuple['OrderedDict[str, torch.Tensor]',
                                Dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, read with
    ``safetensors.safe_open`` (what ``safetensors.torch.load_file`` runs; no
    pickle). ``map_location``: a device
    (str or ``torch.device``); anything else reads onto the CPU.

    Raises:
        ValueError: not a readable safetensors file (truncated ...).
    """
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework='pt',
                       device=_device(map_location)) as f:
            tensors = OrderedDict((k, f.get_tensor(k)) for k in f.keys())
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(
            f'{path!r} is not a readable safetensors file '
            f'({type(e).__name__}: {str(e)[:200]}). Is the download '
            'complete?') from e
    return tensors, metadata


def safetensors_keys(path):
    """The tensor names of a safetensors file (its header only)."""
    with open(path, 'rb') as f:
        (n, ) = struct.unpack('<Q', f.read(8))
        header = json.loads(f.read(n))
    return [k for k in header if k != '__metadata__']


def write_safetensors(state_dict: Dict[str, torch.Tensor], path,
                      metadata: Optional[Dict[str, object]] = None) -> None:
    """Writes ``state_dict`` as a safetensors file at ``path``.

    safetensors stores each tensor once, contiguous: every tensor is copied
    out in the standard (not channels-last) layout, so views and tensors
    that share memory are written as tensors of their own. ``metadata``
    values are written as strings (``None`` left out); ``format='pt'`` is
    added, as Hugging Face's loaders expect. The file appears whole
    (written to a temporary name beside it, then renamed), readable as
    the umask allows (as ``torch.save``'s files).
    """
    from safetensors.torch import save_file
    tensors = {k: v.detach().to('cpu').clone(
        memory_format=torch.contiguous_format) for k, v in state_dict.items()}
    meta = {'format': 'pt'}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()
                 if v is not None})
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        save_file(tensors, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
