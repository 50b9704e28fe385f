# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Layer-wise (or stage-wise) learning-rate decay for mmdet, mmseg and
mmpretrain configs.

Registered in mmengine's root ``OPTIM_WRAPPER_CONSTRUCTORS``, which the
registries of the three toolboxes fall back to, so one name works in all of
them::

    optim_wrapper = dict(
        type='OptimWrapper',
        constructor='LayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise'))
"""
import re
from collections import OrderedDict
from typing import Callable, List, Optional, Sequence, Tuple

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch.nn import GroupNorm, LayerNorm
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

NORM_LAYERS = (_BatchNorm, _InstanceNorm, GroupNorm, LayerNorm)
# gamma_1 / gamma_2 (STViT, CaiT-style blocks), gamma (ConvNeXt)
LAYER_SCALE_NAME = re.compile(r'gamma(_\d+)?')


def _is_layer_scale(module: nn.Module, name: str) -> bool:
    return bool(LAYER_SCALE_NAME.fullmatch(name)) or \
        type(module).__name__ == 'LayerScale'


def stvit_layer_depth(depths: Sequence[int], param_name: str,
                      prefix: str = '',
                      decay_type: str = 'layer_wise') -> Tuple[int, int]:
    """The depth of an STViT parameter, for layer-wise learning-rate decay
    (what ``STViT.get_layer_depth`` returns).

    The semantics of mmpretrain's ``get_layer_depth`` (as its Swin
    Transformer's): returns ``(depth, num_layers)`` with the stem at depth
    0, block ``j`` of stage ``i`` at ``sum(depths[:i]) + j + 1``, the
    downsample that ends stage ``i`` at the depth of that stage's last
    block, and anything else (a parameter not under ``prefix``: neck,
    heads) at ``num_layers - 1``, where ``num_layers = sum(depths) + 2``.

    With ``decay_type='stage_wise'`` the unit is a stage instead of a
    block: the stem is 0, stage ``i`` (blocks and downsample) is ``i + 1``,
    the rest ``num_stages + 1``, out of ``num_stages + 2``.

    Args:
        depths (Sequence[int]): Blocks per stage
            (``STViT.arch_settings['depths']``).
        param_name (str): The parameter's name in the model.
        prefix (str): What the backbone's parameters start with in the
            model (``'backbone.'`` in a detector). Defaults to ''.
        decay_type (str): ``'layer_wise'`` or ``'stage_wise'``.
    """
    if decay_type == 'layer_wise':
        num_layers = sum(depths) + 2
    elif decay_type == 'stage_wise':
        num_layers = len(depths) + 2
    else:
        raise ValueError(f"STViT: decay_type must be 'layer_wise' or "
                         f"'stage_wise', got {decay_type!r}")
    if not param_name.startswith(prefix):
        return num_layers - 1, num_layers
    parts = param_name[len(prefix):].split('.')
    if parts[0] in ('patch_embed', 'ape'):  # the stem, its position table
        return 0, num_layers
    if parts[0] == 'layers' and len(parts) > 2:
        stage = int(parts[1])
        if decay_type == 'stage_wise':
            return stage + 1, num_layers
        if parts[2] == 'blocks':
            return sum(depths[:stage]) + int(parts[3]) + 1, num_layers
        if parts[2] == 'downsample':
            return sum(depths[:stage + 1]), num_layers
    return num_layers - 1, num_layers


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Scales each parameter's learning rate by its depth in the backbone.

    A parameter at depth ``d`` of ``num_layers`` (as the backbone's
    ``get_layer_depth(name, prefix)`` tells it, mmpretrain's convention) gets
    ``lr * decay_rate ** (num_layers - 1 - d)``: the last depth (the neck
    and heads of a detector or segmentor, the head of a classifier) keeps the
    base learning rate, the stem gets the smallest.

    ``paramwise_cfg`` keys:

    - ``decay_rate`` (float, required): in (0, 1].
    - ``decay_type`` (str): ``'layer_wise'`` (one depth per block, the
      default) or ``'stage_wise'`` (one depth per stage; needs a
      ``get_layer_depth`` that takes ``decay_type``, as STViT's does).
    - ``norm_decay_mult``, ``bias_decay_mult``, ``layer_scale_decay_mult``
      (float): weight-decay multipliers of the parameters of norm layers,
      of biases and of layer-scale gammas (``gamma``, ``gamma_<n>`` or an
      mmpretrain ``LayerScale``). All default to 0: no weight decay.
    - ``custom_keys`` (dict): ``{substring: dict(lr_mult=..,
      decay_mult=..)}`` as mmengine's; ``lr_mult`` multiplies the decayed
      learning rate, ``decay_mult`` replaces the rules above. The longest
      matching key wins.

    The depth comes from ``model.backbone.get_layer_depth(name,
    'backbone.')`` (a detector, segmentor or classifier), or from
    ``model.get_layer_depth(name, '')`` for a model that has it itself.
    Parameters with the same depth, learning rate and weight decay share a
    parameter group, which also records ``layer_id`` and ``lr_scale``.
    """

    DECAY_TYPES = ('layer_wise', 'stage_wise')
    KEYS = ('decay_rate', 'decay_type', 'norm_decay_mult', 'bias_decay_mult',
            'layer_scale_decay_mult', 'custom_keys')
    # names other implementations use, and what to write here instead
    HINTS = {
        'layer_decay_rate': "mmpretrain's name for decay_rate",
        'num_layers': 'not needed: the backbone tells the number of layers',
        'flat_decay_mult': 'use norm_decay_mult / bias_decay_mult / '
        'layer_scale_decay_mult',
    }

    def __init__(self, optim_wrapper_cfg: dict,
                 paramwise_cfg: Optional[dict] = None):
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        self.check_paramwise_cfg()

    def check_paramwise_cfg(self) -> None:
        """``KeyError``/``ValueError`` naming what is wrong in
        ``paramwise_cfg`` (after mmengine's own checks in ``__init__``)."""
        cfg = self.paramwise_cfg
        name = type(self).__name__
        unknown = sorted(set(cfg) - set(self.KEYS))
        if unknown:
            hints = ''.join(f'; {k}: {self.HINTS[k]}' for k in unknown
                            if k in self.HINTS)
            raise KeyError(f'{name}: unknown paramwise_cfg key(s) {unknown}; '
                           f'the keys are {list(self.KEYS)}{hints}')
        if 'decay_rate' not in cfg:
            raise KeyError(f'{name}: paramwise_cfg needs decay_rate (the '
                           'learning-rate factor from one depth to the one '
                           'before it), e.g. dict(decay_rate=0.9)')
        rate = cfg['decay_rate']
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) \
                or not 0 < rate <= 1:
            raise ValueError(f'{name}: decay_rate must be a number in (0, 1],'
                             f' got {rate!r}')
        decay_type = cfg.get('decay_type', 'layer_wise')
        if decay_type not in self.DECAY_TYPES:
            raise ValueError(f'{name}: unknown decay_type {decay_type!r}; '
                             f'one of {self.DECAY_TYPES}')
        for key in ('norm_decay_mult', 'bias_decay_mult',
                    'layer_scale_decay_mult'):
            value = cfg.get(key, 0.)
            if isinstance(value, bool) or not isinstance(
                    value, (int, float)) or value < 0:
                raise ValueError(f'{name}: {key} must be a number >= 0, '
                                 f'got {value!r}')
        for key, opts in cfg.get('custom_keys', {}).items():
            extra = sorted(set(opts) - {'lr_mult', 'decay_mult'})
            if extra:
                raise KeyError(f'{name}: custom_keys[{key!r}] takes lr_mult '
                               f'and decay_mult, not {extra}')
        if self.base_lr is None:
            raise ValueError(f'{name}: the optimizer needs an lr')

    # ------------------------------------------------------------------
    def _depth_function(self, model: nn.Module
                        ) -> Callable[[str], Tuple[int, int]]:
        decay_type = self.paramwise_cfg.get('decay_type', 'layer_wise')
        backbone = getattr(model, 'backbone', None)
        if backbone is not None and hasattr(backbone, 'get_layer_depth'):
            fn, prefix, owner = backbone.get_layer_depth, 'backbone.', backbone
        elif hasattr(model, 'get_layer_depth'):
            fn, prefix, owner = model.get_layer_depth, '', model
        else:
            what = type(backbone if backbone is not None else model).__name__
            raise TypeError(
                f'{type(self).__name__}: layer-wise learning-rate decay needs '
                f'a backbone with a get_layer_depth(param_name, prefix) '
                f'method; {what} has none')
        if decay_type == 'layer_wise':
            return lambda n: fn(n, prefix)
        import inspect
        if 'decay_type' not in inspect.signature(fn).parameters:
            raise TypeError(
                f"{type(self).__name__}: decay_type='stage_wise' needs a "
                'get_layer_depth that takes decay_type (STViT has it); '
                f"{type(owner).__name__} gives layer depths only: use "
                "decay_type='layer_wise'")
        return lambda n: fn(n, prefix, decay_type=decay_type)

    def _decay_mult(self, module: nn.Module, name: str) -> float:
        cfg = self.paramwise_cfg
        if isinstance(module, NORM_LAYERS):
            return cfg.get('norm_decay_mult', 0.)
        if name == 'bias':
            return cfg.get('bias_decay_mult', 0.)
        if _is_layer_scale(module, name):
            return cfg.get('layer_scale_decay_mult', 0.)
        return 1.

    def add_params(self, params: List[dict], module: nn.Module,
                   prefix: str = '', **kwargs) -> None:
        """Adds every trainable parameter of ``module`` (the whole model) to
        ``params``, grouped by depth, learning rate and weight decay."""
        depth_of = self._depth_function(module)
        rate = self.paramwise_cfg['decay_rate']
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)
        groups: 'OrderedDict[tuple, dict]' = OrderedDict()
        names = {}
        seen = set()
        for mod_name, mod in module.named_modules():
            for name, param in mod.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue  # frozen, or shared with a module seen before
                seen.add(id(param))
                full = f'{prefix}{mod_name}.{name}' if mod_name else \
                    f'{prefix}{name}'
                layer_id, num_layers = depth_of(full)
                if not 0 <= layer_id < num_layers:
                    raise ValueError(
                        f'{type(self).__name__}: get_layer_depth gave depth '
                        f'{layer_id} of {num_layers} for {full}')
                scale = rate**(num_layers - 1 - layer_id)
                lr_mult, decay_mult = 1., None
                key = next((k for k in sorted_keys if k in full), None)
                if key is not None:
                    lr_mult = custom_keys[key].get('lr_mult', 1.)
                    decay_mult = custom_keys[key].get('decay_mult', None)
                if decay_mult is None:
                    decay_mult = self._decay_mult(mod, name)
                group = dict(lr=self.base_lr * scale * lr_mult,
                             layer_id=layer_id, lr_scale=scale)
                if self.base_wd is not None:
                    group['weight_decay'] = self.base_wd * decay_mult
                gkey = (layer_id, group['lr'], group.get('weight_decay'))
                if gkey not in groups:
                    groups[gkey] = dict(params=[], **group)
                    names[gkey] = []
                groups[gkey]['params'].append(param)
                names[gkey].append(full)
        params.extend(groups.values())
        lines = [f'{type(self).__name__}: '
                 f"{self.paramwise_cfg.get('decay_type', 'layer_wise')} "
                 f'decay {rate}, {len(groups)} parameter groups']
        for gkey, group in groups.items():
            wd = group.get('weight_decay')
            lines.append(
                f"  depth {group['layer_id']}: lr {group['lr']:.4g} "
                f"(x{group['lr_scale']:.4g}), weight decay "
                f"{'default' if wd is None else format(wd, '.4g')}, "
                f"{len(group['params'])} tensors: "
                f"{', '.join(names[gkey])}")
        print_log('\n'.join(lines), logger='current')
