# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""mmstvit: the Super Token Vision Transformer for OpenMMLab toolboxes.

``custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)``
in a config makes ``type='STViT'`` available to mmdet, mmseg and mmpretrain.

Importing mmstvit imports torch and mmengine only: ``STViT`` goes into
mmengine's root registry (which every toolbox's registry falls back to) and
each toolbox gets mmstvit's modules registered when it is itself imported
(see :mod:`mmstvit.registry`). ``LayerDecayOptimWrapperConstructor``
(layer-wise learning-rate decay) is in mmengine's root
``OPTIM_WRAPPER_CONSTRUCTORS`` the same way.
"""
from .version import __version__
from .engine import LayerDecayOptimWrapperConstructor
from .models import STViT, StokenAttention
from .registry import install_hooks

install_hooks()

__all__ = [
    '__version__', 'STViT', 'StokenAttention',
    'LayerDecayOptimWrapperConstructor'
]
