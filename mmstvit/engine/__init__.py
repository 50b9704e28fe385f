# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
from .amp import DeviceAmpOptimWrapper, amp_plan
from .deploy import STViTDeployHook, switch_to_deploy
from .layer_decay import LayerDecayOptimWrapperConstructor

__all__ = [
    'DeviceAmpOptimWrapper', 'LayerDecayOptimWrapperConstructor',
    'STViTDeployHook', 'amp_plan', 'switch_to_deploy'
]
