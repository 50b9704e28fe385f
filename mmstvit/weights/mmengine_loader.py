# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""mmengine reads weights through mmstvit's reader.

:func:`install_mmengine_loaders` replaces mmengine's ``CheckpointLoader``
schemes for local files and ``http(s)://`` URLs (``load_from``, ``resume``,
``Pretrained`` inits of necks and heads, ``runner.load_checkpoint``, the
toolboxes' inferencers) with :func:`~mmstvit.weights.load_checkpoint_file`,
so that ``.safetensors`` files load through safetensors and ``.pth`` files
through the allow-list; ``import mmstvit`` arranges it for when
``mmengine.runner.checkpoint`` is imported. It also adds
``stvit-official[-backbone]://PATH``: the authors' file, converted to an mm
checkpoint while it loads. On the onedl stack the fork's remaining loaders
read through mmstvit's reader too (:func:`mmstvit.compat.route_checkpoint_reader`).
"""
from mmengine.logging import print_log

from .convert import convert_official
from .reading import load_checkpoint_file
from .state_dicts import is_official_checkpoint

OFFICIAL_SCHEME = 'stvit-official://'
OFFICIAL_BACKBONE_SCHEME = 'stvit-official-backbone://'


def load_from_local(filename, map_location=None):
    """mmengine's loader of local files (scheme ``''``; named as mmengine's
    own, whose message prints the name after ``load_from_``)."""
    return load_checkpoint_file(filename, map_location)


def load_from_http(filename, map_location=None, model_dir=None, progress=None):
    """mmengine's loader of ``http(s)://`` URLs (and of the
    ``torchvision://``, ``open-mmlab://``, ``mmcls://`` names, which resolve
    to URLs): downloaded into torch's hub cache, then read locally."""
    return load_checkpoint_file(filename, map_location)


def load_from_stvit_official(filename: str, map_location=None) -> dict:
    """mmengine checkpoint loader for ``stvit-official[-backbone]://PATH``:
    reads the authors' file (``.pth`` or ``.safetensors`` with their names)
    and returns it as an mm checkpoint (``state_dict``, ``meta``).

    Raises:
        ValueError: the file is not in the authors' format.
    """
    backbone_only = filename.startswith(OFFICIAL_BACKBONE_SCHEME)
    path = filename[
        len(OFFICIAL_BACKBONE_SCHEME if backbone_only else OFFICIAL_SCHEME):]
    ckpt = load_checkpoint_file(path, map_location=map_location or 'cpu')
    if not is_official_checkpoint(ckpt):
        raise ValueError(f'{path} is not in the STViT authors\' format (a '
                         'dict with "model" and no "state_dict")')
    sd = convert_official(ckpt, backbone_only=backbone_only)
    print_log(
        f'mmstvit: {path} is an official STViT checkpoint; converted '
        f"{len(ckpt['model'])} tensors of its 'model' entry to "
        f'{len(sd)} mm keys' +
        (' (backbone only: the ImageNet classification tail is dropped)'
         if backbone_only else ''),
        logger='current')
    meta = dict(converted_from=path, epoch=ckpt.get('epoch', None))
    return dict(state_dict=sd, meta=meta)


def register_official_scheme() -> None:
    """Registers ``stvit-official[-backbone]://`` with mmengine."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes=[OFFICIAL_SCHEME, OFFICIAL_BACKBONE_SCHEME],
        loader=load_from_stvit_official,
        force=True)


def official_load_from(path: str, task: str) -> str:
    """The ``load_from`` that makes the Runner load the authors' file at
    ``path`` converted (``stvit-official://``; the backbone only,
    ``stvit-official-backbone://``, for ``task`` ``'mmdet'`` and
    ``'mmseg'``), with the schemes registered."""
    register_official_scheme()
    scheme = OFFICIAL_SCHEME if task == 'mmpretrain' else \
        OFFICIAL_BACKBONE_SCHEME
    return scheme + path


def install_mmengine_loaders(module=None) -> None:
    """Makes mmengine read local files and ``http(s)://`` URLs with
    :func:`~mmstvit.weights.load_checkpoint_file`. ``module`` (ignored) is
    what the import hook passes."""
    import mmengine.runner.checkpoint as ckpt_mod
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), loader=load_from_http, force=True)
    # load_from_torchvision/openmmlab/mmcls call this module-level name
    ckpt_mod.load_from_http = load_from_http
    register_official_scheme()
    # the fork's other loaders (open-mmlab:// files, pavi://, s3://) read
    # through its _safe_torch_load, which retries unsafely: mmstvit's reader
    from mmstvit.compat import route_checkpoint_reader
    route_checkpoint_reader(ckpt_mod)
