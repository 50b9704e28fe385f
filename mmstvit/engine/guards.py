# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The config switch that gives a run all of mmstvit's guards of its
progress (``tools/train.py`` calls :func:`use_in_config` for every run; a
toolbox's own ``tools/train.py`` gets the same from these config lines)::

    custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)
    train_cfg = dict(type='ResumableIterBasedTrainLoop', ...)  # or Epoch...
    default_hooks = dict(checkpoint=dict(type='ResumableCheckpointHook'))
    custom_hooks = [dict(type='CheckNonFiniteLossHook')]
"""
from mmstvit.engine import checkpoint_hook
from mmstvit.engine.divergence import CheckNonFiniteLossHook
from mmstvit.engine.loops import loop_type_for


def use_resumable_loop(cfg) -> bool:
    """Makes ``cfg.train_cfg``'s mmengine train loop (named, or chosen by
    ``by_epoch``) the resumable one with the same arguments; other loops are
    left as they are (returns False)."""
    train_cfg = cfg.get('train_cfg', None)
    if not train_cfg:
        return False
    kind = loop_type_for(train_cfg)
    if kind is None:
        return False
    train_cfg.pop('by_epoch', None)
    train_cfg['type'] = kind
    return True


def use_divergence_check(cfg) -> bool:
    """Adds :class:`CheckNonFiniteLossHook` to ``custom_hooks`` unless the
    config has it (returns False then)."""
    name = CheckNonFiniteLossHook.__name__
    hooks = list(cfg.get('custom_hooks', None) or [])
    for hook in hooks:
        kind = hook.get('type', '') if isinstance(hook, dict) else hook
        kind = kind.__name__ if isinstance(kind, type) else str(kind)
        if kind.split('.')[-1] == name:
            return False
    cfg.custom_hooks = hooks + [dict(type=name)]
    return True


def use_in_config(cfg) -> dict:
    """All three: the resumable loop, ``ResumableCheckpointHook`` and the
    divergence check. Returns what it changed, by name."""
    return dict(loop=use_resumable_loop(cfg),
                checkpoint=checkpoint_hook.use_in_config(cfg),
                divergence=use_divergence_check(cfg))
