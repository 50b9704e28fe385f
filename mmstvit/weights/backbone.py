# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Loading an ``STViT`` backbone strictly, and saying what did not fit.

Every backbone tensor must be found with the right shape, or the load stops
and lists what is missing or mismatched (and names the variant a file of
another variant holds). ``strict=False`` allows a partial load, never an
empty one.
"""
import logging
import re
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional

import torch
from mmengine.logging import print_log

from .errors import CheckpointMismatchError, summarise_keys
from .prefix import backbone_state_dict
from .reading import load_checkpoint_file
from .state_dicts import extract_state_dict, state_dict_entries, weight_keys

PARTIAL_HINT = ('If a partial load is what you want, say so: '
                "init_cfg=dict(type='Pretrained', checkpoint=..., "
                'strict=False).')


def describe_stvit(state_dict: Dict[str, torch.Tensor],
                   arch_zoo: Optional[dict] = None) -> Optional[dict]:
    """Reads the variant (embed dims, depths) off a backbone state dict;
    ``arch`` is its name in ``arch_zoo`` (``STViT.arch_zoo``) or None.
    Returns None for a state dict of no STViT."""
    dims, depths = {}, {}
    pat = re.compile(r'^layers\.(\d+)\.blocks\.(\d+)\.norm1\.norm\.weight$')
    for k, v in state_dict.items():
        m = pat.match(k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            dims[i] = int(v.shape[0])
            depths[i] = max(depths.get(i, 0), j + 1)
    if not dims:
        return None
    n = max(dims) + 1
    info = dict(embed_dims=[dims.get(i) for i in range(n)],
                depths=[depths.get(i) for i in range(n)], arch=None)
    for name, a in (arch_zoo or {}).items():
        if len(name) > 1 and a['embed_dims'] == info['embed_dims'] and \
                a['depths'] == info['depths']:
            info['arch'] = name
    return info


def variant_str(info: Optional[dict]) -> str:
    """``'STViT-small (embed_dims [...], depths [...])'`` for
    :func:`describe_stvit`'s answer."""
    if info is None:
        return 'an unknown model'
    name = f"STViT-{info['arch']}" if info['arch'] else 'a custom STViT'
    return (f"{name} (embed_dims {info['embed_dims']}, depths "
            f"{info['depths']})")


def _other_variant(theirs, ours) -> bool:
    """The file holds another variant (not a part of this one): a known
    arch other than the model's, other widths, or more stages or blocks."""
    if not (theirs and ours):
        return False
    if theirs['arch'] and theirs['arch'] != ours['arch']:
        return True
    if len(theirs['embed_dims']) > len(ours['embed_dims']):
        return True
    for key in ('embed_dims', 'depths'):
        for a, b in zip(theirs[key], ours[key]):
            if a is not None and b is not None and (
                    a > b if key == 'depths' else a != b):
                return True
    return False


def _mismatch_error(source, own, mismatched, missing, unexpected, theirs,
                    ours) -> CheckpointMismatchError:
    detail = '; '.join(f'{k}: checkpoint {a} vs model {b}'
                       for k, a, b in mismatched[:3])
    if not detail:
        detail = (f'{len(missing)} of the {len(weight_keys(own))} backbone '
                  f'tensors are not in the file (e.g. {missing[:3]}), '
                  f'{len(unexpected)} file keys are unknown to the model '
                  f'(e.g. {unexpected[:3]})')
    hint = ''
    if theirs and theirs.get('arch'):
        hint = (f" Build the backbone with arch='{theirs['arch']}' or "
                f'load a checkpoint of {variant_str(ours)}.')
    return CheckpointMismatchError(
        f'{source} holds {variant_str(theirs)}, but the model is '
        f'{variant_str(ours)}: {detail}.{hint}')


def _incomplete_error(source, ours, missing, unexpected, partial_hint):
    lines = [f'{source} does not hold every tensor of this '
             f'{variant_str(ours)} backbone, so part of it would stay '
             'randomly initialised; stopped.']
    if missing:
        lines.append(f'missing from the file ({len(missing)}): '
                     f'{summarise_keys(missing)}')
    if unexpected:
        lines.append(f'in the file but not in the backbone '
                     f'({len(unexpected)}): {summarise_keys(unexpected)}')
    lines.append(partial_hint or PARTIAL_HINT)
    return CheckpointMismatchError('\n  '.join(lines))


def check_backbone_state_dict(model, sd: Dict[str, torch.Tensor],
                              source: str, strict: bool = True,
                              partial_hint: Optional[str] = None) -> dict:
    """Checks a backbone state dict against an ``STViT`` before loading.

    Raises :class:`CheckpointMismatchError` when a tensor has another shape
    (naming the variant the file holds), when nothing matches, and, with
    ``strict``, when a backbone tensor is missing or the file holds keys the
    backbone does not have. Returns ``missing``, ``unexpected`` and
    ``matched`` (a count).
    """
    own = model.state_dict()
    arch_zoo = getattr(type(model), 'arch_zoo', None)
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape))
                  for k, v in sd.items() if k in own and v.shape != own[k].shape]
    missing = weight_keys(k for k in own if k not in sd)
    unexpected = [k for k in sd if k not in own]
    matched = len([k for k in sd if k in own]) - len(mismatched)
    theirs, ours = describe_stvit(sd, arch_zoo), describe_stvit(own, arch_zoo)
    if mismatched or matched == 0 or (strict and
                                      _other_variant(theirs, ours)):
        raise _mismatch_error(source, own, mismatched, missing, unexpected,
                              theirs, ours)
    if strict and (missing or unexpected):
        raise _incomplete_error(source, ours, missing, unexpected,
                                partial_hint)
    return dict(missing=missing, unexpected=unexpected, matched=matched)


def _log_load(filename, own, res, dropped, logger) -> None:
    msgs = [f'STViT: loaded {res["matched"]}/{len(own)} backbone tensors '
            f'from {filename}']
    if dropped:
        msgs.append(f'not loaded (not part of the backbone): '
                    f'{summarise_keys(dropped)}')
    if res['unexpected']:
        msgs.append(f'not loaded (unknown to this backbone): '
                    f'{summarise_keys(res["unexpected"])}')
    if res['missing']:
        msgs.append(f'missing from the checkpoint, left as initialised '
                    f'(strict=False): {summarise_keys(res["missing"])}')
    level = logging.WARNING if res['missing'] or res['unexpected'] else \
        logging.INFO
    print_log('\n  '.join(msgs), logger=logger, level=level)


def load_stvit_state_dict(model, filename: str, prefix: Optional[str] = None,
                          map_location='cpu', which: Optional[str] = None,
                          strict: bool = True, unsafe: bool = False,
                          logger='current') -> dict:
    """Loads an official or mm STViT checkpoint (``.pth`` or
    ``.safetensors``) into an ``STViT`` backbone.

    ``which`` picks the entry of the file
    (:func:`~mmstvit.weights.extract_state_dict`), ``prefix`` the backbone's
    keys in it (:func:`~mmstvit.weights.backbone_state_dict`: the forms
    mmengine's ``Pretrained`` takes, with or without ``module.``). Drops
    the authors' classification tail (``proj``, ``norm``, ``head``) and the
    non-backbone parts of mm checkpoints, then checks the rest with
    :func:`check_backbone_state_dict` (``strict``: every backbone tensor,
    with its shape) before loading. Logs what it loaded and left out.
    Returns ``missing``, ``unexpected`` and ``dropped`` key lists.
    """
    ckpt = load_checkpoint_file(filename, map_location, unsafe=unsafe)
    sd = extract_state_dict(ckpt, which, source=str(filename))
    own = model.state_dict()
    sd, dropped = backbone_state_dict(
        sd, prefix, own_keys=own.keys(), source=str(filename),
        entries=state_dict_entries(ckpt))
    res = check_backbone_state_dict(model, sd, str(filename), strict=strict)
    model.load_state_dict(
        OrderedDict((k, v) for k, v in sd.items() if k in own), strict=False)
    _log_load(filename, own, res, dropped, logger)
    return dict(missing=res['missing'], unexpected=res['unexpected'],
                dropped=dropped)


def missing_model_weights(model_keys: Iterable[str],
                          ckpt_keys: Iterable[str]) -> List[str]:
    """Weights of a model that a checkpoint's state dict does not hold
    (``module.`` prefixes of either side ignored)."""
    have = {re.sub(r'^module\.', '', k) for k in ckpt_keys}
    return weight_keys(k for k in model_keys
                       if re.sub(r'^module\.', '', k) not in have)
