# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""``--amp``: the config rewrite of the optimizer wrapper, and the check
that the config's mixed precision can run here. The wrapper itself is
:class:`mmstvit.engine.amp.DeviceAmpOptimWrapper`."""
from typing import Optional

from .errors import ToolError

#: what ``--amp`` selects: mmengine's AmpOptimWrapper on accelerators,
#: bfloat16 autocast on a CPU (:mod:`mmstvit.engine.amp`)
AMP_WRAPPER = 'DeviceAmpOptimWrapper'


def amp_unavailable_reason() -> Optional[str]:
    """None where mmengine's own ``AmpOptimWrapper`` can run, else why not
    and what to use instead.

    mmengine 0.10.7's ``AmpOptimWrapper`` asserts that CUDA, NPU, MLU or MUSA
    is available; mmstvit's ``DeviceAmpOptimWrapper`` (what ``--amp``
    selects, :mod:`mmstvit.engine.amp`) is the same wrapper on those devices
    and runs bfloat16 autocast on a CPU.
    """
    import torch
    from mmengine.device import (is_cuda_available, is_mlu_available,
                                 is_musa_available, is_npu_available)
    if is_cuda_available() or is_npu_available() or is_mlu_available() or \
            is_musa_available():
        return None
    return ("mmstvit: optim_wrapper.type='AmpOptimWrapper' (mmengine's) "
            'needs a CUDA GPU (or an NPU, MLU or MUSA device), and none is '
            f'available here (torch {torch.__version__}, '
            f'torch.cuda.is_available() = {torch.cuda.is_available()}). '
            'For mixed precision on this CPU (bfloat16 autocast) add --amp, '
            "or set optim_wrapper.type='DeviceAmpOptimWrapper' (mmstvit's: "
            "mmengine's AmpOptimWrapper on a GPU); to train in float32 use "
            "optim_wrapper.type='OptimWrapper'.")


def apply_amp(cfg) -> None:
    """``--amp``: switches ``OptimWrapper`` to ``DeviceAmpOptimWrapper``
    (dynamic loss scaling where there is a loss scale to keep); a config's
    own ``AmpOptimWrapper`` stays where mmengine can run it and becomes
    ``DeviceAmpOptimWrapper`` where it cannot (a CPU)."""
    from mmengine.logging import print_log
    wrapper = str(cfg.optim_wrapper.get('type', 'OptimWrapper'))
    name = wrapper.split('.')[-1]
    if name == AMP_WRAPPER or (name == 'AmpOptimWrapper'
                               and amp_unavailable_reason() is None):
        print_log('AMP training is already enabled in your config.',
                  logger='current', level=30)
        return
    if name == 'AmpOptimWrapper':
        print_log(
            f"mmstvit: --amp on a machine without a GPU: the config's "
            f'AmpOptimWrapper runs as {AMP_WRAPPER} (bfloat16 autocast on '
            'the CPU)',
            logger='current',
            level=30)
        cfg.optim_wrapper.type = AMP_WRAPPER
        return
    if name != 'OptimWrapper':
        raise ToolError(
            f'mmstvit: --amp works with optim_wrapper.type=OptimWrapper, '
            f'but the config uses {wrapper!r}.')
    cfg.optim_wrapper.type = AMP_WRAPPER
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def check_amp(cfg) -> None:
    """Raises :class:`ToolError` before anything is built when the config's
    mixed precision cannot run on this machine: mmengine's
    ``AmpOptimWrapper`` without an accelerator, or a ``dtype`` that
    ``DeviceAmpOptimWrapper`` cannot autocast to here."""
    optim_wrapper = cfg.get('optim_wrapper', None) or {}
    name = str(optim_wrapper.get('type', '')).split('.')[-1]
    if name == 'AmpOptimWrapper':
        reason = amp_unavailable_reason()
        if reason:
            raise ToolError(reason)
    elif name == AMP_WRAPPER:
        from mmengine.device import get_device

        from mmstvit.engine.amp import amp_plan
        try:
            amp_plan(
                optim_wrapper.get('device_type', None) or get_device(),
                optim_wrapper.get('dtype', None))
        except (ValueError, TypeError) as e:
            raise ToolError(str(e)) from None
