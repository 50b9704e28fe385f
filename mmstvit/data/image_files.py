# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Images that cannot be read, found before training.

Two modes:

* ``fast`` (what ``tools/train.py`` runs by default) reads at most a few
  KiB per file and decodes nothing: the file is not empty; a JPEG starts
  with SOI (``FFD8``), has a frame header (SOF) with a non-zero width and
  height before its scan (SOS), and ends with EOI (``FFD9``) after the scan
  (trailing padding allowed); a PNG has its signature, an ``IHDR`` chunk
  with a non-zero size, and an ``IEND`` chunk at its end. Other formats are
  opened by Pillow, which reads their header only. This finds empty,
  truncated (cut off at any point before the end marker) and non-image
  files, and files that cannot be opened (permissions, broken links).
  It cannot find damage inside the compressed data (flipped bits, a block
  overwritten with zeros) of a file that keeps its end marker.
* ``full`` decodes every image with Pillow (``Image.load()``), which also
  finds broken compressed data, at the cost of a decode per image.
"""
import os
import os.path as osp
from typing import Iterable, Iterator, List, Optional, Tuple

#: suffixes of the files checked in a folder (lower case)
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp',
                  '.gif')
MODES = ('fast', 'full')

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_TAIL = 1024  # bytes read at the end: room for padding after the end marker
# SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM


def _jpeg_header(f) -> Tuple[Optional[str], int]:
    """``(problem or None, offset of the scan data)``: walks the segments
    from SOI to the first SOS, checking the frame header's size."""
    pos, size = 2, None
    while True:
        f.seek(pos)
        head = f.read(4)
        if len(head) < 4 or head[0] != 0xFF:
            return 'truncated or damaged JPEG header (no scan found)', 0
        marker = head[1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        length = int.from_bytes(head[2:4], 'big')
        if marker in _SOF:
            sof = f.read(5)
            if len(sof) < 5:
                return 'truncated JPEG frame header', 0
            size = (int.from_bytes(sof[1:3], 'big'),
                    int.from_bytes(sof[3:5], 'big'))
            if 0 in size:
                return f'JPEG frame header gives size {size[1]}x{size[0]}', 0
        if marker == 0xDA:
            if size is None:
                return 'JPEG without a frame header (SOF) before its scan', 0
            return None, pos + 2 + length
        pos += 2 + length


def _tail(f, file_size: int) -> Tuple[int, bytes]:
    start = max(0, file_size - _TAIL)
    f.seek(start)
    return start, f.read()


def _check_jpeg(f, file_size: int) -> Optional[str]:
    problem, scan = _jpeg_header(f)
    if problem:
        return problem
    start, tail = _tail(f, file_size)
    end = tail.rfind(b'\xff\xd9')
    if end < 0 or start + end < scan:
        return ('truncated JPEG: no end marker (FFD9) after the image data '
                f'({file_size} bytes)')
    return None


def _check_png(f, file_size: int) -> Optional[str]:
    f.seek(8)
    ihdr = f.read(16)
    if len(ihdr) < 16 or ihdr[4:8] != b'IHDR':
        return 'truncated or damaged PNG: no IHDR chunk after the signature'
    width, height = (int.from_bytes(ihdr[8:12], 'big'),
                     int.from_bytes(ihdr[12:16], 'big'))
    if not width or not height:
        return f'PNG header gives size {width}x{height}'
    start, tail = _tail(f, file_size)
    end = tail.rfind(b'IEND')
    if end < 0 or start + end < 33:
        return f'truncated PNG: no IEND chunk at its end ({file_size} bytes)'
    return None


def _decode(path: str, header_only: bool) -> Optional[str]:
    from PIL import Image
    try:
        with Image.open(path) as im:
            if not header_only:
                im.load()
            elif 0 in im.size:
                return f'image header gives size {im.size[0]}x{im.size[1]}'
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError
        return f'cannot be read as an image ({type(e).__name__}: {e})'
    return None


def image_problem(path: str, mode: str = 'fast') -> Optional[str]:
    """What makes ``path`` unreadable as an image, or None.

    Args:
        path (str): The image file.
        mode (str): ``'fast'`` (markers and header, see the module) or
            ``'full'`` (fast, then a complete decode with Pillow).

    Returns:
        str | None: the problem in a few words.
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    try:
        with open(path, 'rb') as f:
            file_size = os.fstat(f.fileno()).st_size
            if file_size == 0:
                return 'empty file (0 bytes)'
            magic = f.read(8)
            if magic[:2] == b'\xff\xd8':
                problem = _check_jpeg(f, file_size)
            elif magic == _PNG_SIGNATURE:
                problem = _check_png(f, file_size)
            else:
                problem = _decode(path, header_only=True)
    except OSError as e:
        return f'cannot be opened ({e.strerror or e})'
    if problem is None and mode == 'full':
        problem = _decode(path, header_only=False)
    return problem


def image_files(folder: str,
                suffixes: Iterable[str] = IMAGE_SUFFIXES) -> Iterator[str]:
    """The files of ``folder`` and its subfolders whose names end with one
    of ``suffixes`` (case-insensitive), in sorted order per folder."""
    suffixes = tuple(s.lower() for s in suffixes)
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(suffixes):
                yield osp.join(root, name)


def find_unreadable_images(paths: Iterable[str], mode: str = 'fast'
                           ) -> Tuple[int, List[Tuple[str, str]]]:
    """``(number of files checked, [(path, problem), ...])`` for
    :func:`image_problem` over ``paths``."""
    count, bad = 0, []
    for path in paths:
        count += 1
        problem = image_problem(path, mode)
        if problem:
            bad.append((path, problem))
    return count, bad


def check_images(folder: str, what: str, mode: str = 'fast',
                 suffixes: Iterable[str] = IMAGE_SUFFIXES,
                 max_listed: int = 5) -> int:
    """Checks every image in ``folder`` (see :func:`image_problem`).

    Args:
        folder (str): The folder of the images (searched recursively).
        what (str): The config key that names it, for the message.
        mode (str): ``'fast'`` or ``'full'``.

    Returns:
        int: the number of files checked.

    Raises:
        DataError: naming each unreadable file (the first ``max_listed``)
        and its problem, and the fix.
    """
    from .checks import DataError
    count, bad = find_unreadable_images(image_files(folder, suffixes), mode)
    if bad:
        listed = '; '.join(f'{p}: {why}' for p, why in bad[:max_listed])
        more = f'; ... ({len(bad)} in all)' if len(bad) > max_listed else ''
        raise DataError(
            f'{len(bad)} of {count} images in {folder} ({what}) cannot be '
            f'read: {listed}{more}. Replace these files with good copies '
            '(or remove them and their annotations); --data-check off '
            'skips this check.')
    return count
