# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Model names: model-index.yml and the metafiles in the OpenMMLab format,
and the classifiers in mmpretrain's ModelHub (list_models / get_model)."""
import glob
import os.path as osp
import subprocess
import sys

import pytest
import yaml

import mmstvit  # noqa: F401
from mmstvit import model_index

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PAPER = {  # the paper's results
    'configs/stvit/stvit_s_in1k_224.py': {'Top 1 Accuracy': 83.6},
    'configs/stvit/stvit_b_in1k_384.py': {'Top 1 Accuracy': 86.0},
    'configs/stvit/stvit_l_in1k_224.py': {'Top 1 Accuracy': 85.3},
    'configs/mask_rcnn/mask_rcnn_stvit_s_1x.py': {
        'box AP': 47.6, 'mask AP': 43.1},
    'configs/mask_rcnn/mask_rcnn_stvit_l_3x.py': {
        'box AP': 51.7, 'mask AP': 45.9},
    'configs/upernet/upernet_stvit_b_160k_ade20k.py': {
        'mIoU': 50.7, 'mIoU(ms+flip)': 51.9},
}
CLASSIFIERS = [
    f'stvit-{a}_{s}' for a in ('small', 'base', 'large')
    for s in ('8xb128_in1k', '8xb64_in1k-384')
]
# the paper's ablation rows (configs/ablations/): top-1, box / mask AP, mIoU
ABLATIONS = {
    'sta4stage': (82.3, 43.6, 40.1, 46.0),
    'convstem': (82.6, 44.6, 41.1, 46.9),
    'projection': (82.9, 44.6, 41.2, 47.0),
    'cpe': (83.3, 46.8, 42.5, 47.7),
    'ape': (83.1, 45.2, 41.5, 47.3),
    'rpe': (83.2, 45.6, 41.8, 47.5),
    'noshortcut': (83.4, 47.5, 43.0, 48.4),
}
for row, (top1, box, mask, miou) in ABLATIONS.items():
    PAPER.update({
        f'configs/ablations/stvit_s_{row}_in1k_224.py': {
            'Top 1 Accuracy': top1},
        f'configs/ablations/mask_rcnn_stvit_s_{row}_1x.py': {
            'box AP': box, 'mask AP': mask},
        f'configs/ablations/upernet_stvit_s_{row}_160k_ade20k.py': {
            'mIoU': miou},
    })


def test_model_index_covers_every_config_once():
    with open(model_index.MODEL_INDEX) as f:
        index = yaml.safe_load(f)
    metafiles = index['Import']
    assert len(metafiles) == 7
    assert all(osp.isfile(osp.join(REPO, m)) for m in metafiles)
    models = model_index.load_models()
    configs = [m.config for m in models]
    # each family's configs sit beside its metafile (configs/<family>/,
    # mmstvit::<family>/<file>.py by scope); the toy demo is not a model
    expected = sorted(
        osp.relpath(p, REPO)
        for p in glob.glob(osp.join(REPO, 'configs', '*', '*.py'))
        if osp.basename(osp.dirname(p)) != 'toy')
    assert sorted(configs) == expected  # every paper row, each once
    for m in models:
        family = osp.dirname(m.config)
        assert osp.isfile(osp.join(REPO, family, 'metafile.yml'))
        assert osp.join(family, 'metafile.yml') in metafiles, m.config
    names = [m.name for m in models]
    assert len(set(names)) == len(names)
    for m in models:
        assert m.in_collection and m.metadata.parameters > 1e6
        assert m.metadata.flops > 1e9
        if m.config.startswith('configs/ablations/'):
            # the ablation rows have no weights anywhere, and each has the
            # paper's result
            assert 'Converted From' not in m.data, m.name
            assert m.config in PAPER, m.name
        else:
            conv = m.data['Converted From']
            assert 'drive.google.com' in conv['Weights']
            assert conv['Code'] == 'https://github.com/hhb072/STViT'
        # the peers' protocols (not in the paper) have no results yet
        metrics = {k: v for r in m.results or [] for k, v in r.metrics.items()}
        if m.config in PAPER:
            assert metrics == PAPER[m.config], m.name


def test_earlier_config_paths_still_work():
    """configs/<name>.py (the paths of earlier releases and of the README)
    is a one-line alias of the config of the index of the same name."""
    from mmengine.config import Config
    aliases = sorted(glob.glob(osp.join(REPO, 'configs', '*.py')))
    # (the ablation rows came after the move: no earlier paths)
    configs = {osp.basename(m.config): m.config
               for m in model_index.load_models()
               if not m.config.startswith('configs/ablations/')}
    assert sorted(map(osp.basename, aliases)) == sorted(configs)
    for path in aliases:
        name = osp.basename(path)
        with open(path) as f:
            code = [line for line in f if not line.startswith('#')]
        assert code == [f"_base_ = './{configs[name][len('configs/'):]}'\n"]
    # and they load as the configs (one of each toolbox)
    for name in ('mask_rcnn_stvit_s_1x.py', 'upernet_stvit_s_160k_ade20k.py',
                 'stvit_s_in1k_224.py'):
        assert Config.fromfile(osp.join(REPO, 'configs', name))._cfg_dict == \
            Config.fromfile(osp.join(REPO, configs[name]))._cfg_dict


def test_list_models_finds_the_classifiers():
    from mmpretrain import list_models
    assert sorted(list_models('*stvit*')) == sorted(CLASSIFIERS)
    # the det/seg names stay out of mmpretrain's hub (it cannot build them)
    assert not list_models('mask-rcnn_stvit*')


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_get_model_builds_the_named_classifier(name):
    """The model built by name has the metafile's parameter count (the
    measured one, so arch and head must be the right ones)."""
    from mmpretrain import get_model
    from mmpretrain.apis import ModelHub
    model = get_model(name)
    assert type(model).__name__ == 'ImageClassifier'
    assert type(model.backbone).__name__ == 'STViT'
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected = ModelHub.get(name).metadata.parameters
    assert abs(params - expected) / expected < 0.005, (params, expected)
    assert model.backbone.arch == name.split('_')[0].split('-')[1]
    res = 384 if name.endswith('-384') else 224
    pipeline = ModelHub.get(name).config.test_dataloader.dataset.pipeline
    assert any(t.get('crop_size') == res for t in pipeline)


@pytest.mark.parametrize('order', ['mmstvit first', 'mmpretrain first'])
def test_registration_in_either_import_order(order):
    """The post-import hook (mmpretrain imported later) and the immediate
    one (already imported) both register the names, once."""
    imports = ('import mmstvit, mmpretrain' if order == 'mmstvit first' else
               'import mmpretrain, mmstvit')
    code = (f'{imports}\n'
            'import mmstvit.model_index as mi\n'
            'mi._register_model_index(mmpretrain)  # again: a no-op\n'
            "print(sorted(mmpretrain.list_models('stvit-small*')))\n")
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'could not add its model names' not in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(
        ['stvit-small_8xb128_in1k', 'stvit-small_8xb64_in1k-384'])
