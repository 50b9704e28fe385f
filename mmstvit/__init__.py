# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""mmstvit: the Super Token Vision Transformer for OpenMMLab toolboxes.

``custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)``
in a config makes ``type='STViT'`` available to mmdet, mmseg and mmpretrain.
"""
from .version import __version__
from .utils import compat  # noqa: F401  (mmengine checkpoints on torch>=2.6)
from .models import STViT, StokenAttention
from .registry import register_all, register_heads

register_all([STViT])
register_heads()

__all__ = ['__version__', 'STViT', 'StokenAttention']
