# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""A diverging run stops: :class:`CheckNonFiniteLossHook` and the check of
the weights before a checkpoint is written.

Turn it on in any mmdet, mmseg or mmpretrain config (``tools/train.py`` of
this repo does it by itself)::

    custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)
    custom_hooks = [dict(type='CheckNonFiniteLossHook')]

A non-finite loss (``nan``, ``inf``) ends the run with
:class:`~mmstvit.engine.errors.DivergenceError` naming the iteration, the
non-finite loss terms and the learning rates, before the checkpoint hook of
that iteration runs (so no checkpoint of the diverged weights is written).
Under AMP with a loss scaler, a step whose gradients overflow is skipped by
the ``GradScaler`` and its loss may be ``inf``: that is normal, and the run
stops only after ``max_amp_skips`` non-finite losses in a row. In a
distributed run every process stops at the same iteration (one
``all_reduce`` of one integer per iteration). mmdet's
``CheckInvalidLossHook`` (off by default) asserts every 50 iterations.
"""
from typing import Dict, List, Optional

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from mmstvit.engine.errors import DivergenceError


def nonfinite_terms(outputs) -> Dict[str, float]:
    """The loss terms of a ``train_step``'s outputs (name -> value) that are
    not finite. One device-to-host copy for all terms."""
    if not isinstance(outputs, dict) or not outputs:
        return {}
    names, values = [], []
    for name, value in outputs.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            names.append(name)
            values.append(value.detach().float().reshape(()))
        elif isinstance(value, (int, float)):
            names.append(name)
            values.append(torch.tensor(float(value)))
    if not values:
        return {}
    device = values[0].device
    stacked = torch.stack([v.to(device) for v in values]).cpu()
    finite = torch.isfinite(stacked)
    if bool(finite.all()):
        return {}
    return {n: float(v) for n, v, ok in zip(names, stacked.tolist(),
                                             finite.tolist()) if not ok}


def nonfinite_tensors(module: torch.nn.Module) -> List[str]:
    """Names of the floating-point parameters and buffers of ``module``
    holding a ``nan`` or ``inf``."""
    bad = []
    for name, t in module.state_dict(keep_vars=True).items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and \
                not bool(torch.isfinite(t.detach()).all()):
            bad.append(name)
    return bad


def learning_rates(optim_wrapper) -> Dict[str, list]:
    try:
        return {k: [float(x) for x in v]
                for k, v in optim_wrapper.get_lr().items()}
    except Exception:  # noqa: BLE001 - only for the message
        return {}


def lr_text(lrs: Dict[str, list]) -> str:
    parts = []
    for key, values in lrs.items():
        shown = sorted(set(values))
        text = ', '.join(f'{v:.4g}' for v in shown[:4])
        if len(shown) > 4:
            text += f' ... ({len(shown)} values)'
        parts.append(f'{key} {text}')
    return '; '.join(parts) or 'unknown'


def has_loss_scaler(optim_wrapper) -> bool:
    """Whether a ``GradScaler`` skips the steps of overflowing gradients
    (mmengine's ``AmpOptimWrapper`` and its kin, one or in a dict)."""
    wrappers = optim_wrapper.values() if hasattr(
        optim_wrapper, 'values') else [optim_wrapper]
    for w in wrappers:
        scaler = getattr(w, 'loss_scaler', None)
        if scaler is not None and getattr(scaler, 'is_enabled',
                                          lambda: True)():
            return True
    return False


@HOOKS.register_module(force=True)
class CheckNonFiniteLossHook(Hook):
    """Stops training at a non-finite loss (see the module docstring).

    Args:
        max_amp_skips (int): Non-finite losses in a row tolerated when a
            loss scaler skips their steps (AMP). Default 10 (the scale has
            then dropped by 2**10).
        interval (int): Check every ``interval`` iterations. Default 1.
    """

    priority = 'VERY_HIGH'  # before the checkpoint hook of the iteration

    def __init__(self, max_amp_skips: int = 10, interval: int = 1):
        if max_amp_skips < 1 or interval < 1:
            raise ValueError('mmstvit: CheckNonFiniteLossHook needs '
                             'max_amp_skips >= 1 and interval >= 1')
        self.max_amp_skips = int(max_amp_skips)
        self.interval = int(interval)
        self.in_a_row = 0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        if not self.every_n_train_iters(runner, self.interval):
            return
        bad = nonfinite_terms(outputs)
        if not any_process(bool(bad)):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        scaled = has_loss_scaler(runner.optim_wrapper)
        if scaled and self.in_a_row < self.max_amp_skips:
            return
        raise DivergenceError(
            self.message(runner, bad, scaled), runner.iter + 1, bad,
            learning_rates(runner.optim_wrapper))

    def message(self, runner, bad: Dict[str, float], scaled: bool) -> str:
        it = runner.iter + 1
        terms = ', '.join(f'{k}={v}' for k, v in bad.items()) or \
            'those of another process'
        lr = lr_text(learning_rates(runner.optim_wrapper))
        kept = runner.message_hub.get_info('last_ckpt', None)
        row = (f' ({self.in_a_row} in a row, the loss scaler skipping their '
               'steps)' if scaled else '')
        return (f'mmstvit: the loss is not finite at iteration {it}{row}: '
                f'{terms}; learning rate {lr}. Training stopped; no '
                'checkpoint of this iteration is written' +
                (f', the last one is {kept}' if kept else '') +
                '. Lower the learning rate (or warm up longer), clip the '
                'gradients (optim_wrapper.clip_grad), or look for bad labels '
                'or inputs; then resume from a checkpoint before it, or '
                'start again.')


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is set on any process (one all_reduce in a
    distributed run)."""
    from mmengine.dist import all_reduce, get_world_size
    if get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64)
    all_reduce(t, op='max')
    return bool(t.item())
