# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Model, config and image for the pictures: the STViT backbone of a
config with its normalisation (:func:`build_stvit_from_config`), weights
(:func:`load_weights`), images (:func:`read_image`, :func:`preprocess`) and
the attention inputs of chosen blocks (:func:`capture_attention_inputs`).
Every error a user can cause raises :class:`VisualizationError`."""
import os.path as osp
import pickle
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

# ImageNet statistics (RGB, 0-255), the mmpretrain/mmdet/mmseg default.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

#: Longest side the network sees by default; larger images are resized for
#: the forward pass and the pictures are drawn back at the input size.
DEFAULT_MAX_SIZE = 1024


def _log_stderr(msg: str):
    print(msg, file=sys.stderr)


class VisualizationError(Exception):
    """A problem with the user's input, reported as one line."""


# ---------------------------------------------------------------------------
# model, config and image
# ---------------------------------------------------------------------------


def _load_config(config):
    from mmstvit.builder import ConfigError, config_name, load_config
    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise VisualizationError(str(e)) from e
    return cfg, config_name(cfg)


def _preprocessor_stats(cfg) -> Tuple[tuple, tuple, bool]:
    """(mean, std, model_sees_rgb) from the config's data preprocessor.

    mmdet/mmseg/mmpretrain keep it in ``model.data_preprocessor`` or at the
    top level (mmpretrain). Images are loaded as BGR by those toolboxes and
    flipped to RGB when ``bgr_to_rgb``/``to_rgb`` is set; mean and std are
    in the model's channel order. No preprocessor: ImageNet RGB statistics.
    """
    dp = None
    model = cfg.get('model', None) or {}
    for cand in (model.get('data_preprocessor', None),
                 cfg.get('data_preprocessor', None)):
        if isinstance(cand, dict):
            dp = cand
            break
    if dp is None or dp.get('mean', None) is None:
        return IMAGENET_MEAN, IMAGENET_STD, True
    mean = tuple(float(v) for v in dp['mean'])
    std = tuple(float(v) for v in dp.get('std', None) or (1., 1., 1.))
    swap = bool(dp.get('bgr_to_rgb', False) or dp.get('rgb_to_bgr', False)
                or dp.get('to_rgb', False))
    return mean, std, swap


class LoadedModel:
    """An STViT backbone in eval mode with its normalisation."""

    def __init__(self, backbone, mean, std, rgb, config_name, device):
        self.backbone = backbone
        self.mean = mean
        self.std = std
        self.rgb = rgb
        self.config_name = config_name
        self.device = torch.device(device)

    @property
    def stoken_sizes(self) -> List[Tuple[int, int]]:
        return [tuple(layer.blocks[0].attn.stoken_size)
                for layer in self.backbone.layers]

    @property
    def num_stages(self) -> int:
        return len(self.backbone.layers)


def build_stvit_from_config(config, checkpoint: Optional[str] = None,
                            device: str = 'cpu') -> LoadedModel:
    """Builds the STViT backbone of an mmdet/mmseg/mmpretrain config.

    Only the backbone is built (the tools need nothing else), with its
    ``init_cfg`` dropped. ``checkpoint`` may be one of our mm checkpoints
    (``state_dict`` with ``backbone.`` keys, from any of the toolboxes) or
    the authors' ImageNet file (``model`` with their key names).
    """
    from mmstvit.builder import ConfigError, build_backbone

    cfg, name = _load_config(config)
    try:
        backbone = build_backbone(cfg)
    except ConfigError as e:
        raise VisualizationError(str(e)) from e
    if checkpoint is not None:
        load_weights(backbone, checkpoint)
    try:
        backbone.eval().to(device)
    except (RuntimeError, AssertionError, ValueError) as e:
        msg = ' '.join(str(e).split())
        raise VisualizationError(f'cannot use device {device}: {msg}') from e
    mean, std, rgb = _preprocessor_stats(cfg)
    return LoadedModel(backbone, mean, std, rgb, name, device)


def load_weights(backbone, checkpoint: str) -> dict:
    """Loads an mm checkpoint or the authors' file into ``backbone`` with
    the project's one loader (weights-only, strict)."""
    from mmstvit.weights import (CheckpointMismatchError,
                                 load_stvit_state_dict)
    if not osp.isfile(str(checkpoint)):
        raise VisualizationError(
            f'cannot load checkpoint {checkpoint}: no such file')
    try:
        return load_stvit_state_dict(backbone, str(checkpoint))
    except CheckpointMismatchError as e:
        msg = ' '.join(str(e).split())
        raise VisualizationError(
            f'cannot load checkpoint {checkpoint}: it holds another model '
            f'than the config builds: {msg}') from e
    except (ValueError, KeyError, pickle.UnpicklingError) as e:
        msg = ' '.join(str(e).split())
        raise VisualizationError(
            f'cannot load checkpoint {checkpoint}: {msg}') from e


def read_image(path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, EXIF orientation applied."""
    from PIL import Image, ImageOps
    path = str(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            arr = np.asarray(im.convert('RGB'))
    except FileNotFoundError:
        raise VisualizationError(
            f'cannot read image {path}: no such file') from None
    except Exception as e:
        msg = ' '.join(str(e).split())
        raise VisualizationError(
            f'cannot read image {path}: {msg}') from None
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise VisualizationError(f'cannot read image {path}: it is empty')
    return arr


def preprocess(image: np.ndarray, model: LoadedModel,
               max_size: Optional[int] = DEFAULT_MAX_SIZE):
    """(H, W, 3) RGB uint8 -> normalised (1, 3, h, w) tensor and (h, w).

    The image is resized (keeping its aspect ratio) only if its longest side
    exceeds ``max_size``; it is never padded (the backbone takes any size).
    """
    H, W = image.shape[:2]
    h, w = _net_size(H, W, max_size)
    t = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    t = t[None].float()
    if (h, w) != (H, W):
        t = F.interpolate(t, size=(h, w), mode='bilinear', align_corners=False,
                          antialias=True)
    if not model.rgb:
        t = t.flip(1)
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    return ((t - mean) / std).to(model.device), (h, w)


class _Captured(Exception):
    """Stops the forward pass once every requested input is captured."""


def capture_attention_inputs(backbone, x: torch.Tensor,
                             blocks: Sequence[Tuple[int, int]]
                             ) -> Dict[Tuple[int, int], torch.Tensor]:
    """Runs ``backbone`` on ``x`` and returns the input of each block's
    super token attention (the block's ``norm1`` output), keyed by
    ``(stage, block)``, via forward pre-hooks on ``blk.attn``. The forward
    stops after the last requested block."""
    wanted = set(blocks)
    got = {}

    def make_hook(key):

        def hook(module, args):
            got[key] = args[0].detach()
            if wanted.issubset(got):
                raise _Captured

        return hook

    handles = [
        backbone.layers[i].blocks[j].attn.register_forward_pre_hook(
            make_hook((i, j))) for i, j in wanted
    ]
    try:
        with torch.no_grad():
            backbone(x)
    except _Captured:
        pass
    finally:
        for h in handles:
            h.remove()
    return got


def _net_size(H, W, max_size):
    if max_size and max(H, W) > max_size:
        r = max_size / max(H, W)
        return max(1, round(H * r)), max(1, round(W * r))
    return H, W
