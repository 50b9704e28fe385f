# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Heads that need mmpretrain; empty when it is not installed."""
try:
    from .stvit_head import STViTClsHead
except ImportError:  # mmpretrain (or torchvision, which it imports) missing
    STViTClsHead = None

__all__ = ['STViTClsHead']
