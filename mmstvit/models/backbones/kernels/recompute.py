# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Recomputation in backward: :func:`keep_buffers_on_recompute` (so that
activation checkpointing leaves BatchNorm statistics as one forward leaves
them) and :func:`recompute`, the memory-lean training kernels."""
import contextlib

import torch
import torch.nn as nn


class _RestoreBuffers:
    """Puts every buffer of a module back as it was when entered."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.saved = [(b, b.detach().clone())
                      for b in self.module.buffers()]

    def __exit__(self, *exc):
        with torch.no_grad():
            for b, value in self.saved:
                b.copy_(value)
        self.saved = []
        return False


def keep_buffers_on_recompute(module: nn.Module):
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint`` (non-reentrant)
    that runs the forward as usual and puts ``module``'s buffers back after
    the recomputation in backward: a checkpointed block updates BatchNorm
    running statistics (and ``num_batches_tracked``) once per step, as
    without checkpointing, for any kind of normalization layer, instead of
    a second time when backward recomputes it (mmdet's ResNet ``with_cp``
    does the latter)."""
    return lambda: (contextlib.nullcontext(), _RestoreBuffers(module))


def recompute(fn, x: torch.Tensor, buffers_of: nn.Module = None,
              random: bool = False) -> torch.Tensor:
    """``fn(x)`` keeping only ``x`` for backward: what ``fn`` computes in
    between (GELU's output, the input of the layer after it) is recomputed
    in backward instead of stored (``torch.utils.checkpoint``,
    non-reentrant, so the modules inside are called as modules and any
    wrapper or hook on them runs, in the forward and again in the
    recomputation). ``buffers_of``: a module whose buffers (BatchNorm
    statistics) the recomputation must leave as the forward left them.
    ``random``: ``fn`` draws random numbers (dropout) and must draw the same
    ones again. Autocast is recomputed as it was in the forward.

    Under ``torch.compile`` the default context is taken: dynamo traces no
    ``context_fn``, and its checkpoint operator applies the buffers' updates
    once, from the forward (tests/test_fast_paths.py compares the BatchNorm
    statistics with eager's)."""
    if buffers_of is None or torch.compiler.is_compiling():
        return torch.utils.checkpoint.checkpoint(
            fn, x, use_reentrant=False, preserve_rng_state=random)
    return torch.utils.checkpoint.checkpoint(
        fn, x, use_reentrant=False, preserve_rng_state=random,
        context_fn=keep_buffers_on_recompute(buffers_of))
