# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The backbones the benchmarks compare, and their FLOPs.

STViT-S/B/L (ours), the authors' STViT-S (their ``models/stvit.py`` from
https://github.com/hhb072/STViT, not shipped here), mmdet's
SwinTransformer (T/S/B) and ResNet-50, mmpretrain's ConvNeXt-T: each a
module returning its stage outputs.
"""
import torch

from . import plans
from .support import mm_log_level

#: super token sizes of the detection settings (1280x800) ...
DET_STOKEN = (16, 8, 2, 1)
#: ... and of the ImageNet ones (224)
CLS_STOKEN = (8, 4, 1, 1)
SWIN = {
    'swin_t': dict(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    'swin_s': dict(embed_dims=96, depths=[2, 2, 18, 2],
                   num_heads=[3, 6, 12, 24]),
    'swin_b': dict(embed_dims=128, depths=[2, 2, 18, 2],
                   num_heads=[4, 8, 16, 32]),
}
ALL_MODELS = ['stvit_s', 'stvit_b', 'stvit_l', 'official_stvit_s', 'swin_t',
              'swin_s', 'swin_b', 'convnext_t', 'resnet50']
#: how the tables name them
LABELS = {'official_stvit_s': "official_stvit_s (authors' code)",
          'swin_t': 'swin_t (mmdet)', 'swin_s': 'swin_s (mmdet)',
          'swin_b': 'swin_b (mmdet)', 'convnext_t': 'convnext_t (mmpretrain)',
          'resnet50': 'resnet50 (mmdet)'}


class OfficialBackbone(torch.nn.Module):
    """The authors' STViT without its classification tail."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        from mmstvit.weights.official_model import official_backbone_features
        return tuple(official_backbone_features(self.model, x))


def build(name, stoken_size, official=None, **stvit_args):
    """The backbone ``name`` of :data:`ALL_MODELS` (``KeyError``
    otherwise); ``stoken_size`` for the STViTs, ``official`` the path of the
    authors' ``models/stvit.py``; ``stvit_args`` go to our STViT."""
    if name.startswith('stvit_'):
        from mmstvit import STViT
        return STViT(arch=name[-1], stoken_size=stoken_size,
                     drop_path_rate=0., **stvit_args)
    if name == 'official_stvit_s':
        from mmstvit.weights.official_model import build_official_model
        return OfficialBackbone(
            build_official_model(official, 'small', stoken_size=stoken_size))
    if name in SWIN:
        from mmdet.models.backbones import SwinTransformer
        return SwinTransformer(
            window_size=7, drop_path_rate=0., out_indices=(0, 1, 2, 3),
            **SWIN[name])
    if name == 'convnext_t':
        from mmpretrain.models.backbones import ConvNeXt
        return ConvNeXt(arch='tiny', out_indices=(0, 1, 2, 3),
                        gap_before_final_norm=False, drop_path_rate=0.)
    if name == 'resnet50':
        from mmdet.models.backbones import ResNet
        return ResNet(depth=50, out_indices=(0, 1, 2, 3))
    raise KeyError(f'benchmark: unknown model {name!r}; choose from '
                   f'{", ".join(ALL_MODELS)}')


def stoken_for(name, stoken):
    """``stoken`` for an STViT, None for the peers."""
    return stoken if 'stvit' in name else None


def build_for(name, stoken, device, training, official=None):
    """:func:`build` on ``device`` in train or eval mode; eval models run
    their deploy plan (``switch_to_deploy``), as tools/infer.py and
    tools/test.py run them."""
    from mmstvit.engine.deploy import switch_to_deploy
    model = build(name, stoken_for(name, stoken), official).to(device)
    model.train(training)  # (not chained: mmdet's Swin.train returns None)
    if not training:
        switch_to_deploy(model)
    return model


def trainable_params(model):
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model, shape, device):
    """FLOPs of one ``(1, 3, *shape)`` input (mmengine's FlopAnalyzer, one
    multiply-add = 1 FLOP); STViT counted with the paper's protocol."""
    from mmengine.analysis import FlopAnalyzer
    x = torch.randn(1, 3, *shape, device=device)
    # "unsupported operator" lists, per model
    with mm_log_level('ERROR'), torch.no_grad(), plans.counting_flops(model):
        analyzer = FlopAnalyzer(model, (x, ))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        return float(analyzer.total())
