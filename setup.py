# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Install mmstvit.

The OpenMMLab stack (torch, mmcv built from source, mmdet, mmseg, mmpretrain) is
installed by ``make install`` (see README, "Installation"): mmcv 2.1.0 has to be
compiled against the torch that is present, which plain ``pip install`` cannot do.

Like mmdet, mmseg and mmpretrain, the package carries its configs, tools and
model index in ``mmstvit/.mim/`` (``configs/``, ``tools/``, ``model-index.yml``),
where mmengine's ``mmstvit::folder/file.py`` config names and the model names
look for them:

* a wheel (``pip install .``, ``python -m build``, ``pip wheel``) gets copies
  of them, written into the build folder (the checkout is left as it is);
* an editable install (``pip install -e .``, ``make install``) gets
  ``mmstvit/.mim/*`` as links to the checkout's own folders (git ignores
  them), so edits to a config are live.

Both also install ``mmstvit-scope.pth`` with the module ``_mmstvit_scope``:
mmengine only accepts the scopes of its own table in ``_base_ = 'pkg::...'``,
and reads a config's ``_base_`` before its ``custom_imports``, so the line
teaches mmengine the ``mmstvit`` scope when mmengine is imported, in every
process of the environment (see ``_mmstvit_scope.py``).
"""
import os
import os.path as osp
import platform
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

HERE = osp.dirname(osp.abspath(__file__))

#: what goes into mmstvit/.mim (paths from the repository root)
MIM_FILES = ('configs', 'tools', 'model-index.yml')
#: left out of the wheel's copy: caches, and the installer of a checkout
MIM_IGNORE = ('__pycache__', '*.pyc', 'install.sh')
#: the start-up line that gives mmengine the mmstvit:: scope
SCOPE_PTH = 'mmstvit-scope.pth'
SCOPE_PTH_LINE = (
    "import importlib.util as u; u.find_spec('_mmstvit_scope') and "
    "__import__('_mmstvit_scope').install()\n")


def get_version() -> str:
    scope: dict = {}
    with open(osp.join(HERE, 'mmstvit', 'version.py')) as f:
        exec(compile(f.read(), 'version.py', 'exec'), scope)
    return scope['__version__']


def parse_requirements(name: str) -> list:
    """Requirement lines of ``requirements/<name>.txt`` (comments dropped)."""
    reqs = []
    with open(osp.join(HERE, 'requirements', name)) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line and not line.startswith('-'):
                reqs.append(line)
    return reqs


def _remove(path: str) -> None:
    if osp.islink(path) or osp.isfile(path):
        os.remove(path)
    elif osp.isdir(path):
        shutil.rmtree(path)


def link_mim(root: str = HERE) -> None:
    """``mmstvit/.mim/<name>`` -> ``../../<name>`` in the checkout (an
    editable install); copies where links cannot be made (Windows)."""
    mim = osp.join(root, 'mmstvit', '.mim')
    os.makedirs(mim, exist_ok=True)
    for name in MIM_FILES:
        src, dst = osp.join(root, name), osp.join(mim, name)
        _remove(dst)
        if platform.system() == 'Windows':
            _copy(src, dst)
        else:
            os.symlink(osp.relpath(src, mim), dst)


def _copy(src: str, dst: str) -> None:
    if osp.isdir(src):
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*MIM_IGNORE))
    else:
        shutil.copyfile(src, dst)


def copy_mim(package_dir: str, root: str = HERE) -> None:
    """Fresh copies of :data:`MIM_FILES` in ``<package_dir>/.mim`` (a wheel's
    build folder; whatever an earlier build left there goes first)."""
    mim = osp.join(package_dir, '.mim')
    _remove(mim)
    os.makedirs(mim)
    for name in MIM_FILES:
        _copy(osp.join(root, name), osp.join(mim, name))


class BuildPy(build_py):
    """build_py that also builds ``mmstvit/.mim`` and the scope line."""

    def run(self):
        super().run()
        if self.editable_mode:
            # PEP 660: the package is the checkout's; the .pth goes into the
            # editable wheel, whose folder the install command writes to
            link_mim()
            target = self.get_finalized_command('install').install_lib
        else:
            copy_mim(osp.join(self.build_lib, 'mmstvit'))
            target = self.build_lib
        with open(osp.join(target, SCOPE_PTH), 'w') as f:
            f.write(SCOPE_PTH_LINE)


class Develop(develop):
    """``setup.py develop``: setuptools >= 80 hands it to ``pip install -e``
    (PEP 660, :class:`BuildPy` above); older ones link the checkout here."""

    def run(self):
        link_mim()
        super().run()
        install_dir = getattr(self, 'install_dir', None)
        if install_dir and osp.isdir(install_dir):
            with open(osp.join(install_dir, SCOPE_PTH), 'w') as f:
                f.write(SCOPE_PTH_LINE)


SETUP = dict(
    name='mmstvit',
    version=get_version(),
    description='Super Token Vision Transformer (STViT, CVPR 2023) for '
    'mmdetection, mmsegmentation and mmpretrain',
    long_description=open(osp.join(HERE, 'README.md'), encoding='utf-8').read()
    if osp.exists(osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'docs')),
    py_modules=['_mmstvit_scope'],
    python_requires='>=3.8',
    install_requires=parse_requirements('runtime.txt'),
    extras_require={
        'mim': parse_requirements('mminstall.txt'),
        'tests': parse_requirements('tests.txt'),
        'timm': parse_requirements('timm.txt'),
    },
    entry_points={'console_scripts': ['mmstvit = mmstvit.__main__:main']},
    cmdclass={'build_py': BuildPy, 'develop': Develop},
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    zip_safe=False,
)

if __name__ == '__main__':  # (the tests import this file for link_mim)
    setup(**SETUP)
