# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Signals that ask a run to stop (SIGTERM, SIGUSR1, SIGINT), and every
process agreeing on them at an iteration boundary.

The handler only notes the signal: the iteration under way finishes, a
checkpoint write under way completes (and is atomic anyway), and at the
next boundary every process learns whether any of them got one (one
``all_reduce`` of two integers per iteration, only in distributed runs).
A second signal of the same kind falls back to its previous handling
(Ctrl-C twice stops at once). Used by :mod:`mmstvit.engine.loops`.
"""
import os
import signal
import subprocess
from typing import Dict, Iterable, Optional, Tuple

import torch

#: the signals a run stops cleanly on, by default
DEFAULT_SIGNALS = ('SIGTERM', 'SIGUSR1', 'SIGINT')


class SignalGuard:
    """Notes the first of ``signals`` that arrives (names as in
    :mod:`signal`); :meth:`restore` puts the previous handlers back.

    Handlers can only be set in the main thread; elsewhere (a run started
    from a thread) the guard notes nothing and says so in ``unguarded``.
    """

    def __init__(self, signals: Iterable[str] = DEFAULT_SIGNALS):
        self.received: Optional[int] = None
        self.unguarded: Optional[str] = None
        self._previous: Dict[int, object] = {}
        for name in signals:
            sig = getattr(signal, str(name).upper(), None)
            if not isinstance(sig, signal.Signals):
                raise ValueError(f'mmstvit: preemption signal {name!r} is not '
                                 'a signal of this system (e.g. SIGTERM, '
                                 'SIGUSR1, SIGINT)')
            try:
                self._previous[sig] = signal.signal(sig, self._note)
            except ValueError as e:  # not the main thread
                self.unguarded = str(e)

    def _note(self, signum, frame) -> None:
        if self.received is not None:
            # asked twice: the signal's previous behaviour, now
            previous = self._previous.get(signum, signal.SIG_DFL)
            self.restore()
            if callable(previous):
                previous(signum, frame)
            else:
                os.kill(os.getpid(), signum)
            return
        self.received = signum

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            try:
                signal.signal(sig, previous)
            except (ValueError, TypeError):
                pass
        self._previous = {}

    def agree(self, failed: bool = False) -> Tuple[int, bool]:
        """``(signal number or 0, whether any process failed)`` over all
        processes: collective in a distributed run (every process calls it
        at the same boundary)."""
        from mmengine.dist import all_reduce, get_world_size
        local = (self.received or 0, int(failed))
        if get_world_size() == 1:
            return local[0], bool(local[1])
        flags = torch.tensor(local, dtype=torch.int64)
        all_reduce(flags, op='max')
        return int(flags[0]), bool(flags[1])


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f'signal {signum}'


def requeue_slurm_job(logger) -> Optional[str]:
    """``scontrol requeue $SLURM_JOB_ID`` (what Lightning's SLURM plugin
    does); returns what happened, for the log, or None outside slurm."""
    job = os.environ.get('SLURM_JOB_ID')
    if not job:
        return None
    array = os.environ.get('SLURM_ARRAY_JOB_ID')
    if array:
        job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    try:
        done = subprocess.run(['scontrol', 'requeue', job],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f'could not requeue slurm job {job}: {e}'
    if done.returncode != 0:
        return (f'could not requeue slurm job {job}: scontrol says '
                f'{(done.stderr or done.stdout).strip()}')
    return f'slurm job {job} requeued'
