# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The command-line layer of ``tools/train.py``, ``tools/test.py`` and the
other tools, one concern per module. The library (``mmstvit`` outside this
package) never imports it.

==================  =========================================================
``errors``          :class:`ToolError` (a problem the user must fix) and how
                    a tool exits with it
``quiet``           third-party warnings no user can act on; mmengine's log
                    level for a ``with`` block
``config_path``     a config path that does not exist: the nearest names
``run_config``      loading a run's config, registering its toolbox, the
                    Runner
``run_args``        the flags train and test share and how they change the
                    config
``pretrained``      checkpoints a config names that are not on disk
``amp``             ``--amp``: the optimizer wrapper's config rewrite
``dist``            distributed runs with CPU processes (gloo)
``load_from``       the tools' use of weights files (``--unsafe-load``, the
                    authors' files as ``load_from``, untrained parts)
``preflight``       the data checks before a run (rank 0 only)
==================  =========================================================
"""
from .errors import ToolError

__all__ = ['ToolError']
