# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The random states of a process, in forms the weights-only reader loads.

Checkpoints are untrusted input (:mod:`mmstvit.weights` reads them
with ``weights_only=True`` and a short allow-list), so the states are stored
as tensors, ints, floats and strings only: Python's ``random`` (its 625-word
Mersenne Twister state as an int64 tensor), numpy's legacy global generator
(``np.random``: key as an int64 tensor, position, cached Gaussian), torch's
CPU generator (its byte tensor) and, where CUDA is in use, the generator of
the current CUDA device. About 16 KB pickled.
"""
import random
from typing import Optional

import numpy as np
import torch


def _python() -> dict:
    version, internal, gauss = random.getstate()
    return dict(
        version=int(version),
        state=torch.tensor(internal, dtype=torch.int64),
        gauss=gauss)


def _set_python(s: dict) -> None:
    random.setstate((s['version'], tuple(int(x) for x in s['state'].tolist()),
                     s['gauss']))


def _numpy() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return dict(
        bit_generator=str(name),
        keys=torch.from_numpy(keys.astype(np.int64)),
        pos=int(pos),
        has_gauss=int(has_gauss),
        cached_gaussian=float(cached))


def _set_numpy(s: dict) -> None:
    np.random.set_state(
        (s['bit_generator'], s['keys'].cpu().numpy().astype(np.uint32),
         s['pos'], s['has_gauss'], s['cached_gaussian']))


def _cuda() -> Optional[dict]:
    # never initialises CUDA: a process that has not used it has no state
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    device = torch.cuda.current_device()
    return dict(device=int(device), state=torch.cuda.get_rng_state(device))


def capture(cuda: bool = True) -> dict:
    """This process's random states (see the module docstring)."""
    state = dict(
        python=_python(), numpy=_numpy(), torch=torch.get_rng_state())
    state['cuda'] = _cuda() if cuda else None
    return state


def snapshot() -> tuple:
    """This process's random states as the generators give them (about 20
    us, a fifth of :func:`capture`): for :func:`restore_snapshot`, or
    :func:`encode` when they are saved."""
    return (random.getstate(), np.random.get_state(legacy=True),
            torch.get_rng_state(), _cuda())


def restore_snapshot(snap: tuple) -> None:
    """Sets the random states of :func:`snapshot`."""
    random.setstate(snap[0])
    np.random.set_state(snap[1])
    torch.set_rng_state(snap[2])
    if snap[3] is not None:
        torch.cuda.set_rng_state(snap[3]['state'], snap[3]['device'])


def encode(snap: tuple) -> dict:
    """A :func:`snapshot` in :func:`capture`'s form (what checkpoints
    hold)."""
    version, internal, gauss = snap[0]
    name, keys, pos, has_gauss, cached = snap[1]
    return dict(
        python=dict(version=int(version),
                    state=torch.tensor(internal, dtype=torch.int64),
                    gauss=gauss),
        numpy=dict(bit_generator=str(name),
                   keys=torch.from_numpy(keys.astype(np.int64)),
                   pos=int(pos), has_gauss=int(has_gauss),
                   cached_gaussian=float(cached)),
        torch=snap[2].clone(),
        cuda=snap[3])


def restore(state: dict) -> Optional[str]:
    """Sets this process's random states to ``state`` (from
    :func:`capture`, possibly loaded with ``map_location='cuda'``).
    Returns why the CUDA state could not be restored, or None."""
    _set_python(state['python'])
    _set_numpy(state['numpy'])
    torch.set_rng_state(state['torch'].cpu())
    saved = state.get('cuda', None)
    if saved is None:
        return None
    if not torch.cuda.is_available():
        return ('the checkpoint holds a CUDA random state, but CUDA is not '
                'available here')
    torch.cuda.set_rng_state(saved['state'].cpu(),
                             torch.cuda.current_device())
    return None


def on_cpu(obj):
    """``obj`` with its tensors on the CPU (``Runner.resume`` loads a
    checkpoint onto the GPU; worker processes must not touch CUDA)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def describe(state: dict) -> str:
    """What a state holds, for log lines: 'Python, numpy, torch CPU'."""
    parts = ['Python', 'numpy', 'torch CPU']
    if state.get('cuda') is not None:
        parts.append(f"CUDA device {state['cuda']['device']}")
    return ', '.join(parts)
