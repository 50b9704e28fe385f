# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""STViT as timm models: ``import mmstvit.timm`` registers them.

After the one import, ``timm.create_model('stvit_small')`` (also
``stvit_base``, ``stvit_large``; pretrained tags ``.in1k`` at 224 and
``.in1k_384``) builds the authors' ImageNet classifier, and everything that
builds timm models by name finds them (Hugging Face ``TimmBackbone``, the
DETR family's ``use_timm_backbone``, mmpretrain's ``TIMMBackbone``).
``import mmstvit`` alone does not import timm.

The model is mmstvit's :class:`~mmstvit.STViT` backbone (``backbone``) and
:class:`~mmstvit.models.heads.stvit_head.STViTClsHead` (``head``: 1x1
``proj`` to 1024, BatchNorm, Swish, average pool, ``fc``), the modules of
mmpretrain's STViT ``ImageClassifier``: the two have the same state dict
keys and give the same outputs. Weights load from a local file (the
official files are on Google Drive, so timm cannot download them)::

    model = timm.create_model('stvit_small.in1k', pretrained=True,
        pretrained_cfg_overlay=dict(file='pretrained/stvit-small-224.pth'))

A ``.pth`` in the authors' format (or an mm checkpoint) is read by
mmstvit's weights-only reader with its allow-list, never unpickled beyond
it; a ``.safetensors`` file (official or mm keys) by
``safetensors.torch.load_file``. Loading is strict: every tensor must be
found with its shape, except the classifier when ``num_classes`` is not
1000. ``features_only=True`` returns the four stage maps (strides 4, 8, 16,
32) through ``forward_intermediates`` (timm's ``FeatureGetterNet``).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import (adapt_input_conv, build_model_with_cfg,
                         generate_default_cfgs, register_model,
                         resolve_pretrained_cfg)

import mmpretrain  # noqa: F401  (first: see below)

from mmstvit.models import STViT
# mmpretrain is imported before the head, so that mmstvit's hook on its
# import registers STViTClsHead (importing the head first leaves it out of
# mmpretrain's registry: a circular import in the hook)
from mmstvit.models.heads import STViTClsHead
# The project's one reader of weights files (weights-only, allow-list).
from mmstvit.weights import (OFFICIAL_WEIGHTS_HELP, CheckpointMismatchError,
                             convert_official_state_dict, extract_state_dict,
                             load_checkpoint_file)

__all__ = ['STViTClassifier', 'checkpoint_filter_fn', 'read_weights',
           'stvit_small', 'stvit_base', 'stvit_large']

#: ImageNet super token sizes of the authors' classifiers (DESIGN.md, 2)
IMAGENET_STOKEN_SIZE = (8, 4, 1, 1)
HEAD_HIDDEN_SIZE = 1024
GLOBAL_POOLS = ('avg', '')
#: BatchNorm counters: the project's converters may leave them out
NOT_WEIGHTS = ('num_batches_tracked', )


def read_weights(path: str) -> Dict[str, torch.Tensor]:
    """The state dict of a weights file: a ``.safetensors`` through
    ``safetensors.torch.load_file`` (never pickle), anything else through
    mmstvit's weights-only reader (``load_checkpoint_file``; its
    ``UnsafeCheckpointError`` names globals beyond the allow-list).

    Returns the file's own keys (official, mm or timm names); the ``model``
    entry of an official file, the ``state_dict`` entry of an mm one.
    """
    path = str(path)
    if path.endswith('.safetensors'):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return dict(load_file(path, device='cpu'))
        except (SafetensorError, OSError) as e:
            raise ValueError(
                f'{path!r} is not a readable .safetensors file ({e}); a '
                'pickled .pth renamed .safetensors is refused: convert it '
                'with tools/model_converters/stvit_to_mm.py --to '
                'safetensors') from e
    return dict(extract_state_dict(load_checkpoint_file(path),
                                   source=path))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor],
                         model: Optional[nn.Module] = None
                         ) -> Dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn``: a state dict with the authors' keys
    (``patch_embed.*``, ``layers.*``, ``proj.*``, ``norm.*``, ``head.*``)
    becomes this model's (``backbone.*``, ``head.proj/norm/fc.*``, the
    keys of mmpretrain's ImageClassifier, which pass unchanged). A backbone
    alone (mm detector / segmentor checkpoints) keeps ``backbone.*``."""
    sd = {k: v for k, v in state_dict.items()
          if not k.startswith('data_preprocessor.')}
    if any(k.startswith(('patch_embed.', 'layers.')) for k in sd):
        sd = convert_official_state_dict(sd)
    return dict(sd)


def _take_indices(num: int, indices) -> List[int]:
    """timm's convention: an int n is the last n stages, a sequence lists
    them (negative counts from the end)."""
    if indices is None:
        indices = num
    if isinstance(indices, int):
        if not 0 < indices <= num:
            raise ValueError(f'STViT has {num} stages; cannot take the last '
                             f'{indices}')
        return list(range(num - indices, num))
    take = [i + num if i < 0 else i for i in indices]
    bad = [i for i, t in zip(indices, take) if not 0 <= t < num]
    if bad:
        raise ValueError(f'STViT: feature indices {bad} out of range; it '
                         f'has {num} stages (0..{num - 1}, or -{num}..-1)')
    return take


def _check_pool(global_pool: str) -> str:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(
            f'STViT: global_pool={global_pool!r} is not supported; use '
            "'avg' (the authors' head) or '' (no pooling)")
    return global_pool


class STViTClassifier(nn.Module):
    """The authors' STViT ImageNet classifier for timm: mmstvit's ``STViT``
    backbone and ``STViTClsHead``.

    Args:
        arch (str): ``'small'``, ``'base'`` or ``'large'``.
        num_classes (int): Classes; 0 removes the classifier (pooled
            1024-d features). Defaults to 1000.
        in_chans (int): Input channels. Defaults to 3.
        global_pool (str): ``'avg'`` or ``''`` (the projected map, unpooled).
        drop_rate (float): Dropout before the classifier.
        drop_path_rate (float): Stochastic depth of the backbone.
        proj_drop_rate, attn_drop_rate (float): The backbone's dropouts.
        **kwargs: Other :class:`~mmstvit.STViT` arguments (``stoken_size``,
            defaults to the ImageNet ``(8, 4, 1, 1)``; ``with_cp``,
            ``kernels``, ``channels_last``, ...).

    Shapes: input (B, in_chans, H, W); ``forward_features`` (B, C4, H/32,
    W/32) with C4 = ``num_features`` (512 for S and B, 640 for L);
    ``forward`` (B, num_classes), or (B, 1024) without the classifier.
    """

    def __init__(self, arch: str = 'small', num_classes: int = 1000,
                 in_chans: int = 3, global_pool: str = 'avg',
                 drop_rate: float = 0., drop_path_rate: float = 0.,
                 proj_drop_rate: float = 0., attn_drop_rate: float = 0.,
                 **kwargs):
        super().__init__()
        if 'out_indices' in kwargs:
            raise ValueError(
                'STViTClassifier: out_indices is for features_only=True '
                "(timm.create_model('stvit_small', features_only=True, "
                'out_indices=(1, 2, 3)))')
        kwargs.setdefault('stoken_size', IMAGENET_STOKEN_SIZE)
        self.backbone = STViT(
            arch=arch, in_channels=in_chans, drop_rate=proj_drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            out_indices=(0, 1, 2, 3), **kwargs)
        dims = self.backbone.embed_dims
        self.in_chans = in_chans
        self.num_features = dims[-1]
        self.head_hidden_size = HEAD_HIDDEN_SIZE
        self.output_fmt = 'NCHW'
        self.feature_info = [
            dict(num_chs=c, reduction=2 ** (i + 2),
                 module=f'backbone.layers.{i}') for i, c in enumerate(dims)]
        # PyTorch's initialisation is the authors' (STViT.init_weights);
        # the classifier is initialised as STViTClsHead's init_cfg says
        self.head = STViTClsHead(
            num_classes=max(num_classes, 1), in_channels=dims[-1],
            projection=HEAD_HIDDEN_SIZE, dropout=drop_rate)
        self.num_classes = num_classes
        self.reset_classifier(num_classes, global_pool)

    # -- timm's classifier interface --------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int,
                         global_pool: Optional[str] = None) -> None:
        """A new (truncated-normal) classifier for ``num_classes`` (0: none)
        and, if given, the pooling: ``'avg'`` or ``''`` (no pooling)."""
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        fc = nn.Identity()
        if num_classes:
            fc = nn.Linear(HEAD_HIDDEN_SIZE, num_classes)
            nn.init.trunc_normal_(fc.weight, std=.02)
            nn.init.zeros_(fc.bias)
        self.head.fc = fc
        self.num_classes = self.head.num_classes = num_classes

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward (the backbone's ``with_cp``);
        outputs and gradients are unchanged."""
        for m in self.modules():
            if hasattr(m, 'with_cp'):
                m.with_cp = enable

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^backbone\.patch_embed',
                    blocks=r'^backbone\.layers\.(\d+)' if coarse else [
                        (r'^backbone\.layers\.(\d+)\.downsample', (0, )),
                        (r'^backbone\.layers\.(\d+)\.blocks\.(\d+)', None)])

    # -- forward ---------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map, (B, num_features, H/32, W/32)."""
        return self.backbone(x)[-1]

    def forward_head(self, x: torch.Tensor,
                     pre_logits: bool = False) -> torch.Tensor:
        """The head on ``forward_features``' map: (B, 1024) pooled features
        with ``pre_logits=True``, else (B, num_classes) logits (the
        projected (B, 1024, h, w) map with ``global_pool=''``)."""
        head = self.head
        if head is None:
            raise RuntimeError('STViT: this model was pruned to a feature '
                               'extractor (features_only=True); it has no '
                               'head')
        if self.global_pool:
            x = head.pre_logits((x, ))
        else:
            x = head.act(head.norm(head.proj(x)))
        return x if pre_logits else head.fc(head.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self, x: torch.Tensor,
            indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False, stop_early: bool = False,
            output_fmt: str = 'NCHW', intermediates_only: bool = False
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's feature API: the stage maps ``indices`` (default all four;
        (B, C_i, H/2**(i+2), W/2**(i+2)), before each downsample) and, unless
        ``intermediates_only``, the final map of ``forward_features``.
        ``norm`` has nothing to apply (STViT has no norm before its head);
        ``stop_early`` is accepted, the backbone always runs all stages;
        ``output_fmt`` is ``'NCHW'`` or ``'NHWC'``."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"STViT: output_fmt={output_fmt!r}; use 'NCHW' "
                             "or 'NHWC'")
        take = _take_indices(len(self.feature_info), indices)
        maps = self.backbone(x)
        inter = [maps[i] for i in take]
        if output_fmt == 'NHWC':
            inter = [m.permute(0, 2, 3, 1) for m in inter]
        return inter if intermediates_only else (maps[-1], inter)

    def prune_intermediate_layers(
            self, indices: Union[int, Sequence[int]] = 1,
            prune_norm: bool = False, prune_head: bool = True) -> List[int]:
        """Drops the head (its parameters would get no gradient in a
        feature extractor); the stages stay (the backbone runs them all).
        Returns the indices as non-negative stage numbers."""
        take = _take_indices(len(self.feature_info), indices)
        if prune_head:
            self.head = None
            self.num_classes = 0
        return take

    # -- weights ----------------------------------------------------------------
    def load_pretrained(self, path: str) -> None:
        """timm's ``custom_load``: loads ``path`` (``.pth`` official or mm,
        or ``.safetensors``) strictly; see :func:`load_weights`."""
        load_weights(self, read_weights(path), source=path)


def load_weights(model: STViTClassifier, state_dict: Dict[str, torch.Tensor],
                 source: str = 'the state dict') -> None:
    """Loads official / mm / timm keys into ``model``: the first conv is
    adapted to ``in_chans`` (timm's ``adapt_input_conv``), the classifier
    is left out when ``num_classes`` is not the file's (the whole head when
    the model was pruned to a feature extractor); anything else
    missing, unexpected or of another shape raises
    ``CheckpointMismatchError`` naming the keys."""
    sd = checkpoint_filter_fn(state_dict, model)
    first = 'backbone.patch_embed.proj.0.weight'
    if model.in_chans != 3 and first in sd:
        sd[first] = adapt_input_conv(model.in_chans, sd[first])
    fc = sd.get('head.fc.weight')
    skip = set()
    if model.head is None:  # a feature extractor: the file's head unused
        skip = {k for k in sd if k.startswith('head.')}
    elif fc is not None and (model.num_classes != fc.shape[0]):
        skip = {'head.fc.weight', 'head.fc.bias'}
    own = model.state_dict()
    # BatchNorm counters of the file that a frozen BatchNorm has no place for
    skip |= {k for k in sd if k not in own and k.endswith(NOT_WEIGHTS)}
    sd = {k: v for k, v in sd.items() if k not in skip}
    missing = [k for k in own if k not in sd and k not in skip
               and not k.endswith(NOT_WEIGHTS)]
    unexpected = [k for k in sd if k not in own]
    shapes = [f'{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}'
              for k, v in sd.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f'{source} does not fit {type(model).__name__} '
            f'({model.backbone.arch}): {len(missing)} missing '
            f'{missing[:6]}, {len(unexpected)} unexpected {unexpected[:6]}, '
            f'{len(shapes)} of another shape {shapes[:4]}. Is it the '
            'weights of this variant?')
    model.load_state_dict(sd, strict=False)


def _cfg(input_size: int = 224, **kwargs) -> dict:
    pool = input_size // 32
    return dict(
        url='', num_classes=1000, input_size=(3, input_size, input_size),
        pool_size=(pool, pool), crop_pct=0.875 if input_size == 224 else 1.,
        crop_mode='center', interpolation='bicubic', fixed_input_size=False,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv='backbone.patch_embed.proj.0', classifier='head.fc',
        custom_load=True, paper_ids='arXiv:2211.11167',
        paper_name='Vision Transformer with Super Token Sampling',
        origin_url='https://github.com/hhb072/STViT', **kwargs)


default_cfgs = generate_default_cfgs({
    f'stvit_{arch}.{tag}': _cfg(
        size, notes=(f'official stvit-{arch}-{size}.pth; load it with '
                     'pretrained_cfg_overlay=dict(file=...)', ))
    for arch in ('small', 'base', 'large')
    for tag, size in (('in1k', 224), ('in1k_384', 384))
})


def _weights_source(variant: str, kwargs: dict) -> None:
    """For ``pretrained=True``: refuses a model without a local file (timm
    cannot download the official weights) and makes timm hand a file to
    :meth:`STViTClassifier.load_pretrained` (timm resets ``custom_load``
    when the overlay names a source)."""
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=overlay)
    if not (cfg.file or cfg.state_dict):
        raise ValueError(
            f'{variant}: pretrained=True needs a local file, as timm cannot '
            'download the official weights: timm.create_model('
            f"'{variant}.in1k', pretrained=True, pretrained_cfg_overlay="
            "dict(file='pretrained/stvit-small-224.pth')). "
            f'{OFFICIAL_WEIGHTS_HELP}')
    if cfg.file and not cfg.state_dict:
        overlay['custom_load'] = True
        kwargs['pretrained_cfg_overlay'] = overlay


def _create(variant: str, arch: str, pretrained: bool = False, **kwargs):
    if pretrained:
        _weights_source(variant, kwargs)
    return build_model_with_cfg(
        STViTClassifier, variant, pretrained, arch=arch,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs)


@register_model
def stvit_small(pretrained: bool = False, **kwargs) -> STViTClassifier:
    """STViT-S (25.5M parameters, 4.4 GFLOPs at 224; 83.6% ImageNet-1K)."""
    return _create('stvit_small', 'small', pretrained, **kwargs)


@register_model
def stvit_base(pretrained: bool = False, **kwargs) -> STViTClassifier:
    """STViT-B (51.7M parameters, 9.9 GFLOPs at 224; 84.8% ImageNet-1K)."""
    return _create('stvit_base', 'base', pretrained, **kwargs)


@register_model
def stvit_large(pretrained: bool = False, **kwargs) -> STViTClassifier:
    """STViT-L (95.0M parameters, 15.6 GFLOPs at 224; 85.3% ImageNet-1K)."""
    return _create('stvit_large', 'large', pretrained, **kwargs)
