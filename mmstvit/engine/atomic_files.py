# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Files that appear under their final name only when they are complete.

A checkpoint written in place (mmengine's ``LocalBackend.put``: open the
final name, write) is visible while it grows: a process killed during the
write leaves a truncated ``iter_N.pth`` beside the good ones, and
``last_checkpoint`` rewritten in place can be left empty. Here every write
goes to a temporary file in the same folder (``.iter_N.pth.tmp-<pid>``),
is flushed and fsynced, and is then renamed over the final name with
``os.replace`` (atomic on POSIX and Windows within one file system); the
folder is fsynced too, so the rename survives a power cut. A reader sees the
old file or the new one, never half of one.

A temporary file left by a killed process is never taken for a checkpoint
(its name starts with a dot and does not end in ``.pth``) and
:func:`remove_leftovers` deletes it at the next start.

:class:`AtomicLocalBackend` is mmengine's ``LocalBackend`` with these
writes, registered as the file backend ``'atomic_local'``:
``backend_args=dict(backend='atomic_local')`` makes any mmengine writer
that takes ``backend_args`` (``CheckpointHook``, ``Runner.save_checkpoint``,
``mmengine.fileio.dump``) write atomically.
"""
import os
import os.path as osp
import re
from pathlib import Path
from typing import List, Union

from mmengine.fileio import LocalBackend, register_backend

#: between the final name and the writer's pid in a temporary name
TMP_INFIX = '.tmp-'
_TMP_NAME = re.compile(r'^\.(?P<final>.+)' + re.escape(TMP_INFIX) +
                       r'\d+$')

#: bytes per write call (a seam for tests that kill a writer mid-file)
CHUNK = 64 << 20


def temporary_name(path: Union[str, Path]) -> str:
    """Where :func:`atomic_write` writes ``path`` before renaming it."""
    folder, name = osp.split(str(path))
    return osp.join(folder, f'.{name}{TMP_INFIX}{os.getpid()}')


def final_name_of(name: str):
    """The final file name a temporary file was for, or None when ``name``
    is not one of :func:`temporary_name`'s."""
    m = _TMP_NAME.match(osp.basename(name))
    return m.group('final') if m else None


def _write_chunks(f, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        f.write(view[start:start + CHUNK])


def fsync_dir(folder: str) -> None:
    """Makes a rename in ``folder`` durable (no-op where folders cannot be
    opened, e.g. on Windows)."""
    try:
        fd = os.open(folder or '.', os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicWriteError(OSError):
    """The ``OSError`` of a failed :func:`atomic_write` (``errno``,
    ``strerror``, ``filename`` as the cause's), with ``size``: the bytes it
    had to write. The old file is left as it was, the temporary one
    removed."""

    size = None


def atomic_write(path: Union[str, Path], data: Union[bytes, str],
                 encoding: str = 'utf-8') -> None:
    """Writes ``data`` to ``path`` so that ``path`` holds either its old
    content or all of ``data``: temporary file in the same folder, flush,
    fsync, ``os.replace``, fsync of the folder.

    Raises:
        AtomicWriteError: the write failed (disk full, read-only ...).
    """
    if isinstance(data, str):
        data = data.encode(encoding)
    path = str(path)
    folder = osp.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, 'wb') as f:
            _write_chunks(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # an error (disk full ...) leaves nothing behind; a kill leaves the
        # temporary file, which remove_leftovers deletes
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, AtomicWriteError):
            err = AtomicWriteError(e.errno, e.strerror or str(e), path)
            err.size = len(data)
            raise err from e
        raise
    fsync_dir(folder)


def remove_leftovers(folder: Union[str, Path]) -> List[str]:
    """Deletes the temporary files that killed writers left in ``folder``
    (call it before this process writes there: a pid can be reused, so the
    name does not tell whose file it is). Returns the names it removed."""
    folder = str(folder)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in sorted(names):
        if final_name_of(name) is None:
            continue
        try:
            os.remove(osp.join(folder, name))
            removed.append(name)
        except OSError:
            pass
    return removed


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose ``put`` and ``put_text`` write
    through :func:`atomic_write` (reads, listing and removal unchanged)."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write(filepath, obj)

    def put_text(self,
                 obj: str,
                 filepath: Union[str, Path],
                 encoding: str = 'utf-8') -> None:
        atomic_write(filepath, obj, encoding=encoding)


#: the name that selects it: ``backend_args=dict(backend=BACKEND_NAME)``
BACKEND_NAME = 'atomic_local'
register_backend(BACKEND_NAME, AtomicLocalBackend, force=True)
