# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Deprecated: moved to :mod:`mmstvit.weights.official_model` (this path goes
in the next release)."""
import warnings

from mmstvit.weights.official_model import (  # noqa: F401
    OFFICIAL_ARCHS, build_official_model, load_official_module,
    official_backbone_features)

warnings.warn(
    'mmstvit.utils.official is deprecated: import from '
    'mmstvit.weights.official_model', DeprecationWarning, stacklevel=2)
