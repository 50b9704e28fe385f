# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Which OpenMMLab stack an environment holds: ``upstream``, ``onedl``,
``none`` or ``mixed`` (``tools/install.sh`` asks before it installs).

The distributions of each stack are read from the requirement files that
``tools/install.sh`` installs: ``requirements/mminstall.txt`` (upstream) and
``requirements/mminstall-onedl.txt`` (the fork). A distribution named in one
file and not in the other marks its stack (mmcv is in neither set: both
stacks use the same mmcv 2.1.0 wheel). ``onedl-mmcv`` marks no stack but
is refused by both: it installs the ``mmcv`` module that the 2.1.0 wheel
provides.

Usage (run with the interpreter of the environment to check)::

    python tools/misc/stack_check.py                 # prints the stack
    python tools/misc/stack_check.py --expect onedl  # exit 3 if another is there

Exit status: 0, or 3 when ``--expect`` names a stack and the environment
holds distributions of the other one (or ``onedl-mmcv``); the message names
them and how to start clean.
"""
import argparse
import importlib.metadata
import os.path as osp
import re
import sys
from typing import Dict, List, Set

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FILES = {'upstream': 'mminstall.txt', 'onedl': 'mminstall-onedl.txt'}
#: installs the ``mmcv`` module the shared mmcv 2.1.0 wheel provides
CONFLICTING = ('onedl-mmcv',)
#: in a stack's file but marking none: the build tools' pin, and the mmcv
#: 2.1.0 wheel both stacks use
NOT_A_STACK = ('setuptools', 'mmcv')


def requirement_names(path: str) -> List[str]:
    """The distribution names of a requirements file (comments, options
    and version specifiers dropped; names lower-case, ``_`` as ``-``)."""
    names = []
    with open(path) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if not line or line.startswith('-'):
                continue
            name = re.match(r'[A-Za-z0-9][A-Za-z0-9._-]*', line).group(0)
            names.append(name.lower().replace('_', '-'))
    return names


def stack_names(root: str = ROOT) -> Dict[str, Set[str]]:
    """``{stack: the distributions that mark it}``."""
    listed = {stack: set(requirement_names(
        osp.join(root, 'requirements', name))) - set(NOT_A_STACK)
        for stack, name in FILES.items()}
    return {stack: names - set.union(*(v for k, v in listed.items()
                                       if k != stack))
            for stack, names in listed.items()}


def installed_versions(names) -> Dict[str, str]:
    """``{name: version}`` of the distributions of ``names`` that are
    installed in this interpreter's environment."""
    found = {}
    for name in sorted(names):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def held_stack(root: str = ROOT) -> str:
    """``'upstream'``, ``'onedl'``, ``'none'`` or ``'mixed'``."""
    held = [stack for stack, names in stack_names(root).items()
            if installed_versions(names)]
    return held[0] if len(held) == 1 else ('none' if not held else 'mixed')


def refusal(expect: str, root: str = ROOT) -> str:
    """Why ``expect`` cannot be installed here ('' when it can)."""
    names = stack_names(root)
    other = [s for s in names if s != expect]
    foreign = installed_versions(set().union(*(names[s] for s in other)))
    foreign.update(installed_versions(CONFLICTING))
    if not foreign:
        return ''
    held = ', '.join(f'{k} {v}' for k, v in foreign.items())
    return (
        f'mmstvit install: this environment ({sys.prefix}) holds {held}, '
        f'which the {expect} stack does not use; the two stacks '
        f"({' and '.join(FILES)}) install the same module names "
        '(mmengine, mmcv, mmdet, mmseg, mmpretrain), so one environment '
        'holds one of them. Start clean in a fresh virtual environment:\n'
        f'    python3 -m venv .venv-{expect}\n'
        f'    make install STACK={expect} PYTHON=.venv-{expect}/bin/python\n'
        '(or `make test STACK=all`, which makes the onedl one itself), or '
        f'pip uninstall {" ".join(foreign)} here first.')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--expect', choices=sorted(FILES),
                        help='exit 3 (with a message) if the environment '
                        'holds the other stack')
    parser.add_argument('--root', default=ROOT, help='the checkout')
    args = parser.parse_args(argv)
    if args.expect:
        why = refusal(args.expect, args.root)
        if why:
            print(why, file=sys.stderr)
            return 3
    stack = held_stack(args.root)
    versions = installed_versions(
        set().union(*stack_names(args.root).values()))
    detail = ', '.join(f'{k} {v}' for k, v in versions.items())
    print(f'stack: {stack}' + (f' ({detail})' if detail else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
