# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""mmstvit's tools from an installed package, in any folder.

    python -m mmstvit TOOL [ARGS ...]      (or the console script: mmstvit TOOL)
    python -m mmstvit --list               the tools, one line each
    python -m mmstvit --configs            every config by scope
    python -m mmstvit --where              the folder of configs/, tools/, ...

``TOOL`` is a script of ``tools/`` by its name (``train``, ``test``, ``infer``,
``demo``, ``make_toy_data``, ``get_flops``, ``stvit_to_mm``, ``dist_train``,
...): it runs as ``python tools/<...>/TOOL.py ARGS`` would in the checkout,
from ``mmstvit/.mim/tools`` of an installed package. A config argument may be
given by scope: ``mmstvit::toy/mask_rcnn_stvit_s_toy.py`` (or another
toolbox's, ``mmdet::...``). Example, in an empty folder::

    python -m mmstvit make_toy_data --out data
    python -m mmstvit train mmstvit::toy/mask_rcnn_stvit_s_toy.py
"""
import ast
import os
import os.path as osp
import shutil
import subprocess
import sys

from mmstvit import mim


def _summary(path: str) -> str:
    """The first line of a tool's docstring (or of its leading comment)."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except OSError:
        return ''
    if path.endswith('.py'):
        try:
            doc = ast.get_docstring(ast.parse(text)) or ''
        except SyntaxError:
            doc = ''
        return doc.strip().splitlines()[0] if doc.strip() else ''
    for line in text.splitlines()[1:]:
        if line.startswith('#') and line.strip('# ').strip():
            return line.strip('# ').strip()
    return ''


def _resolve(arg: str) -> str:
    """A ``scope::folder/file.py`` argument as its file; others as given."""
    if not (mim.SCOPED.match(arg) and arg.endswith('.py')):
        return arg
    try:
        return mim.config_path(arg)
    except FileNotFoundError:
        from mmstvit.cli.config_path import ConfigPathError, check_config_path
        from mmstvit.cli.errors import exit_with
        try:
            check_config_path(arg)
        except ConfigPathError as e:
            raise exit_with(e) from None
        raise


def command(tool: str, args) -> list:
    """The command line that runs ``tool`` with ``args``."""
    found = mim.tools()
    if tool not in found:
        raise SystemExit(f'mmstvit: no tool {tool!r}; the tools are '
                         f'{", ".join(sorted(found))} (python -m mmstvit '
                         '--list)')
    # the file itself: for an editable install, the checkout's (the tools
    # then work on the checkout as they do when run from it)
    path = osp.realpath(found[tool])
    args = [_resolve(a) for a in args]
    if path.endswith('.sh'):
        return ['bash', path] + args
    return [sys.executable, path] + args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__.strip())
        return 0
    if argv[0] == '--where':
        print(mim.require_files_root())
        return 0
    if argv[0] == '--list':
        for name, path in sorted(mim.tools().items()):
            print(f'{name:24s} {_summary(path)}')
        return 0
    if argv[0] == '--configs':
        print('\n'.join(mim.config_names()))
        return 0
    cmd = command(argv[0], argv[1:])
    if os.name == 'posix':
        sys.stdout.flush()
        sys.stderr.flush()
        # the tool replaces this process: its exit status, signals, output
        os.execv(shutil.which(cmd[0]) or cmd[0], cmd)
    return subprocess.call(cmd)


if __name__ == '__main__':
    sys.exit(main())
