# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
from .amp import DeviceAmpOptimWrapper, amp_plan
from .layer_decay import LayerDecayOptimWrapperConstructor

__all__ = [
    'DeviceAmpOptimWrapper', 'LayerDecayOptimWrapperConstructor', 'amp_plan'
]
