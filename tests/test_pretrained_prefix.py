# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)`` as
mmengine users write it: every form of ``prefix`` that mmengine's own
``Pretrained`` accepts for a file loads it, and the keys of the wrappers
users meet (``module.`` of DataParallel/DDP and of the EMA wrappers,
``_orig_mod.`` of torch.compile, ``backbone.`` of mm models, ``model.`` of
other trainers, EMA copies beside the weights) load or are refused with a
true message that names the prefix (or the ``which`` entry) that loads them.
The strict rules stay: a load that would leave weights random stops."""
import re

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.runner.checkpoint import _load_checkpoint_with_prefix

import mmstvit  # noqa: F401  (the safe reader is mmengine's loader)
from mmstvit import STViT
from mmstvit.weights import CheckpointMismatchError

TINY = dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1])


def weights(seed):
    """A backbone state dict with values of their own (so that a test sees
    which copy of a file was loaded)."""
    torch.manual_seed(seed)
    sd = STViT(TINY).state_dict()
    return {k: (v.float().normal_() if v.is_floating_point() else v)
            for k, v in sd.items()}


def under(prefix, sd):
    return {prefix + k: v for k, v in sd.items()}


NECK = {'neck.lateral_convs.0.conv.weight': torch.randn(8, 16, 1, 1)}


def load(path, **init):
    m = STViT(TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                  **init))
    m.init_weights()
    return m.state_dict()


def assert_loaded(got, sd):
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


def refused(path, match, **init):
    with pytest.raises(CheckpointMismatchError) as e:
        load(path, **init)
    assert re.search(match, str(e.value)), str(e.value)
    return str(e.value)


@pytest.fixture
def save(tmp_path):
    def _save(name, obj):
        path = tmp_path / name
        torch.save(obj, path)
        return path
    return _save


# ------------------------------------------------------- module. (DDP) ----
DDP_FORMS = [None, 'backbone', 'backbone.', 'module.backbone',
             'module.backbone.']


@pytest.mark.parametrize('prefix', DDP_FORMS)
def test_ddp_detector_checkpoint(save, prefix):
    """The issue: keys module.backbone.* (a detector saved inside
    DataParallel/DDP); mmengine users write prefix='module.backbone.'."""
    sd = weights(1)
    path = save('ddp.pth', {'state_dict': under('module.', {
        **under('backbone.', sd), **NECK})})
    assert_loaded(load(path, prefix=prefix), sd)


@pytest.mark.parametrize('prefix', DDP_FORMS)
def test_mm_detector_checkpoint(save, prefix):
    """Keys backbone.* (the same detector saved unwrapped): the prefixes
    with module. load it too (wrappers are left out on both sides)."""
    sd = weights(2)
    path = save('det.pth', {'state_dict': {**under('backbone.', sd),
                                           **NECK}, 'meta': {}})
    assert_loaded(load(path, prefix=prefix), sd)


@pytest.mark.parametrize('prefix', [None, 'module', 'module.'])
def test_ddp_backbone_state_dict(save, prefix):
    """torch.save(ddp_backbone.state_dict()): module.* keys, nothing else."""
    sd = weights(3)
    path = save('bare_ddp.pth', under('module.', sd))
    assert_loaded(load(path, prefix=prefix), sd)


@pytest.mark.parametrize('prefix', [None, 'backbone.', '_orig_mod.backbone',
                                    'module._orig_mod.backbone.'])
def test_compiled_model_checkpoint(save, prefix):
    """A model saved after torch.compile (and DDP): module._orig_mod.*."""
    sd = weights(4)
    path = save('compiled.pth', {'state_dict': under(
        'module._orig_mod.', under('backbone.', sd))})
    assert_loaded(load(path, prefix=prefix), sd)


def test_ddp_detector_through_a_parent_init(save):
    """As in a detector config: the backbone's init_cfg runs in the parent
    model's init_weights; the file is a DDP-wrapped detector's state dict."""

    class Det(BaseModule):

        def __init__(self, init_cfg=None):
            super().__init__()
            self.backbone = STViT(TINY, init_cfg=init_cfg)
            self.neck = nn.Conv2d(32, 8, 1)

    src = Det()
    for p in src.parameters():
        nn.init.normal_(p)
    ddp_like = nn.DataParallel(src)  # its state_dict: module.* keys
    path = save('det_ddp.pth', {'state_dict': ddp_like.state_dict()})
    assert next(iter(ddp_like.state_dict())).startswith('module.backbone.')
    dst = Det(init_cfg=dict(type='Pretrained', checkpoint=str(path),
                            prefix='module.backbone.'))
    dst.init_weights()
    assert_loaded(dst.backbone.state_dict(), src.backbone.state_dict())


# ------------------------------------------------ model. (other trainers) --
def test_model_prefix_is_named_not_guessed(save):
    """model.backbone.* (e.g. a Lightning module holding self.model): the
    prefix that loads it is named; as mmengine would, it loads with it."""
    sd = weights(5)
    path = save('lightning.pth', {'state_dict': {
        **under('model.backbone.', sd), 'model.neck.weight': torch.zeros(2)}})
    msg = refused(path, r"prefix='model\.backbone\.'")
    assert 'its own names or under' in msg
    msg = refused(path, r"prefix='model\.backbone\.'", prefix='backbone.')
    assert "no key of" in msg and "starts with 'backbone.'" in msg
    assert "'model.' (" in msg  # what the keys do start with
    for prefix in ('model.backbone', 'model.backbone.',
                   'module.model.backbone.'):
        assert_loaded(load(path, prefix=prefix), sd)


def test_entry_name_given_as_prefix(save):
    """prefix='model_ema.' for the authors' file: an entry, not a key
    prefix; the message says which= picks it, and which= does."""
    sd, ema = weights(6), weights(7)
    path = save('official.pth', {'model': sd, 'model_ema': ema,
                                 'epoch': 300})
    msg = refused(path, r"which='model_ema' picks it", prefix='model_ema.')
    assert 'use no prefix' in msg
    assert_loaded(load(path, which='model_ema'), ema)
    assert_loaded(load(path), sd)


# ------------------------------------------------------------ EMA copies --
def test_mmengine_ema_hook_checkpoint(save):
    """mmengine's EMAHook saves the averaged weights as state_dict and the
    trained ones as ema_state_dict (module.* keys and a steps counter)."""
    averaged, trained = weights(8), weights(9)
    path = save('ema_hook.pth', {
        'state_dict': {**under('backbone.', averaged), **NECK},
        'ema_state_dict': {**under('module.backbone.', trained),
                           'steps': torch.tensor(100)}})
    assert_loaded(load(path), averaged)
    for prefix in (None, 'backbone.', 'module.backbone.'):
        assert_loaded(load(path, which='ema_state_dict', prefix=prefix),
                      trained)


def test_timm_ema_entry(save):
    """timm's train.py: state_dict and state_dict_ema; a file holding only
    the EMA entry is refused naming which= (nothing is guessed)."""
    sd, ema = weights(10), weights(11)
    path = save('timm.pth', {'state_dict': sd, 'state_dict_ema': ema})
    assert_loaded(load(path), sd)
    assert_loaded(load(path, which='state_dict_ema'), ema)
    only = save('timm_ema.pth', {'state_dict_ema': ema, 'epoch': 3})
    refused(only, r"'state_dict_ema' \(which='state_dict_ema'\)")
    assert_loaded(load(only, which='state_dict_ema'), ema)


def test_ema_wrapper_state_dict(save):
    """torch.save(ema_model.state_dict()) of mmengine's
    ExponentialMovingAverage (or timm's ModelEmaV2) of a detector."""
    sd = weights(12)
    path = save('ema_model.pth', {'steps': torch.tensor(5),
                                  **under('module.backbone.', sd)})
    for prefix in (None, 'backbone', 'module.backbone.'):
        assert_loaded(load(path, prefix=prefix), sd)


def test_teacher_and_student_are_not_guessed(save):
    """Two copies (a mean teacher): no prefix is refused naming both."""
    teacher, student = weights(13), weights(14)
    path = save('mean_teacher.pth', {'state_dict': {
        **under('teacher.backbone.', teacher),
        **under('student.backbone.', student)}})
    refused(path, r"prefix='student\.backbone\.' or "
            r"prefix='teacher\.backbone\.'")
    assert_loaded(load(path, prefix='teacher.backbone'), teacher)
    assert_loaded(load(path, prefix='module.student.backbone.'), student)


# ---------------------------------------------------- refusals are true --
def test_wrong_prefix_names_the_right_one(save):
    sd = weights(15)
    path = save('det.pth', {'state_dict': under('module.', {
        **under('backbone.', sd), **NECK})})
    # a prefix that selects keys, none of them the backbone's
    refused(path, r"no tensor of this STViT backbone under prefix 'neck'\. "
            r".*under 'backbone\.' \(\d+ of \d+ tensors\): use "
            r"prefix='backbone\.'", prefix='neck')
    # a prefix that starts no key
    msg = refused(path, r"no key of .* starts with 'module\.head\.' \(the "
                  r"same as 'head\.'", prefix='module.head.')
    assert "prefix='backbone.'" in msg


def test_a_file_without_the_backbone_is_refused(save):
    path = save('resnet.pth', {'state_dict': {
        'backbone.conv1.weight': torch.randn(8, 3, 7, 7)}})
    refused(path, 'unknown model')
    refused(path, r"None of its keys names a tensor of this STViT",
            prefix='neck.')


def test_partial_file_under_a_prefix_still_needs_strict_false(save):
    sd = weights(16)
    part = {k: v for k, v in sd.items() if not k.startswith('layers.3')}
    path = save('part.pth', {'state_dict': under('module.backbone.', part)})
    refused(path, 'missing from the file', prefix='module.backbone.')
    got = load(path, prefix='module.backbone.', strict=False)
    assert_loaded(got, part)


# ------------------------------------------- what mmengine itself takes --
FILES = {
    'mm': lambda sd: {'state_dict': {**under('backbone.', sd), **NECK}},
    'ddp': lambda sd: {'state_dict': under('module.', {
        **under('backbone.', sd), **NECK})},
    'bare_ddp': lambda sd: under('module.backbone.', sd),
    'lightning': lambda sd: {'state_dict': under('model.backbone.', sd)},
    'ema_hook': lambda sd: {'state_dict': under('backbone.', sd),
                            'ema_state_dict': under('module.backbone.', sd)},
}
FORMS = ['backbone', 'backbone.', 'module.backbone', 'module.backbone.',
         'model.backbone', 'model.backbone.', 'module.model.backbone.',
         'module', 'neck.', 'state_dict.backbone.']


@pytest.mark.parametrize('kind', list(FILES))
def test_every_prefix_mmengine_accepts_loads(save, kind):
    """For each file and prefix form: where mmengine's own Pretrained
    (``_load_checkpoint_with_prefix``) gets the backbone's tensors, ours
    loads the same; where ours refuses, its message names a prefix that
    does load."""
    sd = weights(17)
    path = save(f'{kind}.pth', FILES[kind](sd))
    for prefix in FORMS:
        try:
            theirs = _load_checkpoint_with_prefix(prefix, str(path))
        except (AssertionError, KeyError):
            theirs = None
        if theirs is not None and set(sd) <= set(theirs):
            assert_loaded(load(path, prefix=prefix), sd)
            continue
        try:
            got = load(path, prefix=prefix)
        except CheckpointMismatchError as e:
            named = re.findall(r"prefix='([^']*)'", str(e))
            assert named, (prefix, str(e))
            assert_loaded(load(path, prefix=named[0]), sd)
        else:
            assert_loaded(got, sd)
