# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What a ``.pth`` may unpickle: one allow-list for every file (what the
authors' STViT files hold, ``argparse.Namespace`` in ``args`` and numpy
scalars, and what mmengine's checkpoints hold, ``HistoryBuffer`` state and
numpy arrays), and beyond it only the files trusted by name
(``--unsafe-load``), for the rest of the process."""
import argparse
import os.path as osp
import pickle
import threading
from typing import Callable, List, Tuple

#: statistics methods that mmengine's ``HistoryBuffer`` registers by default
HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')

NUMPY_DTYPES = ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16',
                'uint32', 'uint64', 'float16', 'float32', 'float64',
                'longdouble', 'complex64', 'complex128', 'clongdouble')


def history_buffer_getattr(obj, name):
    """``getattr`` restricted to what mmengine checkpoints need.

    Registered as ``builtins.getattr`` for the weights-only unpickler:
    ``HistoryBuffer.__getstate__`` stores its statistics methods, which
    pickle writes as ``getattr(HistoryBuffer, 'mean')``; anything else is
    refused (a real ``getattr`` would let a file reach any attribute of any
    allowed object).

    Raises:
        pickle.UnpicklingError: any other object or attribute.
    """
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and (
            name in HISTORY_BUFFER_METHODS
            or name in HistoryBuffer._statistics_methods) and \
            not name.startswith('_') and callable(
                getattr(HistoryBuffer, name, None)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'mmstvit: weights-only load refuses getattr({obj!r}, {name!r}); '
        'only the statistics methods of mmengine.logging.HistoryBuffer are '
        'allowed')


def numpy_globals() -> List[Tuple[Callable, str]]:
    """numpy's array and scalar rebuilders under their numpy 1 and 2 names,
    and the dtype classes."""
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
    for code in NUMPY_DTYPES:
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
    for name in HISTORY_BUFFER_METHODS:
        allowed.append((getattr(HistoryBuffer, name), f'{hb}.{name}'))
    allowed.append((history_buffer_getattr, 'builtins.getattr'))
    allowed += numpy_globals()
    allowed.append((argparse.Namespace, 'argparse.Namespace'))
    return allowed


def allowed_names() -> List[str]:
    """The ``'module.name'`` of every allowed global."""
    return [name for _, name in allowed_globals()]


# -- files trusted by name --------------------------------------------------
_trusted = set()
_trust_lock = threading.Lock()


def _key(path) -> str:
    return osp.realpath(osp.expanduser(str(path)))


def trust(*paths) -> None:
    """Marks files whose loading may unpickle anything (``--unsafe-load``)."""
    with _trust_lock:
        _trusted.update(_key(p) for p in paths if p)


def untrust_all() -> None:
    """Forgets every file :func:`trust` marked."""
    with _trust_lock:
        _trusted.clear()


def is_trusted(path) -> bool:
    """Whether :func:`trust` marked ``path`` (compared as real paths)."""
    return _key(path) in _trusted
