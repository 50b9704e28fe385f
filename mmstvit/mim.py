# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Where mmstvit's configs, tools and model index are, installed or not.

An installed mmstvit carries them as mmdet, mmseg and mmpretrain do, in
``mmstvit/.mim/``: ``configs/``, ``tools/`` and ``model-index.yml`` (copies in
a wheel, links to the checkout in an editable install; see ``setup.py``). A
checkout used without installing it (``PYTHONPATH``) has them beside the
package. :func:`files_root` is the one place that knows both.

By scope, from any project (mmengine resolves it to
``<package>/.mim/configs/<folder>/<file>.py``; ``_mmstvit_scope`` makes
mmengine accept the scope)::

    _base_ = 'mmstvit::mask_rcnn/mask_rcnn_stvit_s_1x.py'
    cfg = mmengine.hub.get_config('mmstvit::toy/mask_rcnn_stvit_s_toy.py')

and :func:`config_path` resolves the same names for the tools
(``python -m mmstvit train mmstvit::toy/mask_rcnn_stvit_s_toy.py``).
"""
import os
import os.path as osp
import re
from typing import Dict, List, Optional

SCOPE = 'mmstvit'
PACKAGE_DIR = osp.dirname(osp.abspath(__file__))
#: the folder ``pip install`` fills (``mmstvit/.mim``)
MIM_DIR = osp.join(PACKAGE_DIR, '.mim')
#: ``scope::path`` as mmengine's ``_get_package_and_cfg_path`` accepts it
SCOPED = re.compile(r'^(\w+)::(\w+/.+)$')
#: files of tools/ that are not tools of an installed package
NOT_TOOLS = ('install.sh', )


def _checkout() -> Optional[str]:
    """The repository around the package, if it is in one."""
    root = osp.dirname(PACKAGE_DIR)
    if osp.isfile(osp.join(root, 'model-index.yml')) and \
            osp.isdir(osp.join(root, 'configs')):
        return root
    return None


def files_root() -> Optional[str]:
    """The folder that holds ``configs/``, ``tools/`` and
    ``model-index.yml``: ``mmstvit/.mim`` of an installed package (in an
    editable install, links to the checkout's folders), else the checkout
    the package is in; None for a copy of the package alone."""
    if osp.isfile(osp.join(MIM_DIR, 'model-index.yml')):
        return MIM_DIR
    return _checkout()


def require_files_root() -> str:
    root = files_root()
    if root is None:
        raise FileNotFoundError(
            f'mmstvit at {PACKAGE_DIR} has no configs, tools or model index: '
            f'neither {MIM_DIR} (what pip install . and make install make) '
            'nor a checkout around it. Install mmstvit with pip (from its '
            'repository or a wheel), or run it from its checkout.')
    return root


def installed() -> bool:
    """True for a package installed from a wheel or ``pip install .``: its
    files are in ``mmstvit/.mim`` and no checkout is around it (the user
    runs the tools as ``python -m mmstvit TOOL``)."""
    return _checkout() is None and files_root() == MIM_DIR


def model_index_path() -> Optional[str]:
    root = files_root()
    return osp.join(root, 'model-index.yml') if root else None


def config_path(name: str) -> str:
    """The file of a config name: ``mmstvit::<folder>/<file>.py`` (or
    ``<folder>/<file>.py``, ``configs/<folder>/<file>.py``) in mmstvit's
    configs; another scope (``mmdet::...``) through mmengine.

    Raises:
        FileNotFoundError: no such config (the message says where it looked).
    """
    m = SCOPED.match(name)
    if m and m.group(1) != SCOPE:
        from mmengine.config import Config
        return Config._get_cfg_path(name, '')[0]
    rel = m.group(2) if m else name
    if rel.startswith('configs/'):
        rel = rel[len('configs/'):]
    path = osp.join(require_files_root(), 'configs', rel)
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'mmstvit has no config {name!r} (looked for {path}); '
            "'python -m mmstvit --configs' lists them")
    return path


def config_names() -> List[str]:
    """Every config, by scope (``mmstvit::<folder>/<file>.py``); the
    ``_base_`` parts included, the top-level aliases of earlier paths not."""
    root = osp.join(require_files_root(), 'configs')
    names = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        if folder == root:
            continue
        names += [
            f'{SCOPE}::' + osp.relpath(osp.join(folder, f), root)
            for f in sorted(files) if f.endswith('.py')]
    return names


def tools() -> Dict[str, str]:
    """``{name: file}`` of the tools (``tools/**/*.py`` and ``*.sh``, by
    the file's name without its extension)."""
    root = osp.join(require_files_root(), 'tools')
    found = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        for f in sorted(files):
            if f.endswith(('.py', '.sh')) and f not in NOT_TOOLS:
                found.setdefault(osp.splitext(f)[0], osp.join(folder, f))
    return found


__all__ = ['SCOPE', 'files_root', 'installed', 'model_index_path',
           'config_path', 'config_names', 'tools']
