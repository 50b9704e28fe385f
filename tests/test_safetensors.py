# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""``.safetensors`` weights: the converter writes them from an official
``.pth`` (read through the allow-list), and every place that reads weights
takes them without unpickling anything: :func:`mmstvit.weights.
load_state_dict` (what the timm models load), the backbone's ``Pretrained``
init, mmengine's ``load_checkpoint`` (``load_from``), ``tools/test.py`` and
``tools/infer.py``. The format is told by content: a pickle renamed
``.safetensors`` is refused (and never run), a safetensors file named
``.pth`` is read as safetensors."""
import argparse
import contextlib
import json
import os
import pickle
import subprocess
import sys
import traceback
import warnings
from collections import OrderedDict
from unittest import mock

import pytest
import torch
from mmengine.runner.checkpoint import load_checkpoint

import mmstvit  # noqa: F401  (mmengine's loaders are mmstvit's reader)
from mmstvit import STViT
from mmstvit.weights import (NotSafetensorsError, checkpoint_format,
                             convert_official_state_dict,
                             load_checkpoint_file, load_state_dict,
                             mm_to_official_state_dict, sniff_format,
                             write_safetensors)

from helpers import (CLS_MODEL_CFG, REPO, load_script, run_in,
                     write_cls_case)

TINY = dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1])
CONVERTER = 'tools/model_converters/stvit_to_mm.py'

CLS_CFG = CLS_MODEL_CFG + """test_dataloader = dict(batch_size=2, num_workers=0, dataset=dataset,
                       sampler=dict(type='DefaultSampler', shuffle=False))
test_evaluator = dict(type='Accuracy', topk=(1, ))
test_cfg = dict()
default_hooks = dict(logger=dict(type='LoggerHook', interval=1))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
"""


class RunsCode:
    """Unpickling this creates ``path``: the proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f'touch {self.path}', )


@contextlib.contextmanager
def no_unpickling():
    """Every way a weights file could be unpickled raises meanwhile:
    ``torch.load`` (which all of torch's and mmengine's weights loading
    runs) and pickle's file readers. (``pickle.loads`` of bytes in memory
    stays: mmengine's data sets keep their annotation lists that way.)"""

    def refuse(*args, **kwargs):
        raise AssertionError('a weights file was unpickled, by:\n' +
                             ''.join(traceback.format_stack(limit=6)))

    class Refused(pickle.Unpickler):

        def __init__(self, *args, **kwargs):
            refuse()

    with mock.patch.object(torch, 'load', refuse), \
            mock.patch.object(torch.serialization, 'load', refuse), \
            mock.patch.object(pickle, 'Unpickler', Refused), \
            mock.patch.object(pickle, 'load', refuse):
        yield


def randomized(state_dict, seed):
    """Seeded values far from the init, so that a tensor loaded into the
    wrong place changes the predictions."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for k, v in state_dict.items():
        if v.is_floating_point():
            v = torch.randn(v.shape, generator=g) * 0.2
            if k.endswith('running_var'):
                v = v.abs() + 0.5
        out[k] = v.clone()
    return out


@pytest.fixture(scope='module')
def case(tmp_path_factory):
    """A tiny mmpretrain config with images, its classifier's weights in
    the authors' format (``official.pth``) and converted by the tool to
    ``mm.safetensors``."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmstvit.registry import register_toolbox
    root = tmp_path_factory.mktemp('st')
    cfg = write_cls_case(root, CLS_CFG, TINY)
    register_toolbox('mmpretrain')
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    model_cfg = Config.fromfile(str(cfg)).model
    mm_sd = randomized(MODELS.build(model_cfg).state_dict(), seed=0)
    official = mm_to_official_state_dict(mm_sd)
    torch.save(dict(model=official, model_ema=randomized(official, 1),
                    epoch=299, args=argparse.Namespace(model='stvit_tiny')),
               root / 'official.pth')
    load_script(CONVERTER, 'stvit_to_mm').main(
        [str(root / 'official.pth'), str(root / 'mm.safetensors'),
         '--to', 'safetensors'])
    return dict(root=root, cfg=cfg, mm=mm_sd, official=official,
                model_cfg=model_cfg)


def assert_same(got, want):
    assert list(sorted(got)) == list(sorted(want))
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


# ------------------------------------------------------------ converter --
def test_converter_writes_safetensors_with_metadata(case):
    path = case['root'] / 'mm.safetensors'
    assert sniff_format(path) == 'safetensors'
    from safetensors import safe_open
    with safe_open(str(path), framework='pt') as f:
        meta = f.metadata()
    assert meta['format'] == 'pt'  # what Hugging Face's loaders check
    assert meta['converted_from'] == 'official.pth'
    assert meta['weights'] == 'model' and meta['epoch'] == '299'
    assert 'stvit_to_mm.py' in meta['converter']
    assert checkpoint_format(str(path)) == 'mm'


def test_stvit_s_channels_last_weights_convert(tmp_path):
    """STViT-S stores its convolution weights channels last (not
    contiguous): the converter writes them in the standard layout, values
    unchanged, and records the arch."""
    backbone = STViT('small').state_dict()
    assert any(not v.is_contiguous() for v in backbone.values())
    official = OrderedDict(backbone)
    official.update({'proj.weight': torch.randn(1024, 512, 1, 1),
                     'head.weight': torch.randn(10, 1024),
                     'head.bias': torch.randn(10)})
    torch.save(dict(model=official), tmp_path / 'stvit-small-224.pth')
    dst = tmp_path / 's.safetensors'
    load_script(CONVERTER, 'stvit_to_mm').main(
        [str(tmp_path / 'stvit-small-224.pth'), str(dst)])  # by its suffix
    with no_unpickling():
        ckpt = load_checkpoint_file(dst)
    assert ckpt['meta']['arch'] == 'small'
    assert_same(ckpt['state_dict'], convert_official_state_dict(official))
    with no_unpickling():
        m = STViT('small', init_cfg=dict(type='Pretrained',
                                         checkpoint=str(dst)))
        m.init_weights()
    assert_same(m.state_dict(), backbone)


def test_converter_format_must_match_the_name(tmp_path, case):
    tool = load_script(CONVERTER, 'stvit_to_mm')
    src = str(case['root'] / 'official.pth')
    for argv in ([src, str(tmp_path / 'a.safetensors'), '--to', 'pth'],
                 [src, str(tmp_path / 'a.pth'), '--to', 'safetensors']):
        with pytest.raises(SystemExit):
            tool.main(argv)
    assert list(tmp_path.iterdir()) == []
    tool.main([src, str(tmp_path / 'ema.safetensors'), '--ema'])
    ema = load_checkpoint_file(tmp_path / 'ema.safetensors')
    assert ema['meta']['weights'] == 'model_ema'
    assert not torch.equal(ema['state_dict']['head.fc.weight'],
                           case['mm']['head.fc.weight'])


# ------------------------------------------- every path, never pickle --
def test_the_guard_catches_a_pth_load(case):
    with no_unpickling(), pytest.raises(AssertionError, match='unpickled'):
        load_checkpoint_file(case['root'] / 'official.pth')


def test_state_dict_init_cfg_and_load_from_never_unpickle(case):
    path = case['root'] / 'mm.safetensors'
    with no_unpickling():
        # what the timm models load (the authors' names) and the mm names
        assert_same(load_state_dict(path, names='official'),
                    case['official'])
        assert_same(load_state_dict(path), case['mm'])
        # the backbone's init_cfg
        m = STViT(TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
        m.init_weights()
        # mmengine's load_checkpoint (load_from, runner.load_checkpoint)
        from mmpretrain.registry import MODELS
        classifier = MODELS.build(case['model_cfg'])
        load_checkpoint(classifier, str(path), strict=True)
    assert_same(m.state_dict(), {k[len('backbone.'):]: v for k, v in
                                 case['mm'].items()
                                 if k.startswith('backbone.')})
    assert_same(classifier.state_dict(), case['mm'])


def test_test_tool_and_infer_never_unpickle(case, tmp_path):
    """tools/test.py and tools/infer.py with the .safetensors give the
    predictions of the authors' .pth."""
    test_tool = load_script('tools/test.py', 'mmstvit_tools_test')
    infer_tool = load_script('tools/infer.py', 'mmstvit_tools_infer')
    root, cfg = case['root'], str(case['cfg'])
    image = str(root / 'data' / 'a' / '0.png')
    scores = {}
    for name in ('official.pth', 'mm.safetensors'):
        guard = no_unpickling() if name.endswith('.safetensors') else \
            contextlib.nullcontext()
        out = tmp_path / f'{name}.pkl'
        with guard:
            metrics = run_in(tmp_path, test_tool.main,
                              [cfg, str(root / name), '--out', str(out)])
            run_in(tmp_path, infer_tool.main,
                    [cfg, image, '--weights', str(root / name),
                     '--out-dir', str(tmp_path / name), '--device', 'cpu'])
        assert 'accuracy/top1' in metrics
        with open(out, 'rb') as f:
            scores[name] = torch.stack([p['pred_score']
                                        for p in pickle.load(f)])
        pred = json.loads(
            (tmp_path / name / 'preds' / '0.json').read_text())
        scores[name + ' infer'] = [t['score'] for t in pred['top']]
    torch.testing.assert_close(scores['official.pth'],
                               scores['mm.safetensors'])
    assert scores['official.pth infer'] == scores['mm.safetensors infer']


def test_authors_names_in_safetensors_convert_like_their_pth(case, tmp_path):
    path = tmp_path / 'theirs.safetensors'
    write_safetensors(case['official'], path, dict(source='timm'))
    with no_unpickling():
        assert checkpoint_format(str(path)) == 'official'
        ckpt = load_checkpoint_file(path)
        assert_same(ckpt['model'], case['official'])
        assert_same(load_state_dict(path, names='mm'), case['mm'])
        from mmengine.runner.checkpoint import CheckpointLoader
        mm = CheckpointLoader.load_checkpoint(f'stvit-official://{path}')
    assert_same(mm['state_dict'], case['mm'])


def test_safetensors_named_pth_is_read_by_content(case, tmp_path):
    path = tmp_path / 'weights.pth'
    write_safetensors(case['mm'], path)
    with no_unpickling():
        assert_same(load_state_dict(path), case['mm'])


# ------------------------------------------------------------- refused --
def test_pickle_renamed_safetensors_is_refused_and_never_run(tmp_path):
    from mmstvit.weights import trust, untrust_all
    marker = tmp_path / 'CODE_RAN'
    path = tmp_path / 'stvit-small-224.safetensors'
    torch.save({'model': {'x': torch.zeros(1)}, 'p': RunsCode(marker)}, path)
    trust(path)  # even a trusted pickle is not read under this name
    try:
        for load in (lambda: load_checkpoint_file(path, unsafe=True),
                     lambda: load_state_dict(path),
                     lambda: checkpoint_format(str(path)),
                     lambda: load_checkpoint(torch.nn.Linear(1, 1), str(path)),
                     lambda: STViT(TINY, init_cfg=dict(
                         type='Pretrained', checkpoint=str(path),
                         unsafe_load=True)).init_weights()):
            with pytest.raises(NotSafetensorsError) as e:
                load()
            msg = str(e.value)
            assert str(path) in msg and 'PyTorch zip checkpoint' in msg
            assert 'stvit_to_mm.py FILE.pth FILE.safetensors --to ' \
                'safetensors' in msg
    finally:
        untrust_all()
    assert not marker.exists()
    test_tool = load_script('tools/test.py', 'mmstvit_tools_test')
    with pytest.raises(SystemExit, match='is named .safetensors but is'):
        test_tool.main([os.path.join(REPO, 'configs', 'stvit_s_in1k_224.py'),
                        str(path)])
    assert not marker.exists()


def test_broken_safetensors_says_so(case, tmp_path):
    good = (case['root'] / 'mm.safetensors').read_bytes()
    cut = tmp_path / 'cut.safetensors'
    cut.write_bytes(good[:len(good) // 2])
    with no_unpickling(), pytest.raises(ValueError,
                                        match='not a readable safetensors'):
        load_checkpoint_file(cut)
    junk = tmp_path / 'junk.safetensors'
    junk.write_bytes(b'not weights at all')
    with pytest.raises(NotSafetensorsError, match='no known weights format'):
        load_checkpoint_file(junk)


# ---------------------------------------------------- light, deprecated --
def test_import_mmstvit_does_not_import_safetensors():
    code = ('import sys, mmstvit, mmstvit.weights; '
            'print("safetensors" in sys.modules)')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == 'False'


def test_old_import_paths_warn_and_give_the_same_objects():
    import mmstvit.weights as w
    import mmstvit.weights.official_model as om
    import mmstvit.utils
    # a fresh import each time: out of sys.modules and off the package
    for name in ('checkpoint', 'convert', 'official'):
        sys.modules.pop(f'mmstvit.utils.{name}', None)
        mmstvit.utils.__dict__.pop(name, None)
    with pytest.warns(DeprecationWarning, match='mmstvit.weights'):
        from mmstvit.utils import checkpoint as ck
    assert ck.load_checkpoint_file is w.load_checkpoint_file
    assert ck.CheckpointMismatchError is w.CheckpointMismatchError
    with pytest.warns(DeprecationWarning):
        from mmstvit.utils.convert import convert_official_state_dict
    assert convert_official_state_dict is w.convert_official_state_dict
    with pytest.warns(DeprecationWarning):
        from mmstvit.utils.official import build_official_model
    assert build_official_model is om.build_official_model
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        from mmstvit.utils import load_stvit_state_dict
    assert load_stvit_state_dict is w.load_stvit_state_dict
    assert any(issubclass(x.category, DeprecationWarning) for x in seen)


def test_resume_from_safetensors_says_it_holds_no_training_state(case):
    """--resume needs the optimizer and the loop's place: a .safetensors
    (weights only) is refused with what to do instead."""
    from mmstvit.engine.resume import read_checkpoint
    ckpt, why = read_checkpoint(str(case['root'] / 'mm.safetensors'))
    assert ckpt is None
    assert 'weights only' in why and 'load_from' in why
