# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Heads that need a toolbox: ``STViTClsHead`` (mmpretrain).

Imported on first use, so that ``import mmstvit`` does not import
mmpretrain (and torchvision); a missing or broken mmpretrain raises an
``ImportError`` that names it when the head is asked for.
"""
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for linters and editors; at run time __getattr__ imports it
    from .stvit_head import STViTClsHead

__all__ = ['STViTClsHead']


def __getattr__(name):
    if name != 'STViTClsHead':
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    try:
        module = importlib.import_module(f'{__name__}.stvit_head')
    except Exception as e:  # ImportError, or RuntimeError of a torchvision
        raise ImportError(
            'mmstvit: STViTClsHead needs mmpretrain, which cannot be '
            f'imported ({type(e).__name__}: {e}). Install mmpretrain 1.2.0 '
            'and the torchvision built for your torch (make install).'
        ) from e
    globals()[name] = module.STViTClsHead
    return module.STViTClsHead
