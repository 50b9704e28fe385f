# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
from .backbones import STViT, StokenAttention

__all__ = ['STViT', 'StokenAttention']
