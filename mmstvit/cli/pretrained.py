# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Checkpoints a config names that are not on disk: found before anything
is built, so that a tool stops with the keys to change."""
import os.path as osp
from typing import Iterator, List, Optional, Tuple

from mmstvit.utils.paths import is_remote


def walk_config(obj, key: str = '') -> Iterator[Tuple[str, object]]:
    """Every dict in a config value, depth first, with its dotted key
    (``'model.backbone'``, ``'model.roi_head.bbox_head[0]'``)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk_config(v, f'{key}.{k}' if key else str(k))
        yield key, obj
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from walk_config(v, f'{key}[{i}]')


def _pretrained_checkpoints(cfg) -> Iterator[Tuple[str, object, str]]:
    """``(config key, path, how to go without it)`` of every ``Pretrained``
    ``init_cfg`` and string ``pretrained=`` in ``cfg.model``."""
    for key, d in walk_config(cfg.get('model', None), 'model'):
        if not isinstance(d, dict):
            continue
        init = d.get('init_cfg', None)
        listed = isinstance(init, (list, tuple))
        for i, ic in enumerate(init if listed else [init]):
            if isinstance(ic, dict) and ic.get('type') == 'Pretrained':
                sub = f'{key}.init_cfg[{i}]' if listed else f'{key}.init_cfg'
                yield (f'{sub}.checkpoint', ic.get('checkpoint'),
                       f'{key}.init_cfg=None')
        if isinstance(d.get('pretrained', None), str):
            yield f'{key}.pretrained', d['pretrained'], \
                f'{key}.pretrained=None'


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
    named = list(_pretrained_checkpoints(cfg))
    if load_from:
        named.append(('load_from', cfg.get('load_from', None),
                      'load_from=None'))
    return [(key, path, without) for key, path, without in named
            if isinstance(path, str) and path and not is_remote(path)
            and not osp.isfile(osp.expanduser(path))]


def missing_pretrained_message(missing,
                               help_text: Optional[str] = None) -> str:
    """The message for :func:`find_missing_pretrained`'s list: each key and
    file, where to get the authors' weights, the ``--cfg-options`` that go
    without them."""
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
