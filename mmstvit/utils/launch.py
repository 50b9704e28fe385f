# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The tools' glue moved to :mod:`mmstvit.tool_support`; this old import
path is the same module object, so ``from mmstvit.utils import launch`` and
patches of its names keep working."""
import sys

from mmstvit import tool_support as _tool_support

sys.modules[__name__] = _tool_support
