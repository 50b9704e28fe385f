# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What the analysis tools share with a person and with mmstvit's tool
support: progress lines, the machine and JSON of a run; quiet third-party
warnings, mmengine's log level, the release of a process group (the one
module of :mod:`mmstvit.analysis` that imports the tool support)."""
import json
import platform
import sys
import time

import torch


def quiet_warnings():
    """Silences the third-party warning floods the tools never act on."""
    from mmstvit.cli.quiet import quiet_third_party_warnings
    quiet_third_party_warnings()


def mm_log_level(level):
    """A ``with`` block with mmengine's logger at ``level``."""
    from mmstvit.cli.quiet import mm_log_level as level_block
    return level_block(level)


def release_process_group():
    """Destroys the default process group (after its wrappers are gone)."""
    from mmstvit.cli.dist import release_process_group as release
    release()


def logger(tool):
    """``log(msg)``: progress for the person watching, on stderr (stdout is
    the tables), as ``[tool HH:MM:SS] msg``."""

    def log(msg):
        print(f'[{tool} {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr,
              flush=True)

    return log


def machine(device, **extra):
    """The device, its name, the threads and torch version of this run."""
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda' else
            platform.processor() or platform.machine())
    return dict(device=str(device), name=name, **extra)


def save(results, path):
    """Writes the results so far (a long run that stops keeps them)."""
    with open(path, 'w') as f:
        json.dump(results, f, indent=2)
