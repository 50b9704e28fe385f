# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The authors' reference model: their ``models/stvit.py``, from a path the
user gives.

Used only by the equivalence check and the benchmark, to compare our
implementation with the authors' one on the same machine. Their file is
never shipped with mmstvit: clone github.com/hhb072/STViT yourself and pass
``--official-src STViT/models/stvit.py`` to
tools/analysis_tools/check_official.py. Their file imports timm, fvcore
and scipy for things the model does not need at run time (a registry
decorator, FLOP printing); those imports are satisfied with small stand-ins
so that no extra package has to be installed.
"""
import importlib.util
import sys
import types
from contextlib import contextmanager

import torch.nn as nn

OFFICIAL_ARCHS = {
    'small': 'stvit_small',
    'base': 'stvit_base',
    'large': 'stvit_large',
}


def _stand_ins():
    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    def trunc_normal_(t, mean=0., std=1., a=-2., b=2.):
        return nn.init.trunc_normal_(t, mean, std, a, b)

    mods = {}
    for name in ('timm', 'timm.models', 'timm.models.layers',
                 'timm.models.registry', 'timm.models.vision_transformer',
                 'fvcore', 'fvcore.nn', 'scipy', 'scipy.io'):
        mods[name] = types.ModuleType(name)
    layers = mods['timm.models.layers']
    # the same stochastic depth as timm's DropPath
    from mmstvit.models.backbones.modules import DropPath
    layers.DropPath, layers.to_2tuple = DropPath, to_2tuple
    layers.trunc_normal_ = trunc_normal_
    mods['timm.models.registry'].register_model = lambda f: f
    mods['timm.models.vision_transformer']._cfg = lambda **kw: dict(kw)
    mods['fvcore.nn'].FlopCountAnalysis = None
    mods['fvcore.nn'].flop_count_table = None
    mods['timm'].models = mods['timm.models']
    mods['timm.models'].layers = layers
    mods['scipy'].io = mods['scipy.io']
    return mods


@contextmanager
def _patched_modules(mods):
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def load_official_module(path: str):
    """Imports the authors' stvit.py from ``path`` as a module."""
    spec = importlib.util.spec_from_file_location('_official_stvit', path)
    if spec is None:
        raise FileNotFoundError(f'cannot import {path!r}')
    mod = importlib.util.module_from_spec(spec)
    with _patched_modules(_stand_ins()):
        spec.loader.exec_module(mod)
    return mod


def build_official_model(path: str, arch: str = 'small', stoken_size=None,
                         drop_path: float = 0.):
    """The authors' classifier for ``arch``; ``stoken_size`` overrides their
    ImageNet default (8, 4, 1, 1), e.g. (16, 8, 2, 1) for dense tasks."""
    mod = load_official_module(path)
    args = types.SimpleNamespace(drop=0., drop_path=drop_path)
    model = getattr(mod, OFFICIAL_ARCHS[arch])(args)
    if stoken_size is not None:
        for layer, s in zip(model.layers, stoken_size):
            for blk in layer.blocks:
                blk.attn.stoken_size = (s, s) if isinstance(s, int) else \
                    tuple(s)
    return model


def official_backbone_features(model, x):
    """Stage outputs of the authors' model, taken before each downsample."""
    x = model.pos_drop(model.patch_embed(x))
    outs = []
    for layer in model.layers:
        for blk in layer.blocks:
            x = blk(x)
        outs.append(x)
        if layer.downsample is not None:
            x = layer.downsample(x)
    return outs
