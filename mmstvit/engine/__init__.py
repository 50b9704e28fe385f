# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
from .amp import DeviceAmpOptimWrapper, amp_plan
from .atomic_files import AtomicLocalBackend, atomic_write
from .checkpoint_hook import ResumableCheckpointHook
from .deploy import STViTDeployHook, switch_to_deploy
from .divergence import CheckNonFiniteLossHook
from .errors import (CheckpointWriteError, DivergenceError, TrainingDataError,
                     TrainingError, TrainingInterrupted)
from .layer_decay import LayerDecayOptimWrapperConstructor
from .loops import ResumableEpochBasedTrainLoop, ResumableIterBasedTrainLoop
from .resume import ResumeError

__all__ = [
    'AtomicLocalBackend', 'CheckNonFiniteLossHook', 'CheckpointWriteError',
    'DeviceAmpOptimWrapper', 'DivergenceError',
    'LayerDecayOptimWrapperConstructor', 'ResumableCheckpointHook',
    'ResumableEpochBasedTrainLoop', 'ResumableIterBasedTrainLoop',
    'ResumeError', 'STViTDeployHook', 'TrainingDataError', 'TrainingError',
    'TrainingInterrupted', 'amp_plan', 'atomic_write', 'switch_to_deploy'
]
