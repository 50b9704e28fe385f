# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Every layer of STViT runs as its module (issue #26), so the tools that
wrap or swap modules see the model that runs:

* forward hooks: in every kernel plan, in training and in eval, every
  Conv/Linear/Norm layer with parameters fires; after ``switch_to_deploy()``
  every module of the deployed model does, and the folded ones are gone;
* PEFT's LoRA (the real ``peft``): on the attention's ``qkv``/``proj`` and
  the FFN's ``fc1``/``fc2`` it changes the output, trains (one step of the
  toy UperNet config, only LoRA parameters getting gradients) and
  ``merge_and_unload()`` gives the merged model's output; on the layers
  the memory-lean training recomputes (the FFN's depthwise conv, the stem)
  it computes what the plain plan computes;
* ``torch.ao`` dynamic quantization runs the quantized modules.
"""
import copy
import os.path as osp
import warnings

import peft
import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from mmstvit import STViT
from mmstvit.models.backbones import kernels

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
LAYERS = (_ConvNd, nn.Linear, _NormBase, nn.LayerNorm, nn.GroupNorm)
# layer scale in the last two stages (as STViT-B/L), super tokens and not
TINY = dict(embed_dims=[16, 32, 48, 64], depths=[1, 2, 1, 1],
            num_heads=[1, 2, 3, 4], layer_scale=[False, False, True, True])
ATTN_FFN = r'.*(stoken_refine\.(qkv|proj)|mlp2\.fc1|mlp2\.fc2)'


def tiny(**kw):
    torch.manual_seed(0)
    return STViT(arch=TINY, drop_path_rate=0.1, **kw)


def fired(model, x, modules):
    """Names in ``modules`` (name -> module) whose forward hook fires."""
    seen = set()
    handles = [m.register_forward_hook(
        lambda mod, a, out, name=name: seen.add(name))
        for name, m in modules.items()]
    try:
        with torch.set_grad_enabled(model.training):
            outs = model(x)
        if model.training:
            sum(o.mean() for o in outs).backward()
    finally:
        for h in handles:
            h.remove()
    return seen


def layers(model):
    return {n: m for n, m in model.named_modules()
            if isinstance(m, LAYERS) and any(True for _ in
                                              m.parameters(recurse=False))}


@pytest.mark.parametrize('plan', ['fast', 'plain', 'reference'])
@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('switches', [
    {}, dict(stem='patch', pos_embed='rpe', ffn='conv_no_shortcut')])
def test_every_layer_runs_as_its_module(plan, train, switches):
    m = tiny(kernels=plan, **switches).train(train)
    mods = layers(m)
    assert len(mods) > 30
    assert set(mods) - fired(m, torch.randn(2, 3, 40, 36), mods) == set()


@pytest.mark.parametrize('switches', [{}, dict(pos_embed=None, ffn='mlp')])
def test_every_module_of_the_deployed_model_runs(switches):
    m = tiny(**switches).eval()
    x = torch.randn(1, 3, 40, 36)
    with torch.no_grad():
        ref = m(x)
    m.switch_to_deploy()
    every = {n: mod for n, mod in m.named_modules()
             if n and not isinstance(mod, (nn.ModuleList, nn.ModuleDict))}
    assert set(every) - fired(m, x, every) == set()
    names = ' '.join(m.state_dict())
    for gone in ('norm2', 'gamma_1', 'gamma_2', 'downsample.proj'):
        assert gone not in names, gone  # folded into the fused modules
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    with torch.no_grad():
        for u, v in zip(m(x), ref):
            torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)


def test_plan_is_printed_and_fixed():
    m = tiny()
    assert 'kernels=fast (' in repr(m) and 'lean_training=True' in repr(m)
    m.switch_to_deploy()
    assert 'kernels=deploy (' in repr(m)
    with pytest.raises(RuntimeError, match='keeps its kernels'):
        m.set_kernels('plain')
    line = kernels.describe_run(nn.Sequential(tiny()),
                                dict(type='AmpOptimWrapper'))
    assert line.startswith('STViT kernels: 1 backbone(s) train on cpu in '
                           'bfloat16 autocast with the plan fast (')
    assert 'sdpa=True' in line and 'lean_training=True' in line


def lora(model, targets=ATTN_FFN):
    cfg = peft.LoraConfig(r=2, lora_alpha=2, target_modules=targets,
                          init_lora_weights=False)  # lora_B non-zero
    return peft.get_peft_model(model, cfg)


def test_lora_changes_output_trains_and_merges():
    base = tiny().eval()
    x = torch.randn(2, 3, 40, 36)
    with torch.no_grad():
        ref = base(x)
    model = lora(copy.deepcopy(base))
    wrapped = [n for n, m in model.named_modules()
               if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert len(wrapped) == 4 * 5  # qkv, proj, fc1, fc2 of 5 blocks
    with torch.no_grad():
        out = model(x)
    assert min((u - v).abs().max() for u, v in zip(out, ref)) > 1e-3
    model.train()  # the fast plan's training kernels, lean included
    sum(o.mean() for o in model(x)).backward()
    for n, p in model.named_parameters():
        if 'lora_' in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    model.eval()
    with torch.no_grad():
        out = model(x)
        merged = model.merge_and_unload()
        assert not any(isinstance(m, peft.tuners.lora.LoraLayer)
                       for m in merged.modules())
        for u, v in zip(merged(x), out):
            torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)


def test_lora_on_the_layers_lean_training_recomputes():
    """LoRA on the stem's convs (whose GELU -> BatchNorm the lean kernels
    recompute in backward): the fast plan's training
    step computes the plain plan's outputs and LoRA gradients."""
    # (peft's LoRA takes no depthwise conv: its rank must divide groups)
    targets = r'.*patch_embed\.proj\.(0|3|6|9)'
    x = torch.randn(2, 3, 40, 36)
    results = []
    for plan in ('fast', 'plain'):
        model = lora(tiny(kernels=plan), targets).train()
        outs = model(x)
        sum(o.mean() for o in outs).backward()
        grads = {n: p.grad for n, p in model.named_parameters()
                 if 'lora_' in n}
        results.append((outs, grads))
    (f_out, f_grad), (p_out, p_grad) = results
    assert len(f_grad) == 2 * 4 and f_grad.keys() == p_grad.keys()
    for u, v in zip(f_out, p_out):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)
    for n in f_grad:
        assert f_grad[n].abs().sum() > 0, n
        torch.testing.assert_close(f_grad[n], p_grad[n], atol=1e-5,
                                   rtol=1e-3, msg=n)


def toy_upernet():
    from mmengine.config import Config

    from mmstvit.builder import build_model
    cfg = Config.fromfile(osp.join(ROOT, 'configs/toy/upernet_stvit_s_toy.py'))
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.backbone.arch = dict(embed_dims=[16, 32, 48, 64],
                                   depths=[1, 1, 1, 1],
                                   num_heads=[1, 2, 3, 4])
    cfg.model.backbone.stoken_size = [4, 2, 1, 1]
    cfg.model.decode_head.update(in_channels=[16, 32, 48, 64], channels=16)
    cfg.model.auxiliary_head.update(in_channels=48, channels=16)
    return build_model(cfg)


def test_lora_trains_the_toy_upernet():
    """One training step of the toy UperNet config with LoRA on the
    backbone's attention and FFN: only LoRA parameters get gradients and
    change."""
    from mmengine.optim import OptimWrapper
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    model = toy_upernet()
    model.backbone = lora(model.backbone).base_model.model
    for n, p in model.named_parameters():
        p.requires_grad = 'lora_' in n
    trainable = {n: p.detach().clone() for n, p in model.named_parameters()
                 if p.requires_grad}
    assert trainable and all('backbone.' in n for n in trainable)
    torch.manual_seed(0)
    samples = []
    for _ in range(2):
        s = SegDataSample(metainfo=dict(img_shape=(64, 64),
                                        ori_shape=(64, 64),
                                        pad_shape=(64, 64)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 4, (1, 64, 64)))
        samples.append(s)
    data = dict(inputs=[torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
                        for _ in range(2)], data_samples=samples)
    grads = {}
    for n, p in model.named_parameters():
        if p.requires_grad:  # a frozen tensor takes no hook
            p.register_hook(lambda g, n=n: grads.__setitem__(n, g))
    wrapper = OptimWrapper(torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1))
    losses = model.train_step(data, wrapper)
    assert torch.isfinite(losses['loss'])
    assert set(grads) == set(trainable)
    assert all(p.grad is None for n, p in model.named_parameters()
               if n not in trainable)
    after = dict(model.named_parameters())
    assert all(not torch.equal(after[n], v) for n, v in trainable.items())


def test_dynamic_quantization_runs_the_quantized_modules():
    from torch.ao.nn.quantized import dynamic as nnqd
    from torch.ao.quantization import (
        default_dynamic_qconfig, get_default_dynamic_quant_module_mappings)
    model = tiny().eval()
    x = torch.randn(1, 3, 40, 36)
    with torch.no_grad():
        ref = model(x)
    mapping = dict(get_default_dynamic_quant_module_mappings())
    mapping[nn.Conv2d] = nnqd.Conv2d
    spec = {n: default_dynamic_qconfig for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)}
    with warnings.catch_warnings():  # torch: dynamic conv is experimental
        warnings.simplefilter('ignore')
        q = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), spec, mapping=mapping)
    quantized = {n: m for n, m in q.named_modules()
                 if isinstance(m, nnqd.Conv2d)}
    assert len(quantized) == len(spec) == 4 * 5  # qkv, proj, fc1, fc2
    assert set(quantized) - fired(q, x, quantized) == set()
    with torch.no_grad():
        out = q(x)
    for u, v in zip(out, ref):
        err = ((u - v).norm() / v.norm()).item()
        assert 1e-4 < err < 0.2
