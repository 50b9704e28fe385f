# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The classification tail of the authors' STViT, as an mmpretrain head."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmpretrain.models.heads import ClsHead


class STViTClsHead(ClsHead):
    """1x1 projection, BatchNorm, Swish, global average pooling, linear.

    ``projection=None`` drops the projection (the rows before "+
    Projection" in the paper's ablation): BatchNorm over the last stage's
    channels, Swish, pooling and a linear layer from those channels, the
    path the authors' code takes without ``projection`` (its ``head`` is
    ``Linear(projection or num_features, ...)``).

    The parameter names are the official model's (``proj``, ``norm``) with
    the final linear layer named ``fc`` (their ``head``), so an official
    ImageNet checkpoint converted by
    :func:`mmstvit.weights.convert_official_state_dict` evaluates as it is.

    Args:
        num_classes (int): Number of classes.
        in_channels (int): Channels of the last backbone stage.
        projection (int, optional): Width of the 1x1 projection, or None for
            none. Defaults to 1024.
        dropout (float): Dropout before ``fc``; the authors use none.
        init_cfg (dict, optional): Defaults to a truncated normal ``fc``.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 projection: Optional[int] = 1024,
                 dropout: float = 0.,
                 init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02),
                 **kwargs):
        super().__init__(init_cfg=init_cfg, **kwargs)
        if num_classes <= 0:
            raise ValueError(
                f'STViTClsHead: num_classes={num_classes} must be positive')
        self.num_classes = num_classes
        self.in_channels = in_channels
        width = projection or in_channels
        self.proj = nn.Conv2d(in_channels, projection, 1) if projection \
            else nn.Identity()
        self.norm = nn.BatchNorm2d(width)
        self.act = nn.SiLU()  # Swish, as the authors' MemoryEfficientSwish
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(width, num_classes)

    def pre_logits(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """The pooled feature (1024-d with the projection) of the last
        stage's map."""
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
