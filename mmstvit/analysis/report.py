# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What the tools write: the machine a run was on, JSON results, and the
cells of their markdown tables."""
import json
import platform

import torch


def machine(device, **extra):
    """The device, its name, the threads and torch version of this run."""
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda' else
            platform.processor() or platform.machine())
    return dict(device=str(device), name=name, **extra)


def save(results, path):
    """Writes the results so far (a long run that stops keeps them)."""
    with open(path, 'w') as f:
        json.dump(results, f, indent=2)


def cell(value, fmt):
    """``value`` formatted by ``fmt`` (e.g. ``'{:.2f}'``), ``-`` for None."""
    return '-' if value is None else fmt.format(value)


def with_range(value, low, high, fmt='{:.2f}'):
    """``value (low-high)``: a median and the range of its rounds."""
    return f'{fmt.format(value)} ({fmt.format(low)}-{fmt.format(high)})'


def header(*names):
    """The first two lines of a markdown table with these columns."""
    return [row(*names), '|' + '---|' * len(names)]


def row(*cells):
    """One markdown table row (an empty cell is ``| |``)."""
    return ' '.join(['|'] + [f'{c} |' if str(c) else '|' for c in cells])
