# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The toy images: 1-4 filled shapes (disc, rotated rectangle, triangle) on
a textured, low-saturation background, each class in its own hue family,
from one random stream per image (numpy and Pillow only).

Shapes may overlap: a later shape occludes an earlier one, and placements
are resampled until every visible part is one piece without holes and
keeps at least :data:`MIN_VISIBLE_FRACTION` of its full area.
"""
import colorsys
import math

import numpy as np
from PIL import Image

from .toy_polygons import mask_bbox, mask_to_polygons

#: Instance classes of ``toy_coco``; COCO category ids are 1, 2, 3.
TOY_COCO_CLASSES = ('circle', 'rectangle', 'triangle')
#: Display colours (RGB) for :data:`TOY_COCO_CLASSES`.
TOY_COCO_PALETTE = [(220, 20, 60), (0, 170, 70), (30, 90, 230)]
#: Classes of ``toy_cls`` (one shape per image; class folders in this order).
TOY_CLS_CLASSES = TOY_COCO_CLASSES
#: Side of the square ``toy_cls`` images and the extent of their shape.
CLS_IMAGE_SIDE = 64
CLS_OBJECT_SIZE_RANGE = (24, 48)

#: Image sides are drawn independently from these values (pixels).
IMAGE_SIDES = (256, 288, 320)
#: Object extent (diameter / longest side), pixels.
OBJECT_SIZE_RANGE = (32, 144)
MAX_OBJECTS = 4
#: Minimum fraction of an object that must stay visible under occluders.
MIN_VISIBLE_FRACTION = 0.6
#: Centre hue of each class's colour family, in [0, 1) (red, green, blue).
CLASS_HUES = (0.0, 0.36, 0.62)
HUE_JITTER = 0.05

_DATASET_IDS = {'coco': 1, 'ade': 2, 'cls': 3}
_SPLIT_IDS = {'train': 1, 'val': 2}
_PLACEMENT_TRIES = 60


def scene_rng(seed, dataset, split, index):
    """The random stream of one image; independent of how many are made."""
    return np.random.default_rng(
        [int(seed), _DATASET_IDS[dataset], _SPLIT_IDS[split], int(index)])


def _hsv(h, s, v):
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _background(rng, h, w):
    """A float32 ``(H, W, 3)`` texture in [0, 255], low saturation."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    base_hue = rng.random()
    c1 = _hsv(base_hue, rng.uniform(0.0, 0.2), rng.uniform(0.3, 0.8))
    c2 = _hsv(base_hue + rng.uniform(-0.2, 0.2), rng.uniform(0.0, 0.2),
              rng.uniform(0.3, 0.8))
    kind = rng.integers(4)
    theta = rng.uniform(0, math.pi)
    proj = xs * math.cos(theta) + ys * math.sin(theta)
    if kind == 0:  # linear gradient
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    elif kind == 1:  # soft stripes
        period = rng.uniform(8, 40)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * proj / period + rng.uniform(
            0, 2 * math.pi))
    elif kind == 2:  # hard stripes
        period = rng.uniform(10, 48)
        t = ((proj / period + rng.random()) % 1.0 < 0.5).astype(np.float32)
    else:  # smooth random blobs
        grid = int(rng.integers(3, 9))
        small = (rng.random((grid, grid)) * 255).astype(np.uint8)
        t = np.asarray(
            Image.fromarray(small).resize((w, h), Image.BILINEAR),
            dtype=np.float32) / 255.0
    img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    img = img * 255.0
    img += rng.normal(0, rng.uniform(4, 14), size=(h, w, 1))  # luminance
    img += rng.normal(0, 4, size=(h, w, 3))  # chroma
    return img


def _shape_mask(rng, label, size, h, w):
    """A random shape of class ``label`` (0-based), or None if off-image."""
    cx = rng.uniform(size * 0.5, w - size * 0.5)
    cy = rng.uniform(size * 0.5, h - size * 0.5)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    px, py = xs + 0.5 - cx, ys + 0.5 - cy  # pixel centres, shape frame
    if label == 0:  # circle
        mask = px * px + py * py <= (size * 0.5)**2
    elif label == 1:  # rectangle, longest side = size, rotated +-30 deg
        a = math.radians(rng.uniform(-30, 30))
        u = px * math.cos(a) + py * math.sin(a)
        v = -px * math.sin(a) + py * math.cos(a)
        half_b = size * 0.5 * rng.uniform(0.5, 1.0)
        mask = (np.abs(u) <= size * 0.5) & (np.abs(v) <= half_b)
    else:  # triangle, near-equilateral, side ~ size, any rotation
        radius = size / math.sqrt(3.0)
        a0 = rng.uniform(0, 2 * math.pi)
        pts = []
        for k in range(3):
            ang = a0 + k * 2 * math.pi / 3 + math.radians(rng.uniform(-8, 8))
            r = radius * rng.uniform(0.92, 1.08)
            pts.append((r * math.cos(ang), r * math.sin(ang)))
        mask = np.ones((h, w), dtype=bool)
        for k in range(3):  # inside = same side of all three edges
            (x0, y0), (x1, y1) = pts[k], pts[(k + 1) % 3]
            cross = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
            mask &= cross >= 0
    if (not mask.any() or mask[0].any() or mask[-1].any()
            or mask[:, 0].any() or mask[:, -1].any()):
        return None  # touches the border; keep every object whole
    return mask


def _is_simple(mask):
    """One outline and no holes: representable as a single COCO polygon."""
    outers, holes = mask_to_polygons(mask)
    return len(outers) == 1 and not holes


def _paint(rng, img, mask, label):
    """Fills ``mask`` with a noisy, shaded colour from the class's family."""
    hue = CLASS_HUES[label] + rng.uniform(-HUE_JITTER, HUE_JITTER)
    colour = _hsv(hue, rng.uniform(0.55, 0.95), rng.uniform(0.6, 0.95)) * 255
    rows, cols = np.nonzero(mask)
    theta = rng.uniform(0, 2 * math.pi)
    proj = cols * math.cos(theta) + rows * math.sin(theta)
    proj = (proj - proj.mean()) / max(float(np.ptp(proj)), 1.0)
    shade = 1.0 + rng.uniform(0.1, 0.35) * proj  # directional lighting
    pix = colour[None] * shade[:, None]
    pix += rng.normal(0, rng.uniform(4, 12), size=pix.shape)
    img[rows, cols] = pix


def generate_scene(seed, dataset, split, index):
    """Synthesises one image and its objects, deterministically.

    Args:
        seed (int): Global seed.
        dataset (str): ``'coco'`` or ``'ade'`` (separate streams).
        split (str): ``'train'`` or ``'val'`` (separate streams).
        index (int): Image index within the split.

    Returns:
        tuple[np.ndarray, list[dict]]: the ``(H, W, 3)`` uint8 RGB image and
        its objects in painting order, each a dict with ``label`` (0-based
        index into :data:`TOY_COCO_CLASSES`), ``mask`` (bool ``(H, W)``,
        visible pixels only), ``polygon`` (flat int list tracing ``mask``),
        ``bbox`` ``[x, y, w, h]`` and ``area`` (pixel count).
    """
    rng = scene_rng(seed, dataset, split, index)
    h = int(rng.choice(IMAGE_SIDES))
    w = int(rng.choice(IMAGE_SIDES))
    img = _background(rng, h, w)
    num = int(rng.integers(1, MAX_OBJECTS + 1))
    full, visible, labels = [], [], []
    for _ in range(num):
        for _ in range(_PLACEMENT_TRIES):
            label = int(rng.integers(len(TOY_COCO_CLASSES)))
            size = rng.uniform(*OBJECT_SIZE_RANGE)
            mask = _shape_mask(rng, label, size, h, w)
            if mask is None or not _is_simple(mask):
                continue
            new_visible = []
            ok = True
            for f, v in zip(full, visible):
                if not (v & mask).any():
                    new_visible.append(v)
                    continue
                nv = v & ~mask
                if (nv.sum() < MIN_VISIBLE_FRACTION * f.sum()
                        or not _is_simple(nv)):
                    ok = False
                    break
                new_visible.append(nv)
            if ok:
                visible = new_visible + [mask]
                full.append(mask)
                labels.append(label)
                _paint(rng, img, mask, label)
                break
    objects = []
    for label, v in zip(labels, visible):
        outers, _ = mask_to_polygons(v)
        objects.append(
            dict(
                label=label,
                mask=v,
                polygon=outers[0],
                bbox=mask_bbox(v),
                area=int(v.sum())))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects


def label_map(shape, objects):
    """Semantic label map (uint8): 0 background, ``label + 1`` per object."""
    seg = np.zeros(shape, dtype=np.uint8)
    for obj in objects:
        seg[obj['mask']] = obj['label'] + 1
    return seg


def generate_cls_image(seed, split, index):
    """One ``toy_cls`` image: a single shape of class ``index % 3`` on a
    textured background.

    Returns:
        tuple[np.ndarray, int]: the ``(S, S, 3)`` uint8 RGB image
        (``S = CLS_IMAGE_SIDE``) and its 0-based label.
    """
    rng = scene_rng(seed, 'cls', split, index)
    label = int(index) % len(TOY_CLS_CLASSES)
    side = CLS_IMAGE_SIDE
    img = _background(rng, side, side)
    for _ in range(_PLACEMENT_TRIES):
        mask = _shape_mask(rng, label, rng.uniform(*CLS_OBJECT_SIZE_RANGE),
                           side, side)
        if mask is not None:
            _paint(rng, img, mask, label)
            return np.clip(np.rint(img), 0, 255).astype(np.uint8), label
    raise RuntimeError(f'toy_cls: could not place a {TOY_CLS_CLASSES[label]} '
                       f'in a {side}x{side} image (split {split!r}, image '
                       f'{index}); CLS_OBJECT_SIZE_RANGE is too large')
