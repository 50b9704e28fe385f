# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""How mmstvit's modules reach the registries of mmdet, mmseg and mmpretrain,
without importing any of them.

* ``STViT`` is registered in mmengine's root ``MODELS`` when its module is
  imported. Every toolbox's ``MODELS`` is a child of that root and falls back
  to it, so ``type='STViT'`` builds from any of them.
* Scoped names (``type='mmdet.STViT'``) and the modules that need a toolbox
  (``STViTClsHead`` subclasses mmpretrain's ``ClsHead``) are registered in a
  toolbox's own registry *when that toolbox has been imported*: at once if it
  already is, otherwise by a post-import hook (:func:`when_imported`) that
  runs once the toolbox's package has finished importing. ``import mmstvit``
  therefore costs torch + mmengine only, and a toolbox whose import is broken
  (a torchvision built for another torch, say) affects only users of that
  toolbox, who see its own error when they import it.
* A hook that fails (the toolbox imported, but registering into it did not
  work) does not break the toolbox's import: the error is kept and
  :func:`toolbox_error` returns it, and the tools report it naming the
  toolbox.
"""
import importlib
import importlib.abc
import sys
import threading
import warnings
from typing import Callable, Dict, List, Optional

TOOLBOXES = ('mmdet', 'mmseg', 'mmpretrain')

_lock = threading.RLock()
_hooks: Dict[str, List[Callable]] = {}
_errors: Dict[str, str] = {}


def _imported(name: str) -> bool:
    """True when ``name`` is in ``sys.modules`` and done executing."""
    module = sys.modules.get(name)
    if module is None:
        return False
    spec = getattr(module, '__spec__', None)
    return not getattr(spec, '_initializing', False)


def _run(name: str, hook: Callable) -> None:
    try:
        hook(sys.modules[name])
    except Exception as e:  # noqa: BLE001 - kept and reported by name
        msg = (f'mmstvit: registering its modules into {name} failed: '
               f'{type(e).__name__}: {e}')
        _errors[name] = msg
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _fire(name: str) -> None:
    with _lock:
        hooks = _hooks.pop(name, [])
    for hook in hooks:
        _run(name, hook)


class WrappedLoader(importlib.abc.Loader):
    """A module's own loader whose ``exec_module`` runs as
    ``run(module, exec_module)`` (``run`` calls it, with whatever it does
    before, around or after); every other attribute is the loader's."""

    def __init__(self, loader, run: Callable):
        self._loader = loader
        self._run = run

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # the module's own loader is the real one (resources, get_code ...)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._run(module, self._loader.exec_module)

    def __getattr__(self, attr):
        return getattr(self._loader, attr)


def wrap_spec(finder, fullname, path, target, run: Callable):
    """The spec that the finders of ``sys.meta_path`` other than ``finder``
    give for ``fullname`` (None if none), its loader wrapped in a
    :class:`WrappedLoader` with ``run``: the body of a ``find_spec`` that
    changes how a module is executed, not where it is found."""
    for other in sys.meta_path:
        if other is finder or not hasattr(other, 'find_spec'):
            continue
        spec = other.find_spec(fullname, path, target)
        if spec is not None:
            break
    else:
        return None
    if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
        spec.loader = WrappedLoader(spec.loader, run)
    return spec


def _exec_then_fire(module, exec_module):
    exec_module(module)
    _fire(module.__name__)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds hooked packages through the other finders and wraps their
    loader (the hooks run after it); everything else is left to the other
    finders."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _hooks:
            return None
        return wrap_spec(self, fullname, path, target, _exec_then_fire)


_FINDER = _PostImportFinder()


def when_imported(name: str, hook: Callable) -> None:
    """Calls ``hook(module)`` once the top-level package ``name`` has been
    imported: now if it already is, else right after its import finishes.
    Imports nothing itself."""
    with _lock:
        if _imported(name):
            run_now = True
        else:
            run_now = False
            _hooks.setdefault(name, []).append(hook)
            if _FINDER not in sys.meta_path:
                sys.meta_path.insert(0, _FINDER)
    if run_now:
        _run(name, hook)


def toolbox_error(name: str) -> Optional[str]:
    """Why registering into toolbox ``name`` failed, or None."""
    return _errors.get(name)


def registered_toolboxes() -> List[str]:
    """The toolboxes whose registries hold mmstvit's modules by now."""
    out = []
    for name in TOOLBOXES:
        if not _imported(f'{name}.registry'):
            continue
        registry = sys.modules[f'{name}.registry'].MODELS
        if 'STViT' in registry.module_dict:
            out.append(name)
    return out


# ---------------------------------------------------------------------------
# what each toolbox gets
# ---------------------------------------------------------------------------


def _register_backbone(toolbox):
    from .models import STViT
    registry = importlib.import_module(f'{toolbox.__name__}.registry').MODELS
    registry.register_module(module=STViT, force=True)


def _register_mmpretrain_heads(toolbox):
    from .models.heads.stvit_head import STViTClsHead
    registry = importlib.import_module('mmpretrain.registry').MODELS
    registry.register_module(module=STViTClsHead, force=True)


def install_hooks() -> None:
    """Arranges the registrations above (called by ``import mmstvit``)."""
    for name in TOOLBOXES:
        when_imported(name, _register_backbone)
    when_imported('mmpretrain', _register_mmpretrain_heads)


def register_toolbox(name: str) -> None:
    """Imports toolbox ``name`` with every module of it registered (as its
    ``register_all_modules`` does), mmstvit's included.

    Raises:
        ImportError: the toolbox cannot be imported (or registering
            mmstvit's modules into it failed); the message names it.
    """
    if name not in TOOLBOXES:
        raise ValueError(f'unknown toolbox {name!r}; one of {TOOLBOXES}')
    try:
        utils = importlib.import_module(f'{name}.utils')
        utils.register_all_modules(init_default_scope=False)
    except Exception as e:  # ImportError, or e.g. RuntimeError of torchvision
        hint = ''
        if 'torchvision' in str(e) or name == 'mmpretrain':
            hint = (' (mmpretrain imports torchvision: install the '
                    'torchvision release built for your torch)')
        raise ImportError(f'{name} cannot be imported: {type(e).__name__}: '
                          f'{e}{hint}') from e
    error = toolbox_error(name)
    if error:
        raise ImportError(error)


__all__ = ['TOOLBOXES', 'when_imported', 'toolbox_error',
           'registered_toolboxes', 'install_hooks', 'register_toolbox']
