# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Reading, trusting, converting and explaining weights files.

Weights files are untrusted input. Every file mmstvit opens goes through
:func:`load_checkpoint_file`: a ``.safetensors`` file (told by its first
bytes) is read with ``safetensors`` and never unpickled; a ``.pth`` is read
with ``torch.load(weights_only=True)`` and one allow-list
(:func:`allowed_globals`); more only for a file trusted by name
(:func:`trust`). :func:`install_mmengine_loaders` makes mmengine's loaders
use it. The modules, one job each, are listed in docs/weights.md.
"""
from .backbone import (check_backbone_state_dict, describe_stvit,
                       load_stvit_state_dict, missing_model_weights)
from .convert import (convert_official, convert_official_state_dict,
                      mm_to_official_state_dict, state_dict_names)
from .errors import (OFFICIAL_WEIGHTS_HELP, CheckpointMismatchError,
                     NotSafetensorsError, UnsafeCheckpointError,
                     summarise_keys)
from .mmengine_loader import (OFFICIAL_BACKBONE_SCHEME, OFFICIAL_SCHEME,
                              install_mmengine_loaders,
                              load_from_stvit_official, official_load_from,
                              register_official_scheme)
from .prefix import backbone_state_dict, prefixes_holding
from .reading import checkpoint_format, load_checkpoint_file, load_state_dict
from .safetensors_file import sniff_format, write_safetensors
from .state_dicts import (STATE_DICT_ENTRIES, WRAPPER_PREFIXES,
                          extract_state_dict, is_official_checkpoint,
                          state_dict_entries, strip_wrappers)
from .trust import (allowed_globals, allowed_names, history_buffer_getattr,
                    is_trusted, trust, untrust_all)

__all__ = [
    'CheckpointMismatchError', 'UnsafeCheckpointError', 'NotSafetensorsError',
    'OFFICIAL_WEIGHTS_HELP', 'allowed_globals', 'allowed_names',
    'history_buffer_getattr', 'load_checkpoint_file', 'load_state_dict',
    'checkpoint_format', 'sniff_format', 'write_safetensors', 'trust',
    'is_trusted', 'untrust_all', 'install_mmengine_loaders',
    'register_official_scheme', 'load_from_stvit_official',
    'official_load_from',
    'OFFICIAL_SCHEME', 'OFFICIAL_BACKBONE_SCHEME', 'is_official_checkpoint',
    'extract_state_dict', 'state_dict_entries', 'strip_wrappers',
    'WRAPPER_PREFIXES', 'STATE_DICT_ENTRIES', 'convert_official',
    'convert_official_state_dict', 'mm_to_official_state_dict',
    'state_dict_names', 'backbone_state_dict', 'prefixes_holding',
    'load_stvit_state_dict', 'check_backbone_state_dict', 'describe_stvit',
    'missing_model_weights', 'summarise_keys'
]
