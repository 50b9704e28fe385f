# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
from .amp import DeviceAmpOptimWrapper, amp_plan
from .atomic_files import AtomicLocalBackend, atomic_write
from .checkpoint_hook import ResumableCheckpointHook
from .deploy import STViTDeployHook, switch_to_deploy
from .layer_decay import LayerDecayOptimWrapperConstructor
from .resume import ResumeError

__all__ = [
    'AtomicLocalBackend', 'DeviceAmpOptimWrapper',
    'LayerDecayOptimWrapperConstructor', 'ResumableCheckpointHook',
    'ResumeError', 'STViTDeployHook', 'amp_plan', 'atomic_write',
    'switch_to_deploy'
]
