# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The command-line layer of the tools, one concern per module: ``errors``,
``quiet``, ``config_path``, ``run_config``, ``run_args``, ``pretrained``,
``amp``, ``dist``, ``load_from``, ``preflight`` (docs/architecture.md, "The
tools"). The library (``mmstvit`` outside this package) never imports it."""
from .errors import ToolError

__all__ = ['ToolError']
