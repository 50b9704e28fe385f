# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""How the STViT backbone runs: its execution modes, decided in one place.

The model (:mod:`.stvit`) computes the same maths several ways. Each module asks
this file which one applies; nothing else in the package inspects tracers,
autocast or memory formats.

=========================  ============================================
mode                       chosen when (predicate)
=========================  ============================================
reference graph            a tracer runs (FLOP counters, exporters) and
                           the switch below is on: :func:`tracing`
fused CPU inference        eager float32 CPU forward that needs no
                           gradient, channels-last maps: :func:`fused_cpu`
memory-lean training       eager forward with gradients: :func:`lean_autograd`
plain path                 everything else (GPU training, autocast, compile)
compiled                   the plain path under ``torch.compile``, the 3x3
                           gathers/scatters as opaque operators:
                           :func:`compiling`
=========================  ============================================

The reference graph is the FLOP-counting protocol of the paper: identity-kernel
convolutions for the 3x3 neighbourhood gather/scatter, explicit matmul +
softmax attention, residuals and BatchNorms as separate ops. With it every
FLOP counter reports the paper's numbers (82.3G for the STViT-S backbone at
1280x800). The eager path computes the same values without the identity
convolutions (0.75G multiply-adds at that size); turn the switch off to count
only the arithmetic the fast path executes::

    from mmstvit.models.backbones import execution
    with execution.reference_graph_when_tracing(False):
        ...  # trace or count FLOPs here

The predicates are looked up through this module (``execution.fused_cpu``),
so a test can turn a fast path off by patching one name.
"""
import contextlib
from typing import Iterator, Sequence

import torch

# On by default: a traced forward runs the authors' computation graph. Read
# it through :func:`reference_graph_enabled`; change it with
# :func:`set_reference_graph_when_tracing` or the context manager.
REFERENCE_GRAPH_WHEN_TRACING = True


def reference_graph_enabled() -> bool:
    """Whether a traced forward runs the authors' graph (the switch)."""
    return REFERENCE_GRAPH_WHEN_TRACING


def set_reference_graph_when_tracing(enabled: bool) -> bool:
    """Sets the switch; returns its previous value."""
    global REFERENCE_GRAPH_WHEN_TRACING
    previous = REFERENCE_GRAPH_WHEN_TRACING
    REFERENCE_GRAPH_WHEN_TRACING = bool(enabled)
    return previous


@contextlib.contextmanager
def reference_graph_when_tracing(enabled: bool) -> Iterator[None]:
    """Sets the switch for the duration of a ``with`` block."""
    previous = set_reference_graph_when_tracing(enabled)
    try:
        yield
    finally:
        set_reference_graph_when_tracing(previous)


def traced() -> bool:
    """A tracer runs (FLOP counters, the ONNX exporter): plain ops only,
    no fused calls, no in-place updates, no custom autograd functions, so
    that counters see every operation and exporters can express it."""
    return torch.jit.is_tracing() or torch.jit.is_scripting()


def tracing() -> bool:
    """Reference-graph mode: a tracer runs and the switch is on; the 3x3
    neighbourhood gather/scatter is then the authors' identity-kernel
    convolutions (the FLOP-counting protocol). With the switch off a trace
    keeps the plain ops of :func:`traced` and the fast gather/scatter
    (what tools/deployment/export_onnx.py exports)."""
    return REFERENCE_GRAPH_WHEN_TRACING and traced()


def compiling() -> bool:
    """``torch.compile`` is capturing the forward: it fuses by itself, and
    the 3x3 gathers/scatters are opaque operators (``mmstvit::gather3x3``,
    ``mmstvit::scatter3x3``) so that inductor does not generate code for
    their padded slices, which takes minutes per block on a small CPU."""
    compiler = getattr(torch, 'compiler', None)
    return bool(compiler is not None and compiler.is_compiling())


HAS_POINTWISE = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops, 'mkldnn') and hasattr(torch.ops.mkldnn,
                                     '_convolution_pointwise')


def fused_cpu(maps: Sequence[torch.Tensor],
              params: Sequence[torch.Tensor] = ()) -> bool:
    """Fused-CPU-inference mode: oneDNN's fused convolutions can serve an
    eager float32 CPU forward that needs no gradient, with channels-last
    ``maps``, no autocast, not traced or compiled (those see the plain ops
    and fuse by themselves)."""
    if compiling() or traced() or not HAS_POINTWISE or \
            not torch.backends.mkldnn.enabled:
        return False
    tensors = tuple(maps) + tuple(params)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if torch.is_autocast_enabled('cpu'):
        return False
    return all(t.device.type == 'cpu' and t.dtype == torch.float32
               for t in tensors) and all(
                   t.dim() == 4 and t.is_contiguous(
                       memory_format=torch.channels_last) for t in maps)


def lean_autograd(*tensors) -> bool:
    """Memory-lean-training mode: eager forward with gradients."""
    return torch.is_grad_enabled() and not traced() and any(
        t is not None and t.requires_grad for t in tensors)


def no_grad_needed(*tensors: torch.Tensor) -> bool:
    """No gradient flows through ``tensors``: results may be written in
    place into a map the caller owns."""
    return not torch.is_grad_enabled() or not any(
        t.requires_grad for t in tensors)
