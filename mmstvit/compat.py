# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The one place where mmstvit adapts to the OpenMMLab stack it runs on.

mmstvit runs on two stacks with the same import names (``mmengine``,
``mmcv``, ``mmdet``, ``mmseg``, ``mmpretrain``), installed by
``make install STACK=upstream|onedl`` (docs/installation.md, "Stacks"):

* ``upstream``: OpenMMLab's last releases (mmengine 0.10.7, mmdet 3.3.0,
  mmsegmentation 1.2.2, mmpretrain 1.2.0);
* ``onedl``: the maintained fork (VBTI-development/onedl-*: onedl-mmengine
  0.10.12, onedl-mmdetection 3.5.1, onedl-mmsegmentation 1.4.2,
  onedl-mmpretrain 1.3.6).

Both use the same mmcv 2.1.0 wheel (built once by ``tools/install.sh``).
What the fork does differently, and what mmstvit does about it
(:data:`DIFFERENCES`; each handled here or, for the one that must run before
anything imports mmstvit, in ``_mmstvit_scope``):

1. ``mmengine.runner.checkpoint._safe_torch_load`` reads with
   ``weights_only=True`` first and, when that fails, warns and unpickles the
   file fully. mmstvit replaces mmengine's loaders of local files and URLs
   with its own reader (:mod:`mmstvit.weights.mmengine_loader`); the fork's
   other loaders (``open-mmlab://`` files in mmengine's home, ``pavi://``,
   ``s3://``) still call ``_safe_torch_load``, so :func:`route_checkpoint_reader`
   points that name at :func:`safe_torch_load` (mmstvit's reader): the
   unsafe retry is never reached. (A private name: the fork has no public
   hook for it.)
2. Its scope table maps ``mmseg`` to the distribution ``mmsegmentation``
   while the fork's is ``onedl-mmsegmentation``: every ``mmseg::`` base
   failed (``mmsegmentation is not installed``).
   ``_mmstvit_scope.FORK_DISTRIBUTIONS`` maps each toolbox scope to the
   fork's distribution where that one is installed.
3. Its mmseg ``SegVisualizationHook`` draws every test image (``interval``
   ignored) and numbers them 1, 2, 3...: ``tools/test.py --interval`` did
   nothing. :func:`seg_test_pictures_by_interval` registers a subclass that
   draws every ``interval``-th test batch, named by the run's iteration, as
   mmseg 1.2 does.
4. Importing mmdet's or mmpretrain's datasets prints ``Could not import
   OneDL`` to stdout (a debug message of the fork, printed because it is
   logged with no logger) when the OneDL client is not installed; importing
   mmdet's models logs a warning that ``mmcv.ops.line_nms`` is missing
   (``Line NMS is not compiled``: the fork's lane-detection head
   ``CLRHead`` needs onedl-mmcv's CUDA op; mmcv 2.1.0 has none, and mmstvit
   uses no such head). :func:`quiet_fork_imports` drops exactly those two
   messages while those modules import (any other output passes).
5. Resume: its ``IterBasedTrainLoop`` can skip the trained iterations in the
   sampler (``fast_forward_on_resume``, ``InfiniteSampler.skip``) and builds
   its data iterator lazily. mmstvit's loops (:mod:`mmstvit.engine.loops`)
   run their own resume: they draw the trained batches and restore the
   random states, so neither is used and resumed == uninterrupted bit for
   bit on both stacks (``tests/test_resume.py``, ``tests/test_stacks.py``).
6. No ``pkg_resources``: the fork looks packages up with ``importlib.metadata``,
   so the upstream stack's ``setuptools < 81`` pin is not needed there (it is
   in ``requirements/mminstall.txt`` only).

:func:`install` (called by ``import mmstvit``) arranges 3 and 4 for when
mmseg, mmdet or mmpretrain are imported; 1 is applied by
:func:`~mmstvit.weights.install_mmengine_loaders`; on the upstream stack
they do nothing.
"""
import contextlib
import functools
import importlib.abc
import importlib.metadata
import io
import logging
import os
import os.path as osp
import sys
import tempfile
import threading

from mmstvit.registry import wrap_spec

#: the stacks ``tools/install.sh --stack`` installs
STACKS = ('upstream', 'onedl')
#: the distribution whose presence means the fork
FORK_MMENGINE = 'onedl-mmengine'

#: (what the fork does differently, how mmstvit handles it); see above
DIFFERENCES = (
    ('_safe_torch_load retries weights_only=False after a warning',
     'route_checkpoint_reader: the name points at mmstvit\'s reader'),
    ('scope table: mmseg -> mmsegmentation, installed: onedl-mmsegmentation',
     '_mmstvit_scope.FORK_DISTRIBUTIONS'),
    ('SegVisualizationHook saves every test image, numbered 1, 2, 3',
     'seg_test_pictures_by_interval'),
    ('"Could not import OneDL" on stdout when mmdet/mmpretrain import',
     'quiet_fork_imports'),
    ('"Line NMS is not compiled" warning when mmdet.models imports '
     '(CLRHead needs onedl-mmcv\'s CUDA line_nms)', 'quiet_fork_imports'),
    ('IterBasedTrainLoop fast_forward_on_resume, lazy data iterator',
     'mmstvit.engine.loops draws the trained batches itself'),
    ('no pkg_resources (importlib.metadata)',
     'setuptools < 81 pinned for the upstream stack only'),
)

#: the fork's modules that print (stdout line) or log (message start) a
#: note no mmstvit user can act on: {module: (line start, message start)}
QUIET_IMPORTS = {
    name: ('Could not import OneDL', None) for name in (
        'mmdet.datasets', 'mmdet.datasets.transforms', 'mmseg.datasets',
        'mmseg.datasets.transforms', 'mmpretrain.datasets')}
QUIET_IMPORTS.update({
    'mmdet.models.dense_heads.clr_head.clr_head':
    (None, 'Line NMS is not compiled'),
})


@functools.lru_cache(maxsize=None)
def stack() -> str:
    """``'onedl'`` when the fork's mmengine is installed, else
    ``'upstream'`` (read from the installed distributions; imports
    nothing)."""
    try:
        importlib.metadata.distribution(FORK_MMENGINE)
    except importlib.metadata.PackageNotFoundError:
        return 'upstream'
    return 'onedl'


def is_fork() -> bool:
    """True on the onedl stack."""
    return stack() == 'onedl'


# -- 1. the fork's checkpoint reader ----------------------------------------

def safe_torch_load(file, map_location=None, weights_only=None):
    """Stands in for the fork's ``_safe_torch_load``: reads ``file`` with
    :func:`mmstvit.weights.load_checkpoint_file` (safetensors by content,
    else ``weights_only=True`` with mmstvit's allow-list; a file that needs
    more raises ``UnsafeCheckpointError`` and nothing of it runs).

    Args:
        file (str | PathLike | file object): The checkpoint; a file object
            (what ``s3://`` gives) is written to a temporary file first.
        map_location: As for ``torch.load``.
        weights_only: Ignored: a file is unpickled fully only when trusted
            by name (``mmstvit.weights.trust``, the tools' ``--unsafe``),
            never as a fallback.
    """
    from mmstvit.weights import load_checkpoint_file
    if isinstance(file, (str, os.PathLike)):
        return load_checkpoint_file(file, map_location)
    data = file.read() if hasattr(file, 'read') else bytes(file)
    with tempfile.TemporaryDirectory() as folder:
        path = osp.join(folder, 'checkpoint.pth')
        with open(path, 'wb') as f:
            f.write(data)
        return load_checkpoint_file(path, map_location)


def route_checkpoint_reader(checkpoint_module) -> bool:
    """Points ``checkpoint_module._safe_torch_load`` (the fork's
    ``mmengine.runner.checkpoint``) at :func:`safe_torch_load`; True when
    the module has it (the fork), False otherwise (upstream mmengine, whose
    remaining loaders call ``torch.load`` with its default,
    ``weights_only=True`` since torch 2.6)."""
    if not hasattr(checkpoint_module, '_safe_torch_load'):
        return False
    checkpoint_module._safe_torch_load = safe_torch_load
    return True


# -- 3. the fork's mmseg test pictures --------------------------------------

def seg_test_pictures_by_interval(module=None) -> None:
    """Registers, in mmseg's ``HOOKS`` under the name
    ``SegVisualizationHook``, a subclass of the fork's hook whose
    ``after_test_iter`` draws the images of every ``interval``-th test batch
    (``tools/test.py --interval``), each named ``test_<image>`` at the run's
    iteration, as mmseg 1.2 does. ``module`` (ignored) is what the import
    hook passes."""
    import mmcv
    from mmengine import fileio
    from mmseg.engine.hooks.visualization_hook import SegVisualizationHook
    from mmseg.registry import HOOKS

    class ByIntervalSegVisualizationHook(SegVisualizationHook):
        """The fork's ``SegVisualizationHook`` with mmseg 1.2's test
        pictures (see :func:`mmstvit.compat.seg_test_pictures_by_interval`).
        """

        def after_test_iter(self, runner, batch_idx, data_batch, outputs):
            if self.draw is False or not self.every_n_inner_iters(
                    batch_idx, self.interval):
                return
            for output in outputs:
                img = mmcv.imfrombytes(
                    fileio.get(output.img_path,
                               backend_args=self.backend_args),
                    channel_order='rgb')
                self._visualizer.add_datasample(
                    f'test_{osp.basename(output.img_path)}', img,
                    data_sample=output, show=self.show,
                    wait_time=self.wait_time, step=runner.iter)

    ByIntervalSegVisualizationHook.__name__ = 'SegVisualizationHook'
    HOOKS.register_module(name='SegVisualizationHook',
                          module=ByIntervalSegVisualizationHook, force=True)


# -- 4. the fork's notes while it imports -----------------------------------

class _DropLine(io.TextIOBase):
    """A stdout that passes everything on except lines that start with
    ``line``."""

    def __init__(self, target, line: str):
        self._target, self._line, self._pending = target, line, ''

    def write(self, text):
        self._pending += text
        *lines, self._pending = self._pending.split('\n')
        for one in lines:
            if not one.startswith(self._line):
                self._target.write(one + '\n')
        return len(text)

    def flush(self):
        if self._pending:
            self._target.write(self._pending)
            self._pending = ''
        self._target.flush()


_stdout_lock = threading.RLock()


@contextlib.contextmanager
def _without_line(line):
    """stdout without lines that start with ``line`` (None: as it is)."""
    with _stdout_lock:
        real = sys.stdout
        if line is None or real is None:  # nothing to drop, no console
            yield
            return
        sys.stdout = _DropLine(real, line)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stdout = real


class _DropRecord(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record):
        return not str(record.msg).startswith(self.start)


@contextlib.contextmanager
def _without_log(start):
    """mmengine's current logger without records whose message starts with
    ``start`` (None: as it is)."""
    if start is None:
        yield
        return
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    drop = _DropRecord(start)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _exec_quietly(module, exec_module):
    line, start = QUIET_IMPORTS[module.__name__]
    with _without_line(line), _without_log(start):
        exec_module(module)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`QUIET_IMPORTS` through the other finders
    and runs their loader without the fork's notes."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in QUIET_IMPORTS:
            return None
        return wrap_spec(self, fullname, path, target, _exec_quietly)


def quiet_fork_imports() -> None:
    """Drops the fork's notes of :data:`QUIET_IMPORTS` while those modules
    import (those imported from now on)."""
    if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


def install() -> None:
    """Arranges what the stack needs (nothing on the upstream stack):
    called by ``import mmstvit``; imports no toolbox."""
    if not is_fork():
        return
    from mmstvit.registry import when_imported
    quiet_fork_imports()
    when_imported('mmseg.engine.hooks.visualization_hook',
                  seg_test_pictures_by_interval)


__all__ = ['STACKS', 'DIFFERENCES', 'stack', 'is_fork', 'safe_torch_load',
           'route_checkpoint_reader', 'seg_test_pictures_by_interval',
           'quiet_fork_imports', 'install']
