# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What the training data loader needs for a resume to continue the batch
order and the random augmentations of an uninterrupted run.

What mmengine 0.10.7 does and what is added here:

* **Seeds.** The sampler (``DefaultSampler``: ``seed + epoch``;
  ``InfiniteSampler``: one generator seeded with ``seed``) and the workers
  (``worker_init_fn`` seeds worker ``i`` of rank ``r`` with
  ``seed + num_workers * r + i``, at every worker start) take the Runner's
  seed when the loader is built, before ``Runner.resume`` puts the
  checkpoint's seed back. :func:`loader_seeds` says which seeds a loader
  has; the loops of :mod:`mmstvit.engine.loops` build it again with the
  checkpoint's where they differ (``randomness.seed=None``).
* **Position.** The loops draw the batches already trained from a loader
  built as before (the sampler and each worker's random stream come out
  where they were) and set the saved random states before the first batch
  that is trained.
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
