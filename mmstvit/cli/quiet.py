# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Output that is not the tool's answer: third-party warnings no user can
act on, and what the toolboxes log while a tool builds a model."""
import contextlib
import warnings
from typing import Iterator

#: third-party warnings that every run of a tool would print and that no
#: user can act on: (category, message regex, why it is safe to hide)
KNOWN_THIRD_PARTY_WARNINGS = (
    (UserWarning, r'pkg_resources is deprecated as an API',
     'setuptools < 81 is pinned on purpose: mmengine resolves mmdet:: '
     'configs through pkg_resources'),
    (FutureWarning, r'`broadcast_buffers` is deprecated',
     "mmengine's DDP wrappers (and ours for CPU runs) pass "
     'broadcast_buffers=False, its default; torch 2.14 renamed the argument '
     'and prints this once per process; the behaviour is unchanged'),
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator",
     'the configs are written for GPUs (pin_memory=True); on a CPU-only '
     'machine torch ignores it, once per data loader'),
)


def quiet_third_party_warnings() -> None:
    """Hides :data:`KNOWN_THIRD_PARTY_WARNINGS` (for the tools' entry
    points; the project's own warnings and all others still show)."""
    for category, message, _ in KNOWN_THIRD_PARTY_WARNINGS:
        warnings.filterwarnings('ignore', message=message, category=category)


@contextlib.contextmanager
def mm_log_level(level: str = 'ERROR') -> Iterator[None]:
    """mmengine's current ``MMLogger`` at ``level`` for a ``with`` block:
    what the toolboxes log while a tool builds or analyses a model (every
    initialised parameter, FLOP counters' operator lists, data preprocessor
    notes) is not the tool's answer."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
