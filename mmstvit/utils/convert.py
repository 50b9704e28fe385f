# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Deprecated: moved to :mod:`mmstvit.weights.convert` (this path goes in the
next release)."""
import warnings

from mmstvit.weights.convert import convert_official_state_dict  # noqa: F401

warnings.warn(
    'mmstvit.utils.convert is deprecated: import from mmstvit.weights',
    DeprecationWarning, stacklevel=2)
