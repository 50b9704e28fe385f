# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The tools' use of weights files, through the weights API
(:mod:`mmstvit.weights`): ``--unsafe-load``, the authors' files
given as ``load_from`` (strict backbone check, then loaded converted through
a ``stvit-official://`` scheme), and checkpoints of ``tools/test.py`` that
leave part of the model random."""
import os.path as osp
import pickle
from typing import List

from mmstvit.utils.paths import is_remote
from mmstvit.utils.text import summarise
# re-exported: tools/test.py says load_from.official_load_from
from mmstvit.weights import official_load_from

from .errors import ToolError
from .pretrained import walk_config


def trust_run_files(cfg, *paths) -> List[str]:
    """``--unsafe-load``: marks the weights files of this run as trusted
    (the given paths, ``load_from`` and every ``Pretrained`` checkpoint the
    model config names), so that they may unpickle beyond the allow-list.
    Returns the local files it marked."""
    from mmstvit.weights import trust
    names = list(paths) + [cfg.get('load_from', None)]
    for _, d in walk_config(cfg.get('model', None), 'model'):
        if isinstance(d, dict) and d.get('type') == 'Pretrained':
            names.append(d.get('checkpoint', None))
    local = [n for n in names if isinstance(n, str) and n and
             not is_remote(n)]
    trust(*local)
    return local


def _stvit_backbone_cfg(cfg):
    backbone = (cfg.get('model', None) or {}).get('backbone', None)
    if isinstance(backbone, dict) and \
            str(backbone.get('type', '')).split('.')[-1] == 'STViT':
        return backbone
    return None


def check_official_against_config(ckpt, cfg, path: str) -> None:
    """The strict backbone check of ``init_cfg`` for an official file given
    as ``load_from``: builds the config's STViT (no weights) and compares.

    Raises:
        ToolError: the file's backbone does not fit the config's.
    """
    from mmstvit.models import STViT
    from mmstvit.weights import (CheckpointMismatchError,
                                          backbone_state_dict,
                                          check_backbone_state_dict,
                                          extract_state_dict)
    backbone_cfg = _stvit_backbone_cfg(cfg)
    if backbone_cfg is None:
        return
    kwargs = {k: v for k, v in dict(backbone_cfg).items()
              if k not in ('type', 'init_cfg', 'pretrained')}
    sd, _ = backbone_state_dict(extract_state_dict(ckpt, 'model'))
    try:
        check_backbone_state_dict(
            STViT(**kwargs), sd, path,
            partial_hint='load_from must hold the whole backbone; for a '
            "partial load use the backbone's init_cfg=dict(type="
            "'Pretrained', checkpoint=..., strict=False) instead.")
    except CheckpointMismatchError as e:
        raise ToolError(f'mmstvit: cannot use {path}: {e}') from None


def convert_load_from(cfg, task: str) -> None:
    """Makes ``cfg.load_from`` of the authors' format load converted (for
    fine-tuning from it), after the strict backbone check; refuses to
    *resume* from such a file."""
    from mmstvit.weights import (OFFICIAL_BACKBONE_SCHEME,
                                          OFFICIAL_SCHEME,
                                          is_official_checkpoint,
                                          load_checkpoint_file)
    path = cfg.get('load_from', None)
    if not isinstance(path, str) or is_remote(path) or \
            path.startswith((OFFICIAL_SCHEME, OFFICIAL_BACKBONE_SCHEME)) or \
            not osp.isfile(osp.expanduser(path)):
        return
    path = osp.expanduser(path)
    try:
        ckpt = load_checkpoint_file(path, mmap=True)
    except (ValueError, pickle.UnpicklingError) as e:
        raise ToolError(f'mmstvit: cannot use {path}: {e}') from None
    if not is_official_checkpoint(ckpt):
        return
    if cfg.get('resume', False):
        raise ToolError(
            f'mmstvit: cannot resume from {path}: it is an official STViT '
            'ImageNet checkpoint, with no mm training state. Start a new run '
            'from it with load_from (or the backbone init_cfg) instead.')
    check_official_against_config(ckpt, cfg, path)
    cfg.load_from = official_load_from(path, task)


def checkpoint_keys(path: str) -> List[str]:
    """The model keys of a local checkpoint (an official file's converted
    to mm names), read memory-mapped."""
    from mmstvit.weights import (convert_official,
                                          extract_state_dict,
                                          is_official_checkpoint,
                                          load_checkpoint_file)
    ckpt = load_checkpoint_file(path, mmap=True)
    if is_official_checkpoint(ckpt):
        return list(convert_official(ckpt))
    return list(extract_state_dict(ckpt))


def untrained_parts_message(path: str, missing: List[str], task: str,
                            config: str) -> str:
    """What ``tools/test.py`` says for a checkpoint that leaves part of the
    model random."""
    parts = sorted({k.split('.')[0] for k in missing})
    lines = [f'mmstvit: {path} does not hold the weights of the whole '
             f'model: {len(missing)} tensors of {", ".join(parts)} are not '
             'in it and would be evaluated at their random initial values; '
             'stopped.',
             f'  missing: {summarise(missing, 6)}']
    if 'backbone' not in parts and task in ('mmdet', 'mmseg'):
        lines.append(
            '  It holds backbone weights only (e.g. the ImageNet '
            'classifier of the authors). Train the detector/segmentor '
            f'first: python tools/train.py {config} (its init_cfg loads the '
            'ImageNet weights into the backbone), then test the checkpoint '
            'the run saves; to fine-tune from a file, set it as load_from '
            'in the config.')
    else:
        lines.append('  Test a checkpoint saved by training this config '
                     '(work_dirs/<config>/epoch_N.pth or iter_N.pth).')
    return '\n'.join(lines)
