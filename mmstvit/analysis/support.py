# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The tools' process set-up that the analysis tools take from mmstvit's
tool support: quiet third-party warnings, mmengine's log level, the
release of a process group. The one module of :mod:`mmstvit.analysis` that
imports it."""
import sys
import time


def quiet_warnings():
    """Silences the third-party warning floods the tools never act on."""
    from mmstvit.tool_support import quiet_third_party_warnings
    quiet_third_party_warnings()


def mm_log_level(level):
    """A ``with`` block with mmengine's logger at ``level``."""
    from mmstvit.tool_support import mm_log_level as level_block
    return level_block(level)


def release_process_group():
    """Destroys the default process group (after its wrappers are gone)."""
    from mmstvit.tool_support import release_process_group as release
    release()


def logger(tool):
    """``log(msg)``: progress for the person watching, on stderr (stdout is
    the tables), as ``[tool HH:MM:SS] msg``."""

    def log(msg):
        print(f'[{tool} {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr,
              flush=True)

    return log
