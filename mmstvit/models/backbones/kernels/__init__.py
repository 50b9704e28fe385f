# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""How the STViT backbone computes: its kernel plan, and the kernels.

Every layer of STViT runs as its module (``self.qkv(x)``, ``self.norm2(x)``,
...) in every plan; a plan chooses how a module computes, never whether it
is called (timm's ``fused_attn`` idiom: a flag fixed when the model is built
or switched, one ``if`` in ``forward``). The plan is one :class:`Kernels`
per model, the ``kernels`` argument of ``STViT`` and its ``kernels``
attribute, shared by every module that reads it (``self.kernels.sdpa``).

==========  ==================================================================
plan        what runs
==========  ==================================================================
fast        the default, for training and evaluation on any device, in any
            precision (fp32, bf16/fp16 autocast, a ``.half()`` model):
            3x3 neighbourhoods as the operators ``mmstvit::gather3x3`` /
            ``scatter3x3`` (also what ``torch.compile`` sees), fused
            attention (``scaled_dot_product_attention``), and in training
            GELU recomputed in backward instead of stored (memory).
plain       plain differentiable ops, no in-place updates and static shapes:
            what ONNX export traces and what the tests compare every other
            plan with.
reference   ``plain`` with the authors' identity-kernel convolutions for the
            3x3 neighbourhoods: the paper's FLOP-counting protocol
            (``get_flops.py`` applies it).
deploy      ``fast`` for inference only, after ``STViT.switch_to_deploy()``
            has rewritten the model once: fused modules (BatchNorm, layer
            scale and the CPE's residual folded into convolutions) replace
            the trained ones, residual sums accumulate in place and, while
            the parameters are float32 on a CPU, oneDNN convolutions run
            GELU or the residual sum as a post-op.
==========  ==================================================================

Switches: ``STViT.set_kernels(plan)`` for one backbone, :func:`use_kernels`
for every STViT inside a model for the duration of a ``with`` block (the FLOP
counter and the ONNX exporter use it), ``STViT.switch_to_deploy()``. What
each fast path buys: ``tools/analysis_tools/fast_paths.py`` (table in
docs/architecture.md). The kernels themselves: :mod:`.neighbourhoods`,
:mod:`.fused` (folding, oneDNN), :mod:`.recompute` (memory-lean training,
``with_cp``), :mod:`.layout` (parameter strides for DDP).
"""
import contextlib
import dataclasses
from typing import Iterator, Union

import torch
import torch.nn as nn

from .fused import (HAS_ONEDNN, add_conv1x1_, bn_scale_shift, conv_gelu,
                    fold_bn_after, fold_bn_before, fold_residual, fold_scale)
from .layout import (GradLikeParameter, channels_last_strides, relayout,
                     store_channels_last, store_contiguous)
from .neighbourhoods import (HAS_OPERATORS, fold3x3, gather3x3, neighbours,
                             nhwc, scatter3x3, scatter_to_neighbours,
                             unfold3x3, upsample, upsample_add_)
from .recompute import keep_buffers_on_recompute, recompute

__all__ = [
    'Kernels', 'FAST', 'PLAIN', 'REFERENCE', 'PRESETS', 'deploy_plan',
    'resolve', 'onednn_serves', 'stvit_backbones', 'use_kernels',
    'describe_run', 'HAS_ONEDNN', 'HAS_OPERATORS', 'add_conv1x1_',
    'bn_scale_shift', 'conv_gelu', 'fold_bn_after', 'fold_bn_before',
    'fold_residual', 'fold_scale', 'GradLikeParameter',
    'channels_last_strides', 'relayout', 'store_channels_last',
    'store_contiguous', 'fold3x3', 'gather3x3', 'neighbours', 'nhwc',
    'scatter3x3', 'scatter_to_neighbours', 'unfold3x3', 'upsample',
    'upsample_add_', 'keep_buffers_on_recompute', 'recompute'
]


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
        lean_training: in training, GELU -> depthwise conv (every ConvFFN)
            and GELU -> BatchNorm (the stem) recompute GELU in backward
            instead of storing its output (:func:`.recompute`).
        inplace: inference only (``deploy``): residual sums accumulated in
            place.
        onednn: inference only, float32 CPU (``deploy``): oneDNN
            convolutions with GELU (or the residual sum) as a post-op.
    """
    neighbourhoods: str = 'operator' if HAS_OPERATORS else 'slices'
    sdpa: bool = True
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

    @property
    def name(self) -> str:
        """The preset's name (``'deploy'`` for a deploy plan), else
        ``'custom'``."""
        for name, plan in PRESETS.items():
            if plan == self:
                return name
        if self == deploy_plan(self.onednn) or self == deploy_plan(False):
            return 'deploy'
        return 'custom'

    def __str__(self) -> str:
        flags = ', '.join(f'{f.name}={getattr(self, f.name)!r}'
                          for f in dataclasses.fields(self))
        return f'{self.name} ({flags})'


FAST = Kernels()
PLAIN = Kernels(neighbourhoods='slices', sdpa=False, lean_training=False)
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
    parameter and buffer is a float32 CPU tensor. Asked when the plan is
    chosen and again when the module moves (``.to``, ``.half()``)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return HAS_ONEDNN and all(
        t.device.type == 'cpu' and t.dtype == torch.float32
        for t in tensors if t.is_floating_point())


def stvit_backbones(model: nn.Module) -> list:
    """Every STViT inside ``model`` (the model itself included): the
    modules with a kernel plan of their own (``set_kernels``)."""
    return [m for m in model.modules()
            if callable(getattr(m, 'set_kernels', None))]


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


def describe_run(model: nn.Module, optim_wrapper=None) -> str:
    """One line for a training log: the device, the precision and the
    kernels every STViT of ``model`` trains with. ``optim_wrapper``: the
    config's ``optim_wrapper`` dict (an ``*Amp*`` type autocasts, with its
    ``dtype`` or the device's default: float16 on a GPU, bfloat16 on a
    CPU)."""
    backbones = stvit_backbones(model)
    if not backbones:
        return 'STViT kernels: no STViT in this model'
    params = list(model.parameters())
    device = params[0].device.type if params else 'cpu'
    cfg = dict(optim_wrapper or {})
    if 'Amp' in str(cfg.get('type', '')):
        dtype = cfg.get('dtype') or ('bfloat16' if device == 'cpu'
                                     else 'float16')
        precision = f'{str(dtype).replace("torch.", "")} autocast'
    else:
        precision = str(params[0].dtype).replace('torch.', '') \
            if params else 'float32'
    plans = sorted({str(m.kernels) for m in backbones})
    return (f'STViT kernels: {len(backbones)} backbone(s) train on '
            f'{device} in {precision} with the plan ' + '; '.join(plans) +
            '; tools/test.py and tools/infer.py run the deploy plan')
