# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""mmengine's train loops with exact resume and a clean stop, registered in
mmengine's ``LOOPS``::

    train_cfg = dict(type='ResumableIterBasedTrainLoop', max_iters=160000,
                     val_interval=16000)
    train_cfg = dict(type='ResumableEpochBasedTrainLoop', max_epochs=12)

They take their parents' arguments (``IterBasedTrainLoop`` /
``EpochBasedTrainLoop``) and add ``preemption=dict(signals=('SIGTERM',
'SIGUSR1', 'SIGINT'), requeue=False)``. With
:class:`~mmstvit.engine.checkpoint_hook.ResumableCheckpointHook` (which
carries their state into each checkpoint and back) they give:

* **Exact resume.** Each checkpoint holds every process's random states,
  the loader's seeds and the position in the epoch (and persistent
  workers' random states, :mod:`mmstvit.engine.loader_state`); a resumed
  run draws the batches already trained from a loader built as before
  (the sampler and the workers move as they did, nothing is trained) and
  restores the random states just before its first batch. Validation runs
  on its own copy of the random states. The loops own how they skip: an
  mmengine whose ``IterBasedTrainLoop`` fast-forwards the sampler
  (onedl-mmengine's ``fast_forward_on_resume``) does not change it.
* **A clean stop on a signal** (:mod:`mmstvit.engine.preemption`): the
  iteration under way finishes, every process agrees at the boundary, the
  checkpoint of the iterations done is written (atomically, with the resume
  state), the log says so and the process exits with ``128 + signal``
  (:class:`~mmstvit.engine.errors.TrainingInterrupted`); optionally the
  slurm job is requeued.
* **A data error** (an exception while fetching the next batch) writes the
  checkpoint of the last completed iteration, then raises
  :class:`~mmstvit.engine.errors.TrainingDataError` from it.
"""
import bisect
import copy
from typing import Callable, Optional

from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

from mmstvit.engine import loader_state, preemption, rng_state
from mmstvit.engine.errors import TrainingDataError, TrainingInterrupted

#: the format of the resume state in a checkpoint (``exact_resume``)
STATE_FORMAT = 1


class InfiniteBatches:
    """Batches of a loader without end: a new pass (``set_epoch`` + 1)
    when one ends. For a loader rebuilt with a checkpoint's seeds."""

    def __init__(self, loader):
        self.loader = loader
        self.epoch = 0
        self.batches = ResumableLoopMixin._batches_of(loader)

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self.batches)
        except StopIteration:
            self.epoch += 1
            sampler = loader_state.data_sampler(self.loader)
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(self.epoch)
            self.batches = ResumableLoopMixin._batches_of(self.loader)
            return next(self.batches)


class ResumableLoopMixin:
    """What both loops share (see the module docstring). Listed before the
    mmengine loop it extends, so that its ``__init__`` takes ``preemption``
    and sets up before the loop's own (which builds the dataloader)."""

    def __init__(self, runner, dataloader, *args,
                 preemption: Optional[dict] = None, **kwargs):
        self._setup(dataloader, preemption)
        super().__init__(runner, dataloader, *args, **kwargs)

    def _setup(self, dataloader, preemption_cfg: Optional[dict]) -> None:
        cfg = dict(signals=preemption.DEFAULT_SIGNALS, requeue=False)
        cfg.update(preemption_cfg or {})
        unknown = set(cfg) - {'signals', 'requeue'}
        if unknown:
            raise ValueError(f'mmstvit: unknown preemption keys {unknown}; '
                             'it takes signals and requeue')
        self.requeue = bool(cfg['requeue'])
        # before the parent's __init__: data workers it starts inherit it
        self.guard = preemption.SignalGuard(cfg['signals'])
        self._loader_cfg = copy.deepcopy(dataloader) if isinstance(
            dataloader, dict) else None
        self._resumed: Optional[dict] = None  # the checkpoint's state
        self._rng_before_fetch = None  # while a boundary is checked
        self._rng_epoch_start = None
        self._in_epoch = 0  # batches of the current epoch trained
        self._tracking_workers = False
        self._worker_latest = {}  # worker id -> states after its last batch
        self._worker_epoch_start = {}  # worker id -> states at epoch start

    # -- the state a checkpoint holds ---------------------------------------

    def resume_state(self) -> dict:
        """The state a resume needs, of every process (collective: each
        process calls it; ``ResumableCheckpointHook`` does before a save)."""
        # at an epoch's first batch: where the epoch started (making its
        # iterator draws a seed), else before the fetch under way, else now
        snap = self._rng_epoch_start if self._in_epoch == 0 else None
        if snap is None:
            snap = self._rng_before_fetch
        loader = self.dataloader
        mine = dict(
            rng=rng_state.encode(snap) if snap is not None else
            rng_state.capture(),
            seeds=loader_state.loader_seeds(loader),
            num_workers=int(getattr(loader, 'num_workers', 0)),
            workers=dict(self._worker_epoch_start)
            if self._tracking_workers else {})
        ranks = all_gather_object(mine)
        return dict(
            format=STATE_FORMAT, world_size=len(ranks),
            loop=type(self).__name__, seed=self.runner.seed,
            epoch_batches_done=self._in_epoch, ranks=ranks)

    def load_resume_state(self, state: Optional[dict]) -> None:
        """Takes the state of :meth:`resume_state` from the checkpoint a run
        resumes (applied when the loop runs)."""
        self._resumed = rng_state.on_cpu(state)

    def _my_state(self) -> Optional[dict]:
        """This process's part of the loaded state, None (with the reason
        logged) where it cannot be used."""
        resumed, log = self._resumed, self.runner.logger
        if resumed is None:
            return None
        if resumed.get('format') != STATE_FORMAT:
            log.warning(f'mmstvit: the checkpoint\'s resume state has format '
                        f'{resumed.get("format")!r}, this mmstvit reads '
                        f'{STATE_FORMAT}: the random states are not restored')
            return None
        if resumed['world_size'] != get_world_size():
            self._inexact(
                f'it was saved by {resumed["world_size"]} processes and '
                f'resumes with {get_world_size()}: each process gets other '
                'batches and draws other random numbers')
        ranks = resumed['ranks']
        return ranks[get_rank()] if get_rank() < len(ranks) else None

    def _inexact(self, reason: str) -> None:
        self.runner.logger.warning(
            f'mmstvit: the resumed run cannot continue bit for bit: '
            f'{reason}.')

    def _seeded_like_saved(self, mine: dict) -> bool:
        """Rebuilds the loader where it was built with other seeds than the
        saved run's (``randomness.seed=None`` with a toolbox's own tool);
        True when it did."""
        saved = mine.get('seeds', {})
        now = loader_state.loader_seeds(self.dataloader)
        if all(saved.get(k) in (None, now[k]) for k in now):
            return False
        if self._loader_cfg is None or self._resumed.get('seed') is None:
            self._inexact('the loader was built with other seeds than the '
                          'saved run and was given built, so it cannot be '
                          'built again with the saved ones')
            return False
        randomness = (self.runner.cfg or {}).get('randomness', None) or {}
        self.dataloader = self.runner.build_dataloader(
            copy.deepcopy(self._loader_cfg), seed=self._resumed['seed'],
            diff_rank_seed=randomness.get('diff_rank_seed', False))
        return True

    def _restorer(self, mine: dict) -> Callable[[], None]:
        def restore():
            problem = rng_state.restore(mine['rng'])
            if problem:
                self.runner.logger.warning(
                    f'mmstvit: {problem}; the resumed run draws other random '
                    'numbers on the GPU')
        return restore

    def _log_resumed(self, mine: dict, where: str, reseeded: bool) -> None:
        if mine['num_workers'] != getattr(self.dataloader, 'num_workers', 0):
            self._inexact(
                f"it was saved with num_workers={mine['num_workers']} and "
                f'resumes with {self.dataloader.num_workers}: the workers '
                'draw other random augmentations')
        what = rng_state.describe(mine['rng'])
        if self._tracking_workers and mine.get('workers'):
            what += f", {len(mine['workers'])} persistent data workers"
        if reseeded:
            what += ' and the seeds of the sampler and workers'
        self.runner.logger.info(
            f'mmstvit: exact resume: the random states of '
            f'{self._resumed["world_size"]} process(es) ({what}) are '
            f'restored {where}')
        from mmstvit.engine.checkpoint_hook import log_cuda_note
        log_cuda_note(self.runner.logger)

    # -- one boundary: the next batch, a signal, a data error ---------------

    def _note_workers(self, data_batch) -> None:
        worker_rng = getattr(data_batch, 'worker_rng', None)
        if worker_rng is not None:
            self._worker_latest[worker_rng[0]] = worker_rng[1]

    def _next_batch(self, batches):
        """The next batch of ``batches``, after every process agreed that no
        signal came and no fetch failed (else: checkpoint, then raise)."""
        self._rng_before_fetch = rng_state.snapshot() \
            if self._fetch_draws_rng else None
        error = None
        try:
            data_batch = next(batches)
        except StopIteration:
            self._rng_before_fetch = None
            raise
        except Exception as e:  # noqa: BLE001 - raised again, chained
            error = e
        signum, failed = self.guard.agree(error is not None)
        if signum or failed:
            self._stop(signum, failed, error)
        self._rng_before_fetch = None
        if self._tracking_workers:
            self._note_workers(data_batch)
        return data_batch

    @property
    def _fetch_draws_rng(self) -> bool:
        # loading in this process draws from its random states; workers
        # draw from their own
        return not getattr(self.dataloader, 'num_workers', 0)

    def _save_now(self) -> Optional[str]:
        from mmstvit.engine.checkpoint_hook import ResumableCheckpointHook
        hooks = [h for h in self.runner.hooks
                 if isinstance(h, ResumableCheckpointHook)]
        if not hooks:
            self.runner.logger.warning(
                'mmstvit: no ResumableCheckpointHook in this run: nothing is '
                'saved before it stops')
            return None
        return hooks[0].save_interim(self.runner)

    def _stop(self, signum: int, failed: bool, error) -> None:
        log = self.runner.logger
        ckpt = self._save_now()
        saved = (f'the checkpoint of the {self.iter} iterations done is '
                 f'{ckpt}' if ckpt else 'nothing was trained, nothing saved')
        if failed:
            where = (f'fetching the batch of iteration {self.iter + 1} '
                     f'(epoch {self.epoch + 1})')
            if error is None:
                msg = (f'mmstvit: training stopped: another process failed '
                       f'{where}; {saved}')
            else:
                msg = (f'mmstvit: training stopped: {where} raised '
                       f'{type(error).__name__}: {error}; {saved}. Fix the '
                       'data, then the same command with --resume goes on '
                       'from there')
            raise TrainingDataError(
                msg, self.iter, self.epoch,
                get_rank() if error is not None else -1, ckpt) from error
        name = preemption.signal_name(signum)
        msg = (f'mmstvit: {name} received: training stopped after iteration '
               f'{self.iter}; {saved}. Resume with the same command and '
               f'--resume; exit status {128 + signum}')
        if self.requeue and get_rank() == 0:
            note = preemption.requeue_slurm_job(log)
            msg += f'; {note}' if note else '; not in a slurm job, no requeue'
        log.warning(msg)
        raise TrainingInterrupted(128 + signum, msg, name, ckpt)

    @staticmethod
    def _batches_of(loader):
        """``iter(loader)`` without drawing from this process's random
        states: a new iterator draws its workers' base seed from torch's
        generator, a persistent workers' iterator reused at the next epoch
        does not, and a resumed run makes a new one where the run it
        resumes reused one. (The workers are seeded by mmengine's
        ``worker_init_fn``; without one the draw stays.)"""
        if getattr(loader, 'num_workers', 0) and getattr(
                loader, 'worker_init_fn', None) is None:
            return iter(loader)
        snap = rng_state.snapshot()
        batches = iter(loader)
        rng_state.restore_snapshot(snap)
        return batches

    def _validate(self) -> None:
        """Validation on its own copy of the random states (the training
        stream does not depend on whether it ran)."""
        snap = rng_state.snapshot()
        self.runner.val_loop.run()
        rng_state.restore_snapshot(snap)

    def _val_interval_at(self, count: int) -> int:
        step = bisect.bisect(self.dynamic_milestones, count + 1)
        return self.dynamic_intervals[step - 1]

    def _validate_if_due(self, done: int, total: int) -> None:
        """After ``done`` of ``total`` iterations (or epochs): mmengine's
        rule for when its train loops validate (the interval as of ``done``,
        from ``val_begin``, and at the end), then :meth:`_validate`."""
        self.val_interval = self._val_interval_at(done)
        if (self.runner.val_loop is not None and done >= self.val_begin
                and (done % self.val_interval == 0 or done == total)):
            self._validate()


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(ResumableLoopMixin, IterBasedTrainLoop):
    """mmengine's ``IterBasedTrainLoop`` with exact resume and a clean stop
    (see :mod:`mmstvit.engine.loops`).

    Args:
        preemption (dict, optional): ``signals`` (names, default SIGTERM,
            SIGUSR1, SIGINT) and ``requeue`` (``scontrol requeue`` the slurm
            job after the checkpoint, default False).
        *args, **kwargs: ``IterBasedTrainLoop``'s.
    """

    def run(self):
        """Trains to ``max_iters`` (the parent's ``run`` with the resume
        and the boundary checks of this module)."""
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        try:
            self._go_to_position()
            while self.iter < self.max_iters and not self.stop_training:
                self.runner.model.train()
                self.run_iter(self._next_batch(self.dataloader_iterator))
                self._validate_if_due(self.iter, self.max_iters)
        finally:
            self.guard.restore()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model

    def _go_to_position(self) -> None:
        """A resumed run: draws the batches trained (untrained) and restores
        the random states before the next one."""
        if getattr(self, 'fast_forward_on_resume', False):
            self.runner.logger.warning(
                'mmstvit: fast_forward_on_resume is not used by '
                f'{type(self).__name__}: it draws the batches trained, so '
                'the resumed run gets the batches of the uninterrupted one')
        mine = self._my_state()
        reseeded = mine is not None and self._seeded_like_saved(mine)
        if reseeded:
            self.dataloader_iterator = InfiniteBatches(self.dataloader)
        if self.iter > 0:
            self.runner.logger.info(
                f'mmstvit: drawing the {self.iter} batches trained before '
                'the resume (not trained again)')
        for _ in range(self.iter):
            next(self.dataloader_iterator)
        if mine is not None:
            self._restorer(mine)()
            self._log_resumed(mine, f'before iteration {self.iter + 1}',
                              reseeded)


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(ResumableLoopMixin, EpochBasedTrainLoop):
    """mmengine's ``EpochBasedTrainLoop`` with exact resume (also from a
    checkpoint saved within an epoch) and a clean stop (see
    :mod:`mmstvit.engine.loops`).

    Args:
        preemption (dict, optional): as :class:`ResumableIterBasedTrainLoop`.
        *args, **kwargs: ``EpochBasedTrainLoop``'s.
    """

    def run(self):
        """Trains to ``max_epochs`` (the parent's ``run`` with the resume
        and the boundary checks of this module)."""
        self.runner.call_hook('before_train')
        try:
            skip, restore = self._resume_plan()
            while self.epoch < self.max_epochs and not self.stop_training:
                self.run_epoch(skip, restore)
                skip, restore = 0, None
                self._validate_if_due(self.epoch, self.max_epochs)
        finally:
            self.guard.restore()
        self.runner.call_hook('after_train')
        return self.runner.model

    def _resume_plan(self):
        """(batches of the first epoch already trained, what restores the
        random states), and the persistent workers' states set up."""
        mine = self._my_state()
        reseeded = mine is not None and self._seeded_like_saved(mine)
        table = {int(k): v for k, v in (mine or {}).get('workers',
                                                          {}).items()}
        self._tracking_workers = loader_state.track_worker_states(
            self.dataloader, table)
        self._worker_latest = dict(table)
        self._worker_epoch_start = dict(table)
        if mine is None:
            return 0, None
        done = int(self._resumed.get('epoch_batches_done', 0))
        where = (f'after batch {done} of epoch {self.epoch + 1} (the batches'
                 ' before it are drawn, not trained)' if done else
                 f'at the start of epoch {self.epoch + 1}')
        self._log_resumed(mine, where, reseeded)
        return done, self._restorer(mine)

    def run_epoch(self, skip: int = 0,
                  restore: Optional[Callable[[], None]] = None) -> None:
        """One epoch; resumed after ``skip`` of its batches (drawn, not
        trained), ``restore`` setting the random states where the saved run
        was."""
        if restore is not None and not skip:
            restore()
        self._rng_epoch_start = rng_state.snapshot()
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        batches = self._batches_of(self.dataloader)
        for _ in range(skip):
            self._note_workers(next(batches))
        if restore is not None and skip:
            restore()
        idx = skip
        self._in_epoch = skip
        while True:
            try:
                data_batch = self._next_batch(batches)
            except StopIteration:
                break
            self._in_epoch = idx + 1
            self.run_iter(idx, data_batch)
            idx += 1
        self._in_epoch = 0
        self._worker_epoch_start = dict(self._worker_latest)
        self._rng_epoch_start = None
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1  # as the parent's run_epoch: the property has no setter


def loop_type_for(train_cfg) -> Optional[str]:
    """The resumable loop that stands in for a ``train_cfg``'s loop (None
    when it is another kind)."""
    kind = train_cfg.get('type', None)
    if kind is None:
        return (ResumableEpochBasedTrainLoop.__name__ if train_cfg.get(
            'by_epoch', False) else ResumableIterBasedTrainLoop.__name__)
    name = kind.__name__ if isinstance(kind, type) else str(kind)
    name = name.split('.')[-1]
    if name in ('IterBasedTrainLoop', ResumableIterBasedTrainLoop.__name__):
        return ResumableIterBasedTrainLoop.__name__
    if name in ('EpochBasedTrainLoop',
                ResumableEpochBasedTrainLoop.__name__):
        return ResumableEpochBasedTrainLoop.__name__
    return None
