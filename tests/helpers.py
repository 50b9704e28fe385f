# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What several test files need: the repository root, a free local port
for the distributed runs, and the tools' scripts loaded as modules.

pytest puts this folder on ``sys.path`` (the tests are not a package), so
a test file says ``from helpers import REPO, free_port, load_script``.
"""
import importlib.util
import os.path as osp
import socket

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def free_port() -> int:
    """A TCP port nothing listens on now (for a process group's store)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def load_script(relpath: str, name: str = None):
    """The script at ``relpath`` (from the repository root, e.g.
    ``tools/infer.py``) as a module, without running its ``__main__``."""
    path = osp.join(REPO, relpath)
    if name is None:
        name = 'mmstvit_' + relpath[:-3].replace('/', '_')
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
