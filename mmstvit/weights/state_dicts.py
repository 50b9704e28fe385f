# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Where a checkpoint keeps its weights: the entries (``state_dict``,
``model``, the EMA copies), the wrapper prefixes of their keys and the
authors' layout."""
from collections import OrderedDict
from typing import Iterable, List, Optional

import torch

from .errors import CheckpointMismatchError

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
#: buffers that are bookkeeping, not weights: absent from some files
NOT_WEIGHTS = ('num_batches_tracked', )


def weight_keys(keys: Iterable[str]) -> List[str]:
    """``keys`` without the bookkeeping buffers (:data:`NOT_WEIGHTS`)."""
    return [k for k in keys if not k.endswith(NOT_WEIGHTS)]


def strip_wrappers(name: str) -> str:
    """``name`` without the :data:`WRAPPER_PREFIXES` in front of it
    (``module.backbone.x`` -> ``backbone.x``; also nested ones)."""
    while name.startswith(WRAPPER_PREFIXES):
        name = name.split('.', 1)[1]
    return name


def is_state_dict(obj) -> bool:
    """A non-empty dict of tensors."""
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def is_official_checkpoint(ckpt) -> bool:
    """The authors' format: a dict with ``model`` (a state dict) and no
    ``state_dict``."""
    return (isinstance(ckpt, dict) and 'state_dict' not in ckpt
            and is_state_dict(ckpt.get('model', None)))


def state_dict_entries(checkpoint) -> List[str]:
    """The entries of a checkpoint dict that are state dicts."""
    if not isinstance(checkpoint, dict):
        return []
    return [k for k, v in checkpoint.items()
            if isinstance(k, str) and is_state_dict(v)]


def _no_state_dict(checkpoint, sd, which, source):
    entries = [e for e in state_dict_entries(checkpoint) if e != which]
    hint = (' It holds state dicts under ' + ', '.join(
        f"{e!r} (which={e!r})" for e in entries) + ': name the one to '
        "load with init_cfg=dict(..., which=...)." if entries else '')
    found = sorted(map(str, sd))[:8] if isinstance(sd, dict) else \
        type(sd).__name__
    return CheckpointMismatchError(
        f'{source} holds no state dict (looked for '
        + (f'"{which}"' if which else '"state_dict", "model" and plain '
           'tensors') + f'; found keys {found}).{hint}')


def extract_state_dict(checkpoint, which: Optional[str] = None,
                       source: str = 'this file'
                       ) -> 'OrderedDict[str, torch.Tensor]':
    """The model weights of an official or mm checkpoint, with the
    :data:`WRAPPER_PREFIXES` (``module.``) of the keys removed.

    Args:
        checkpoint: What :func:`~mmstvit.weights.load_checkpoint_file`
            returned.
        which: The entry that holds them: ``'model'`` or ``'model_ema'``
            for the authors' files, ``'state_dict'`` for mm checkpoints,
            any other name of :func:`state_dict_entries` (EMA copies:
            ``'ema_state_dict'`` of mmengine's EMAHook, ``'state_dict_ema'``
            of timm). Default: ``state_dict``, else ``model``, else the
            file itself when it is a plain state dict.

    Raises:
        KeyError: ``which`` is not an entry of the file.
        CheckpointMismatchError: the entry holds no tensors (the message
            names the entries that do).
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
        sd = next((checkpoint[k] for k in ('state_dict', 'model')
                   if isinstance(checkpoint.get(k, None), dict)), checkpoint)
    if not is_state_dict(sd):
        raise _no_state_dict(checkpoint, sd, which, source)
    return OrderedDict((strip_wrappers(k), v) for k, v in sd.items())
