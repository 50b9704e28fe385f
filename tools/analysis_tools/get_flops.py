# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Parameters and FLOPs of a whole model built from a config.

    python tools/analysis_tools/get_flops.py CONFIG [--shape H W]
    python tools/analysis_tools/get_flops.py --all      # the paper's table
    python tools/analysis_tools/get_flops.py --all --only 'retinanet_*'

The paper's protocol (docs/reference_numbers.md): mmengine's
``get_model_complexity_info`` (its ``FlopAnalyzer``) on the model's
tensor-mode forward (``model._forward``) of one random input at the paper's
size: 1280x800 for COCO (H=800, W=1280), 2048x512 for ADE20K UperNet
(H=512, W=2048), 224 or 384 for ImageNet; Semantic FPN, which the paper does
not report, at 512x512 as PVT and the papers comparing with it report it.
One multiply-add counts as one FLOP; parameters are the trainable ones.
With this protocol mmdet's own Mask R-CNN R50 gives the 260G / 44M that
papers quote. Two-stage detectors are counted as mmdet 2's
``forward_dummy`` counted them, which the papers' figures come from: the
RoI heads on exactly 1000 proposals (the
RPN's ``max_per_img``; a random model's RPN keeps fewer after NMS, 676 for
STViT-S, and the cascade's heads cost ~0.4 GFLOPs per RoI), the mask heads
on the first 100 (mmdet 3's Mask R-CNN tensor forward does so too; its
cascade runs the three mask heads on every proposal, about 1T more at
1280x800). With these rules ResNet-50 in the cascade recipe gives Swin's
published 82M / 739G. ``--all``
measures every config in configs/ (not configs/toy) and prints it beside the
paper's numbers, or 'not in the paper' (``--only`` picks configs by name
pattern); configs/ablations/ (the paper's ablation rows) comes after
configs/.
"""
import argparse
import fnmatch
import glob
import os.path as osp
import sys
import types

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

# paper: (params M, GFLOPs) per config name; the others (Cascade Mask R-CNN,
# RetinaNet, Semantic FPN) are not in the paper
PAPER = {
    'mask_rcnn_stvit_s_1x': (44, 252), 'mask_rcnn_stvit_s_3x': (44, 252),
    'mask_rcnn_stvit_b_1x': (70, 359), 'mask_rcnn_stvit_b_3x': (70, 359),
    'mask_rcnn_stvit_l_1x': (114, 470), 'mask_rcnn_stvit_l_3x': (114, 470),
    'upernet_stvit_s_160k_ade20k': (54, 926),
    'upernet_stvit_b_160k_ade20k': (80, 1036),
    'upernet_stvit_l_160k_ade20k': (125, 1151),
    'stvit_s_in1k_224': (25, 4.4), 'stvit_s_in1k_384': (25, 14.1),
    'stvit_b_in1k_224': (52, 9.9), 'stvit_b_in1k_384': (52, 31.5),
    'stvit_l_in1k_224': (95, 15.6), 'stvit_l_in1k_384': (95, 49.7),
    # "Ablations of STViT" (configs/ablations/): the classifiers at 224; the
    # paper gives no counts for the rows' detectors and segmentors
    'stvit_s_sta4stage_in1k_224': (24.1, 3.97),
    'stvit_s_convstem_in1k_224': (24.2, 4.26),
    'stvit_s_projection_in1k_224': (25.2, 4.29),
    'stvit_s_cpe_in1k_224': (25.3, 4.30),
    'stvit_s_ape_in1k_224': (24.2, 4.26),
    'stvit_s_rpe_in1k_224': (25.3, 4.29),
    'stvit_s_noshortcut_in1k_224': (25.4, 4.37),
}


def default_shape(cfg, task):
    """(H, W) at which the paper reports the config's FLOPs."""
    if task == 'mmdet':
        return (800, 1280)
    if task == 'mmseg':
        if cfg.model.decode_head.get('type') == 'FPNHead':
            return (512, 512)  # Semantic FPN: PVT's protocol
        return (512, 2048)
    for t in cfg.test_dataloader.dataset.pipeline:
        if t.get('type') == 'CenterCrop':
            size = t['crop_size']
            return (size, size) if isinstance(size, int) else tuple(size)
    return (224, 224)


def _data_sample(task, shape):
    h, w = shape
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                scale_factor=(1., 1.), batch_input_shape=(h, w))
    if task == 'mmdet':
        from mmdet.structures import DetDataSample
        return DetDataSample(metainfo=meta)
    if task == 'mmseg':
        from mmseg.structures import SegDataSample
        return SegDataSample(metainfo=meta)
    from mmpretrain.structures import DataSample
    return DataSample(metainfo=meta)


def cascade_forward_100(roi_head, x, rpn_results_list, batch_data_samples):
    """``CascadeRoIHead.forward`` (tensor mode) with the mask heads on the
    first 100 RoIs, as mmdet 2's ``forward_dummy`` counted a cascade and as
    mmdet 3's ``StandardRoIHead.forward`` counts Mask R-CNN; the box heads
    still refine every proposal through the stages."""
    from mmdet.structures.bbox import bbox2roi
    metas = [s.metainfo for s in batch_data_samples]
    proposals = [r.bboxes for r in rpn_results_list]
    rois, cls_scores, bbox_preds = roi_head._refine_roi(
        x, bbox2roi(proposals), metas, tuple(len(p) for p in proposals))
    outs = (cls_scores, bbox_preds)
    if roi_head.with_mask:
        mask_rois = torch.cat(rois)[:100]
        outs += tuple(
            roi_head._mask_forward(stage, x, mask_rois)['mask_preds']
            for stage in range(roi_head.num_stages))
    return outs


def pad_proposals(model):
    """Makes the RPN of a two-stage detector hand exactly
    ``test_cfg.rpn.max_per_img`` proposals to the RoI heads (its own,
    repeated), as mmdet 2's ``forward_dummy`` used that many: the count no
    longer depends on how many boxes a random RPN keeps after NMS."""
    rpn = model.rpn_head
    n = model.test_cfg.rpn.max_per_img
    predict = rpn.predict

    def padded(*args, **kwargs):
        results = predict(*args, **kwargs)
        out = []
        for r in results:
            if len(r) == 0:  # nothing kept: one whole-image box
                h, w = r.metainfo['img_shape']
                r = r.new(bboxes=torch.tensor([[0., 0., w, h]]),
                          scores=torch.ones(1), labels=torch.zeros(1).long())
            out.append(r[torch.arange(n) % len(r)] if len(r) < n else r)
        return out

    rpn.predict = padded


def measure(config, shape=None):
    """``dict(params=..., flops=..., shape=...)`` of the whole model."""
    from mmengine.analysis import FlopAnalyzer
    from mmengine.config import Config

    import mmstvit  # noqa: F401
    from mmstvit.utils.launch import quiet_third_party_warnings
    quiet_third_party_warnings()
    from mmstvit.builder import build_model, detect_task
    cfg = Config.fromfile(config)
    task = detect_task(cfg)
    shape = tuple(shape) if shape else default_shape(cfg, task)
    # model and input are seeded: the counts are reproducible
    torch.manual_seed(0)
    # no weights; SyncBN cannot run outside a process group (same counts)
    model = build_model(cfg, sync_bn_as_bn=True).eval()
    if task == 'mmdet' and getattr(model, 'rpn_head', None) is not None:
        pad_proposals(model)
    roi_head = getattr(model, 'roi_head', None)
    if type(roi_head).__name__ == 'CascadeRoIHead':
        roi_head.forward = types.MethodType(cascade_forward_100, roi_head)
    inputs = torch.randn(1, 3, *shape)
    samples = [_data_sample(task, shape)]

    class TensorForward(torch.nn.Module):
        """``model._forward`` (mode='tensor') as a module to trace."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            if task == 'mmpretrain':
                return self.m(x, mode='tensor')
            return self.m._forward(x, samples)

    # the paper's counting protocol: the authors' graph (kernels.py)
    from mmstvit.models.backbones.kernels import use_kernels
    # the FLOP count of get_model_complexity_info, without its activation
    # count (a second trace of the model) or its per-module warnings
    with torch.no_grad(), use_kernels(model, 'reference'):
        analyzer = FlopAnalyzer(TensorForward(model), (inputs, ))
        analyzer.uncalled_modules_warnings(False)
        flops = analyzer.total()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(params=params, flops=float(flops), shape=shape, task=task)


def table_row(name, r):
    """A markdown row: the measurement beside the paper's figure, or 'not in
    the paper'."""
    g = r['flops'] / 1e9
    gs = f'{g:.2f}' if g < 10 else f'{g:.1f}'  # the paper's precision
    shape = f'{r["shape"][1]}x{r["shape"][0]}'
    if name in PAPER:
        p_params, p_flops = PAPER[name]
        return (f'| {name} | {shape} | {p_params}M | {r["params"] / 1e6:.2f}M'
                f' | {p_flops}G | {gs}G | '
                f'{100 * (g - p_flops) / p_flops:+.1f}% |')
    return (f'| {name} | {shape} | not in the paper | '
            f'{r["params"] / 1e6:.2f}M | not in the paper | {gs}G | - |')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Params and FLOPs of a whole STViT model (paper protocol)')
    parser.add_argument('config', nargs='?', help='config file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width (default: the paper\'s '
                        'size for the task)')
    parser.add_argument('--all', action='store_true',
                        help='every config in configs/ and '
                        'configs/ablations/, beside the paper')
    parser.add_argument('--only', nargs='+', metavar='PATTERN',
                        help="with --all: only the configs whose name (no "
                        "directory, no .py) matches one of these patterns, "
                        "e.g. 'cascade_*'")
    args = parser.parse_args(argv)
    if args.only and not args.all:
        parser.error('--only goes with --all')
    if not args.all and not args.config:
        parser.error('give a CONFIG or --all')
    if args.config and not osp.isfile(args.config):
        parser.error(f'config {args.config} does not exist')
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.all:
        r = measure(args.config, args.shape)
        print(f'config: {args.config}\ninput: {r["shape"][1]}x{r["shape"][0]}'
              f' (W x H)\nparams: {r["params"] / 1e6:.2f} M\n'
              f'FLOPs: {r["flops"] / 1e9:.2f} G')
        return r
    rows = ['| config | input (WxH) | params (paper) | params | FLOPs (paper)'
            ' | FLOPs | diff |', '|---|---|---|---|---|---|---|']
    results = {}
    paths = sorted(glob.glob(osp.join(ROOT, 'configs', '*.py'))) + sorted(
        glob.glob(osp.join(ROOT, 'configs', 'ablations', '*.py')))
    if args.only:
        paths = [
            p for p in paths if any(
                fnmatch.fnmatchcase(osp.splitext(osp.basename(p))[0], pat)
                for pat in args.only)
        ]
        if not paths:
            sys.exit(f'no config in configs/ or configs/ablations/ matches '
                     f'{args.only}')
    for path in paths:
        name = osp.splitext(osp.basename(path))[0]
        r = measure(path)
        results[name] = r
        rows.append(table_row(name, r))
        print(rows[-1], flush=True)
    print('\n'.join(rows))
    return results


if __name__ == '__main__':
    main()
