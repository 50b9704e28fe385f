# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The ``mmstvit::`` config scope for mmengine, before anything imports mmstvit.

mmengine 0.10.7 resolves ``_base_ = 'pkg::folder/file.py'`` (and
``mmengine.hub.get_config``) as ``<installed pkg>/.mim/configs/folder/file.py``,
but only for the scopes of its own table (``mmengine.config.utils.MODULE2PACKAGE``:
mmdet, mmseg, mmpretrain, ...), and it reads a config's ``_base_`` before its
``custom_imports``. So a config of another project that names
``mmstvit::mask_rcnn/mask_rcnn_stvit_s_1x.py``, started by a toolbox's own
``tools/train.py``, is parsed before anything imports mmstvit.

This module, standard library only, fixes both ends:

* :func:`patch` adds ``mmstvit`` to that table and makes mmengine's
  ``get_installed_path('mmstvit')`` return the folder Python imports mmstvit
  from. (For a PEP 660 editable install, which ``make install`` is, mmengine's
  own answer is ``site-packages/mmstvit``, a folder that does not exist.)
  Other packages are answered by mmengine's function as before.
* :func:`install` is called at interpreter start-up by the one line of
  ``mmstvit-scope.pth`` that ``pip install`` puts beside this module. It
  imports nothing: it patches what is already imported and otherwise puts a
  finder on ``sys.meta_path`` that runs :func:`patch` right after mmengine
  imports ``mmengine.utils.package_utils`` or ``mmengine.config.utils``, and
  leaves once both are patched.

On the onedl stack (the maintained fork, ``onedl-*`` distributions with the
same import names) mmengine's table names the upstream distributions
(``mmseg`` -> ``mmsegmentation``), which the fork's mmengine looks up with
``importlib.metadata``: every ``mmseg::`` base failed with ``mmsegmentation
is not installed``. :func:`patch` also points each toolbox scope of
:data:`FORK_DISTRIBUTIONS` at the fork's distribution where the table's one
is not installed and the fork's is (nothing changes on the upstream stack).
The other differences of the fork are handled in ``mmstvit.compat``.

``import mmstvit`` calls :func:`install` too (for a checkout on ``PYTHONPATH``,
which has no ``.pth``).
"""
import functools
import importlib.abc
import importlib.metadata
import importlib.util
import sys

PACKAGE = 'mmstvit'
_TABLE = 'mmengine.config.utils'
_PATHS = 'mmengine.utils.package_utils'
#: modules that hold mmengine's get_installed_path under that name
_USERS = (_PATHS, 'mmengine.utils', 'mmengine.config.config',
          'mmengine.hub.hub')
#: scope -> the fork's distribution of that toolbox (the onedl stack)
FORK_DISTRIBUTIONS = {
    'mmdet': 'onedl-mmdetection',
    'mmseg': 'onedl-mmsegmentation',
    'mmpretrain': 'onedl-mmpretrain',
}


def _installed(distribution):
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def fork_scopes(table):
    """Points the scopes of ``table`` (mmengine's ``MODULE2PACKAGE``) at
    the fork's distributions where only those are installed; returns the
    scopes it changed."""
    changed = []
    for scope, fork in FORK_DISTRIBUTIONS.items():
        named = table.get(scope)
        if named not in (None, fork) and not _installed(named) and \
                _installed(fork):
            table[scope] = fork
            changed.append(scope)
    return changed


def package_dir():
    """The folder of the mmstvit that ``import mmstvit`` gives (without
    importing it), or None."""
    module = sys.modules.get(PACKAGE)
    paths = getattr(module, '__path__', None)
    if not paths:
        spec = importlib.util.find_spec(PACKAGE)
        paths = spec.submodule_search_locations if spec else None
    return list(paths)[0] if paths else None


def _wrap(get_installed_path):
    if getattr(get_installed_path, '_mmstvit', False):
        return get_installed_path

    @functools.wraps(get_installed_path)
    def wrapper(package):
        if package == PACKAGE:
            path = package_dir()
            if path is not None:
                return path
        return get_installed_path(package)

    wrapper._mmstvit = True
    return wrapper


def patch():
    """Teaches the mmengine modules imported so far the ``mmstvit`` scope.
    Returns True when both of mmengine's ends are done."""
    table = sys.modules.get(_TABLE)
    if table is not None and PACKAGE not in table.MODULE2PACKAGE:
        table.MODULE2PACKAGE[PACKAGE] = PACKAGE
        fork_scopes(table.MODULE2PACKAGE)
    for name in _USERS:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, 'get_installed_path'):
            module.get_installed_path = _wrap(module.get_installed_path)
    return table is not None and _PATHS in sys.modules


class _PatchingLoader(importlib.abc.Loader):
    """Runs a module's own loader, then :func:`patch`."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        if patch():
            _remove_finder()

    def __getattr__(self, attr):
        return getattr(self._loader, attr)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the two mmengine modules through the other finders and wraps
    their loader; leaves every other import alone."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in (_TABLE, _PATHS):
            return None
        for finder in sys.meta_path:
            if isinstance(finder, _Finder) or \
                    not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
            spec.loader = _PatchingLoader(spec.loader)
        return spec


def _remove_finder():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]


def install():
    """Patches mmengine now if it is imported, else when it is."""
    if patch():
        _remove_finder()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
