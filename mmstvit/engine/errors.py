# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The errors that end a training run which guards its progress.

Each carries a message for a person (what happened, what is kept on disk,
what to do); ``tools/train.py`` prints it without a traceback, the
toolboxes' own ``tools/train.py`` show it at the end of one.

* :class:`TrainingInterrupted` (a ``SystemExit``): a signal (SIGTERM,
  SIGUSR1, SIGINT) stopped the run at an iteration boundary after its
  checkpoint was written; the exit status is ``128 + signal number``.
* :class:`DivergenceError` (a ``FloatingPointError``, as detectron2's): the
  loss or the weights became non-finite.
* :class:`CheckpointWriteError` (an ``OSError``): a checkpoint could not be
  written (disk full, read-only or vanished folder); its base
  :class:`MachineError` for the run's other files (logs), from
  :func:`explain_machine_error`.
* :class:`TrainingDataError`: fetching the next batch raised; the original
  exception is its ``__cause__``.
"""
import errno as errnos
import os.path as osp
import shutil
from typing import Optional


class TrainingError(RuntimeError):
    """A training run that stops with a message (base class)."""


class DivergenceError(TrainingError, FloatingPointError):
    """The loss (or the weights) became non-finite.

    Attributes:
        iteration (int): The iteration (1-based) whose loss was non-finite.
        terms (dict): The non-finite loss terms, name -> value.
        lr (dict): The learning rates at that iteration (optimizer name or
            'lr' -> list of floats, one per parameter group).
    """

    def __init__(self, message: str, iteration: int = -1,
                 terms: Optional[dict] = None, lr: Optional[dict] = None):
        super().__init__(message)
        self.iteration = iteration
        self.terms = dict(terms or {})
        self.lr = dict(lr or {})


class TrainingDataError(TrainingError):
    """Fetching the next training batch raised an exception (an image that
    does not decode, a missing file ...); ``__cause__`` is that exception.

    Attributes:
        iteration (int): Iterations completed before the failing batch.
        epoch (int): The epoch (0-based) of the failing batch.
        rank (int): The process whose batch failed (-1: another process's
            batch failed; this one stopped with it).
        checkpoint (str or None): The checkpoint of the last completed
            iteration written before stopping (None if none was written).
    """

    def __init__(self, message: str, iteration: int, epoch: int, rank: int,
                 checkpoint: Optional[str]):
        super().__init__(message)
        self.iteration = iteration
        self.epoch = epoch
        self.rank = rank
        self.checkpoint = checkpoint


class TrainingInterrupted(SystemExit):
    """A signal stopped the run after a checkpoint; ``code`` is
    ``128 + signal number`` (143 for SIGTERM, 138 for SIGUSR1, 130 for
    SIGINT), ``checkpoint`` the file written (None if nothing was trained
    yet), ``signal_name`` the signal's name."""

    def __init__(self, code: int, message: str, signal_name: str,
                 checkpoint: Optional[str]):
        super().__init__(code)
        self.message = message
        self.signal_name = signal_name
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return self.message


def free_bytes(folder: str) -> Optional[int]:
    """Free bytes on the file system of ``folder`` (or of its nearest
    existing parent), None where that cannot be asked."""
    folder = osp.abspath(folder or '.')
    while folder and not osp.isdir(folder):
        parent = osp.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def size_text(n: Optional[int]) -> str:
    if n is None:
        return '? bytes'
    for unit, size in (('GB', 1 << 30), ('MB', 1 << 20), ('KB', 1 << 10)):
        if n >= size:
            return f'{n / size:.1f} {unit}'
    return f'{n} bytes'


class MachineError(TrainingError, OSError):
    """A file of the run could not be written (disk full, read-only or
    vanished folder). ``errno``, ``filename`` as in ``OSError``; ``size``:
    bytes it needed (None if unknown); ``kept``: the last good checkpoint,
    left in place (None if none)."""

    what = 'the file'

    def __init__(self, message: str, path: str, err: Optional[int],
                 size: Optional[int], kept: Optional[str]):
        TrainingError.__init__(self, message)
        self.errno = err
        self.filename = path
        self.size = size
        self.kept = kept

    def __str__(self) -> str:
        return self.args[0]

    @classmethod
    def from_os_error(cls, path: str, e: OSError, size: Optional[int],
                      kept: Optional[str]):
        cause, todo = _cause_and_remedy(path, e, size)
        return cls(checkpoint_message(f'{cls.what} {path}', cause, todo,
                                      kept), path, e.errno, size, kept)


class CheckpointWriteError(MachineError):
    """A checkpoint could not be written (see :class:`MachineError`)."""

    what = 'the checkpoint'


#: the errors of the machine (not of the run's code or data)
MACHINE_ERRNOS = (errnos.ENOSPC, errnos.EDQUOT, errnos.EROFS, errnos.EACCES,
                  errnos.EPERM, errnos.ENOENT, errnos.EIO, errnos.ESTALE)


def explain_machine_error(e: BaseException, runner) -> BaseException:
    """The :class:`MachineError` for an ``OSError`` of the machine that
    ended ``runner.train()`` (a log or visualisation file that cannot be
    written ...), naming the last good checkpoint; other errors as they
    are. ``tools/train.py`` raises it from ``e``."""
    if isinstance(e, TrainingError) or not isinstance(e, OSError) or \
            e.errno not in MACHINE_ERRNOS:
        return e
    kept = runner.message_hub.get_info('last_ckpt', None)
    path = e.filename or runner.work_dir
    return MachineError.from_os_error(str(path), e, None, kept)


def _cause_and_remedy(path: str, e: OSError, size: Optional[int]):
    folder = osp.dirname(path)
    if e.errno == errnos.ENOSPC or e.errno == errnos.EDQUOT:
        free = free_bytes(folder)
        need = f'needs {size_text(size)}, ' if size is not None else ''
        return (f'the disk is full ({e.strerror}): it {need}'
                f'{size_text(free)} are free',
                f'free {"at least " + size_text(size) if size else "space"} '
                'on that disk (older runs, caches) or train with --work-dir '
                'on a disk with room')
    if e.errno in (errnos.EROFS, errnos.EACCES, errnos.EPERM):
        return (f'the folder cannot be written ({e.strerror})',
                'make it writable or train with --work-dir on a writable '
                'disk')
    if e.errno == errnos.ENOENT or not osp.isdir(folder):
        return ('its folder no longer exists (deleted, or its file system '
                'unmounted)', 'bring the folder back (mount it again) or '
                'train with --work-dir on another disk')
    return (f'{type(e).__name__}: {e.strerror or e}',
            'fix the file system or train with --work-dir elsewhere')


def checkpoint_message(path: str, cause: str, todo: str,
                       kept: Optional[str]) -> str:
    if kept and '://' not in kept and not osp.exists(kept):
        kept_text = f'The last checkpoint, {kept}, is gone with its folder.'
    elif kept:
        kept_text = (f'The last good checkpoint, {kept}, is kept: once '
                     'fixed, the same command with --resume goes on from it.')
    else:
        kept_text = 'No earlier checkpoint of this run exists.'
    return (f'mmstvit: cannot write {path}: {cause}. '
            f'{kept_text} To go on: {todo}.')
