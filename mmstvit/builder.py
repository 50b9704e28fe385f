# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""From a config to a model: the one place that knows which registry builds
what.

* :func:`detect_task` -- the toolbox of a config (``'mmdet'``, ``'mmseg'``,
  ``'mmpretrain'``, else ``'mmengine'``);
* :func:`load_config` -- a path, a ``Config`` or a dict, as a ``Config``;
* :func:`build_model` -- the whole model of a config, built by its toolbox's
  registry under its default scope;
* :func:`build_backbone` -- only the ``STViT`` backbone of a config.

Errors are :class:`ConfigError` (a ``ValueError``) with a message that names
the config and what is wrong; the tools print it.
"""
import copy
import os.path as osp
from typing import Optional

TASKS = ('mmdet', 'mmseg', 'mmpretrain')


class ConfigError(ValueError):
    """A config cannot be read or does not build the model asked for."""


def detect_task(cfg) -> str:
    """The toolbox of a config: its ``default_scope``, else the scope of
    ``model.type`` (``'mmdet.MaskRCNN'``), else ``'mmengine'``."""
    scope = cfg.get('default_scope', None)
    if scope in TASKS:
        return scope
    model = cfg.get('model', None)
    mtype = model.get('type', None) if isinstance(model, dict) else None
    if isinstance(mtype, str) and '.' in mtype:
        prefix = mtype.split('.', 1)[0]
        if prefix in TASKS:
            return prefix
    return 'mmengine'


def config_name(cfg) -> str:
    """A name for messages: the config's file, else a placeholder."""
    return getattr(cfg, 'filename', None) or '<config>'


def load_config(config):
    """``config`` (a path, an mmengine ``Config`` or a dict) as a
    ``Config``."""
    from mmengine.config import Config
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return Config(config)
    path = str(config)
    if not osp.isfile(path):
        raise ConfigError(f'cannot read config {path}: no such file')
    try:
        return Config.fromfile(path)
    except Exception as e:  # mmengine raises many kinds
        msg = ' '.join(str(e).split())[:300]
        raise ConfigError(
            f'cannot read config {path}: {type(e).__name__}: {msg}') from e


def model_registry(task: str):
    """The ``MODELS`` registry that builds a config of ``task``."""
    if task == 'mmdet':
        from mmdet.registry import MODELS
    elif task == 'mmseg':
        from mmseg.registry import MODELS
    elif task == 'mmpretrain':
        from mmpretrain.registry import MODELS
    else:
        from mmengine.registry import MODELS
    return MODELS


def build_model(config, *, keep_init_cfg: bool = False,
                drop_path_rate: Optional[float] = None,
                sync_bn_as_bn: bool = False):
    """The whole model of ``config``, built by its toolbox's registry under
    the config's default scope (not yet initialised, in training mode).

    Args:
        config: a path, a ``Config`` or a dict.
        keep_init_cfg (bool): Keep the backbone's ``init_cfg`` (a
            ``Pretrained`` file is then loaded by ``init_weights()``).
            Defaults to False: the backbone is built without weights.
        drop_path_rate (float, optional): Overrides the backbone's.
        sync_bn_as_bn (bool): Build the heads' SyncBN as BN, which runs
            outside a process group (same parameters and FLOPs).
    """
    from mmengine.registry import init_default_scope

    import mmstvit  # noqa: F401  (STViT and the hooks that register it)
    cfg = load_config(config)
    if not isinstance(cfg.get('model', None), dict):
        raise ConfigError(f'config {config_name(cfg)} has no model dict')
    task = detect_task(cfg)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model_cfg = copy.deepcopy(cfg.model)
    # as mmengine's Runner does: a top-level data_preprocessor is the model's
    if 'data_preprocessor' not in model_cfg and 'data_preprocessor' in cfg:
        model_cfg.data_preprocessor = copy.deepcopy(cfg.data_preprocessor)
    backbone = model_cfg.get('backbone', None)
    if isinstance(backbone, dict):
        if not keep_init_cfg:
            backbone.init_cfg = None
        if drop_path_rate is not None:
            backbone.drop_path_rate = drop_path_rate
    if sync_bn_as_bn:
        model_cfg = _without_sync_bn(model_cfg)
    return model_registry(task).build(model_cfg)


def _without_sync_bn(cfg):
    """``cfg`` with every ``norm_cfg=dict(type='SyncBN')`` made plain BN
    (mmseg's decode heads, the cascade's 4conv1fc box heads ...)."""
    if isinstance(cfg, dict):
        out = type(cfg)()
        for k, v in cfg.items():
            if k == 'norm_cfg' and isinstance(v, dict) and \
                    v.get('type') == 'SyncBN':
                v = dict(v, type='BN')
            out[k] = _without_sync_bn(v)
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_without_sync_bn(v) for v in cfg)
    return cfg


def build_backbone(config, drop_path_rate: float = 0.):
    """The ``STViT`` backbone of ``config``'s model, without its
    ``init_cfg`` (no weights loaded), in training mode."""
    from mmstvit.models.backbones.stvit import STViT
    cfg = load_config(config)
    name = config_name(cfg)
    model_cfg = cfg.get('model', None)
    backbone_cfg = model_cfg.get('backbone', None) if isinstance(
        model_cfg, dict) else None
    btype = backbone_cfg.get('type', None) if isinstance(
        backbone_cfg, dict) else None
    tname = btype if isinstance(btype, str) else getattr(
        btype, '__name__', repr(btype))
    if not (isinstance(tname, str) and tname.split('.')[-1] == 'STViT'):
        raise ConfigError(
            f"config {name} has backbone type {tname}; these tools need "
            f"type='STViT'")
    kwargs = {k: v for k, v in backbone_cfg.to_dict().items()
              if k not in ('type', 'init_cfg', 'pretrained')}
    kwargs['drop_path_rate'] = drop_path_rate
    try:
        return STViT(**kwargs, init_cfg=None)
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(
            f'cannot build the STViT backbone of {name}: {e}') from e
