# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Reading the authors' STViT checkpoints and mm checkpoints of STViT models.

The official files (``stvit-{small,base,large}-{224,384}.pth``) are a
``torch.save`` of a dict with ``model`` (the state dict), usually
``model_ema``, ``optimizer``, ``lr_scheduler``, ``epoch``, ``scaler``,
``max_accuracy`` and ``args`` (an ``argparse.Namespace``). torch >= 2.6
refuses the Namespace under its default ``weights_only=True``, so we allow
exactly the classes such files hold.
"""
import argparse
import logging
import os
import os.path as osp
import pickle
import re
from collections import OrderedDict
from typing import Dict, Optional

import torch
from mmengine.logging import print_log

OFFICIAL_WEIGHTS_HELP = (
    'The official STViT ImageNet weights (stvit-small-224.pth, '
    'stvit-base-224.pth, stvit-large-224.pth and the -384 files) are in the '
    "authors' Google Drive folder linked from the README of "
    'github.com/hhb072/STViT (folder id 1uaT5OarQd9iPrnFufHocHpM3zhyTcetB). '
    'Download the one you need into pretrained/ (e.g. '
    'pretrained/stvit-small-224.pth); they load as they are, or convert one '
    'to an mm checkpoint with: python tools/model_converters/stvit_to_mm.py '
    'pretrained/stvit-small-224.pth pretrained/stvit-small-224_mm.pth')

# classification tail of the authors' model, not part of a dense backbone
CLS_TAIL_PREFIXES = ('proj.', 'norm.', 'head.')


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model it is loaded into."""


def _safe_globals():
    import numpy as np
    allowed = [argparse.Namespace]
    # numpy scalars/arrays appear in `args`, `max_accuracy` and in mmengine's
    # message hub (resume); allow what numpy pickles them as.
    try:
        from numpy.core.multiarray import _reconstruct  # noqa
        allowed.append(_reconstruct)
    except Exception:  # pragma: no cover - numpy layout changed
        pass
    try:
        allowed.append(np._core.multiarray._reconstruct)
    except Exception:  # pragma: no cover
        pass
    try:
        allowed.append(np._core.multiarray.scalar)
    except Exception:  # pragma: no cover
        pass
    allowed += [np.ndarray, np.dtype]
    allowed += [type(np.dtype(t)) for t in (
        'float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8',
        'uint8', 'bool')]
    return allowed


def load_checkpoint_file(filename: str, map_location='cpu') -> dict:
    """``torch.load`` an official or mm checkpoint, with clear errors.

    Tries ``weights_only=True`` with the classes such files hold allowed;
    a file that holds anything else is loaded with ``weights_only=False``
    after a warning (only do that for files you trust, as with any pickle).
    """
    filename = str(filename)
    if not filename.startswith(('http://', 'https://')) and \
            not osp.isfile(filename):
        raise FileNotFoundError(
            f'STViT pretrained checkpoint not found: {filename!r} '
            f'(cwd {os.getcwd()}). {OFFICIAL_WEIGHTS_HELP}')
    if filename.startswith(('http://', 'https://')):
        from mmengine.runner.checkpoint import CheckpointLoader
        return CheckpointLoader.load_checkpoint(filename, map_location)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(
                filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        print_log(
            f'{filename}: holds objects beyond tensors and argparse '
            f'arguments ({str(e).splitlines()[0][:200]}); loading it with '
            'weights_only=False. Only do this with files you trust.',
            logger='current', level=logging.WARNING)
    except (RuntimeError, EOFError) as e:
        raise ValueError(
            f'{filename!r} is not a readable PyTorch checkpoint '
            f'({type(e).__name__}: {str(e)[:200]}). Is the download '
            f'complete? {OFFICIAL_WEIGHTS_HELP}') from e
    return torch.load(filename, map_location=map_location, weights_only=False)


def extract_state_dict(checkpoint, which: Optional[str] = None
                       ) -> 'OrderedDict[str, torch.Tensor]':
    """The model weights of an official or mm checkpoint, prefixes stripped.

    Args:
        checkpoint: What :func:`load_checkpoint_file` returned.
        which: ``'model'`` or ``'model_ema'`` for the authors' files
            (default ``'model'``), ``'state_dict'`` for mm checkpoints.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatchError(
            f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    if which is not None:
        if which not in checkpoint:
            raise KeyError(f'checkpoint has no {which!r} entry; it has '
                           f'{sorted(checkpoint)}')
        sd = checkpoint[which]
    else:
        for key in ('state_dict', 'model'):
            if key in checkpoint and isinstance(checkpoint[key], dict):
                sd = checkpoint[key]
                break
        else:
            sd = checkpoint
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointMismatchError(
            'this file holds no state dict (looked for "state_dict", '
            f'"model" and plain tensors; found keys {sorted(sd)[:8]})')
    out = OrderedDict()
    for k, v in sd.items():
        out[re.sub(r'^module\.', '', k)] = v
    return out


def backbone_state_dict(state_dict: Dict[str, torch.Tensor],
                        prefix: Optional[str] = None):
    """Selects the backbone keys: an explicit prefix, else ``backbone.``
    when present (mm checkpoints), else the authors' keys minus the
    classification tail. Returns ``(backbone_sd, dropped_keys)``."""
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
    elif any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    if prefix:
        sd = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                         if k.startswith(prefix))
        if not sd:
            raise CheckpointMismatchError(
                f'no key of the checkpoint starts with {prefix!r}')
        dropped = [k for k in state_dict if not k.startswith(prefix)]
        return sd, dropped
    sd, dropped = OrderedDict(), []
    for k, v in state_dict.items():
        (dropped.append(k) if k.startswith(CLS_TAIL_PREFIXES) else
         sd.__setitem__(k, v))
    return sd, dropped


def describe_stvit(state_dict: Dict[str, torch.Tensor]) -> Optional[dict]:
    """Reads the variant (embed dims, depths) off a backbone state dict."""
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
                depths=[depths.get(i) for i in range(n)])
    from mmstvit.models.backbones.stvit import STViT
    info['arch'] = None
    for name in STViT.arch_names:
        a = STViT.arch_zoo[name]
        if a['embed_dims'] == info['embed_dims'] and \
                a['depths'] == info['depths']:
            info['arch'] = name
    return info


def _variant_str(info):
    if info is None:
        return 'an unknown model'
    name = f"STViT-{info['arch']}" if info['arch'] else 'a custom STViT'
    return (f"{name} (embed_dims {info['embed_dims']}, depths "
            f"{info['depths']})")


def load_stvit_state_dict(model, filename: str, prefix: Optional[str] = None,
                          map_location='cpu', which: Optional[str] = None,
                          logger='current'):
    """Loads an official or mm STViT checkpoint into an ``STViT`` backbone.

    Drops the authors' classification tail (``proj``, ``norm``, ``head``),
    refuses a checkpoint of another variant with an error that names both,
    and logs every key it did not load.
    """
    ckpt = load_checkpoint_file(filename, map_location)
    sd = extract_state_dict(ckpt, which)
    sd, dropped = backbone_state_dict(sd, prefix)
    own = model.state_dict()

    mismatched = [(k, tuple(v.shape), tuple(own[k].shape))
                  for k, v in sd.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    matched = len(own) - len(missing) - len(mismatched)
    if mismatched or matched == 0 or (missing and unexpected):
        theirs = describe_stvit(sd)
        ours = describe_stvit(own)
        detail = '; '.join(f'{k}: checkpoint {a} vs model {b}'
                           for k, a, b in mismatched[:3])
        if not detail:
            detail = (f'{len(missing)} model keys missing from the file '
                      f'(e.g. {missing[:3]}), {len(unexpected)} file keys '
                      f'unknown to the model (e.g. {unexpected[:3]})')
        hint = ''
        if theirs and theirs.get('arch'):
            hint = (f" Build the backbone with arch='{theirs['arch']}' or "
                    f'load a checkpoint of {_variant_str(ours)}.')
        raise CheckpointMismatchError(
            f'{filename} holds {_variant_str(theirs)}, but the model is '
            f'{_variant_str(ours)}: {detail}.{hint}')

    model.load_state_dict(sd, strict=False)
    msgs = [f'STViT: loaded {matched}/{len(own)} backbone tensors from '
            f'{filename}']
    if dropped:
        msgs.append(f'not loaded (not part of the backbone): '
                    f'{_summarise(dropped)}')
    if unexpected:
        msgs.append(f'not loaded (unknown to this backbone): '
                    f'{_summarise(unexpected)}')
    if missing:
        msgs.append(f'missing from the checkpoint, left as initialised: '
                    f'{_summarise(missing)}')
    level = logging.WARNING if missing or unexpected else logging.INFO
    print_log('\n  '.join(msgs), logger=logger, level=level)
    return dict(missing=missing, unexpected=unexpected, dropped=dropped)


def _summarise(keys, n=12):
    keys = list(keys)
    s = ', '.join(keys[:n])
    return s + (f' ... (+{len(keys) - n} more)' if len(keys) > n else '')
