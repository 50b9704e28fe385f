# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The backbone's keys in a file: ``prefix`` as mmengine's ``Pretrained``
takes it, and, when it fits nothing, the prefixes that would."""
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from .convert import CLS_TAIL_PREFIXES
from .errors import CheckpointMismatchError
from .state_dicts import strip_wrappers, weight_keys


def _dotted(prefix: str) -> str:
    return prefix if prefix.endswith('.') else prefix + '.'


def prefixes_holding(state_dict: Dict[str, torch.Tensor],
                     own_keys: Iterable[str]) -> List[Tuple[str, int]]:
    """``[(prefix, n)]``: the prefixes under which ``state_dict`` holds
    tensors named as the model's (``own_keys``), most tensors first
    (``''``: under the model's own names)."""
    own = set(weight_keys(own_keys))
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


def key_groups(state_dict, n: int = 6) -> str:
    """The first parts of the keys (``'backbone.' (120)``), most first."""
    counts: Dict[str, int] = {}
    for key in state_dict:
        head = key.split('.', 1)[0] + ('.' if '.' in key else '')
        counts[head] = counts.get(head, 0) + 1
    groups = sorted(counts.items(), key=lambda kv: -kv[1])
    text = ', '.join(f'{k!r} ({v})' for k, v in groups[:n])
    return text + (f' and {len(groups) - n} more' if len(groups) > n else '')


def suggestion(candidates, total: int) -> str:
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


def _under_prefix(state_dict, prefix, own_keys, source, entries, hint):
    wanted = strip_wrappers(_dotted(prefix))
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
            f'start with {key_groups(state_dict)}.{not_entry}'
            + (' ' + hint() if own_keys is not None else ''))
    if own_keys is not None and not any(k in own_keys for k in sd) \
            and hint.candidates:
        raise CheckpointMismatchError(
            f'{source} holds no tensor of this STViT backbone under '
            f'prefix {prefix!r}. {hint()}')
    return sd, [k for k in state_dict if not k.startswith(wanted)]


class _Hint:
    """The prefixes that hold the backbone, found once when asked."""

    def __init__(self, state_dict, own_keys):
        self.candidates = prefixes_holding(state_dict, own_keys) \
            if own_keys is not None else []
        self.total = len(weight_keys(own_keys)) if own_keys else 0

    def __call__(self):
        return suggestion(self.candidates, self.total)


def backbone_state_dict(state_dict: Dict[str, torch.Tensor],
                        prefix: Optional[str] = None,
                        own_keys: Optional[Iterable[str]] = None,
                        source: str = 'the checkpoint',
                        entries: Iterable[str] = ()):
    """Selects the backbone keys of a state dict whose wrapper prefixes are
    removed (:func:`~mmstvit.weights.extract_state_dict`). Returns
    ``(backbone_sd, dropped_keys)``.

    ``prefix`` is what mmengine's ``Pretrained`` takes: the start of the
    backbone's keys in the file, with or without its final dot
    (``'backbone'``, ``'backbone.'``), and with or without the ``module.``
    of DataParallel/DDP (``'module.backbone.'``): keys and prefix are
    compared without the wrapper prefixes. Without a prefix: ``backbone.``
    when keys start with it (mm checkpoints), else the authors' keys minus
    the classification tail.

    Raises:
        CheckpointMismatchError: ``prefix`` starts no key, or (with
            ``own_keys``, the backbone's state dict keys) the file holds
            the backbone only under another prefix. The message says
            which prefix loads it.
    """
    own_keys = set(own_keys) if own_keys is not None else None
    hint = _Hint(state_dict, own_keys)
    if prefix and strip_wrappers(_dotted(prefix)):
        return _under_prefix(state_dict, prefix, own_keys, source,
                             list(entries), hint)
    if any(k.startswith('backbone.') for k in state_dict):
        return _under_prefix(state_dict, 'backbone.', own_keys, source,
                             list(entries), hint)
    sd, dropped = OrderedDict(), []
    for k, v in state_dict.items():
        (dropped.append(k) if k.startswith(CLS_TAIL_PREFIXES) else
         sd.__setitem__(k, v))
    if own_keys is not None and not any(k in own_keys for k in sd) and \
            hint.candidates:
        raise CheckpointMismatchError(
            f'{source} holds no tensor of this STViT backbone under its own '
            f"names or under 'backbone.'. {hint()}"
            " (init_cfg=dict(type='Pretrained', checkpoint=..., "
            'prefix=...))')
    return sd, dropped
