# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What the training data loader needs for a resume to continue the batch
order and the random augmentations of an uninterrupted run.

What mmengine 0.10.7 does and what is added here:

* **Seeds.** The sampler (``DefaultSampler``: ``seed + epoch``;
  ``InfiniteSampler``: one generator seeded with ``seed``) and the workers
  (``worker_init_fn`` seeds worker ``i`` of rank ``r`` with
  ``seed + num_workers * r + i``, at every worker start) take the Runner's
  seed when the loader is built, before ``Runner.resume`` puts the
  checkpoint's seed back. With ``randomness.seed=None`` (a new seed per
  run) the resumed run would shuffle with another seed:
  :func:`loader_seeds` / :func:`set_loader_seeds` put the checkpoint's back.
* **Position in an iteration-based run.** ``IterBasedTrainLoop.run`` skips
  the iterations already done by drawing that many batches from a fresh
  iterator: the sampler and each worker's random stream come out where they
  were (the workers are seeded the same and load the same batches), only
  the process's own random states do not (loading in the main process and
  the skipped steps drew from them). :class:`RestoreBeforeBatch` lets that
  skip through and sets the saved states just before the first batch that
  is trained.
* **Position in an epoch-based run.** ``EpochBasedTrainLoop`` resumes at
  the start of the checkpoint's epoch; a checkpoint saved within an epoch
  (``CheckpointHook(by_epoch=False)``) would train that epoch's first
  batches twice. :func:`resumed_run_epoch` draws the batches done and
  trains from the next one.
* **Persistent workers** (``persistent_workers=True``, mmpretrain's
  default) keep their random streams from one epoch to the next, and a
  resumed run starts new ones. :class:`WorkerRngCollate` hands each
  worker's random states to the main process with each batch (an attribute
  of the batch dict, unseen by the model) and :class:`WorkerRngInit` gives
  the workers of a resumed run the states they had at the start of the
  epoch.
"""
import functools
from typing import Callable, Dict, Optional

from torch.utils.data import get_worker_info

from mmstvit.engine import rng_state


def data_sampler(loader):
    """The sampler that orders the data (inside a batch sampler if any)."""
    batch_sampler = getattr(loader, 'batch_sampler', None)
    inner = getattr(batch_sampler, 'sampler', None)
    if inner is not None and hasattr(inner, 'seed'):
        return inner
    return getattr(loader, 'sampler', None)


def _worker_init_seed(loader) -> Optional[int]:
    fn = getattr(loader, 'worker_init_fn', None)
    if isinstance(fn, WorkerRngInit):
        fn = fn.init_fn
    if isinstance(fn, functools.partial):
        return fn.keywords.get('seed', None)
    return None


def loader_seeds(loader) -> dict:
    """The seeds a loader was built with: its sampler's and mmengine's
    ``worker_init_fn``'s (None where there is none)."""
    return dict(
        sampler=getattr(data_sampler(loader), 'seed', None),
        workers=_worker_init_seed(loader))


def set_loader_seeds(loader, seeds: dict) -> bool:
    """Gives ``loader`` the seeds of :func:`loader_seeds` from a saved run.
    Returns True when one changed (then an iterator made before is stale)."""
    from mmengine.dataset import InfiniteSampler
    changed = False
    sampler = data_sampler(loader)
    if seeds.get('sampler') is not None and getattr(
            sampler, 'seed', None) not in (None, seeds['sampler']):
        sampler.seed = seeds['sampler']
        if isinstance(sampler, InfiniteSampler):
            # its index generator was seeded when it was built
            sampler.indices = sampler._indices_of_rank()
        changed = True
    fn = getattr(loader, 'worker_init_fn', None)
    wrapper = fn if isinstance(fn, WorkerRngInit) else None
    inner = wrapper.init_fn if wrapper else fn
    if seeds.get('workers') is not None and isinstance(
            inner, functools.partial) and inner.keywords.get(
                'seed', seeds['workers']) != seeds['workers']:
        inner = functools.partial(inner.func, *inner.args,
                                  **dict(inner.keywords,
                                         seed=seeds['workers']))
        if wrapper:
            wrapper.init_fn = inner
        else:
            loader.worker_init_fn = inner
        changed = True
    return changed


#: where batch samplers keep indices from one batch to the next (mmdet's
#: aspect-ratio grouping: ``AspectRatioBatchSampler`` and its kin,
#: ``MultiDataAspectRatioBatchSampler``)
_BUCKETS = ('_aspect_ratio_buckets', '_buckets')


def _empty_buckets(batch_sampler) -> None:
    """Empties the index buckets of a batch sampler whose iterator was
    dropped while it held them (the grouping generator is left between
    ``yield bucket`` and ``del bucket[:]``: a full bucket would never yield
    again, and the infinite sampler would be read forever)."""
    for name in _BUCKETS:
        buckets = getattr(batch_sampler, name, None)
        if isinstance(buckets, list) and all(
                isinstance(b, list) for b in buckets):
            setattr(batch_sampler, name, [[] for _ in buckets])


def renew_iter_loop_iterator(loop) -> None:
    """A new data iterator for an ``IterBasedTrainLoop`` (its first was made
    when the loop was built, with the seeds of that moment, and with
    workers has read its first batches already)."""
    from mmengine.runner.loops import _InfiniteDataloaderIterator
    loader = loop.dataloader
    old = getattr(loop.dataloader_iterator, '_iterator', None)
    if getattr(loader, '_iterator', None) is not None:
        loader._iterator = None  # the persistent workers' iterator
    shutdown = getattr(old, '_shutdown_workers', None)
    if shutdown is not None:
        shutdown()
    _empty_buckets(getattr(loader, 'batch_sampler', None))
    loop.dataloader_iterator = _InfiniteDataloaderIterator(loader)


class RestoreBeforeBatch:
    """Stands in for ``IterBasedTrainLoop.dataloader_iterator`` in a resumed
    run: lets the loop's skip of ``skip`` batches through, then calls
    ``restore`` just before the first batch that is trained and puts the
    real iterator back."""

    def __init__(self, loop, skip: int, restore: Callable[[], None]):
        self.loop = loop
        self.inner = loop.dataloader_iterator
        self.skip = skip
        self.restore = restore

    def __iter__(self):
        return self

    def __next__(self):
        if self.skip > 0:
            self.skip -= 1
            return next(self.inner)
        self.loop.dataloader_iterator = self.inner
        self.restore()
        return next(self.inner)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def resumed_run_epoch(loop, skip: int, before_first: Callable[[], None],
                      on_skipped: Callable[[object], None]) -> None:
    """``EpochBasedTrainLoop.run_epoch`` for an epoch resumed after ``skip``
    of its batches: draws them (so the sampler and the workers move as
    before) without training, calls ``before_first``, then trains the rest
    with their own batch indices. ``on_skipped`` sees each skipped batch."""
    runner = loop.runner
    runner.call_hook('before_train_epoch')
    runner.model.train()
    batches = iter(loop.dataloader)
    for _ in range(skip):
        on_skipped(next(batches))
    before_first()
    for idx, data_batch in enumerate(batches, start=skip):
        loop.run_iter(idx, data_batch)
    runner.call_hook('after_train_epoch')
    loop._epoch += 1


# ---------------------------------------------------------------------------
# the random states of persistent workers
# ---------------------------------------------------------------------------


class WorkerBatch(dict):
    """A batch dict that carries the random states of the worker that made
    it (``worker_rng = (worker id, states)``); the data preprocessors read
    its keys and never see the attribute."""
    worker_rng = None


class WorkerRngCollate:
    """A ``collate_fn`` that, in a worker process, attaches the worker's
    random states after the batch (:class:`WorkerBatch`). Batches that are
    not dicts pass unchanged."""

    def __init__(self, collate_fn: Callable):
        self.collate_fn = collate_fn

    def __call__(self, samples):
        batch = self.collate_fn(samples)
        info = get_worker_info()
        if info is None or not isinstance(batch, dict):
            return batch
        batch = WorkerBatch(batch)
        batch.worker_rng = (info.id, rng_state.capture(cuda=False))
        return batch


class WorkerRngInit:
    """A ``worker_init_fn``: the loader's own, then the random states that
    worker had at the start of the epoch in the interrupted run (where
    ``states`` holds them)."""

    def __init__(self, init_fn: Optional[Callable],
                 states: Optional[Dict[int, dict]] = None):
        self.init_fn = init_fn
        self.states = states or {}

    def __call__(self, worker_id: int) -> None:
        if self.init_fn is not None:
            self.init_fn(worker_id)
        state = self.states.get(worker_id, None)
        if state is not None:
            rng_state.restore(state)


def track_worker_states(loader, states: Optional[Dict[int, dict]]) -> bool:
    """Wraps the loader's ``collate_fn`` and ``worker_init_fn`` (before its
    first iterator) so that persistent workers' states are recorded, and
    start from ``states`` (worker id -> states) when given. Returns False
    (and changes nothing) where there is nothing to track: no workers, or
    workers that start afresh each epoch."""
    if not getattr(loader, 'num_workers', 0) or not getattr(
            loader, 'persistent_workers', False):
        return False
    if not isinstance(loader.collate_fn, WorkerRngCollate):
        loader.collate_fn = WorkerRngCollate(loader.collate_fn)
    fn = loader.worker_init_fn
    if isinstance(fn, WorkerRngInit):
        fn.states = states or {}
    else:
        loader.worker_init_fn = WorkerRngInit(fn, states)
    return True
