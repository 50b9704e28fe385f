# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""``ResumableCheckpointHook``: mmengine's ``CheckpointHook`` with
checkpoints a crash cannot tear and a resume that continues bit for bit.

Turn it on in any mmdet, mmseg or mmpretrain config (``tools/train.py`` of
this repo does it by itself)::

    custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)
    default_hooks = dict(checkpoint=dict(type='ResumableCheckpointHook'))

It takes every argument of ``CheckpointHook`` (``interval``, ``by_epoch``,
``max_keep_ckpts``, ``save_best`` ...) and adds:

* **Atomic files.** Checkpoints and ``last_checkpoint`` are written to a
  temporary file, fsynced and renamed (:mod:`mmstvit.engine.atomic_files`);
  the checkpoint that ``max_keep_ckpts`` retires is deleted after the new
  one is complete (mmengine deletes it first). Leftover temporary files are
  deleted at the next start.
* **Choosing the checkpoint** of ``--resume`` (:mod:`mmstvit.engine.resume`):
  it says which file it resumes from, skips (and names) files that do not
  load, and stops with a message when the checkpoint does not fit the
  config.
* **Exact resume** (``exact_resume=True``): each checkpoint holds every
  process's random states (Python, numpy, torch CPU and CUDA), the loader's
  seeds, the position in the epoch and the states of persistent data
  workers (about 16 KB per process and per worker); a resumed run restores
  them just before its first batch (:mod:`mmstvit.engine.loader_state`).
  Validation runs on its own copy of the random states, so the training
  stream does not depend on whether a validation ran before the next
  iteration (it did in the interrupted run, it does not after the resume).
"""
import functools
import os.path as osp
from typing import Optional

import torch
from mmengine.dist import all_gather_object, get_rank, is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from mmstvit.engine import loader_state, rng_state
from mmstvit.engine.atomic_files import (BACKEND_NAME, atomic_write,
                                         final_name_of, remove_leftovers)
from mmstvit.engine.resume import (DEFAULT_TEMPLATES, ResumeError,
                                   choose_resume_checkpoint, fit_problems,
                                   misfit_message)

#: the checkpoint entry that holds the resume state
STATE_KEY = 'exact_resume'
STATE_FORMAT = 1

CUDA_NOTE = (
    'mmstvit: this run uses CUDA without deterministic kernels: atomic adds '
    '(scatter/index_add, the backward of interpolation, RoIAlign and '
    "embedding) and cuDNN's algorithm search make two uninterrupted runs "
    'differ in the last bits already, and a resumed run differs from the '
    'uninterrupted one as much. For bit-for-bit runs set '
    'randomness=dict(seed=..., deterministic=True) and call '
    'torch.use_deterministic_algorithms(True) (ops without a deterministic '
    'version then raise an error).')


def _is_local(path) -> bool:
    return '://' not in str(path)


@HOOKS.register_module(force=True)
class ResumableCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose checkpoints a crash cannot tear and whose
    resume continues bit for bit (see the module docstring).

    Args:
        exact_resume (bool): Save the random states and the data position
            with each checkpoint and restore them on resume. Default True.
        **kwargs: ``CheckpointHook``'s arguments.
    """

    def __init__(self, *args, exact_resume: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.exact_resume = exact_resume
        # atomic writes where we pick the backend: the local file system
        self._atomic = self.backend_args is None and \
            self.file_client_args is None
        self._pending: Optional[dict] = None  # state of the save under way
        self._train_rng: Optional[dict] = None  # while validation runs
        self._in_epoch = 0  # batches of the current epoch trained
        self._tracking_workers = False
        self._worker_latest = {}  # worker id -> states after its last batch
        self._worker_epoch_start = {}  # worker id -> states at epoch start
        self._resumed: Optional[dict] = None
        self._resume_path: Optional[str] = None
        self._restore_at_epoch_start = None

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
        if not self.exact_resume:
            return
        self._resumed = rng_state.on_cpu(checkpoint.get(STATE_KEY, None))
        if self._resumed is None:
            runner.logger.warning(
                f'mmstvit: {self._resume_path or "the checkpoint"} holds no '
                'random states (it was saved without ResumableCheckpointHook):'
                ' the run goes on from its weights, optimizer and schedule, '
                'but the batch order and random augmentations after the '
                'resume are not those of an uninterrupted run.')

    # -- atomic files -------------------------------------------------------

    def before_train(self, runner) -> None:
        out = self.out_dir if self.out_dir is not None else runner.work_dir
        if self._atomic and _is_local(out):
            self.backend_args = dict(backend=BACKEND_NAME)
        super().before_train(runner)
        if is_main_process():
            folders = {runner.work_dir}
            if _is_local(self.out_dir):
                folders.add(str(self.out_dir))
            for folder in sorted(folders):
                for name in remove_leftovers(folder):
                    runner.logger.warning(
                        f'mmstvit: removed {osp.join(folder, name)}, the '
                        f'unfinished write of {final_name_of(name)} by a run '
                        'that was killed while saving it')
        if self.exact_resume:
            self._prepare_loader(runner)

    def _save_checkpoint_with_step(self, runner, step, meta):
        """mmengine's, with the resume state gathered from every process,
        ``last_checkpoint`` written atomically, and the checkpoint that
        ``max_keep_ckpts`` retires deleted after the new one is complete."""
        retired = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                retired = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir,
                                                     ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        # every process takes part (its states are gathered), rank 0 writes
        self._pending = self._resume_state(runner) if self.exact_resume \
            else None
        try:
            runner.save_checkpoint(
                self.out_dir,
                ckpt_filename,
                self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta,
                by_epoch=self.by_epoch,
                backend_args=self.backend_args,
                **self.args)
        finally:
            self._pending = None
        if not is_main_process():
            return
        atomic_write(osp.join(runner.work_dir, 'last_checkpoint'),
                     str(self.last_ckpt))
        if retired is not None and retired != step:
            path = self.file_backend.join_path(
                self.out_dir, self.filename_tmpl.format(retired))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):
                self.file_backend.rmtree(path)  # deepspeed's folders

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        if self._pending is not None:
            checkpoint[STATE_KEY] = self._pending

    # -- the state a resume needs -------------------------------------------

    def _resume_state(self, runner) -> dict:
        from mmengine.runner import EpochBasedTrainLoop
        loop = runner.train_loop
        loader = getattr(loop, 'dataloader', None)
        mine = dict(
            rng=self._train_rng if self._train_rng is not None else
            rng_state.capture(),
            seeds=loader_state.loader_seeds(loader),
            num_workers=int(getattr(loader, 'num_workers', 0)),
            workers=dict(self._worker_epoch_start)
            if self._tracking_workers else {})
        ranks = all_gather_object(mine)
        return dict(
            format=STATE_FORMAT,
            world_size=len(ranks),
            loop=type(loop).__name__,
            epoch_batches_done=self._in_epoch
            if isinstance(loop, EpochBasedTrainLoop) else 0,
            ranks=ranks)

    def _note_worker_state(self, data_batch) -> None:
        worker_rng = getattr(data_batch, 'worker_rng', None)
        if worker_rng is not None:
            self._worker_latest[worker_rng[0]] = worker_rng[1]

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if self._tracking_workers:
            self._note_worker_state(data_batch)

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None) -> None:
        self._in_epoch = batch_idx + 1
        super().after_train_iter(runner, batch_idx, data_batch, outputs)

    def before_train_epoch(self, runner) -> None:
        restore, self._restore_at_epoch_start = \
            self._restore_at_epoch_start, None
        if restore is not None:
            restore()

    def after_train_epoch(self, runner) -> None:
        self._in_epoch = 0
        self._worker_epoch_start = dict(self._worker_latest)
        super().after_train_epoch(runner)

    # validation on its own copy of the random states
    def before_val(self, runner) -> None:
        if self.exact_resume:
            self._train_rng = rng_state.capture()

    def after_val(self, runner) -> None:
        state, self._train_rng = self._train_rng, None
        if state is not None:
            rng_state.restore(state)

    # -- resuming -----------------------------------------------------------

    def _prepare_loader(self, runner) -> None:
        from mmengine.runner import EpochBasedTrainLoop
        loop = runner.train_loop
        loader = loop.dataloader
        resumed = self._resumed
        mine = None
        if resumed is not None and resumed.get('format') == STATE_FORMAT:
            ranks = resumed['ranks']
            mine = ranks[get_rank()] if get_rank() < len(ranks) else None
        if isinstance(loop, EpochBasedTrainLoop):
            table = {int(k): v for k, v in (mine or {}).get(
                'workers', {}).items()}
            self._tracking_workers = loader_state.track_worker_states(
                loader, table)
            self._worker_latest = dict(table)
            self._worker_epoch_start = dict(table)
        if resumed is not None:
            self._arrange_resume(runner, resumed, mine)

    def _restore(self, runner, state: dict) -> None:
        problem = rng_state.restore(state)
        if problem:
            runner.logger.warning(f'mmstvit: {problem}; the resumed run '
                                  'draws other random numbers on the GPU')

    def _arrange_resume(self, runner, resumed: dict,
                        mine: Optional[dict]) -> None:
        from mmengine.dist import get_world_size
        from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
        log = runner.logger
        if resumed.get('format') != STATE_FORMAT:
            log.warning(f'mmstvit: the checkpoint\'s resume state has format '
                        f'{resumed.get("format")!r}, this mmstvit reads '
                        f'{STATE_FORMAT}: the random states are not restored')
            return
        inexact = []
        if resumed['world_size'] != get_world_size():
            inexact.append(
                f'it was saved by {resumed["world_size"]} processes and '
                f'resumes with {get_world_size()}: each process gets other '
                'batches and draws other random numbers')
        if mine is None:
            self._log_resume(log, inexact)
            return
        loop = runner.train_loop
        loader = loop.dataloader
        if mine['num_workers'] != loader.num_workers:
            inexact.append(
                f"it was saved with num_workers={mine['num_workers']} and "
                f'resumes with {loader.num_workers}: the workers draw other '
                'random augmentations')
        seeds_changed = loader_state.set_loader_seeds(loader, mine['seeds'])
        restore = functools.partial(self._restore, runner, mine['rng'])
        done = int(resumed.get('epoch_batches_done', 0))
        if isinstance(loop, IterBasedTrainLoop):
            if seeds_changed:
                loader_state.renew_iter_loop_iterator(loop)
            loop.dataloader_iterator = loader_state.RestoreBeforeBatch(
                loop, loop.iter, restore)
            where = f'before iteration {loop.iter + 1}'
        elif isinstance(loop, EpochBasedTrainLoop) and done:

            def run_epoch_once():
                del loop.run_epoch  # back to the class's method
                loader_state.resumed_run_epoch(loop, done, restore,
                                               self._note_worker_state)

            loop.run_epoch = run_epoch_once
            where = (f'after batch {done} of epoch {loop.epoch + 1} '
                     '(the batches before it are drawn, not trained)')
        elif isinstance(loop, EpochBasedTrainLoop):
            self._restore_at_epoch_start = restore
            where = f'at the start of epoch {loop.epoch + 1}'
        else:
            restore()
            where = 'now'
            inexact.append(
                f'the train loop is a {type(loop).__name__}, whose position '
                'in the data mmstvit does not know how to restore')
        what = rng_state.describe(mine['rng'])
        if self._tracking_workers and mine.get('workers'):
            what += f", {len(mine['workers'])} persistent data workers"
        if seeds_changed:
            what += ' and the seeds of the sampler and workers'
        self._log_resume(
            log, inexact, f'mmstvit: exact resume: the random states of '
            f'{resumed["world_size"]} process(es) ({what}) are restored '
            f'{where}')

    @staticmethod
    def _log_resume(log, inexact, done: str = '') -> None:
        if done:
            log.info(done)
        for reason in inexact:
            log.warning(f'mmstvit: the resumed run cannot continue bit for '
                        f'bit: {reason}.')
        if torch.cuda.is_available() and not (
                torch.backends.cudnn.deterministic
                and torch.are_deterministic_algorithms_enabled()):
            log.warning(CUDA_NOTE)


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
