# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""mmstvit as an OpenMMLab package.

* The source distribution and the wheel built from it (setuptools' PEP 517
  hooks, as ``python -m build --no-isolation`` calls them) carry the configs,
  tools and model index in ``mmstvit/.mim``, and nothing else beyond the code.
* That wheel, installed into a fresh virtual environment that sees the
  installed stack, works on its own from a folder outside the checkout:
  ``list_models``, config names by scope, the tools as ``python -m mmstvit``,
  and a config of another project with ``_base_ = 'mmstvit::...'`` taking a
  training step through mmdet's own ``tools/train.py`` (which reads the
  ``_base_`` before anything imports mmstvit).
* An editable install (what ``make install`` runs) links ``mmstvit/.mim`` to
  the checkout and resolves the same names.

The checkout is copied first: nothing is built inside it.
"""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
import yaml

from helpers import REPO, TOY_COCO_DET_DATA

#: what building needs from the checkout (the rest is data, caches, docs)
BUILD_INPUTS = ('setup.py', 'setup.cfg', 'pyproject.toml', 'MANIFEST.in',
                'README.md', 'model-index.yml', '_mmstvit_scope.py',
                'requirements', 'mmstvit', 'configs', 'tools', 'tests')
IGNORE = shutil.ignore_patterns('.mim', '__pycache__', '*.pyc', '*.pth')
TINY = ("dict(_delete_=True, embed_dims=[16, 32, 48, 64], "
        "depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 2])")


def copy_checkout(dst):
    os.makedirs(dst)
    for name in BUILD_INPUTS:
        src = osp.join(REPO, name)
        if osp.isdir(src):
            shutil.copytree(src, osp.join(dst, name), ignore=IGNORE)
        else:
            shutil.copyfile(src, osp.join(dst, name))
    return dst


def run(cmd, cwd, timeout=600, env=None):
    proc = subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, (
        f'$ {" ".join(map(str, cmd))}\n' + (proc.stdout + proc.stderr)[-5000:])
    return proc.stdout + proc.stderr


def pep517(hook, out_dir, cwd):
    """Calls a setuptools build hook in ``cwd``; the file it wrote."""
    code = (f'from setuptools import build_meta as b; '
            f'print("BUILT", b.{hook}({str(out_dir)!r}))')
    out = run([sys.executable, '-c', code], cwd)
    return osp.join(out_dir, out.split('BUILT ', 1)[1].split()[0])


@pytest.fixture(scope='module')
def dists(tmp_path_factory):
    """``(sdist, wheel)``: the sdist of a copy of the checkout, and the
    wheel built from the unpacked sdist."""
    tmp = tmp_path_factory.mktemp('dists')
    src = copy_checkout(tmp / 'checkout')
    out = tmp / 'dist'
    out.mkdir()
    sdist = pep517('build_sdist', out, src)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / 'unpacked')
    unpacked = tmp / 'unpacked' / osp.basename(sdist)[:-len('.tar.gz')]
    wheel = pep517('build_wheel', out, unpacked)
    return sdist, wheel


def venv_python(path):
    """A fresh virtual environment that sees the installed stack (no pip of
    its own: the stack's pip installs into it)."""
    subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages',
                    '--without-pip', str(path)], check=True, timeout=120)
    return str(path / 'bin' / 'python')


def clean_env():
    """The environment of a user: no PYTHONPATH (the checkout stays out)."""
    env = dict(os.environ, PYTHONNOUSERSITE='1')
    env.pop('PYTHONPATH', None)
    return env


def repo_files(folder, skip=()):
    root = osp.join(REPO, folder)
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x != '__pycache__']
        out += [osp.relpath(osp.join(d, f), REPO) for f in files
                if f.endswith(('.py', '.yml', '.sh')) and f not in skip]
    return sorted(out)


def index_models():
    """``[(name, config, task)]`` of the checkout's model-index.yml."""
    with open(osp.join(REPO, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    models = []
    for meta in index['Import']:
        with open(osp.join(REPO, meta)) as f:
            for m in yaml.safe_load(f)['Models']:
                tasks = {r['Task'] for r in m.get('Results') or []}
                models.append((m['Name'], m['Config'], sorted(tasks)))
    return models


# ------------------------------------------------------------ contents ----
def test_sdist_and_wheel_carry_configs_tools_and_index(dists):
    sdist, wheel = dists
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split('/', 1)[1] for n in tar.getnames() if '/' in n}
    for name in ('setup.py', 'pyproject.toml', 'model-index.yml',
                 '_mmstvit_scope.py', 'requirements/runtime.txt',
                 'requirements/mminstall.txt', 'tools/install.sh'):
        assert name in in_sdist, name
    assert set(repo_files('configs')) <= in_sdist
    assert not any('.mim' in n for n in in_sdist)

    names = zipfile.ZipFile(wheel).namelist()
    mim = 'mmstvit/.mim/'
    assert mim + 'model-index.yml' in names
    # every config, metafile and tool of the checkout (not its installer)
    for path in repo_files('configs') + repo_files('tools',
                                                   skip=('install.sh', )):
        assert mim + path in names, path
    assert mim + 'tools/install.sh' not in names
    for _, config, _ in index_models():
        assert mim + config in names
    # the scope line and its module, the console script; nothing else
    assert '_mmstvit_scope.py' in names and 'mmstvit-scope.pth' in names
    dist_info = 'mmstvit-0.1.0.dist-info/'
    entry_points = zipfile.ZipFile(wheel).read(dist_info + 'entry_points.txt')
    assert b'mmstvit = mmstvit.__main__:main' in entry_points
    others = [n for n in names if not n.startswith(('mmstvit/', dist_info))]
    assert sorted(others) == ['_mmstvit_scope.py', 'mmstvit-scope.pth']
    assert not any('__pycache__' in n or n.endswith(('.pyc', '.pth', '.pt'))
                   for n in names if n != 'mmstvit-scope.pth')
    assert osp.getsize(wheel) < 1024 * 1024  # code and text only


# ------------------------------------------------ the wheel on its own ----
OTHER_PROJECT = """
# A config of another project: mmstvit's COCO Mask R-CNN, by scope, on the
# toy data of `python -m mmstvit make_toy_data`, as small as a test wants.
_base_ = 'mmstvit::mask_rcnn/mask_rcnn_stvit_s_1x.py'
model = dict(
    backbone=dict(arch={tiny}, stoken_size=(4, 2, 1, 1), init_cfg=None,
                  drop_path_rate=0.),
    neck=dict(in_channels=[16, 32, 48, 64]),
    roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=50),
                   rcnn=dict(sampler=dict(num=32))))
""" + TOY_COCO_DET_DATA.replace('{root}', 'data/toy_coco') + """
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=1,
                 val_interval=100)
param_scheduler = []
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=1),
                     logger=dict(interval=1))
log_processor = dict(by_epoch=False)
"""

CHECK_INSTALLED = """
import json, os, sys
site = sys.argv[1]
# the scope works before anything imports mmstvit (mmstvit-scope.pth)
from mmengine.config.utils import MODULE2PACKAGE
assert MODULE2PACKAGE.get('mmstvit') == 'mmstvit', MODULE2PACKAGE
assert 'mmstvit' not in sys.modules
from mmengine.hub import get_config
cfg = get_config('mmstvit::toy/upernet_stvit_s_toy.py')
import mmstvit, _mmstvit_scope
from mmstvit import mim
from mmstvit.model_index import load_models
from mmpretrain import list_models
out = dict(
    mmstvit=mmstvit.__file__, scope=_mmstvit_scope.__file__,
    files_root=mim.files_root(), installed=mim.installed(),
    checkout_on_path=[p for p in sys.path if p and
                      os.path.isfile(os.path.join(p, 'model-index.yml'))],
    toy_backbone=cfg.model.backbone.type,
    list_models=list_models('*stvit*'),
    index=[(m.name, m.config) for m in load_models()],
    configs=mim.config_names())
# every model of the index: its config in the installed copy, by scope;
# one of each family loaded (their relative and mmdet:: bases resolve)
from mmengine.config import Config
families = set()
for name, config in out['index']:
    scoped = 'mmstvit::' + config[len('configs/'):]
    path = mim.config_path(scoped)
    assert path.startswith(site), path
    family = os.path.dirname(config)
    if family not in families:
        families.add(family)
        c = Config.fromfile(path)
        assert c.model.backbone.type == 'STViT', name
out['families'] = sorted(families)
# the inferencer by name (random weights: the run is what is checked)
import numpy as np
from mmpretrain import ImageClassificationInferencer
from mmpretrain.apis import ModelHub
assert ModelHub.get('stvit-small_8xb128_in1k').config.filename.startswith(
    site)
inferencer = ImageClassificationInferencer('stvit-small_8xb128_in1k')
image = np.random.RandomState(0).randint(0, 255, (64, 64, 3), np.uint8)
out['pred_scores'] = len(inferencer(image)[0]['pred_scores'])
print('RESULT', json.dumps(out))
"""


def test_wheel_works_on_its_own(dists, tmp_path_factory):
    """pip install of the wheel into a fresh virtual environment; used from
    a folder outside the checkout, with no PYTHONPATH."""
    _, wheel = dists
    tmp = tmp_path_factory.mktemp('wheel_venv')
    python = venv_python(tmp / 'venv')
    env = clean_env()
    run([python, '-m', 'pip', 'install', '--no-deps', '--no-index',
         '--disable-pip-version-check', wheel], tmp, env=env)
    site = run([python, '-c', 'import sysconfig; '
                'print(sysconfig.get_paths()["purelib"])'], tmp, env=env)
    site = site.strip().splitlines()[-1]
    project = tmp / 'project'
    project.mkdir()
    assert not str(project).startswith(REPO + os.sep)

    out = run([python, '-c', CHECK_INSTALLED, site], project, env=env)
    res = json.loads(out.split('RESULT ', 1)[1].splitlines()[0])
    # the wheel's copy, not the checkout nor an editable install
    assert res['mmstvit'] == osp.join(site, 'mmstvit', '__init__.py')
    assert res['scope'] == osp.join(site, '_mmstvit_scope.py')
    assert res['files_root'] == osp.join(site, 'mmstvit', '.mim')
    assert res['installed'] and not res['checkout_on_path']
    assert res['toy_backbone'] == 'STViT'
    assert res['pred_scores'] == 1000
    assert len(res['families']) == 7
    # the names: the installed index is the checkout's, and mmpretrain's
    # list_models finds every model of it that mmpretrain can build (but
    # the paper's ablation rows, experiments without weights, which stay
    # out of its hub as the detectors do)
    models = index_models()
    assert sorted(map(tuple, res['index'])) == sorted(
        (name, config) for name, config, _ in models)
    classifiers = [name for name, config, tasks in models
                   if tasks == ['Image Classification']
                   and not config.startswith('configs/ablations/')]
    assert len(classifiers) == 6
    assert sorted(res['list_models']) == sorted(classifiers)
    assert len(res['configs']) == len(
        [p for p in repo_files('configs')
         if p.count('/') > 1 and p.endswith('.py')])

    # the tools, from the installed package
    listed = run([python, '-m', 'mmstvit', '--list'], project, env=env)
    for tool in ('train', 'test', 'infer', 'demo', 'make_toy_data',
                 'stvit_to_mm', 'get_flops', 'dist_train'):
        assert f'\n{tool} ' in '\n' + listed, listed
    assert 'install' not in listed.split()
    data = run([python, '-m', 'mmstvit', 'make_toy_data', '--out', 'data',
                '--num-train', '2', '--num-val', '2'], project, env=env)
    assert (project / 'data' / 'toy_coco' / 'annotations' /
            'instances_train.json').is_file(), data

    # another project's config, by scope, through mmdet's own train.py
    (project / 'det_stvit.py').write_text(OTHER_PROJECT.format(tiny=TINY))
    mmdet_train = run(
        [python, '-c', 'import mmdet, os; print(os.path.join(os.path.dirname('
         'mmdet.__file__), ".mim", "tools", "train.py"))'], project, env=env)
    log = run([python, mmdet_train.strip().splitlines()[-1], 'det_stvit.py',
               '--work-dir', 'work'], project, env=env, timeout=900)
    assert (project / 'work' / 'iter_1.pth').is_file(), log[-3000:]
    assert 'Iter(train) [1/1]' in log and 'loss:' in log, log[-3000:]
    dumped = (project / 'work' / 'det_stvit.py').read_text()
    assert "type='STViT'" in dumped and 'mmstvit' in dumped
    # and mmstvit's own tools/test.py, from the installed package
    log = run([python, '-m', 'mmstvit', 'test', 'det_stvit.py',
               'work/iter_1.pth', '--work-dir', 'test'], project, env=env)
    assert 'Iter(test) [2/2]' in log, log[-3000:]


# ---------------------------------------------------- editable install ----
CHECK_EDITABLE = """
import json, sys
from mmengine.config import Config
cfg = Config.fromfile('user_cfg.py')   # before anything imports mmstvit
from mmengine.utils import get_installed_path
import mmstvit
from mmstvit import mim
from mmpretrain import list_models
print('RESULT', json.dumps(dict(
    mmstvit=mmstvit.__file__, path=get_installed_path('mmstvit'),
    files_root=mim.files_root(), installed=mim.installed(),
    backbone=cfg.model.backbone.type, list_models=list_models('*stvit*'))))
"""


def test_editable_install_links_the_checkout(tmp_path_factory):
    """``pip install --no-deps --no-build-isolation -e`` (what make install
    runs) of a copy of the checkout, into a fresh virtual environment."""
    tmp = tmp_path_factory.mktemp('editable')
    checkout = copy_checkout(tmp / 'checkout')
    python = venv_python(tmp / 'venv')
    env = clean_env()
    run([python, '-m', 'pip', 'install', '--no-deps', '--no-index',
         '--no-build-isolation', '--disable-pip-version-check', '-e',
         str(checkout)], tmp, env=env)
    mim = checkout / 'mmstvit' / '.mim'
    for name in ('configs', 'tools', 'model-index.yml'):
        assert (mim / name).is_symlink(), name
        assert os.readlink(mim / name) == osp.join('..', '..', name)
    project = tmp / 'project'
    project.mkdir()
    (project / 'user_cfg.py').write_text(
        "_base_ = 'mmstvit::upernet/upernet_stvit_s_160k_ade20k.py'\n")
    out = run([python, '-c', CHECK_EDITABLE], project, env=env)
    res = json.loads(out.split('RESULT ', 1)[1].splitlines()[0])
    assert res['mmstvit'] == str(checkout / 'mmstvit' / '__init__.py')
    # mmengine's own answer for a PEP 660 install is site-packages/mmstvit
    assert res['path'] == str(checkout / 'mmstvit')
    assert res['files_root'] == str(mim) and not res['installed']
    assert res['backbone'] == 'STViT'
    assert len(res['list_models']) == 6


# ------------------------------------------------- in this interpreter ----
def test_scope_and_installed_path_for_mmstvit_only():
    import mmengine.config.config as config_mod
    from mmengine.config.utils import MODULE2PACKAGE
    from mmengine.utils import package_utils

    import _mmstvit_scope
    import mmstvit
    assert MODULE2PACKAGE['mmstvit'] == 'mmstvit'
    here = osp.dirname(mmstvit.__file__)
    for fn in (config_mod.get_installed_path,
               package_utils.get_installed_path):
        assert fn('mmstvit') == here
        original = fn.__wrapped__
        assert fn('mmdet') == original('mmdet')
    before = config_mod.get_installed_path
    _mmstvit_scope.install()  # again: nothing wraps twice
    assert config_mod.get_installed_path is before


def test_config_names_and_tools():
    from mmstvit import mim
    from mmstvit.__main__ import command, main
    root = mim.files_root()
    assert osp.realpath(root) in (REPO, osp.join(REPO, 'mmstvit', '.mim'))
    toy = 'toy/mask_rcnn_stvit_s_toy.py'
    for name in ('mmstvit::' + toy, toy, 'configs/' + toy):
        assert osp.realpath(mim.config_path(name)) == \
            osp.join(REPO, 'configs', toy)
    import mmdet
    assert mim.config_path('mmdet::_base_/default_runtime.py') == osp.join(
        osp.dirname(mmdet.__file__), '.mim', 'configs', '_base_',
        'default_runtime.py')
    with pytest.raises(FileNotFoundError, match='--configs'):
        mim.config_path('mmstvit::mask_rcnn/nope.py')
    names = mim.config_names()
    assert 'mmstvit::mask_rcnn/mask_rcnn_stvit_s_1x.py' in names
    assert 'mmstvit::_base_/models/mask_rcnn_stvit_s.py' in names
    assert not any(n.count('/') == 0 for n in names)  # no aliases
    assert len(names) == len(
        [p for p in repo_files('configs')
         if p.count('/') > 1 and p.endswith('.py')])
    tools = mim.tools()
    assert 'install' not in tools and {'train', 'make_toy_data',
                                       'dist_train'} <= set(tools)
    cmd = command('train', ['mmstvit::' + toy, '--work-dir', 'w'])
    assert cmd == [sys.executable, osp.join(REPO, 'tools', 'train.py'),
                   mim.config_path(toy), '--work-dir', 'w']
    assert command('dist_train', ['x.py', '2'])[:2] == [
        'bash', osp.join(REPO, 'tools', 'dist_train.sh')]
    with pytest.raises(SystemExit, match='no tool'):
        command('nope', [])
    assert main(['--help']) == 0


def test_scope_base_from_an_uninstalled_checkout_says_how(tmp_path):
    """A checkout that was never installed has no mmstvit/.mim: a config
    whose _base_ is an mmstvit:: name stops with a message that says so and
    how to install, not with mmengine's traceback."""
    src = copy_checkout(tmp_path / 'checkout')
    proj = tmp_path / 'proj'
    proj.mkdir()
    (proj / 'my.py').write_text(
        "_base_ = 'mmstvit::toy/upernet_stvit_s_toy.py'\n"
        "custom_imports = dict(imports=['mmstvit'], "
        'allow_failed_imports=False)\n')
    env = dict(clean_env(), PYTHONPATH=str(src))
    proc = subprocess.run(
        [sys.executable, osp.join(src, 'tools', 'train.py'), 'my.py',
         '--work-dir', str(tmp_path / 'work')], cwd=str(proj),
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert 'never installed' in proc.stderr and 'make install' in \
        proc.stderr, proc.stderr[-3000:]
