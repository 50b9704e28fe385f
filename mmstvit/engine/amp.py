# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Automatic mixed precision wherever mmengine trains, the CPU included.

mmengine 0.10.7's ``AmpOptimWrapper`` asserts a CUDA, NPU, MLU or MUSA
device in ``__init__``, so ``--amp`` could not train on a CPU although
torch's CPU autocast runs bfloat16 and float16. ``DeviceAmpOptimWrapper``
is that wrapper with the assert turned into a choice, made by
:func:`amp_plan` from the device mmengine trains on (``get_device()``):

========================  =============  ==================================
device                    autocast       loss scaling
========================  =============  ==================================
cuda, npu, mlu, musa      mmengine's     mmengine's GradScaler
                          (default fp16) (``loss_scale``, dynamic default)
cpu, ``dtype=None`` or    bfloat16       none: a disabled GradScaler
``'bfloat16'``
cpu, ``dtype='float16'``  float16        ``torch.amp.GradScaler('cpu')``
                                         (``loss_scale``, dynamic default)
========================  =============  ==================================

On an accelerator ``__init__`` is mmengine's own and nothing is
overridden except :meth:`DeviceAmpOptimWrapper.load_state_dict`, which also
accepts a checkpoint without loss-scaler state (a bfloat16 run's) where
mmengine's GradScaler would refuse it. On a CPU only ``__init__`` (the
scaler) and ``optim_context`` (the autocast) differ; ``backward``, ``step``
and ``state_dict`` are mmengine's, the same code the GPU runs:

* bfloat16 has float32's exponent range, so its gradients need no loss
  scaling; the disabled GradScaler is torch's own no-op (``scale`` returns
  the loss, ``step`` calls the optimizer, ``state_dict`` is ``{}``).
* float16 on a CPU works, with dynamic loss scaling as on a GPU (its
  range is the reason for the scaler, whatever the device). It is the CPU
  stand-in for a GPU's fp16 run, not a way to train fast: on CPUs without
  AVX512-FP16 or AMX-FP16, oneDNN's float16 convolutions are many times
  slower than float32 (20x for a 3x3 conv on the test machine).

mmcv's CPU kernels of ``nms`` and ``roi_align`` (and ``soft_nms``,
``roi_pool``) take float32 only (their CUDA kernels also take float16): a
Mask R-CNN under bfloat16 autocast stops in the RPN's NMS ("expected scalar
type Float but found BFloat16"). The CPU branch therefore wraps those
operators' autograd functions once (:func:`mmcv_ops_in_float32_on_cpu`):
under CPU autocast they run in float32 and hand back the dtype they were
given, as ``torch.amp.custom_fwd(cast_inputs=torch.float32)`` would, but
keeping the caller's dtype (mmdet writes RoIAlign's output into a tensor of
its input's dtype). Outside CPU autocast, and on a GPU, nothing changes.

A config selects it with ``optim_wrapper = dict(type='DeviceAmpOptimWrapper',
optimizer=..., dtype='bfloat16' | 'float16' | None, loss_scale='dynamic')``;
``tools/train.py --amp`` does that. It is in mmengine's root
``OPTIM_WRAPPERS``, which the registries of mmdet, mmseg and mmpretrain fall
back to.
"""
import functools
import importlib
from contextlib import contextmanager
from typing import NamedTuple, Optional, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

#: devices where mmengine's AmpOptimWrapper runs as it is
ACCELERATORS = ('cuda', 'npu', 'mlu', 'musa')
#: what torch's CPU autocast runs
CPU_AMP_DTYPES = (torch.bfloat16, torch.float16)


class AmpPlan(NamedTuple):
    """How mixed precision runs on a device (see the module's table)."""
    device_type: str
    #: the autocast dtype; None: the device's autocast default (mmengine's
    #: rule on accelerators: ``torch.get_autocast_gpu_dtype()``, float16)
    dtype: Optional[torch.dtype]
    #: gradients go through an enabled GradScaler (float16), or through a
    #: disabled one (bfloat16 on a CPU)
    loss_scaling: bool
    #: mmengine's AmpOptimWrapper builds the scaler and the autocast
    mmengine: bool


def to_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """``'bfloat16'`` -> ``torch.bfloat16`` (mmengine's ``valid_dtypes``)."""
    if isinstance(dtype, str):
        if dtype not in AmpOptimWrapper.valid_dtypes:
            raise ValueError(
                f'mmstvit: optim_wrapper.dtype must be one of '
                f'{AmpOptimWrapper.valid_dtypes} or None, got {dtype!r}')
        return getattr(torch, dtype)
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f'mmstvit: optim_wrapper.dtype must be a str, a '
                        f'torch.dtype or None, got {dtype!r}')
    return dtype


def amp_plan(device_type: str,
             dtype: Union[str, torch.dtype, None] = None) -> AmpPlan:
    """How ``DeviceAmpOptimWrapper`` runs mixed precision on
    ``device_type`` with the configured ``dtype``; raises ``ValueError``
    naming the fix where it cannot."""
    dtype = to_dtype(dtype)
    if device_type in ACCELERATORS:
        return AmpPlan(device_type, dtype, loss_scaling=True, mmengine=True)
    if device_type == 'cpu':
        dtype = torch.bfloat16 if dtype is None else dtype
        if dtype not in CPU_AMP_DTYPES:
            raise ValueError(
                f'mmstvit: CPU autocast runs bfloat16 or float16, not '
                f'{dtype}; set optim_wrapper.dtype to None or '
                "'bfloat16' (the default on a CPU) or 'float16', or train "
                'in float32 without --amp')
        return AmpPlan('cpu', dtype, loss_scaling=dtype == torch.float16,
                       mmengine=False)
    raise ValueError(
        f'mmstvit: no mixed precision training on a {device_type!r} device '
        '(mmengine autocasts on cuda, npu, mlu, musa and mmstvit adds the '
        'cpu); train in float32 without --amp')


def cpu_loss_scaler(plan: AmpPlan, loss_scale='dynamic',
                    use_fsdp: bool = False):
    """The GradScaler of a CPU plan, with mmengine's ``loss_scale``
    semantics: ``'dynamic'``, a float (static: the scale is reset to it
    after each step) or a dict of GradScaler arguments. Returns
    ``(scaler, static_scale or None)``."""
    if use_fsdp:
        from torch.distributed.fsdp.sharded_grad_scaler import \
            ShardedGradScaler

        def scaler_type(**kw):
            return ShardedGradScaler(device='cpu', **kw)
    else:

        def scaler_type(**kw):
            return torch.amp.GradScaler('cpu', **kw)

    if not plan.loss_scaling:
        if loss_scale != 'dynamic':
            print_log(
                f'mmstvit: {plan.dtype} autocast needs no loss scaling; '
                f'loss_scale={loss_scale!r} is not used',
                logger='current',
                level=30)
        return scaler_type(enabled=False), None
    if loss_scale == 'dynamic':
        return scaler_type(), None
    if isinstance(loss_scale, float):
        return scaler_type(init_scale=loss_scale), loss_scale
    if isinstance(loss_scale, dict):
        return scaler_type(**loss_scale), None
    raise TypeError('loss_scale must be of type float, dict, or '
                    f'"dynamic", but got {loss_scale}')


#: mmcv's autograd functions whose CPU kernels take float32 only
MMCV_FLOAT32_CPU_OPS = (('mmcv.ops.nms', 'NMSop'), ('mmcv.ops.nms',
                                                    'SoftNMSop'),
                        ('mmcv.ops.roi_align', 'RoIAlignFunction'),
                        ('mmcv.ops.roi_pool', 'RoIPoolFunction'))
_LOW = (torch.bfloat16, torch.float16)


def _to_float32(values):
    return [v.float() if torch.is_tensor(v) and v.dtype in _LOW else v
            for v in values]


def _float32_forward(forward):

    @functools.wraps(forward)
    def wrapped(ctx, *args, **kwargs):
        low = [a.dtype for a in args
               if torch.is_tensor(a) and a.dtype in _LOW and
               a.device.type == 'cpu']
        if not low or not torch.is_autocast_enabled('cpu'):
            return forward(ctx, *args, **kwargs)
        ctx.mmstvit_low_dtype = low[0]
        with torch.autocast('cpu', enabled=False):
            out = forward(ctx, *_to_float32(args), **kwargs)
        if isinstance(out, tuple):
            return tuple(o.to(low[0]) if torch.is_tensor(o) and
                         o.dtype == torch.float32 else o for o in out)
        return out.to(low[0]) if out.dtype == torch.float32 else out

    return staticmethod(wrapped)


def _float32_backward(backward):

    @functools.wraps(backward)
    def wrapped(ctx, *grads):
        if getattr(ctx, 'mmstvit_low_dtype', None) is None:
            return backward(ctx, *grads)
        # float32 gradients; autograd casts each to its input's dtype
        return backward(ctx, *_to_float32(grads))

    return staticmethod(wrapped)


def mmcv_ops_in_float32_on_cpu() -> list:
    """Makes :data:`MMCV_FLOAT32_CPU_OPS` run in float32 under CPU autocast
    (once per process; a no-op where mmcv's ops are not installed).
    Returns the names of the functions wrapped by this call."""
    done = []
    for module_name, name in MMCV_FLOAT32_CPU_OPS:
        try:
            fn = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            continue
        if fn.__dict__.get('mmstvit_float32_on_cpu', False):
            continue
        fn.forward = _float32_forward(fn.forward)
        if 'backward' in fn.__dict__:
            fn.backward = _float32_backward(fn.backward)
        fn.mmstvit_float32_on_cpu = True
        done.append(f'{module_name}.{name}')
    return done


@OPTIM_WRAPPERS.register_module(force=True)
class DeviceAmpOptimWrapper(AmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper`` on accelerators; bfloat16 (or float16)
    autocast on a CPU (see the module's table).

    Args:
        loss_scale (str, float or dict): as mmengine's: ``'dynamic'``, a
            static scale, or GradScaler arguments. Not used with bfloat16 on
            a CPU. Defaults to ``'dynamic'``.
        dtype (str or torch.dtype, optional): the autocast dtype. None: the
            device's default (float16 on a GPU, bfloat16 on a CPU).
        use_fsdp (bool): ``ShardedGradScaler``, as mmengine's.
        device_type (str, optional): where autocast runs; defaults to the
            device the Runner trains on (``mmengine.device.get_device()``).
        **kwargs: ``OptimWrapper``'s (``optimizer``, ``clip_grad``,
            ``accumulative_counts``).
    """

    def __init__(self,
                 loss_scale='dynamic',
                 dtype: Union[str, torch.dtype, None] = None,
                 use_fsdp: bool = False,
                 device_type: Optional[str] = None,
                 **kwargs):
        if device_type is None:
            from mmengine.device import get_device
            device_type = get_device()
        self.plan = amp_plan(device_type, dtype)
        if self.plan.mmengine:
            super().__init__(
                loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp,
                **kwargs)
            return
        OptimWrapper.__init__(self, **kwargs)
        mmcv_ops_in_float32_on_cpu()
        self.cast_dtype = self.plan.dtype
        self.loss_scaler, self._scale_update_param = cpu_loss_scaler(
            self.plan, loss_scale, use_fsdp)
        print_log(
            f'mmstvit: mixed precision on the CPU: {self.cast_dtype} '
            'autocast, ' + ('dynamic loss scaling (GradScaler)'
                            if self.plan.loss_scaling and
                            self._scale_update_param is None else
                            'static loss scaling' if self.plan.loss_scaling
                            else 'no loss scaling'),
            logger='current')
        if self.cast_dtype == torch.float16:
            print_log(
                'mmstvit: float16 on a CPU stands in for a GPU\'s fp16 run; '
                'it is slow (CPUs without AVX512-FP16 run float16 '
                'convolutions many times slower than float32): for speed '
                "use the default bfloat16 (optim_wrapper.dtype=None)",
                logger='current', level=30)

    def load_state_dict(self, state_dict: dict):
        """mmengine's, except that a checkpoint whose loss scaler is empty
        (a bfloat16 run's disabled GradScaler) leaves an enabled scaler at
        its initial scale instead of failing: a CPU bfloat16 run resumes
        on a GPU with fp16."""
        if not state_dict.get('loss_scaler', True) and \
                self.loss_scaler.is_enabled():
            state_dict = dict(state_dict)
            state_dict.pop('loss_scaler')
            print_log(
                'mmstvit: the checkpoint has no loss scale (saved by a run '
                'without loss scaling); the loss scaler starts at its '
                f'initial scale {self.loss_scaler.get_scale()}',
                logger='current')
        super().load_state_dict(state_dict)

    @contextmanager
    def optim_context(self, model: nn.Module):
        """mmengine's context (gradient accumulation, autocast) on
        accelerators; on a CPU the same with ``torch.autocast('cpu')``
        (mmengine's ``autocast`` helper only allows bfloat16 there)."""
        if self.plan.mmengine:
            with super().optim_context(model):
                yield
        else:
            with OptimWrapper.optim_context(self, model), torch.autocast(
                    'cpu', dtype=self.cast_dtype):
                yield
