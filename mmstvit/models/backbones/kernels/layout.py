# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Parameter layout for DistributedDataParallel: :func:`store_channels_last`
(convolution weights laid out as their channels-last gradients come, and
every gradient handed over in its parameter's layout, so DDP's buckets match
them)."""
import weakref
from typing import Tuple

import torch
import torch.nn as nn


def channels_last_strides(shape) -> Tuple[int, ...]:
    """The strides of a dense channels-last (N, C, H, W) tensor of
    ``shape``, including those of size-1 dimensions."""
    n, c, h, w = shape
    return (h * w * c, 1, w * c, c)


def relayout(t: torch.Tensor, strides: Tuple[int, ...]) -> torch.Tensor:
    """``t`` with exactly ``strides``: a free view when only the strides of
    size-1 dimensions differ (the same memory), a copy otherwise."""
    if t.stride() == strides:
        return t
    if all(a == b or n == 1 for a, b, n in zip(t.stride(), strides, t.shape)):
        return t.as_strided(t.shape, strides)
    out = torch.empty_strided(t.shape, strides, dtype=t.dtype,
                              device=t.device)
    return out.copy_(t)


class GradLikeParameter:
    """A gradient hook that hands a parameter its gradient laid out with the
    parameter's own strides (see :func:`store_channels_last`). Holds the
    parameter weakly; parameters are pickled without their hooks."""

    def __init__(self, param: torch.Tensor):
        self.param = weakref.ref(param)

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        param = self.param()
        if param is None or grad.layout != torch.strided or \
                not getattr(param, '_mmstvit_grad_layout', True):
            return grad
        return relayout(grad, param.stride())


def store_channels_last(module: nn.Module) -> int:
    """Lays the parameters of ``module`` out for DistributedDataParallel:
    every convolution weight channels last, with exactly the strides
    :func:`channels_last_strides` gives, and every 4-D parameter's gradient
    handed over in its parameter's layout (:class:`GradLikeParameter`; not
    on frozen parameters, which get no gradient); returns how many weights
    were re-laid. Values are unchanged, and so are the parameters'
    identities (``param.data`` is replaced), so optimizers and hooks that
    already hold them keep working.

    Why: DDP builds its gradient buckets with the strides of the
    parameters, and when a gradient's strides differ, even only in size-1
    dimensions (a 1x1 kernel's (2048, 1, 2048, 2048) against
    (2048, 1, 1, 1)), it warns "Grad strides do not match bucket view
    strides" and copies that gradient at every step. Convolutions on the
    channels-last maps return their weight gradients channels last, so
    weights stored that way get theirs with no copy. Where autograd still
    hands a gradient with other strides (a layer scale folded into a
    projection, a depthwise kernel whose output gradient arrives
    contiguous), the hook re-strides it before it is accumulated: a free
    view when only size-1 strides differ, the copy autograd would make
    otherwise. ``Tensor.contiguous(memory_format=...)`` cannot do this for
    1x1 kernels: it sees them as channels last already and keeps their
    strides.
    """
    changed = 0
    convs = {id(m.weight) for m in module.modules()
             if isinstance(m, nn.Conv2d)}
    for p in module.parameters():
        if p.dim() != 4:
            continue
        if id(p) in convs:
            strides = channels_last_strides(p.shape)
            if p.stride() != strides:
                with torch.no_grad():
                    p.data = relayout(p.detach(), strides)
                if p.grad is not None:
                    p.grad = relayout(p.grad, strides)
                changed += 1
        if p.requires_grad and not getattr(p, '_mmstvit_grad_hook', False):
            p.register_hook(GradLikeParameter(p))
            p._mmstvit_grad_hook = True
        p._mmstvit_grad_layout = True  # the hook's switch (store_contiguous)
    return changed


def store_contiguous(module: nn.Module) -> None:
    """The layout before :func:`store_channels_last`, for comparisons (the
    benchmark, the tests): every parameter with plain contiguous strides and
    its gradient as autograd hands it (the hooks turned off)."""
    for p in module.parameters():
        strides = [1] * p.dim()
        for d in range(p.dim() - 2, -1, -1):
            strides[d] = strides[d + 1] * p.shape[d + 1]
        with torch.no_grad():
            p.data = relayout(p.detach(), tuple(strides))
        p._mmstvit_grad_layout = False
