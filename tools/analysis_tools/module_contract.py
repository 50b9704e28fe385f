# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Which layers of STViT run as their modules, and whether tools that wrap
or swap modules (PEFT's LoRA, ``torch.ao`` dynamic quantization) change
what it computes.

    python tools/analysis_tools/module_contract.py [--arch s] [--size 64]

On STViT-S with a 1x3xSIZExSIZE input it prints, for each kernel plan in
training and in eval and after ``switch_to_deploy()``, how many of the
Conv/Linear/Norm layers that hold parameters fire their forward hook (out
of how many), then how much the output moves when LoRA (``peft``, with
``lora_B`` non-zero) wraps ``stoken_refine.qkv/proj`` and ``mlp2.fc1/fc2``,
and when ``quantize_dynamic`` quantizes the Conv/Linear layers. Run it with
``PYTHONPATH`` set to the checkout to measure (it uses only the public
surface: ``set_kernels``, ``switch_to_deploy``). Issue #26.
"""
import argparse
import copy
import warnings

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

LAYERS = (_ConvNd, nn.Linear, _NormBase, nn.LayerNorm, nn.GroupNorm)
LORA_TARGETS = r'.*(stoken_refine\.(qkv|proj)|mlp2\.fc1|mlp2\.fc2)'


def layers(model: nn.Module) -> dict:
    """name -> module for every Conv/Linear/Norm layer with parameters."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, LAYERS) and any(True for _ in
                                              m.parameters(recurse=False))}


def fired(model: nn.Module, x: torch.Tensor, modules: dict) -> set:
    """The names in ``modules`` whose forward hook fires on ``model(x)``."""
    seen, handles = set(), []
    for name, m in modules.items():
        handles.append(m.register_forward_hook(
            lambda mod, args, out, name=name: seen.add(name)))
    try:
        if model.training:
            model(x)
        else:
            with torch.no_grad():
                model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def build(arch):
    from mmstvit.models.backbones import STViT
    torch.manual_seed(0)
    return STViT(arch=arch, drop_path_rate=0.)


def hook_counts(arch, x):
    rows = []
    for plan in ('fast', 'plain', 'reference'):
        for mode in ('train', 'eval'):
            m = build(arch).set_kernels(plan).train(mode == 'train')
            mods = layers(m)
            rows.append((f'{plan} {mode}', len(fired(m, x, mods)),
                         len(mods)))
    m = build(arch).eval()
    m.switch_to_deploy()
    mods = layers(m)
    rows.append(('deploy (layers)', len(fired(m, x, mods)), len(mods)))
    every = {n: mod for n, mod in m.named_modules() if n and not
             isinstance(mod, (nn.ModuleList, nn.ModuleDict))}
    rows.append(('deploy (every module*)', len(fired(m, x, every)),
                 len(every)))
    return rows


def max_change(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a, b))


def lora_change(arch, x):
    try:
        import peft
    except ImportError:
        return 'peft is not installed (pip install -r requirements/tests.txt)'
    m = build(arch).eval()
    with torch.no_grad():
        ref = m(x)
    cfg = peft.LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS,
                          init_lora_weights=False)  # lora_B non-zero
    wrapped = peft.get_peft_model(copy.deepcopy(m), cfg).eval()
    n = sum(1 for k in wrapped.state_dict() if 'lora_B' in k)
    with torch.no_grad():
        out = wrapped(x)
    lines = [f'LoRA on {n} layers: output change (max abs) '
             f'{max_change(ref, out):.3e}']
    wrapped.train()
    try:
        sum(o.mean() for o in wrapped(x)).backward()
        grads = [p.grad for k, p in wrapped.named_parameters()
                 if 'lora_' in k]
        nonzero = sum(1 for g in grads if g is not None and g.abs().sum() > 0)
        lines.append(f'LoRA training step: {nonzero} of {len(grads)} LoRA '
                     'tensors get a non-zero gradient')
    except RuntimeError as e:
        lines.append(f'LoRA training step fails: {str(e).splitlines()[0]}')
    return '\n'.join(lines)


def quantize_dynamic(model: nn.Module) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` (qint8 weights) on every
    Linear and 1x1 Conv2d, the projections of the attention and the FFN
    (Conv2d mapped to its dynamic quantized module, which torch's default
    mapping leaves out; torch itself warns that it is inaccurate for the
    3x3 kernels)."""
    from torch.ao.nn.quantized import dynamic as nnqd
    from torch.ao.quantization import (
        default_dynamic_qconfig, get_default_dynamic_quant_module_mappings)
    mapping = dict(get_default_dynamic_quant_module_mappings())
    mapping[nn.Conv2d] = nnqd.Conv2d
    spec = {name: default_dynamic_qconfig
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear) or (
                isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))}
    return torch.ao.quantization.quantize_dynamic(model, spec,
                                                  mapping=mapping)


def quantize_change(arch, x):
    m = build(arch).eval()
    with torch.no_grad():
        ref = m(x)
        q = quantize_dynamic(copy.deepcopy(m))
        swapped = sum(1 for mod in q.modules()
                      if type(mod).__module__.startswith(
                          'torch.ao.nn.quantized'))
        try:
            out = q(x)
        except Exception as e:  # noqa: BLE001  (what a user would see)
            return (f'quantize_dynamic: {swapped} modules quantized; the '
                    f'forward fails: {type(e).__name__}: '
                    f'{str(e).splitlines()[0]}')
    rel = max(((r - o).norm() / r.norm()).item() for r, o in zip(ref, out))
    return (f'quantize_dynamic: {swapped} modules quantized; output change '
            f'(max abs) {max_change(ref, out):.3e}, relative (L2, worst '
            f'stage) {rel:.3e}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='s')
    parser.add_argument('--size', type=int, default=64)
    args = parser.parse_args(argv)
    warnings.filterwarnings('ignore')
    x = torch.randn(1, 3, args.size, args.size)
    print(f'STViT-{args.arch.upper()}, input 1x3x{args.size}x{args.size}: '
          'Conv/Linear/Norm layers with parameters whose forward hook fires')
    for name, n, total in hook_counts(args.arch, x):
        print(f'  {name:24s} {n:4d} of {total}')
    print('  (* but the containers: ModuleList)')
    print(lora_change(args.arch, x))
    print(quantize_change(args.arch, x))


if __name__ == '__main__':
    main()
