# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Drawing: colours of super tokens, partitions and heat maps over images,
labelled montages and PNG files (numpy and Pillow; no torch)."""
from typing import List, Optional, Sequence, Tuple

import numpy as np

# 16 well separated colours. A super token (r, c) gets colour
# PALETTE[(r % 4) * 4 + c % 4]: two super tokens whose regions can touch are
# at most 3 rows and 3 columns apart (each pixel belongs to one of the 3x3
# super tokens around its own cell, and touching pixels lie in the same or
# adjacent cells), so they always differ in (r % 4, c % 4) and therefore in
# colour. The order below is shuffled so that the 4 x 4 tiling does not look
# like stripes.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
    (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
    (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
    (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128),
], dtype=np.uint8)
_PALETTE_ORDER = np.array([0, 5, 2, 9, 13, 3, 12, 7, 4, 11, 1, 14, 8, 15, 6,
                           10])


# ---------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------


def token_colours(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(H, W) super token positions -> (H, W, 3) uint8 colours, such that
    any two super tokens whose regions can touch get different colours."""
    idx = (np.asarray(rows) % 4) * 4 + np.asarray(cols) % 4
    return PALETTE[_PALETTE_ORDER[idx]]


def to_image_grid(fmap: np.ndarray, stride: int, net_size, out_size,
                  ) -> np.ndarray:
    """A feature-resolution map -> the input image's pixel grid (nearest):
    each feature pixel covers ``stride`` x ``stride`` network-input pixels
    (cropped at the right/bottom), then the network input is scaled to the
    picture's size if it was resized."""
    up = np.repeat(np.repeat(fmap, stride, 0), stride, 1)
    up = up[:net_size[0], :net_size[1]]
    if tuple(net_size) != tuple(out_size):
        ri = (np.arange(out_size[0]) * net_size[0] // out_size[0])
        ci = (np.arange(out_size[1]) * net_size[1] // out_size[1])
        up = up[ri][:, ci]
    return up


def boundaries(ids: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels where the id changes (to the right or below), thickened."""
    edge = np.zeros(ids.shape, dtype=bool)
    dx = ids[:, 1:] != ids[:, :-1]
    dy = ids[1:, :] != ids[:-1, :]
    edge[:, 1:] |= dx
    edge[1:, :] |= dy
    for _ in range(max(0, width - 1)):
        grown = edge.copy()
        grown[:, :-1] |= edge[:, 1:]
        grown[:-1, :] |= edge[1:, :]
        edge = grown
    return edge


def line_width(size) -> int:
    return max(1, round(min(size) / 300))


def render_partition(image: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                     alpha: float = 0.45) -> np.ndarray:
    """Colours each region (rows/cols at image resolution) over the image
    and outlines the region boundaries in white."""
    colours = token_colours(rows, cols).astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + colours * alpha
    ids = rows.astype(np.int64) * 100003 + cols
    edge = boundaries(ids, line_width(image.shape[:2]))
    out[edge] = 255.
    return out.clip(0, 255).astype(np.uint8)


def _colormap(values: np.ndarray, name: str = 'turbo') -> np.ndarray:
    import matplotlib
    cmap = matplotlib.colormaps[name]
    return (cmap(values)[..., :3] * 255).astype(np.float32)


def render_heatmap(image: np.ndarray, heat: np.ndarray,
                   point: Optional[Tuple[float, float]] = None
                   ) -> np.ndarray:
    """Blends a heat map in [0, 1] (image resolution) over a dimmed image;
    the alpha grows with the value so the picture stays readable. ``point``
    is (x, y), marked with a ring and a cross."""
    from PIL import Image, ImageDraw
    heat = np.clip(heat, 0., 1.)
    alpha = (0.15 + 0.6 * heat)[..., None]
    base = image.astype(np.float32) * 0.8
    out = base * (1 - alpha) + _colormap(heat) * alpha
    pic = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    if point is not None:
        draw = ImageDraw.Draw(pic)
        x, y = point
        r = max(4, round(min(image.shape[:2]) / 40))
        lw = max(1, r // 3)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=(0, 0, 0),
                     width=lw + 2)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=(255, 255, 255),
                     width=lw)
        c = max(2, r // 2)
        for colour, width in (((0, 0, 0), lw + 2), ((255, 255, 255), lw)):
            draw.line([x - c, y, x + c, y], fill=colour, width=width)
            draw.line([x, y - c, x, y + c], fill=colour, width=width)
    return np.asarray(pic)


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> List[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels."""
    lines, line = [], ''
    for word in text.split():
        cand = f'{line} {word}' if line else word
        if line and font.getlength(cand) > width:
            lines.append(line)
            line = word
        else:
            line = cand
    return lines + ([line] if line else [])


def montage(tiles: Sequence[np.ndarray], labels: Sequence[str],
            ncols: int, title: Optional[str] = None,
            tile_width: int = 320, pad: int = 6) -> np.ndarray:
    """Tiles (all the same size) in a grid, a caption under each and an
    optional title line on top."""
    from PIL import Image, ImageDraw
    h, w = tiles[0].shape[:2]
    tw = min(tile_width, w)
    th = max(1, round(h * tw / w))
    fs = max(11, min(16, tw // 18))
    cap = fs + 8
    nrows = -(-len(tiles) // ncols)
    W = ncols * tw + (ncols + 1) * pad
    font = _font(fs)
    lines = _wrap(title, font, W - 2 * pad) if title else []
    top = len(lines) * (fs + 4) + (4 if lines else 0)
    H = top + nrows * (th + cap) + (nrows + 1) * pad
    canvas = Image.new('RGB', (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for n, line in enumerate(lines):
        draw.text((pad + 2, pad + n * (fs + 4)), line, fill=(0, 0, 0),
                  font=font)
    for n, (tile, label) in enumerate(zip(tiles, labels)):
        r, c = divmod(n, ncols)
        x0 = pad + c * (tw + pad)
        y0 = top + pad + r * (th + cap + pad)
        canvas.paste(Image.fromarray(tile).resize((tw, th), Image.LANCZOS),
                     (x0, y0))
        draw.text((x0 + 2, y0 + th + 3), label, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def save_png(array: np.ndarray, path: str) -> str:
    from PIL import Image
    Image.fromarray(array).save(path, compress_level=3)
    return path
