# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The authors' ImageNet checkpoints as mm state dicts."""
import re
from collections import OrderedDict
from typing import Dict

import torch


def convert_official_state_dict(
        official: Dict[str, torch.Tensor]) -> 'OrderedDict[str, torch.Tensor]':
    """Maps the keys of an official STViT ``model`` state dict to mmpretrain's
    ``ImageClassifier`` with :class:`~mmstvit.STViT` and ``STViTClsHead``.

    ``patch_embed.*``/``layers.*`` -> ``backbone.*`` (same names); ``proj.*``,
    ``norm.*`` -> ``head.proj.*``, ``head.norm.*``; ``head.*`` ->
    ``head.fc.*``. A ``module.`` prefix (DDP) is dropped.
    """
    out = OrderedDict()
    for key, value in official.items():
        key = re.sub(r'^module\.', '', key)
        if key.startswith('head.'):
            out['head.fc.' + key[len('head.'):]] = value
        elif key.startswith(('proj.', 'norm.')):
            out['head.' + key] = value
        elif key.startswith(('patch_embed.', 'layers.')):
            out['backbone.' + key] = value
        else:
            raise KeyError(
                f'convert_official_state_dict: unexpected key {key!r}; is '
                'this an official STViT checkpoint (models/stvit.py of '
                'hhb072/STViT)?')
    return out
