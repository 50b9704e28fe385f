# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Registers mmstvit's modules with whichever OpenMMLab toolboxes exist.

Modules are registered in mmengine's root ``MODELS`` (every toolbox's
registry falls back to its parent) and, explicitly, in the ``MODELS`` of
mmdet, mmseg and mmpretrain when they import, so ``type='STViT'`` and
``type='mmdet.STViT'`` both work. A toolbox that is missing is skipped.
"""
import importlib

TOOLBOXES = ('mmdet', 'mmseg', 'mmpretrain')


def available_toolboxes():
    found = []
    for name in TOOLBOXES:
        try:
            importlib.import_module(f'{name}.registry')
        except ImportError:
            continue
        found.append(name)
    return found


def register_all(modules):
    """Registers each module class into every installed toolbox."""
    for name in available_toolboxes():
        registry = importlib.import_module(f'{name}.registry').MODELS
        for cls in modules:
            registry.register_module(module=cls, force=True)


def register_heads():
    """Registers ``STViTClsHead`` in mmpretrain when mmpretrain imports."""
    from .models.heads import STViTClsHead
    if STViTClsHead is None:
        return
    registry = importlib.import_module('mmpretrain.registry').MODELS
    registry.register_module(module=STViTClsHead, force=True)
