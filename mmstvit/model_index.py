# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""mmstvit's model names, as every OpenMMLab model has them.

``model-index.yml`` imports one ``metafile.yml`` per model
family: ``configs/stvit`` (ImageNet classifiers), ``configs/mask_rcnn``
(COCO) and ``configs/upernet`` (ADE20K), ... in the OpenMMLab format (the
paper's results, the authors' weights as ``Converted From``, the config
paths).

When mmpretrain is imported, the classifiers' metafile is registered with
its ``ModelHub`` (through :func:`mmstvit.registry.when_imported`), so::

    from mmpretrain import get_model, list_models
    list_models('*stvit*')   # ['stvit-small_8xb128_in1k', ...]
    model = get_model('stvit-small_8xb128_in1k')

The detection and segmentation names stay out of mmpretrain's hub (it
builds classifiers only); mmdet's and mmseg's inferencers take this repo's
config paths instead (see README, "Inference").

The index, the metafiles and the configs are where :mod:`mmstvit.mim` finds
them: ``mmstvit/.mim`` of an installed package (a wheel or ``make install``),
else the checkout around the package; their config paths (``configs/...``)
are relative to that folder. A copy of the package without them registers
nothing.
"""
import os.path as osp
import warnings
from typing import List

from .mim import files_root

#: the folder of ``model-index.yml`` and ``configs/`` (None: neither found)
ROOT = files_root()
MODEL_INDEX = osp.join(ROOT, 'model-index.yml') if ROOT else None
#: The family mmpretrain can build (classifiers).
CLASSIFIER_METAFILE = osp.join(ROOT, 'configs', 'stvit',
                               'metafile.yml') if ROOT else None


def load_models(path: str = MODEL_INDEX) -> list:
    """The models (``modelindex`` ``Model`` objects, collection fields
    merged in) of a model index or metafile."""
    from modelindex.load_model_index import load
    index = load(path)
    index.build_models_with_collections()
    return list(index.models)


def model_names(path: str = MODEL_INDEX) -> List[str]:
    return [m.name for m in load_models(path)]


def _register_model_index(mmpretrain) -> None:
    """Adds the classifiers to mmpretrain's ``ModelHub`` (once)."""
    if not CLASSIFIER_METAFILE or not osp.isfile(CLASSIFIER_METAFILE):
        return
    try:
        from mmpretrain.apis import ModelHub
        names = model_names(CLASSIFIER_METAFILE)
        if all(ModelHub.has(name.lower()) for name in names):
            return
        # config paths in the metafile are relative to ROOT
        ModelHub.register_model_index(CLASSIFIER_METAFILE, config_prefix=ROOT)
    except Exception as e:  # noqa: BLE001 - mmpretrain itself must work on
        warnings.warn(
            f'mmstvit: could not add its model names to mmpretrain '
            f'(list_models/get_model will not find them): '
            f'{type(e).__name__}: {e}', RuntimeWarning)
