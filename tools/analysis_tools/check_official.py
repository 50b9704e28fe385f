# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Checks that mmstvit computes what the authors' STViT computes.

    python tools/analysis_tools/check_official.py --official-src STViT/models/stvit.py
        [--arch small base large] [--checkpoint stvit-small-224.pth [--ema]]
        [--size 480 352] [--batch 2] [--seed 0]

``--official-src`` is the authors' ``models/stvit.py`` (clone
https://github.com/hhb072/STViT; it is not shipped with mmstvit). For each
arch the authors' classifier is built with seeded random weights far from
the init (BatchNorm statistics and layer scales included) or, with
``--checkpoint``, with an official ImageNet file (``model``, or ``model_ema``
with ``--ema``); the same tensors go into

1. mmstvit's classifier (``configs/stvit_<a>_in1k_224.py``: STViT +
   STViTClsHead) through ``convert_official_state_dict``: ImageNet logits at
   224x224 with the ImageNet super token sizes (8, 4, 1, 1), eval mode;
2. mmstvit's STViT backbone with the dense-task sizes (16, 8, 2, 1): the four
   stage outputs at ``--size`` (default 480x352, not a multiple of the super
   tokens, so the padding is checked too), eval mode; and one training step
   (train mode, batch statistics): the outputs, the gradient with respect
   to the input and every parameter's gradient, matched by name.

Prints the largest absolute difference of each and exits with 1 if one is
above its tolerance (float32: 1e-4 relative to the tensor's scale).
"""
import argparse
import os.path as osp
import pickle
import sys
from collections import OrderedDict

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

ARCHS = ('small', 'base', 'large')
DET_STOKEN = (16, 8, 2, 1)
CLS_STOKEN = (8, 4, 1, 1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Compare mmstvit's STViT with the authors' code")
    parser.add_argument('--official-src', required=True,
                        help="the authors' models/stvit.py")
    parser.add_argument('--arch', nargs='+', default=list(ARCHS),
                        choices=ARCHS)
    parser.add_argument('--checkpoint', default=None,
                        help='an official ImageNet file (stvit-*-224.pth); '
                        'default: seeded random weights')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='trust --checkpoint: unpickle it fully even if '
                        'it holds objects beyond weights')
    parser.add_argument('--ema', action='store_true',
                        help="with --checkpoint: use its 'model_ema'")
    parser.add_argument('--size', nargs=2, type=int, default=[480, 352],
                        metavar=('W', 'H'),
                        help='input size of the backbone checks')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if not osp.isfile(args.official_src):
        parser.error(f'--official-src {args.official_src} does not exist: '
                     'clone https://github.com/hhb072/STViT and pass its '
                     'models/stvit.py')
    if args.checkpoint is not None:
        if not osp.isfile(args.checkpoint):
            parser.error(f'--checkpoint {args.checkpoint} does not exist')
        if len(args.arch) != 1:
            parser.error('--checkpoint holds one arch: pass --arch with the '
                         "file's variant (small, base or large)")
    elif args.ema:
        parser.error('--ema needs --checkpoint')
    return args


def randomised(state_dict, seed):
    """Seeded weights far from the init, so that a wrongly used tensor
    shows. The identity kernels of the authors' unfold/fold keep theirs."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for k, v in state_dict.items():
        if v.is_floating_point() and not k.endswith('fold.weights'):
            new = torch.randn(v.shape, generator=g) * 0.02
            if k.endswith('running_var'):
                new = new.abs() + 0.5
            elif k.endswith(('.weight', 'gamma_1', 'gamma_2')) and \
                v.dim() == 1 or 'gamma' in k:
                new = new + 1.0  # norm scales and layer scales near 1
            v = new
        out[k] = v.clone()
    return out


def official_weights(args, theirs):
    if args.checkpoint is None:
        return randomised(theirs.state_dict(), args.seed)
    from mmstvit.weights import load_checkpoint_file
    try:
        ckpt = load_checkpoint_file(args.checkpoint, unsafe=args.unsafe_load)
    except (ValueError, pickle.UnpicklingError) as e:
        raise SystemExit(f'check_official: {e}') from None
    key = 'model_ema' if args.ema else 'model'
    if not isinstance(ckpt, dict) or key not in ckpt:
        raise SystemExit(f'{args.checkpoint} has no {key!r} entry: is it an '
                         'official STViT checkpoint?')
    return OrderedDict(ckpt[key])


def diff(a, b):
    """(max abs difference, the reference's max abs value)."""
    return (a - b).abs().max().item(), b.abs().max().item()


class Report:

    def __init__(self):
        self.failed = []

    def row(self, arch, what, a, b, rtol=1e-4):
        d, scale = diff(a.detach().float(), b.detach().float())
        ok = d <= rtol * max(scale, 1.0)
        print(f'{arch:6s} {what:44s} max|diff| {d:.2e}  (max|ref| '
              f'{scale:.2e})  {"ok" if ok else "MISMATCH"}', flush=True)
        if not ok:
            self.failed.append(f'{arch} {what}')


def classifier(arch):
    """mmstvit's ImageNet classifier from its config, no pretrained file."""
    from mmstvit.builder import build_model
    from mmstvit.cli.quiet import mm_log_level, quiet_third_party_warnings
    quiet_third_party_warnings()
    # mmpretrain notes that batch augmentations turn on one-hot labels
    with mm_log_level('WARNING'):
        return build_model(
            osp.join(ROOT, 'configs', f'stvit_{arch[0]}_in1k_224.py'),
            drop_path_rate=0.)


def check_arch(arch, args, report):
    """Both checks of the module docstring for one arch, on the same
    official weights (seeded random or ``--checkpoint``)."""
    from mmstvit.weights.official_model import build_official_model
    g = torch.Generator().manual_seed(args.seed + 1)
    theirs = build_official_model(args.official_src, arch, CLS_STOKEN)
    sd = official_weights(args, theirs)
    check_classifier(arch, args, theirs, sd, g, report)
    check_backbone(arch, args, sd, g, report)


def check_classifier(arch, args, theirs, sd, g, report):
    """1. ImageNet logits at 224 (super tokens 8, 4, 1, 1), eval mode, of
    the authors' classifier ``theirs`` and mmstvit's with ``sd`` converted;
    the top-1 classes must agree."""
    from mmstvit.weights import convert_official_state_dict
    theirs.load_state_dict(sd)
    ours = classifier(arch)
    ours.load_state_dict(convert_official_state_dict(sd), strict=True)
    theirs.eval()
    ours.eval()
    x = torch.randn(args.batch, 3, 224, 224, generator=g)
    with torch.no_grad():
        ref = theirs(x)
        out = ours(x, mode='tensor')
    report.row(arch, 'ImageNet logits 224 (8,4,1,1), eval', out, ref)
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    print(f'{arch:6s} top-1 class agreement {agree:.0%}')
    if agree < 1:
        report.failed.append(f'{arch} top-1 agreement')


def check_backbone(arch, args, sd, g, report):
    """2. The backbone with the dense-task super token sizes at
    ``--size``: the four stage outputs in eval mode, then one training
    step (:func:`check_training_step`)."""
    from mmstvit import STViT
    from mmstvit.weights.official_model import (build_official_model,
                                                official_backbone_features)
    theirs = build_official_model(args.official_src, arch, DET_STOKEN)
    theirs.load_state_dict(sd)
    backbone = STViT(arch=arch, stoken_size=DET_STOKEN, drop_path_rate=0.)
    backbone.load_state_dict(
        OrderedDict((k, v) for k, v in sd.items()
                    if k.startswith(('patch_embed.', 'layers.'))),
        strict=True)
    w, h = args.size
    x = torch.randn(args.batch, 3, h, w, generator=g)
    theirs.eval()
    backbone.eval()
    with torch.no_grad():
        refs = official_backbone_features(theirs, x)
        outs = backbone(x)
    for i, (o, r) in enumerate(zip(outs, refs)):
        report.row(arch, f'stage {i} output {w}x{h} (16,8,2,1), eval', o, r)
    check_training_step(arch, theirs, backbone, x, g, report)


def check_training_step(arch, theirs, backbone, x, g, report):
    """Train mode (batch statistics): the stage outputs for ``x``, the
    gradient of a random weighting of them with respect to the input, and
    every parameter's gradient (:func:`compare_parameter_gradients`)."""
    from mmstvit.weights.official_model import official_backbone_features
    theirs.train()
    backbone.train()
    xt, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    refs = official_backbone_features(theirs, xt)
    outs = backbone(xo)
    weights = [torch.randn(r.shape, generator=g) for r in refs]
    sum((r * wt).sum() for r, wt in zip(refs, weights)).backward()
    sum((o * wt).sum() for o, wt in zip(outs, weights)).backward()
    for i, (o, r) in enumerate(zip(outs, refs)):
        report.row(arch, f'stage {i} output, train mode', o, r)
    report.row(arch, 'gradient w.r.t. the input', xo.grad, xt.grad)
    compare_parameter_gradients(arch, theirs, backbone, report)


def compare_parameter_gradients(arch, theirs, backbone, report):
    """Every parameter gradient, matched by name, to 1e-4 of the largest
    gradient of the network (a conv bias before a train-mode BatchNorm has
    a true gradient of 0: its float noise is not compared to itself); a
    parameter with a gradient in theirs and none in ours fails too."""
    their_params = dict(theirs.named_parameters())
    pairs = [(name, p.grad, their_params[name].grad)
             for name, p in backbone.named_parameters()
             if p.grad is not None]
    top = max(q.abs().max().item() for _, _, q in pairs)
    worst, worst_name = 0., None
    for name, g_ours, g_theirs in pairs:
        d = (g_ours - g_theirs).abs().max().item()
        if d >= worst:
            worst, worst_name = d, name
    theirs_with_grad = {n for n, q in their_params.items()
                        if q.grad is not None}
    missing = theirs_with_grad - {name for name, _, _ in pairs}
    ok = worst <= 1e-4 * top and not missing
    print(f'{arch:6s} parameter gradients ({len(pairs)} tensors'
          f'{", not in ours: " + str(sorted(missing)) if missing else ""}):'
          f' max|diff| {worst:.2e} ({worst_name}), largest gradient '
          f'{top:.2e}  {"ok" if ok else "MISMATCH"}')
    if not ok:
        report.failed.append(f'{arch} parameter gradients')


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    report = Report()
    src = 'seeded random weights' if args.checkpoint is None else \
        f'{args.checkpoint} ({"model_ema" if args.ema else "model"})'
    print(f"mmstvit vs the authors' code ({args.official_src}), {src}, "
          f'torch {torch.__version__}, float32 CPU')
    for arch in args.arch:
        check_arch(arch, args, report)
    if report.failed:
        print('MISMATCH: ' + '; '.join(report.failed))
        return 1
    print('all outputs and gradients match')
    return 0


if __name__ == '__main__':
    sys.exit(main())
