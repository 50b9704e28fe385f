# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""``ResumableCheckpointHook``: mmengine's ``CheckpointHook`` whose
checkpoints a crash cannot tear, a full disk cannot lose and a diverged
run cannot spoil, and that carries the resume state of mmstvit's loops.

Turn it on in any mmdet, mmseg or mmpretrain config (``tools/train.py`` of
this repo does it by itself, :func:`use_in_config`)::

    custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)
    default_hooks = dict(checkpoint=dict(type='ResumableCheckpointHook'))
    train_cfg = dict(type='ResumableIterBasedTrainLoop', ...)  # or Epoch...

It takes every argument of ``CheckpointHook`` (``interval``, ``by_epoch``,
``max_keep_ckpts``, ``save_best`` ...) and adds:

* **Atomic files.** Checkpoints and ``last_checkpoint`` are written to a
  temporary file, fsynced and renamed (:mod:`mmstvit.engine.atomic_files`);
  the checkpoint that ``max_keep_ckpts`` retires is deleted after the new
  one is complete (mmengine deletes it first). Leftover temporary files are
  deleted at the next start.
* **Finite checkpoints only** (``check_finite=True``): a model with a
  ``nan`` or ``inf`` is never written nor named by ``last_checkpoint``
  (:class:`~mmstvit.engine.errors.DivergenceError`), so rotation never
  deletes the last finite checkpoint.
* **Machine errors as messages**: a full disk, a read-only or vanished
  folder end the run with :class:`~mmstvit.engine.errors.CheckpointWriteError`
  naming the file, the cause, the space needed and the checkpoint kept. A
  folder that cannot be written stops the run before it trains.
* **Choosing the checkpoint** of ``--resume`` (:mod:`mmstvit.engine.resume`):
  it says which file it resumes from, skips (and names) files that do not
  load, and stops with a message when the checkpoint does not fit the
  config.
* **Exact resume** (``exact_resume=True``) with the loops of
  :mod:`mmstvit.engine.loops`: their state (random states, seeds, position
  in the epoch, persistent workers) goes into each checkpoint under
  ``exact_resume`` and back to the loop on resume.

Saving goes through ``CheckpointHook``'s public parts only (its interval
tests, ``keep_ckpt_ids``, ``file_backend``) and ``Runner.save_checkpoint``.
"""
import os
import os.path as osp
import tempfile
from typing import Optional

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from mmstvit.engine.atomic_files import (BACKEND_NAME, atomic_write,
                                         final_name_of, remove_leftovers)
from mmstvit.engine.divergence import nonfinite_tensors
from mmstvit.engine.errors import (CheckpointWriteError, DivergenceError,
                                   MachineError)
from mmstvit.engine.loops import STATE_FORMAT  # noqa: F401 (its home)
from mmstvit.engine.resume import (DEFAULT_TEMPLATES, ResumeError,
                                   choose_resume_checkpoint, fit_problems,
                                   misfit_message)

#: the checkpoint entry that holds the resume state
STATE_KEY = 'exact_resume'

CUDA_NOTE = (
    'mmstvit: this run uses CUDA without deterministic kernels: atomic adds '
    '(scatter/index_add, the backward of interpolation, RoIAlign and '
    "embedding) and cuDNN's algorithm search make two uninterrupted runs "
    'differ in the last bits already, and a resumed run differs from the '
    'uninterrupted one as much. For bit-for-bit runs set '
    'randomness=dict(seed=..., deterministic=True) and call '
    'torch.use_deterministic_algorithms(True) (ops without a deterministic '
    'version then raise an error).')


def log_cuda_note(logger) -> None:
    """Says that CUDA without deterministic kernels is not bit for bit."""
    if torch.cuda.is_available() and not (
            torch.backends.cudnn.deterministic
            and torch.are_deterministic_algorithms_enabled()):
        logger.warning(CUDA_NOTE)


def _is_local(path) -> bool:
    return '://' not in str(path)


def _carries_state(loop) -> bool:
    return hasattr(loop, 'resume_state') and hasattr(loop,
                                                     'load_resume_state')


@HOOKS.register_module(force=True)
class ResumableCheckpointHook(CheckpointHook):
    """``CheckpointHook`` with atomic, finite checkpoints, machine errors
    as messages and exact resume (see the module docstring).

    Args:
        exact_resume (bool): Save the loop's resume state with each
            checkpoint and give it back on resume. Default True.
        check_finite (bool): Never write a checkpoint of a model with a
            non-finite tensor. Default True.
        **kwargs: ``CheckpointHook``'s arguments.
    """

    def __init__(self, *args, exact_resume: bool = True,
                 check_finite: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.exact_resume = exact_resume
        self.check_finite = check_finite
        # atomic writes where we pick the backend: the local file system
        self._atomic = self.backend_args is None and \
            self.file_client_args is None
        self._pending: Optional[dict] = None  # state of the save under way
        self._last_saved = (None, None)  # (meta iter, state) of the last save
        self._resume_path: Optional[str] = None
        self._saved_step: Optional[int] = None  # iterations of last_ckpt

    # -- which checkpoint ---------------------------------------------------

    def _checkpoint_folder(self, runner) -> str:
        out = self.out_dir
        if out is None or out == runner.work_dir:
            return runner.work_dir
        return osp.join(
            str(out), osp.basename(runner.work_dir.rstrip(osp.sep)))

    def before_run(self, runner) -> None:
        if not getattr(runner, '_resume', False):
            return
        templates = tuple(dict.fromkeys((self.filename_tmpl, ) +
                                        DEFAULT_TEMPLATES))
        path, notes = choose_resume_checkpoint(
            runner.work_dir,
            runner._load_from,
            folders=[self._checkpoint_folder(runner)],
            templates=templates)
        for level, msg in notes:
            runner.logger.log(level, msg)
        if path is None:
            runner._resume = False  # nothing to resume: say so, start
        else:
            runner._load_from = path
            self._resume_path = path

    def after_load_checkpoint(self, runner, checkpoint) -> None:
        if not getattr(runner, '_resume', False):
            return  # load_from: weights only
        from mmengine.model import is_model_wrapper
        model = runner.model
        model = model.module if is_model_wrapper(model) else model
        problems = fit_problems(checkpoint, model, runner.optim_wrapper)
        if problems:
            meta = checkpoint.get('meta', {}) or {}
            raise ResumeError(
                misfit_message(
                    self._resume_path or str(runner._load_from), problems,
                    meta.get('cfg', None),
                    runner.cfg.pretty_text if runner.cfg else None))
        self._saved_step = (checkpoint.get('meta', {}) or {}).get('iter')
        if not self.exact_resume:
            return
        state = checkpoint.get(STATE_KEY, None)
        loop = runner.train_loop
        where = self._resume_path or 'the checkpoint'
        if state is None:
            runner.logger.warning(
                f'mmstvit: {where} holds no random states (it was saved '
                'without ResumableCheckpointHook): the run goes on from its '
                'weights, optimizer and schedule, but the batch order and '
                'random augmentations after the resume are not those of an '
                'uninterrupted run.')
        elif not _carries_state(loop):
            runner.logger.warning(
                f'mmstvit: the train loop is a {type(loop).__name__}, which '
                f'cannot take the resume state of {where}: the resumed run '
                'does not continue bit for bit. Use '
                "train_cfg=dict(type='ResumableIterBasedTrainLoop', ...) or "
                "'ResumableEpochBasedTrainLoop'.")
        if state is not None and _carries_state(loop):
            loop.load_resume_state(state)

    # -- atomic files, a folder that can be written -------------------------

    def before_train(self, runner) -> None:
        out = self.out_dir if self.out_dir is not None else runner.work_dir
        if self._atomic and _is_local(out):
            self.backend_args = dict(backend=BACKEND_NAME)
        super().before_train(runner)
        if self.exact_resume and not _carries_state(runner.train_loop):
            runner.logger.warning(
                f'mmstvit: the train loop is a '
                f'{type(runner.train_loop).__name__}: checkpoints hold no '
                'resume state, and a resume will not continue bit for bit '
                "(train_cfg=dict(type='ResumableIterBasedTrainLoop' or "
                "'ResumableEpochBasedTrainLoop', ...) does).")
        if not is_main_process() or not _is_local(self.out_dir):
            return
        self._check_folder(str(self.out_dir))
        folders = {runner.work_dir, str(self.out_dir)}
        for folder in sorted(folders):
            for name in remove_leftovers(folder):
                runner.logger.warning(
                    f'mmstvit: removed {osp.join(folder, name)}, the '
                    f'unfinished write of {final_name_of(name)} by a run '
                    'that was killed while saving it')

    def _check_folder(self, folder: str) -> None:
        """Stops before training when checkpoints cannot be written."""
        probe = osp.join(folder, self.filename_tmpl.format(0))
        try:
            os.makedirs(folder, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise CheckpointWriteError.from_os_error(
                probe, e, None, None) from e

    # -- saving -------------------------------------------------------------

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if self.by_epoch:
            return
        if self.every_n_train_iters(runner, self.interval,
                                    self.save_begin) or (
                self.save_last and self.is_last_train_iter(runner)):
            runner.logger.info(
                f'Saving checkpoint at {runner.iter + 1} iterations')
            self.save(runner, runner.iter + 1,
                      dict(epoch=runner.epoch, iter=runner.iter + 1))

    def after_train_epoch(self, runner) -> None:
        if not self.by_epoch:
            return
        if self.every_n_epochs(runner, self.interval, self.save_begin) or (
                self.save_last and self.is_last_train_epoch(runner)):
            runner.logger.info(
                f'Saving checkpoint at {runner.epoch + 1} epochs')
            self.save(runner, runner.epoch + 1,
                      dict(epoch=runner.epoch + 1, iter=runner.iter))

    def save_interim(self, runner) -> Optional[str]:
        """The checkpoint of the iterations done, now (a signal or a data
        error stops the run; every process calls it). Named
        ``iter_{iterations}.pth`` and not rotated in epoch-based runs (the
        next checkpoint of the schedule removes it). Returns its path, the
        one of this iteration if there is one already, or None when nothing
        was trained."""
        if runner.iter == 0:
            return None
        done = self.last_ckpt or runner.message_hub.get_info('last_ckpt')
        if self._saved_step == runner.iter and done:
            return done
        runner.logger.info(
            f'Saving checkpoint at {runner.iter} iterations')
        return self.save(runner, runner.iter,
                         dict(epoch=runner.epoch, iter=runner.iter),
                         interim=self.by_epoch)

    def save(self, runner, step: int, meta: dict,
             interim: bool = False) -> str:
        """Writes the checkpoint ``step`` (every process calls it; the
        first writes): the model checked finite, the loop's state gathered,
        the file and ``last_checkpoint`` atomic, the retired checkpoint
        deleted after. Returns its path.

        Raises:
            DivergenceError: the model holds non-finite values (nothing
                written).
            CheckpointWriteError: the file could not be written (the last
                good checkpoint is kept, no temporary file left).
        """
        template = 'iter_{}.pth' if interim else self.filename_tmpl
        name = template.format(step)
        path = self.file_backend.join_path(self.out_dir, name)
        kept = self.last_ckpt or runner.message_hub.get_info('last_ckpt')
        self._refuse_nonfinite(runner, path, kept)
        retired = self._rotate(runner, step) if not interim else None
        interims = list(runner.message_hub.get_info('interim_ckpts', []))
        if interim:
            runner.message_hub.update_info('interim_ckpts', interims + [name])
        loop = runner.train_loop
        self._pending = loop.resume_state() if (
            self.exact_resume and _carries_state(loop)) else None
        try:
            self._write(runner, name, path, meta, kept)
        finally:
            state, self._pending = self._pending, None
        self._last_saved = (meta.get('iter'), state)
        self.last_ckpt, self._saved_step = path, meta.get('iter')
        runner.message_hub.update_info('last_ckpt', path)
        if is_main_process():
            self._write_marker(runner, path)
        if not interim:
            self._remove_old(runner, retired, interims, path)
        return path

    def _refuse_nonfinite(self, runner, path: str, kept) -> None:
        if not self.check_finite:
            return
        from mmengine.model import is_model_wrapper
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        bad = nonfinite_tensors(model)
        if bad:
            total = len(model.state_dict())
            raise DivergenceError(
                f'mmstvit: not writing {path}: {len(bad)} of {total} '
                f'tensors of the model are not finite (e.g. '
                f'{", ".join(bad[:3])}): training diverged by iteration '
                f'{runner.iter + 1}. ' +
                (f'The last good checkpoint, {kept}, is kept and named by '
                 'last_checkpoint. ' if kept else '') +
                'Lower the learning rate or clip the gradients '
                '(optim_wrapper.clip_grad), then resume or start again.',
                runner.iter + 1)

    def _rotate(self, runner, step: int) -> Optional[int]:
        """Books ``step`` in ``keep_ckpt_ids``; the step it retires (its
        file is deleted once the new one is complete)."""
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and
                                        self.keep_ckpt_ids[-1] == step):
            return None
        retired = None
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
            retired = self.keep_ckpt_ids.popleft()
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids',
                                       list(self.keep_ckpt_ids))
        return retired

    def _write(self, runner, name: str, path: str, meta: dict, kept) -> None:
        local = _is_local(self.out_dir)
        if is_main_process() and local and not osp.isdir(str(self.out_dir)):
            raise CheckpointWriteError.from_os_error(
                path, FileNotFoundError(2, 'No such file or directory'),
                None, kept)
        try:
            runner.save_checkpoint(
                self.out_dir, name, self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta, by_epoch=self.by_epoch,
                backend_args=self.backend_args, **self.args)
        except OSError as e:
            if isinstance(e, CheckpointWriteError):
                raise
            raise CheckpointWriteError.from_os_error(
                path, e, getattr(e, 'size', None), kept) from e

    def _write_marker(self, runner, path: str) -> None:
        marker = osp.join(runner.work_dir, 'last_checkpoint')
        try:
            atomic_write(marker, str(path))
        except OSError as e:
            raise MachineError.from_os_error(marker, e, None, path) from e

    def _remove_old(self, runner, retired: Optional[int], interims: list,
                    path: str) -> None:
        """Deletes the checkpoint ``max_keep_ckpts`` retires and the interim
        ones (epoch-based runs), now that ``path`` is complete."""
        runner.message_hub.update_info('interim_ckpts', [])
        if not is_main_process():
            return
        names = [self.filename_tmpl.format(retired)] if retired is not None \
            else []
        for name in names + interims:
            old = self.file_backend.join_path(self.out_dir, name)
            if old == path:
                continue
            if self.file_backend.isfile(old):
                self.file_backend.remove(old)
            elif self.file_backend.isdir(old):
                self.file_backend.rmtree(old)  # deepspeed's folders

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        state = self._pending
        if state is None and self._last_saved[0] is not None and \
                checkpoint.get('meta', {}).get('iter') == self._last_saved[0]:
            state = self._last_saved[1]  # mmengine re-saves (save_best)
        if state is not None:
            checkpoint[STATE_KEY] = state


def use_in_config(cfg) -> bool:
    """Makes a config's checkpoint hook a :class:`ResumableCheckpointHook`
    with the same arguments (``tools/train.py`` does it for every run).
    mmengine's ``CheckpointHook`` is replaced, also the Runner's default
    one when the config names none; checkpoints turned off
    (``default_hooks.checkpoint=None``) and hooks of other types are left
    as they are (returns False)."""
    name = ResumableCheckpointHook.__name__
    hooks = cfg.get('default_hooks', None)
    if hooks is None:
        # the Runner's default is CheckpointHook(interval=1)
        cfg.default_hooks = dict(checkpoint=dict(type=name, interval=1))
        return True
    if 'checkpoint' not in hooks:
        hooks['checkpoint'] = dict(type=name, interval=1)
        return True
    hook = hooks['checkpoint']
    if not isinstance(hook, dict):
        return False
    kind = hook.get('type', 'CheckpointHook')
    if isinstance(kind, type):
        kind = kind.__name__ if kind in (CheckpointHook,
                                         ResumableCheckpointHook) else ''
    if str(kind).split('.')[-1] in ('CheckpointHook', name):
        hook['type'] = name
        return True
    return False
