# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
from .deploy import STViTDeployHook, switch_to_deploy
from .layer_decay import LayerDecayOptimWrapperConstructor

__all__ = [
    'LayerDecayOptimWrapperConstructor', 'STViTDeployHook', 'switch_to_deploy'
]
