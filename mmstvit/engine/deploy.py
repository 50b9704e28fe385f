# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Inference with every STViT of a model switched to its ``deploy`` plan.

``STViT.switch_to_deploy()`` makes a backbone inference-only (in-place
residual sums, and oneDNN's fused convolutions while it is float32 on a CPU;
see :mod:`mmstvit.models.backbones.kernels`). :class:`STViTDeployHook`
does it for a test run after the runner has loaded the checkpoint, so that
``tools/test.py`` (which adds it) and any toolbox's own ``test.py`` (a config
line) evaluate what ``tools/infer.py`` serves::

    custom_hooks = [dict(type='STViTDeployHook')]

The hook acts only before a test run (``Runner.test``): validation during
training runs the model as it trains.
"""
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS


def switch_to_deploy(model: nn.Module) -> int:
    """Switches every STViT inside ``model`` to its deploy plan; returns how
    many there were."""
    from mmstvit.models.backbones.kernels import stvit_backbones
    backbones = stvit_backbones(model)
    for m in backbones:
        m.switch_to_deploy()
    return len(backbones)


@HOOKS.register_module(force=True)
class STViTDeployHook(Hook):
    """Before a test run, switches the model's STViT backbones to deploy
    (after the checkpoint is loaded: ``Runner.test`` loads it first)."""
    priority = 'LOW'

    def before_test(self, runner) -> None:
        n = switch_to_deploy(runner.model)
        if n:
            print_log(f'STViTDeployHook: {n} STViT backbone(s) switched to '
                      f'deploy (inference only)', logger='current')
