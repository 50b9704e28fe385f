# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""mmstvit: the Super Token Vision Transformer for OpenMMLab toolboxes.

``custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)``
in a config makes ``type='STViT'`` available to mmdet, mmseg and mmpretrain.

Importing mmstvit imports torch and mmengine only: ``STViT`` goes into
mmengine's root registry (which every toolbox's registry falls back to) and
each toolbox gets mmstvit's modules registered when it is itself imported
(see :mod:`mmstvit.registry`).
"""
from .version import __version__
from .models import STViT, StokenAttention
from .model_index import _register_model_index
from .registry import install_hooks, when_imported

install_hooks()
when_imported('mmpretrain', _register_model_index)

__all__ = ['__version__', 'STViT', 'StokenAttention']
