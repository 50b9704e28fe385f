# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""mmstvit: the Super Token Vision Transformer for OpenMMLab toolboxes.

``custom_imports = dict(imports=['mmstvit'], allow_failed_imports=False)``
in a config makes ``type='STViT'`` available to mmdet, mmseg and mmpretrain.

Importing mmstvit imports torch and mmengine only: ``STViT`` goes into
mmengine's root registry (which every toolbox's registry falls back to) and
each toolbox gets mmstvit's modules registered when it is itself imported
(see :mod:`mmstvit.registry`), and mmengine's checkpoint loaders are
replaced by mmstvit's weights-only reader when mmengine imports them (see
:mod:`mmstvit.weights`). ``LayerDecayOptimWrapperConstructor``
(layer-wise learning-rate decay) is in mmengine's root
``OPTIM_WRAPPER_CONSTRUCTORS`` the same way, ``DeviceAmpOptimWrapper``
(``--amp``: mmengine's AmpOptimWrapper on a GPU, bfloat16 autocast on a
CPU) in its root ``OPTIM_WRAPPERS``, and ``ResumableCheckpointHook``
(checkpoints a crash cannot tear, resumes that continue bit for bit) in its
root ``HOOKS``: ``default_hooks = dict(checkpoint=dict(
type='ResumableCheckpointHook'))``.

It also teaches mmengine the ``mmstvit::`` config scope
(``_base_ = 'mmstvit::mask_rcnn/mask_rcnn_stvit_s_1x.py'``; see
``_mmstvit_scope``, which an installed mmstvit already runs at start-up) and
finds its configs, tools and model index (see :mod:`mmstvit.mim`).
"""
from .version import __version__
from .engine import (DeviceAmpOptimWrapper, LayerDecayOptimWrapperConstructor,
                     ResumableCheckpointHook)
from .models import STViT, StokenAttention
from .model_index import _register_model_index
from .registry import install_hooks, when_imported
from . import compat as _compat

install_hooks()
_compat.install()  # what the onedl stack needs (nothing on upstream)
when_imported('mmpretrain', _register_model_index)

try:  # beside the package: in site-packages, or the checkout's root
    import _mmstvit_scope
except ImportError:  # a copy of the package alone: no mmstvit:: scope
    pass
else:
    _mmstvit_scope.install()


def _safe_mmengine_loaders(_module):
    # every weights file mmengine reads (load_from, resume, Pretrained inits,
    # inferencers) goes through mmstvit's weights-only reader
    from .weights import install_mmengine_loaders
    install_mmengine_loaders()


when_imported('mmengine.runner.checkpoint', _safe_mmengine_loaders)

__all__ = [
    '__version__', 'STViT', 'StokenAttention',
    'LayerDecayOptimWrapperConstructor', 'DeviceAmpOptimWrapper',
    'ResumableCheckpointHook'
]
