# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The classification tail of the authors' STViT, as an mmpretrain head."""
from typing import Tuple

import torch
import torch.nn as nn
from mmpretrain.models.heads import ClsHead


class STViTClsHead(ClsHead):
    """1x1 projection, BatchNorm, Swish, global average pooling, linear.

    The parameter names are the official model's (``proj``, ``norm``) with
    the final linear layer named ``fc`` (their ``head``), so an official
    ImageNet checkpoint converted by
    :func:`mmstvit.utils.convert_official_state_dict` evaluates as it is.

    Args:
        num_classes (int): Number of classes.
        in_channels (int): Channels of the last backbone stage.
        projection (int): Width of the 1x1 projection. Defaults to 1024.
        dropout (float): Dropout before ``fc``; the authors use none.
        init_cfg (dict, optional): Defaults to a truncated normal ``fc``.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 projection: int = 1024,
                 dropout: float = 0.,
                 init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02),
                 **kwargs):
        super().__init__(init_cfg=init_cfg, **kwargs)
        if num_classes <= 0:
            raise ValueError(
                f'STViTClsHead: num_classes={num_classes} must be positive')
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.proj = nn.Conv2d(in_channels, projection, 1)
        self.norm = nn.BatchNorm2d(projection)
        self.act = nn.SiLU()  # Swish, as the authors' MemoryEfficientSwish
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(projection, num_classes)

    def pre_logits(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """The pooled 1024-d feature of the last stage's map."""
        x = feats[-1]
        if x.dim() != 4:
            raise ValueError(
                'STViTClsHead needs the NCHW map of the last STViT stage '
                f'(no neck), got a tensor of shape {tuple(x.shape)}; remove '
                'the GlobalAveragePooling neck from the config')
        x = self.act(self.norm(self.proj(x)))
        return self.pool(x).flatten(1)

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        return self.fc(self.dropout(self.pre_logits(feats)))
