# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Masks to COCO polygons and boxes, along pixel edges (numpy only)."""
import numpy as np


def _edges(mask):
    """The boundary edges of a mask, each from a start to an end vertex
    (vertex ids ``y * width + x``) with a direction: 0 east, 1 south,
    2 west, 3 north (y grows downwards); the foreground is always on the
    right-hand side of travel. Returns ``(starts, ends, dirs, width)``."""
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    fg = m[1:-1, 1:-1]
    width = fg.shape[1] + 2  # vertex x ranges over 0..W
    starts, ends, dirs = [], [], []
    sides = (
        (fg & ~m[:-2, 1:-1], (0, 0), (1, 0), 0),  # top edge, heading east
        (fg & ~m[1:-1, 2:], (1, 0), (1, 1), 1),  # right edge, heading south
        (fg & ~m[2:, 1:-1], (1, 1), (0, 1), 2),  # bottom edge, heading west
        (fg & ~m[1:-1, :-2], (0, 1), (0, 0), 3),  # left edge, heading north
    )
    for side, (sx, sy), (ex, ey), d in sides:
        rows, cols = np.nonzero(side)
        starts.append((rows + sy) * width + cols + sx)
        ends.append((rows + ey) * width + cols + ex)
        dirs.append(np.full(rows.shape, d))
    return (np.concatenate(starts).tolist(), np.concatenate(ends).tolist(),
            np.concatenate(dirs).tolist(), width)


def _trace(first, ends, dirs, outgoing, used):
    """The corner vertices of the outline that edge ``first`` is on."""
    verts = []
    e = first
    while True:
        used[e] = True
        nxt = outgoing[ends[e]]
        if len(nxt) == 1:
            n = nxt[0]
        else:  # diagonal pinch: turn right to keep the pixels apart
            want = (dirs[e] + 1) % 4
            n = nxt[0] if dirs[nxt[0]] == want else nxt[1]
        if dirs[n] != dirs[e]:
            verts.append(ends[e])  # a corner
        e = n
        if e == first:
            return verts


def _twice_area(flat):
    """Twice the signed area of a flat polygon (> 0: clockwise on screen)."""
    k = len(flat) // 2
    area2 = 0
    for i in range(k):
        x0, y0 = flat[2 * i], flat[2 * i + 1]
        x1, y1 = flat[2 * ((i + 1) % k)], flat[2 * ((i + 1) % k) + 1]
        area2 += x0 * y1 - x1 * y0
    return area2


def mask_to_polygons(mask):
    """Traces the outline of a binary mask along pixel edges.

    Pixel ``(row r, col c)`` is the square ``[c, c+1] x [r, r+1]``, the
    convention ``pycocotools`` uses when it rasterises polygons, so
    ``pycocotools`` turns the returned outer polygons back into exactly
    ``mask`` (when there are no holes). Pixels that touch only diagonally
    belong to different outlines (4-connectivity). Collinear vertices are
    dropped.

    Args:
        mask (np.ndarray): ``(H, W)`` boolean-like array.

    Returns:
        tuple[list, list]: ``(outers, holes)``, each a list of polygons as
        flat ``[x0, y0, x1, y1, ...]`` int lists. Outer outlines run
        clockwise on screen; holes run the other way.
    """
    starts, ends, dirs, width = _edges(mask)
    outgoing = {}
    for i, s in enumerate(starts):
        outgoing.setdefault(s, []).append(i)
    used = [False] * len(starts)
    outers, holes = [], []
    for first in range(len(starts)):
        if used[first]:
            continue
        flat = []
        for v in _trace(first, ends, dirs, outgoing, used):
            flat += [v % width, v // width]
        (outers if _twice_area(flat) > 0 else holes).append(flat)
    return outers, holes


def mask_bbox(mask):
    """``[x, y, w, h]`` (COCO convention, pixel edges) of a non-empty mask."""
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    x0, y0 = int(cols[0]), int(rows[0])
    return [x0, y0, int(cols[-1]) + 1 - x0, int(rows[-1]) + 1 - y0]
