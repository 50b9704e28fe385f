# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""How the STViT backbone runs: one kernel plan, chosen once.

A model runs the maths of :mod:`.stvit` with the kernels of one
:class:`Kernels` plan. The plan is fixed when the model is built
(``STViT(kernels='fast')``, the default) and changes only by an explicit
call; ``forward`` reads the plan's flags and never inspects tracers, autocast,
devices or dtypes (timm's ``fused_attn`` idiom: one flag set in ``__init__``,
one ``if`` in ``forward``).

==========  ==================================================================
plan        what runs
==========  ==================================================================
fast        the default, for training and evaluation on any device, in any
            precision (fp32, bf16/fp16 autocast, a ``.half()`` model):
            3x3 neighbourhoods as the operators ``mmstvit::gather3x3`` /
            ``scatter3x3`` (also what ``torch.compile`` sees), fused
            attention (``scaled_dot_product_attention``), ``x + dwconv(x)``
            as one convolution, BatchNorm folded into the next convolution in
            eval and layer scale into the projections, and in training GELU
            recomputed in backward instead of stored (memory).
plain       the module graph as written, with plain differentiable ops, no
            in-place updates and static shapes: what ONNX export traces and
            what the tests compare every other plan with.
reference   ``plain`` with the authors' identity-kernel convolutions for the
            3x3 neighbourhoods: the paper's FLOP-counting protocol
            (``get_flops.py`` applies it).
deploy      ``fast`` for inference only (``STViT.switch_to_deploy()``):
            residual sums accumulated in place and, while the parameters are
            float32 on a CPU, oneDNN convolutions with GELU as a post-op.
==========  ==================================================================

Switches: ``STViT.set_kernels(plan)`` for one backbone, :func:`use_kernels`
for every STViT inside a model for the duration of a ``with`` block (the FLOP
counter and the ONNX exporter use it), ``STViT.switch_to_deploy()``.
What each fast path buys is measured by
``tools/analysis_tools/fast_paths.py`` (table in docs/architecture.md).
"""
import contextlib
import dataclasses
from typing import Iterator, Union

import torch
import torch.nn as nn

#: ``torch.library.custom_op`` (torch >= 2.4) makes the 3x3 neighbourhood
#: kernels operators; on an older torch ``fast`` runs the same slices inline.
HAS_OPERATORS = hasattr(torch.library, 'custom_op')

#: oneDNN's fused convolutions (a private op: ``deploy`` falls back to the
#: plain convolution where a torch release lacks it).
HAS_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops, 'mkldnn') and hasattr(torch.ops.mkldnn,
                                     '_convolution_pointwise')


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The kernels a model runs; see the module docstring for the presets.

    Attributes:
        neighbourhoods: how the 3x3 neighbourhoods of the super token grid
            are gathered and scattered: ``'operator'`` (strided slices inside
            the opaque operators), ``'slices'`` (the same slices inline,
            out of place) or ``'conv'`` (the authors' identity-kernel
            convolutions).
        sdpa: attention with ``F.scaled_dot_product_attention`` instead of
            an explicit softmax.
        fold_residual: ``x + dwconv(x)`` as one convolution (the identity
            folded into the kernel's centre tap).
        fold_norm: in eval, BatchNorm folded into the adjacent convolution;
            layer scale folded into the projections.
        lean_training: in training, GELU -> depthwise conv and GELU ->
            BatchNorm as autograd functions that recompute GELU in backward.
        inplace: inference only: residual sums accumulated in place.
        onednn: inference only, float32 CPU: oneDNN convolutions with GELU
            (or the residual sum) as a post-op.
    """
    neighbourhoods: str = 'operator' if HAS_OPERATORS else 'slices'
    sdpa: bool = True
    fold_residual: bool = True
    fold_norm: bool = True
    lean_training: bool = True
    inplace: bool = False
    onednn: bool = False

    def __post_init__(self):
        if self.neighbourhoods not in ('operator', 'slices', 'conv'):
            raise ValueError(
                f"Kernels.neighbourhoods must be 'operator', 'slices' or "
                f"'conv', got {self.neighbourhoods!r}")
        if self.neighbourhoods == 'operator' and not HAS_OPERATORS:
            object.__setattr__(self, 'neighbourhoods', 'slices')
        if self.onednn and not HAS_ONEDNN:
            object.__setattr__(self, 'onednn', False)

    @property
    def inference_only(self) -> bool:
        """Plans that cannot compute gradients (``deploy``)."""
        return self.inplace or self.onednn


FAST = Kernels()
PLAIN = Kernels(neighbourhoods='slices', sdpa=False, fold_residual=False,
                fold_norm=False, lean_training=False)
REFERENCE = dataclasses.replace(PLAIN, neighbourhoods='conv')
PRESETS = {'fast': FAST, 'plain': PLAIN, 'reference': REFERENCE}


def deploy_plan(onednn: bool) -> Kernels:
    """``fast`` plus the inference-only kernels; oneDNN where asked and
    available."""
    return dataclasses.replace(FAST, inplace=True, onednn=onednn)


def resolve(plan: Union[str, Kernels]) -> Kernels:
    """A preset name (``'fast'``, ``'plain'``, ``'reference'``) or a
    :class:`Kernels` to a :class:`Kernels`; raises ``ValueError`` naming the
    choices otherwise (``deploy`` is reached by ``switch_to_deploy()``)."""
    if isinstance(plan, Kernels):
        return plan
    if isinstance(plan, str) and plan in PRESETS:
        return PRESETS[plan]
    raise ValueError(f'STViT: kernels must be one of {sorted(PRESETS)} or a '
                     f'Kernels(...), got {plan!r}')


def onednn_serves(module: nn.Module) -> bool:
    """oneDNN's fused kernels can serve ``module``'s inference: every
    parameter is a float32 CPU tensor. Asked when the plan is chosen and
    again when the module moves (``.to``, ``.half()``, ``.cuda()``)."""
    return HAS_ONEDNN and all(
        p.device.type == 'cpu' and p.dtype == torch.float32
        for p in module.parameters())


def stvit_backbones(model: nn.Module) -> list:
    """Every STViT inside ``model`` (the model itself included)."""
    from .stvit import STViT
    return [m for m in model.modules() if isinstance(m, STViT)]


@contextlib.contextmanager
def use_kernels(model: nn.Module,
                plan: Union[str, Kernels]) -> Iterator[int]:
    """Runs every STViT inside ``model`` with ``plan`` for a ``with`` block
    and restores each one's own plan afterwards; yields how many STViTs
    were switched. ``get_flops.py`` counts with ``'reference'``; the ONNX
    export traces ``'plain'``."""
    backbones = stvit_backbones(model)
    previous = [m.kernels for m in backbones]
    for m in backbones:
        m.set_kernels(plan)
    try:
        yield len(backbones)
    finally:
        for m, old in zip(backbones, previous):
            m.set_kernels(old)
