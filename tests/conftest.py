# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Fixtures that several test files use (pytest finds them here, so a test
names them as arguments without importing them)."""
import os

import pytest

from helpers import load_script, write_seg_case


@pytest.fixture(scope='module')
def train_tool():
    """``tools/train.py`` as a module (its ``__main__`` not run)."""
    return load_script('tools/train.py')


@pytest.fixture
def keep_local_rank():
    """``LOCAL_RANK`` unset during the test and as it was after it."""
    saved = os.environ.get('LOCAL_RANK')
    os.environ.pop('LOCAL_RANK', None)
    yield
    os.environ.pop('LOCAL_RANK', None)
    if saved is not None:
        os.environ['LOCAL_RANK'] = saved


@pytest.fixture(scope='module')
def seg_case(tmp_path_factory):
    """A tiny mmseg config (its backbone names a missing pretrained file)
    and four 32x32 images with masks: ``(root, config_path)``."""
    root = tmp_path_factory.mktemp('seg')
    return root, write_seg_case(root)
