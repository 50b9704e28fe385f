# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Paths that name files elsewhere."""
import re

_SCHEME = re.compile(r'^[A-Za-z][\w.+-]*:')
_DRIVE = re.compile(r'^[A-Za-z]:[\\/]')


def is_remote(path: str) -> bool:
    """True for a path with a scheme that mmengine's file backends or
    checkpoint loaders resolve (``http(s)://``, ``s3://``,
    ``open-mmlab://``, ``torchvision://``, ``mmcls://`` ...); False for a
    local path, a Windows drive path included."""
    return bool(_SCHEME.match(path)) and not _DRIVE.match(path)
