# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
from .checkpoint import (CheckpointMismatchError, UnsafeCheckpointError,
                         extract_state_dict, load_checkpoint_file,
                         load_stvit_state_dict)
from .convert import convert_official_state_dict

__all__ = [
    'CheckpointMismatchError', 'UnsafeCheckpointError',
    'convert_official_state_dict', 'extract_state_dict',
    'load_checkpoint_file', 'load_stvit_state_dict'
]
