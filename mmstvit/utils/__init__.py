# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Deprecated names: the weights code is :mod:`mmstvit.weights`."""
import warnings

_MOVED = ('CheckpointMismatchError', 'UnsafeCheckpointError',
          'convert_official_state_dict', 'extract_state_dict',
          'load_checkpoint_file', 'load_stvit_state_dict')


def __getattr__(name):
    if name in _MOVED:
        warnings.warn(
            f'mmstvit.utils.{name} is deprecated: import it from '
            'mmstvit.weights', DeprecationWarning, stacklevel=2)
        import mmstvit.weights
        return getattr(mmstvit.weights, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = list(_MOVED)
