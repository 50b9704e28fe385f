# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Deprecated: moved to :mod:`mmstvit.weights` (this path goes in the next
release)."""
import warnings

from mmstvit.weights import *  # noqa: F401,F403
from mmstvit.weights import __all__  # noqa: F401
# the old private name, for code written against the old module this round
from mmstvit.weights.errors import summarise_keys as _summarise  # noqa: F401

warnings.warn(
    'mmstvit.utils.checkpoint is deprecated: import from mmstvit.weights',
    DeprecationWarning, stacklevel=2)
