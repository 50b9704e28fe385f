# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Lets mmengine 0.10.7 load its own checkpoints on torch >= 2.6.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: it only
unpickles tensors, containers, primitive types and the globals allowed with
``torch.serialization.add_safe_globals``. mmengine 0.10.7 calls
``torch.load(filename, map_location=...)`` without ``weights_only``
(``mmengine/runner/checkpoint.py``), but the checkpoints its ``Runner``
saves hold more than tensors. Measured on a checkpoint of a real Runner run
(``torch.serialization.get_unsafe_globals_in_checkpoint``):

* ``message_hub.log_scalars`` holds :class:`~mmengine.logging.HistoryBuffer`
  objects, whose state has two numpy arrays (``numpy.ndarray`` rebuilt with
  ``numpy._core.multiarray._reconstruct`` and a ``numpy.dtype``) and, through
  ``HistoryBuffer.__getstate__``, the table of statistics methods, which
  pickle stores as ``builtins.getattr(HistoryBuffer, 'mean')`` and so on;
* ``message_hub.runtime_info`` holds numpy scalars (e.g. ``eta``, a
  ``numpy.float64``, pickled with ``numpy._core.multiarray.scalar``).

So ``runner.resume`` (``--resume``) and ``load_from`` of any such checkpoint
fail with ``Weights only load failed ... Unsupported global``.

:func:`apply` allows exactly those globals, keeping ``weights_only=True``:

* ``HistoryBuffer`` and its four default statistics methods (also under their
  protocol-4 names);
* ``numpy.ndarray``, ``numpy.dtype``, ``_reconstruct`` and ``scalar`` (under
  numpy 2's ``numpy._core`` and numpy 1's ``numpy.core`` names, so that
  files written with either numpy load with both), and the dtype classes of
  the numeric and bool dtypes (``BUILD`` of a dtype checks its class);
* ``argparse.Namespace``, held by the authors' STViT checkpoints (``args``);
* instead of ``builtins.getattr`` itself, which would let a file read any
  attribute of any allowed object, a stand-in registered under the name
  ``builtins.getattr`` that only returns ``HistoryBuffer``'s statistics
  methods and raises ``UnpicklingError`` for anything else.

Everything is registered as ``(object, 'module.name')`` pairs. Besides
naming the numpy 1 aliases, this keeps the fix in place when other code uses
``with torch.serialization.safe_globals([np.ndarray, ...])``: leaving that
context removes the bare objects it added from torch's allow-list, which
would otherwise remove ours too.

The fix is applied on ``import mmstvit``, is idempotent and does nothing on
torch < 2.6 (where ``torch.load`` is not restricted by default).
"""
import argparse
import pickle
from typing import Callable, List, Tuple

import torch

_APPLIED = False

#: statistics methods that ``HistoryBuffer`` registers by default
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def _torch_version() -> Tuple[int, int]:
    parts = torch.__version__.split('+')[0].split('.')
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):  # pragma: no cover - exotic builds
        return (0, 0)


def needs_fix() -> bool:
    """True on torch >= 2.6, where ``torch.load`` defaults to
    ``weights_only=True`` and has ``add_safe_globals``."""
    return _torch_version() >= (2, 6) and hasattr(torch.serialization,
                                                  'add_safe_globals')


def history_buffer_getattr(obj, name):
    """``getattr`` restricted to what mmengine checkpoints need.

    Registered as ``builtins.getattr`` for the weights-only unpickler: it
    returns ``HistoryBuffer``'s statistics methods (how pickle protocol 2
    stores ``HistoryBuffer.mean`` and friends) and refuses everything else.
    """
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and (
            name in _HISTORY_BUFFER_METHODS
            or name in HistoryBuffer._statistics_methods) and \
            not name.startswith('_') and callable(
                getattr(HistoryBuffer, name, None)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'mmstvit: weights-only load refuses getattr({obj!r}, {name!r}); '
        'only the statistics methods of mmengine.logging.HistoryBuffer are '
        'allowed')


def _named(obj, *names) -> List[Tuple[Callable, str]]:
    return [(obj, n) for n in names]


def _numpy_globals() -> List[Tuple[Callable, str]]:
    import numpy as np
    try:  # numpy >= 2
        multiarray = np._core.multiarray
    except AttributeError:  # numpy 1.x
        multiarray = np.core.multiarray
    allowed = []
    for fn in ('_reconstruct', 'scalar'):
        obj = getattr(multiarray, fn)
        allowed += _named(obj, f'numpy.core.multiarray.{fn}',
                          f'numpy._core.multiarray.{fn}')
    allowed += _named(np.ndarray, 'numpy.ndarray')
    allowed += _named(np.dtype, 'numpy.dtype')
    # A dtype is rebuilt with numpy.dtype(...) and then BUILD, which the
    # unpickler only allows for allow-listed classes: the dtype's class.
    codes = ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16',
             'uint32', 'uint64', 'float16', 'float32', 'float64', 'longdouble',
             'complex64', 'complex128', 'clongdouble')
    seen = set()
    for code in codes:
        cls = type(np.dtype(code))
        if cls is np.dtype or cls in seen:  # numpy < 1.20 has no classes
            continue
        seen.add(cls)
        allowed.append((cls, f'{cls.__module__}.{cls.__qualname__}'))
    return allowed


def safe_globals() -> List[Tuple[Callable, str]]:
    """The ``(object, 'module.name')`` pairs :func:`apply` allows."""
    from mmengine.logging import HistoryBuffer
    hb = 'mmengine.logging.history_buffer.HistoryBuffer'
    allowed = [(HistoryBuffer, hb)]
    for name in _HISTORY_BUFFER_METHODS:
        allowed.append((getattr(HistoryBuffer, name), f'{hb}.{name}'))
    allowed.append((history_buffer_getattr, 'builtins.getattr'))
    allowed += _numpy_globals()
    allowed.append((argparse.Namespace, 'argparse.Namespace'))
    return allowed


def apply() -> bool:
    """Allows the globals of mmengine checkpoints for ``torch.load``.

    Returns True when the fix is (or already was) in place, False on torch
    versions that do not need it. Safe to call any number of times.
    """
    global _APPLIED
    if not needs_fix():
        return False
    # adding to torch's allow-list is a set union: calling again is a no-op,
    # and re-adding repairs a list that someone cleared in between
    torch.serialization.add_safe_globals(safe_globals())
    _APPLIED = True
    return True


def is_applied() -> bool:
    """True when every global of :func:`safe_globals` is allowed now."""
    if not needs_fix():
        return False
    current = set(torch.serialization.get_safe_globals())
    return all(g in current for g in safe_globals())


apply()
