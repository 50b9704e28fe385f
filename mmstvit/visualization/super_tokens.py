# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What an STViT sees: its super tokens and its attention, drawn on images.

Two pictures from the paper are rebuilt here for any STViT model, with
random weights or trained ones:

* super tokens (paper Fig. "(a) input, (b) initial super tokens, (c) learned
  super tokens"): the initial grid of s x s cells of a stage, and the learned
  partition obtained by giving every pixel to the super token it associates
  with most strongly;
* early-stage attention maps (paper Fig. "attention maps from the third
  layer"): where one pixel of a stage attends, with the super token attention
  mapped back to pixels through the association.

The functions are split in three modules: :mod:`.loading` (model, config
and image: :func:`build_stvit_from_config`, :func:`read_image`,
:func:`preprocess`, :func:`capture_attention_inputs`), :mod:`.association`
(the maths at feature resolution: :func:`hard_assignment`,
:func:`initial_assignment`, :func:`pixel_attention`) and :mod:`.drawing`
(:func:`render_partition`, :func:`render_heatmap`, :func:`montage`). This
module's :func:`visualize_super_tokens` and :func:`visualize_attention` tie
them together for the command-line tools
``tools/visualize_super_tokens.py`` and ``tools/visualize_attention.py``.

Conventions: stages are numbered from 0 (stage 2 is the paper's "third
layer"); a stage-i feature pixel covers ``4 * 2**i`` image pixels (the stem
has stride 4 and each downsample halves the map; a map of an image whose
size is no multiple of the stride is ``ceil(size / stride)`` wide, its last
pixel covering the image's remainder). Every error a user can cause raises
:class:`VisualizationError` with a one-line message.
"""
import math
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

# the three layers (association: maths, drawing, loading: model and image);
# names used by the tests and tools as super_tokens.X stay importable here
from .association import (feature_size, hard_assignment, initial_assignment,
                          min_image_size, pixel_attention, stage_stride)
from .drawing import (montage, render_heatmap, render_partition, save_png,
                      to_image_grid, token_colours)  # noqa: F401
from .loading import (DEFAULT_MAX_SIZE, LoadedModel,  # noqa: F401
                      VisualizationError, _log_stderr, _net_size,
                      build_stvit_from_config, capture_attention_inputs,
                      load_weights, preprocess, read_image)


# ---------------------------------------------------------------------------
# the two visualisations
# ---------------------------------------------------------------------------


def _check_stage(stage: int, model: LoadedModel):
    n = model.num_stages
    if not -n <= stage < n:
        raise VisualizationError(
            f'--stage {stage} is out of range: this STViT has {n} stages '
            f'(0-{n - 1})')
    return stage % n


def _check_block(block: Optional[int], stage: int, model: LoadedModel):
    depth = len(model.backbone.layers[stage].blocks)
    if block is None:
        return depth - 1
    if not -depth <= block < depth:
        raise VisualizationError(
            f'--block {block} is out of range: stage {stage} has {depth} '
            f'block{"s" if depth > 1 else ""} (0-{depth - 1})')
    return block % depth


def _check_fits(stage: int, model: LoadedModel, net_size, scaled: bool):
    size = model.stoken_sizes[stage]
    fh, fw = feature_size(*net_size, stage)
    if fh >= size[0] and fw >= size[1]:
        return None
    mh, mw = min_image_size(size, stage)
    what = 'the image' + (' as resized for the network' if scaled else '')
    return (f'{what} ({net_size[1]}x{net_size[0]} pixels, width x height) '
            f'is too small for stage {stage}: its {fw}x{fh} feature map is '
            f'smaller than one {size[1]}x{size[0]} super token; the minimum '
            f'is {mw}x{mh} pixels')


def _stem(image_path) -> str:
    return osp.splitext(osp.basename(str(image_path)))[0]


def _prepare(config, image, checkpoint, device, model):
    if model is None:
        model = build_stvit_from_config(config, checkpoint, device)
    picture = image if isinstance(image, np.ndarray) else read_image(image)
    return model, picture


def super_token_maps(model: LoadedModel, picture: np.ndarray,
                     stages: Sequence[int], blocks: Dict[int, int],
                     max_size: Optional[int] = DEFAULT_MAX_SIZE):
    """Hard assignments (learned and initial) at feature resolution for the
    last-block-or-chosen block of each stage, keyed by stage."""
    x, net_size = preprocess(picture, model, max_size)
    feats = capture_attention_inputs(model.backbone, x,
                                     [(i, blocks[i]) for i in stages])
    out = {}
    with torch.no_grad():
        for i in stages:
            attn = model.backbone.layers[i].blocks[blocks[i]].attn
            sampling = attn.associate(feats[(i, blocks[i])])
            learned = hard_assignment(sampling.assoc, sampling.grid,
                                      attn.stoken_size)
            initial = initial_assignment(sampling.grid, attn.stoken_size)
            out[i] = dict(learned={k: v[0].cpu() for k, v in learned.items()},
                          initial={k: v[0].cpu() for k, v in initial.items()},
                          grid=sampling.grid, stoken_size=attn.stoken_size,
                          assoc=sampling.assoc[0].cpu())
    return out, net_size


def _stages_with_super_tokens(stage, model):
    """``[stage]``, or every stage with super token size > 1; a
    :class:`VisualizationError` when there is nothing to draw."""
    sizes = model.stoken_sizes
    with_st = [i for i, s in enumerate(sizes) if s[0] > 1 or s[1] > 1]
    desc = ', '.join(f'{i} ({sizes[i][0]}x{sizes[i][1]})' for i in with_st)
    if stage is not None:
        stage = _check_stage(stage, model)
        if stage not in with_st:
            raise VisualizationError(
                f'stage {stage} has super token size 1x1 (plain attention, '
                f'no super tokens to draw); stages with super tokens: '
                f'{desc or "none"}')
        return [stage]
    if not with_st:
        raise VisualizationError(
            f'no stage of the STViT in {model.config_name} has super '
            f'tokens (stoken_size {[s[0] for s in sizes]})')
    return with_st


def _fitting(stages, model, net, image_size, log):
    """The ``stages`` whose maps fit the network input ``net``; the others
    are skipped with a message (an error when none fits)."""
    problems = {i: _check_fits(i, model, net, net != image_size)
                for i in stages}
    fit = [i for i in stages if problems[i] is None]
    if not fit:
        raise VisualizationError(problems[stages[-1]] if len(stages) == 1
                                 else '; '.join(problems.values()))
    for i in stages:
        if problems[i] is not None:
            log(f'skipping stage {i}: {problems[i]}')
    return fit


def visualize_super_tokens(config, image, out_dir: str,
                           checkpoint: Optional[str] = None,
                           stage: Optional[int] = None,
                           block: Optional[int] = None,
                           device: str = 'cpu',
                           max_size: Optional[int] = DEFAULT_MAX_SIZE,
                           model: Optional[LoadedModel] = None,
                           log=_log_stderr) -> List[str]:
    """Draws the initial and the learned super tokens of each stage with
    super token size > 1 (or of ``stage``) over ``image``.

    The learned super tokens are those of block ``block`` of the stage (by
    default its last block): each pixel of the stage's feature map is given
    to the neighbouring super token with the largest association and
    coloured by it. Writes ``<stem>_stage<i>_initial.png`` and
    ``<stem>_stage<i>_learned.png`` (the input image's size) into
    ``out_dir`` and returns their paths.
    """
    model, picture = _prepare(config, image, checkpoint, device, model)
    stages = _stages_with_super_tokens(stage, model)
    blocks = {i: _check_block(block, i, model) for i in stages}
    H, W = picture.shape[:2]
    fit = _fitting(stages, model, _net_size(H, W, max_size), (H, W), log)
    maps, net_size = super_token_maps(model, picture, fit, blocks, max_size)
    os.makedirs(out_dir, exist_ok=True)
    stem = _stem(image if not isinstance(image, np.ndarray) else 'image')
    paths = []
    for i in fit:
        stride = stage_stride(i)
        for kind in ('initial', 'learned'):
            a = maps[i][kind]
            rows = to_image_grid(a['rows'].numpy(), stride, net_size, (H, W))
            cols = to_image_grid(a['cols'].numpy(), stride, net_size, (H, W))
            pic = render_partition(picture, rows, cols,
                                   alpha=0.3 if kind == 'initial' else 0.45)
            paths.append(save_png(
                pic, osp.join(out_dir, f'{stem}_stage{i}_{kind}.png')))
    return paths


def default_points(H: int, W: int, n: int = 3) -> List[Tuple[int, int]]:
    """An n x n grid of (x, y) points at the centres of equal bins."""
    return [(int((c + 0.5) * W / n), int((r + 0.5) * H / n))
            for r in range(n) for c in range(n)]


def _check_head(head, stage, heads):
    """``'mean'`` or a head index in range, else a VisualizationError."""
    if head == 'mean':
        return head
    try:
        head = int(head)
    except (TypeError, ValueError):
        raise VisualizationError(
            f"--head must be 'mean' or a head index, got {head!r}") from None
    if not 0 <= head < heads:
        raise VisualizationError(
            f'--head {head} is out of range: stage {stage} has {heads} '
            f'head{"s" if heads > 1 else ""} (0-{heads - 1})')
    return head


def _query_points(points, grid, H, W):
    """``points`` checked to lie in the ``W`` x ``H`` image, or the default
    ``grid`` x ``grid`` points."""
    if points is None or len(points) == 0:
        if grid < 1:
            raise VisualizationError(f'--grid must be >= 1, got {grid}')
        points = default_points(H, W, grid)
    for px, py in points:
        if not (0 <= px < W and 0 <= py < H):
            raise VisualizationError(
                f'point ({px}, {py}) is outside the {W}x{H} image (x in '
                f'0..{W - 1}, y in 0..{H - 1})')
    return points


def _display_maps(maps, stride, net_size, image_size):
    """For display: bilinear upsampling of the feature maps to pixel
    centres, each map divided by its own maximum (0 stays 'no
    attention')."""
    fh, fw = maps.shape[-2:]
    up = F.interpolate(maps[None], size=(fh * stride, fw * stride),
                       mode='bilinear', align_corners=False)[0]
    up = up[:, :net_size[0], :net_size[1]]
    if tuple(net_size) != tuple(image_size):
        up = F.interpolate(up[None], size=image_size, mode='bilinear',
                           align_corners=False)[0]
    return up / up.flatten(1).max(1).values.clamp_min(1e-30).view(-1, 1, 1)


def _save_attention(picture, up, points, out_dir, prefix, ncols, title):
    """One picture per point and a montage of them: their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths, tiles, labels = [], [], []
    for n, (pt, heat) in enumerate(zip(points, up.numpy())):
        pic = render_heatmap(picture, heat, pt)
        paths.append(save_png(pic, osp.join(out_dir, f'{prefix}_p{n}.png')))
        tiles.append(pic)
        labels.append(f'({int(pt[0])}, {int(pt[1])})')
    paths.append(save_png(montage(tiles, labels, ncols, title),
                          osp.join(out_dir, f'{prefix}_grid.png')))
    return paths


def visualize_attention(config, image, out_dir: str,
                        checkpoint: Optional[str] = None,
                        points: Optional[Sequence[Tuple[float, float]]] = None,
                        grid: int = 3, stage: int = 2,
                        block: Optional[int] = None,
                        head: Union[str, int] = 'mean',
                        device: str = 'cpu',
                        max_size: Optional[int] = DEFAULT_MAX_SIZE,
                        model: Optional[LoadedModel] = None,
                        return_maps: bool = False):
    """Attention maps of query points (x, y in image pixels; default an
    ``grid`` x ``grid`` grid) at block ``block`` (default the last) of
    ``stage`` (default 2, the paper's "third layer"), mapped back to pixels
    through the association (:func:`pixel_attention`).

    Writes ``<stem>_attn_stage<i>_p<k>.png`` per point (the input's size)
    and ``<stem>_attn_stage<i>_grid.png`` (a montage), returns their paths,
    and with ``return_maps`` also the raw maps at feature resolution.
    """
    model, picture = _prepare(config, image, checkpoint, device, model)
    stage = _check_stage(stage, model)
    block = _check_block(block, stage, model)
    attn = model.backbone.layers[stage].blocks[block].attn
    head = _check_head(head, stage, attn.stoken_refine.num_heads)
    H, W = picture.shape[:2]
    net = _net_size(H, W, max_size)
    problem = _check_fits(stage, model, net, net != (H, W))
    if problem:
        raise VisualizationError(problem)
    default_grid = points is None or len(points) == 0
    points = _query_points(points, grid, H, W)
    x, net_size = preprocess(picture, model, max_size)
    feat = capture_attention_inputs(model.backbone, x,
                                    [(stage, block)])[(stage, block)]
    stride = stage_stride(stage)
    fh, fw = feat.shape[-2:]
    sy, sx = net_size[0] / H, net_size[1] / W
    queries = [(min(fh - 1, int(py * sy) // stride),
                min(fw - 1, int(px * sx) // stride)) for px, py in points]
    with torch.no_grad():
        res = pixel_attention(attn, feat, torch.tensor(queries), head)
    maps = res['maps'].cpu()
    up = _display_maps(maps, stride, net_size, (H, W))
    stem = _stem(image if not isinstance(image, np.ndarray) else 'image')
    title = (f'{stem}: attention of stage {stage}, block {block}, '
             f'head {head} (super token size {attn.stoken_size[0]}x'
             f'{attn.stoken_size[1]}); each map divided by its maximum; '
             f'captions: query point (x,y)')
    # default grid: the tiles sit where their points are
    ncols = grid if default_grid else math.ceil(math.sqrt(len(points)))
    paths = _save_attention(picture, up, points, out_dir,
                            f'{stem}_attn_stage{stage}', ncols, title)
    if return_maps:
        return paths, dict(maps=maps, mass=res['mass'].cpu(),
                           queries=queries, points=list(points))
    return paths
