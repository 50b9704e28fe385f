# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The authors' key names and mmpretrain's, both ways.

The authors' ``models/stvit.py`` (hhb072/STViT) names the classifier
``patch_embed.*``, ``layers.*`` (the backbone, the same names as
:class:`~mmstvit.STViT`), ``proj.*``, ``norm.*`` and ``head.*`` (the tail);
mmpretrain's ``ImageClassifier`` with ``STViTClsHead`` names them
``backbone.*``, ``head.proj.*``, ``head.norm.*`` and ``head.fc.*``.
"""
import re
from collections import OrderedDict
from typing import Dict

import torch

from .state_dicts import is_official_checkpoint, strip_wrappers

# classification tail of the authors' model, not part of a dense backbone
CLS_TAIL_PREFIXES = ('proj.', 'norm.', 'head.')
BACKBONE_PREFIXES = ('patch_embed.', 'layers.')


def convert_official_state_dict(
        official: Dict[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """Maps the keys of an official STViT ``model`` state dict to mmpretrain's
    ``ImageClassifier`` with :class:`~mmstvit.STViT` and ``STViTClsHead``.

    ``patch_embed.*``/``layers.*`` -> ``backbone.*`` (same names); ``proj.*``,
    ``norm.*`` -> ``head.proj.*``, ``head.norm.*``; ``head.*`` ->
    ``head.fc.*``. A ``module.`` prefix (DDP) is dropped. The tensors are
    the same objects (no copy).

    Raises:
        KeyError: a key of no part of the authors' model (named).
    """
    out = OrderedDict()
    for key, value in official.items():
        key = re.sub(r'^module\.', '', key)
        if key.startswith('head.'):
            out['head.fc.' + key[len('head.'):]] = value
        elif key.startswith(('proj.', 'norm.')):
            out['head.' + key] = value
        elif key.startswith(BACKBONE_PREFIXES):
            out['backbone.' + key] = value
        else:
            raise KeyError(
                f'convert_official_state_dict: unexpected key {key!r}; is '
                'this an official STViT checkpoint (models/stvit.py of '
                'hhb072/STViT)?')
    return out


def mm_to_official_state_dict(
        mm: Dict[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """The inverse of :func:`convert_official_state_dict`: an mm classifier
    (or ``backbone.*``-only) state dict under the authors' names, the names
    of a bare :class:`~mmstvit.STViT` plus its tail. Other keys (a neck, a
    decode head) are left out."""
    out = OrderedDict()
    for key, value in mm.items():
        key = strip_wrappers(key)
        if key.startswith('backbone.'):
            out[key[len('backbone.'):]] = value
        elif key.startswith('head.fc.'):
            out['head.' + key[len('head.fc.'):]] = value
        elif key.startswith(('head.proj.', 'head.norm.')):
            out[key[len('head.'):]] = value
    return out


def state_dict_names(state_dict: Dict[str, torch.Tensor]) -> str:
    """``'official'`` (the authors' names, also a bare STViT's), ``'mm'``
    (``backbone.*`` keys) or ``'other'``."""
    keys = [strip_wrappers(k) for k in state_dict]
    if any(k.startswith('backbone.') for k in keys):
        return 'mm'
    if any(k.startswith(BACKBONE_PREFIXES) for k in keys) and all(
            k.startswith(BACKBONE_PREFIXES + CLS_TAIL_PREFIXES) for k in keys):
        return 'official'
    return 'other'


def convert_official(ckpt, backbone_only: bool = False) -> 'OrderedDict':
    """An mm state dict from an official checkpoint dict (its ``model``) or
    from its state dict itself.

    Keys are mapped by :func:`convert_official_state_dict`.
    ``backbone_only`` keeps only ``backbone.*`` (detectors, segmentors).
    """
    sd = ckpt['model'] if is_official_checkpoint(ckpt) else ckpt
    out = convert_official_state_dict(sd)
    if backbone_only:
        out = OrderedDict(
            (k, v) for k, v in out.items() if k.startswith('backbone.'))
    return out
