# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
from .atomic_files import AtomicLocalBackend, atomic_write
from .checkpoint_hook import ResumableCheckpointHook
from .layer_decay import LayerDecayOptimWrapperConstructor
from .resume import ResumeError

__all__ = [
    'AtomicLocalBackend', 'LayerDecayOptimWrapperConstructor',
    'ResumableCheckpointHook', 'ResumeError', 'atomic_write'
]
