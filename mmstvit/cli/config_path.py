# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""A config path that does not exist: one line naming it and the nearest
configs of the project (as paths in the checkout and as ``mmstvit::``
names), exit status 2, before mmengine's ``FileNotFoundError`` traceback."""
import difflib
import os
import os.path as osp
from typing import List

from .errors import ToolError


class ConfigPathError(ToolError):
    """The config file given on the command line does not exist."""

    exit_code = 2


def _candidates() -> List[str]:
    """Every config of the project, by scope and, where the checkout is
    under the current folder, by path from here."""
    from mmstvit import mim
    try:
        names = mim.config_names()
        root = osp.realpath(osp.join(mim.require_files_root(), 'configs'))
    except (FileNotFoundError, RuntimeError, OSError):
        return []
    paths = []
    rel_root = osp.relpath(root)
    if not rel_root.startswith(os.pardir):
        paths = [osp.join(rel_root, n.split('::', 1)[1]) for n in names]
        for f in sorted(os.listdir(root)):  # the aliases of earlier paths
            if f.endswith('.py'):
                paths.append(osp.join(rel_root, f))
    # what a tool runs: the _base_ parts are left out
    return [c for c in paths + names if '_base_/' not in c]


def nearest_configs(name: str, n: int = 3) -> List[str]:
    """The ``n`` config names most like ``name`` (``difflib``'s ratio over
    the whole path, so the folder counts as well as the file name)."""
    candidates = _candidates()
    scoped = '::' in name
    pool = [c for c in candidates if ('::' in c) == scoped] or candidates
    return difflib.get_close_matches(name, pool, n=n, cutoff=0.0)


def check_config_path(config: str) -> None:
    """Raises :class:`ConfigPathError` when ``config`` is not a file
    (``mmstvit::`` names are resolved by :func:`mmstvit.mim.config_path`
    before a tool is run)."""
    if osp.isfile(config):
        return
    what = 'is a folder, not a config file' if osp.isdir(config) else \
        'does not exist'
    near = nearest_configs(config)
    hint = f'; nearest: {", ".join(near)}' if near else ''
    raise ConfigPathError(f'mmstvit: config {config} {what}{hint} '
                          "(all of them: python -m mmstvit --configs)")
