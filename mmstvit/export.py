# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""ONNX export of STViT models, checked with onnxruntime.

What exports (``tools/deployment/export_onnx.py`` is the command line):

* ``backbone``: the STViT backbone of any config, the stage maps it returns;
* ``model`` of a classification config: the classifier's logits
  (``ImageClassifier`` in tensor mode: backbone + ``STViTClsHead``);
* ``model`` of a segmentation config: the segmentor's logits at the input
  size (backbone + UperNet decode head, the auxiliary head is training-only);
* ``features`` of a detection config: backbone + FPN, the maps the RPN and
  RoI heads read.

Mask R-CNN's whole tensor-mode forward does not export faithfully with
torch's exporter (see :data:`DETECTOR_REASON`).

The inputs are the tensors after the model's data preprocessor: float NCHW
RGB, normalised with the config's mean and std, padded as the config pads.

The export traces the backbone's ``plain`` kernel plan (plain ops, no
in-place updates, static shapes; :mod:`mmstvit.models.backbones.kernels`):
the 3x3 super-token neighbourhoods are gathered with slices and scattered
with pads, not with the authors' identity-kernel convolutions, which cost 9x
the multiply-adds of a copy (``reference=True`` exports those, the
``reference`` plan that FLOP counters see).
"""
import contextlib
import os
import os.path as osp
import time
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_OPSET = 17

DETECTOR_REASON = (
    "Mask R-CNN's whole tensor-mode forward does not export with torch's "
    'exporter: under export mmdet 3.3 switches its box coder, NMS and mask '
    'code to ONNX branches that import mmdet.core.export, a module removed '
    'in mmdet 3.x; with those branches bypassed the graph exports (opset '
    "12, for mmcv's RoIAlign), but the RPN's NMS keeps other proposals in "
    'onnxruntime than in PyTorch (100 vs 77 on one 320x320 toy input), so '
    "the outputs do not match. mmdeploy's rewriters are the way to deploy "
    'the whole detector. Export --part features (backbone + FPN) or --part '
    'backbone instead.')

PARTS = {
    'mmpretrain': ('model', 'backbone'),
    'mmseg': ('model', 'backbone'),
    'mmdet': ('features', 'backbone'),
}


def reference_graph(module: nn.Module, enabled: bool):
    """Every STViT in ``module`` runs its ``reference`` plan (the authors'
    identity-kernel convolutions) or its ``plain`` one for a ``with``
    block; each gets its own plan back afterwards."""
    from mmstvit.models.backbones.kernels import use_kernels
    return use_kernels(module, 'reference' if enabled else 'plain')


def _bin_matrix(n: int, bins: int, dtype, device) -> torch.Tensor:
    """(bins, n): row i averages the inputs of adaptive pooling's bin i,
    ``[floor(i * n / bins), ceil((i + 1) * n / bins))``."""
    m = torch.zeros(bins, n, dtype=dtype, device=device)
    for i in range(bins):
        start = (i * n) // bins
        end = -((-(i + 1) * n) // bins)
        m[i, start:end] = 1.0 / (end - start)
    return m


class ExportableAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` that torch's ONNX exporter can express for
    any input size: where the output size does not divide the input size
    (UperNet's pyramid pooling: bins 3 and 6 of a 16x16 map), the bin means
    are two matrix products with fixed averaging matrices."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = int(x.shape[-2]), int(x.shape[-1])
        size = self.output_size
        oh, ow = (size, size) if isinstance(size, int) else size
        oh, ow = oh or H, ow or W
        if H % oh == 0 and W % ow == 0:
            return F.adaptive_avg_pool2d(x, (oh, ow))
        rows = _bin_matrix(H, oh, x.dtype, x.device)
        cols = _bin_matrix(W, ow, x.dtype, x.device)
        return rows @ x @ cols.t()


@contextlib.contextmanager
def exportable_pools(model: nn.Module):
    """Swaps every ``nn.AdaptiveAvgPool2d`` of ``model`` for
    :class:`ExportableAdaptiveAvgPool2d` while exporting; puts them back
    afterwards (the PyTorch reference runs the original modules)."""
    swapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.AdaptiveAvgPool2d:
                new = ExportableAdaptiveAvgPool2d(child.output_size)
                setattr(module, child_name, new)
                swapped.append((module, child_name, child))
    try:
        yield len(swapped)
    finally:
        for module, child_name, child in swapped:
            setattr(module, child_name, child)


# ---------------------------------------------------------------------------
# what is exported
# ---------------------------------------------------------------------------


class ClassifierLogits(nn.Module):
    """An mmpretrain classifier's logits (its tensor mode)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs, mode='tensor')


class SegmentorLogits(nn.Module):
    """An mmseg encoder-decoder's logits, resized to the input size."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        feats = self.model.extract_feat(inputs)
        head = self.model.decode_head
        logits = head(feats)
        return F.interpolate(
            logits,
            size=inputs.shape[2:],
            mode='bilinear',
            align_corners=head.align_corners)


class Features(nn.Module):
    """``extract_feat`` of a detector (backbone + neck) or a backbone."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if hasattr(self.module, 'extract_feat'):
            return tuple(self.module.extract_feat(inputs))
        return tuple(self.module(inputs))


def find_stvit(model: nn.Module) -> Optional[nn.Module]:
    from mmstvit.models import STViT
    backbone = getattr(model, 'backbone', None)
    if isinstance(backbone, STViT):
        return backbone
    for m in model.modules():
        if isinstance(m, STViT):
            return m
    return None


def export_module(model: nn.Module, task: str, part: str) -> nn.Module:
    """The module to export for ``part`` of a built ``model`` of ``task``.

    Raises:
        ValueError: ``part`` does not export for this task (the message
            says why and what does).
    """
    if part == 'backbone':
        backbone = find_stvit(model)
        if backbone is None:
            raise ValueError('the model has no STViT backbone')
        return Features(backbone)
    if task == 'mmdet' and part == 'model':
        raise ValueError(DETECTOR_REASON)
    if part not in PARTS.get(task, ()):
        raise ValueError(f'--part {part} is not available for an {task} '
                         f'config; choose one of {PARTS.get(task)}')
    if part == 'features':
        return Features(model)
    if task == 'mmpretrain':
        return ClassifierLogits(model)
    return SegmentorLogits(model)


def output_names(outputs) -> List[str]:
    if isinstance(outputs, torch.Tensor):
        return ['output']
    return [f'output{i}' for i in range(len(outputs))]


def as_tuple(outputs) -> Tuple[torch.Tensor, ...]:
    return (outputs, ) if isinstance(outputs, torch.Tensor) else \
        tuple(outputs)


# ---------------------------------------------------------------------------
# export and check
# ---------------------------------------------------------------------------


def export_onnx(module: nn.Module,
                inputs: torch.Tensor,
                path: str,
                opset: int = DEFAULT_OPSET,
                reference: bool = False,
                log_file: Optional[str] = None) -> Dict:
    """Exports ``module(inputs)`` to ``path`` (torch's TorchScript-based
    exporter, fixed input shape).

    The exporter's warnings (shape-dependent branches fixed to this input
    size, constant folding notes) go to ``log_file`` rather than the
    console. Returns ``dict(seconds, warnings, outputs)``.
    """
    module = module.eval()
    with torch.no_grad():
        outputs = module(inputs)
    names = output_names(outputs)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    start = time.time()
    with warnings.catch_warnings(record=True) as caught, \
            reference_graph(module, reference), exportable_pools(module), \
            torch.no_grad():
        warnings.simplefilter('always')
        torch.onnx.export(
            module, (inputs, ),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=['input'],
            output_names=names,
            do_constant_folding=True)
    seconds = time.time() - start
    if log_file:
        with open(log_file, 'w') as f:
            for w in caught:
                f.write(f'{w.filename}:{w.lineno}: {w.category.__name__}: '
                        f'{w.message}\n')
    return dict(seconds=seconds, warnings=len(caught), outputs=names)


def _initializers(graph) -> Dict[str, np.ndarray]:
    from onnx import numpy_helper
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # constants folded into Constant nodes
        if node.op_type == 'Constant':
            for attr in node.attribute:
                if attr.name == 'value':
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def identity_kernel_convs(path: str) -> int:
    """How many Conv / ConvTranspose nodes of the ONNX file at ``path`` use
    the authors' (9, 1, 3, 3) identity kernel (the reference graph's
    neighbourhood gather and scatter)."""
    import onnx
    graph = onnx.load(path, load_external_data=False).graph
    try:
        weights = _initializers(graph)
    except Exception:  # external data not loaded: look at shapes only
        weights = {}
    # the exporter stores equal tensors once, read through Identity nodes
    alias = {
        node.output[0]: node.input[0]
        for node in graph.node if node.op_type == 'Identity'
    }
    eye = np.eye(9, dtype=np.float32).reshape(9, 1, 3, 3)
    count = 0
    for node in graph.node:
        if node.op_type not in ('Conv', 'ConvTranspose') or \
                len(node.input) < 2:
            continue
        name = node.input[1]
        while name in alias and name not in weights:
            name = alias[name]
        w = weights.get(name)
        if w is not None and w.shape == eye.shape and np.array_equal(w, eye):
            count += 1
    return count


def op_counts(path: str) -> Dict[str, int]:
    import onnx
    from collections import Counter
    graph = onnx.load(path, load_external_data=False).graph
    return dict(Counter(node.op_type for node in graph.node))


def compare_with_onnxruntime(module: nn.Module, inputs: torch.Tensor,
                             path: str, threads: int = 0,
                             timings: Optional[Dict] = None) -> List[Dict]:
    """Runs the ONNX file with onnxruntime (CPU) and ``module`` with
    PyTorch on the same ``inputs``; one dict per output: ``name``,
    ``shape``, ``max_abs_diff``, ``max_abs_ref`` and ``relative``
    (max |onnx - torch| / max |torch|). ``timings``, when given, receives
    ``onnxruntime_ms``: the median of three runs after the first."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(
        path, options, providers=['CPUExecutionProvider'])
    with torch.no_grad():
        ref = as_tuple(module.eval()(inputs))
    feed = {'input': inputs.cpu().numpy()}
    got = session.run(None, feed)
    if timings is not None:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        timings['onnxruntime_ms'] = 1000 * sorted(times)[1]
    rows = []
    for name, r, g in zip([o.name for o in session.get_outputs()], ref, got):
        r = r.detach().cpu().float().numpy()
        if r.shape != g.shape:
            rows.append(dict(name=name, shape=tuple(r.shape),
                             onnx_shape=tuple(g.shape), max_abs_diff=np.inf,
                             max_abs_ref=float(np.abs(r).max()),
                             relative=np.inf))
            continue
        diff = float(np.abs(g.astype(np.float64) - r).max())
        scale = float(np.abs(r).max())
        rows.append(dict(name=name, shape=tuple(r.shape), max_abs_diff=diff,
                         max_abs_ref=scale,
                         relative=diff / scale if scale > 0 else diff))
    return rows


def describe_input(cfg, task: str) -> str:
    """What the exported graph expects, from the config's preprocessor."""
    pre = cfg.model.get('data_preprocessor', None) or \
        cfg.get('data_preprocessor', None) or {}
    mean, std = pre.get('mean'), pre.get('std')
    rgb = pre.get('to_rgb', pre.get('bgr_to_rgb', False))
    parts = ['float32 NCHW']
    parts.append('RGB (convert BGR images)' if rgb else
                 'channels in the order the images are read')
    if mean is not None:
        parts.append(f'minus mean {list(mean)}, divided by std {list(std)}')
    return ', '.join(parts)


__all__ = [
    'DEFAULT_OPSET', 'DETECTOR_REASON', 'PARTS', 'reference_graph',
    'ExportableAdaptiveAvgPool2d', 'exportable_pools',
    'ClassifierLogits', 'SegmentorLogits', 'Features', 'find_stvit',
    'export_module', 'export_onnx', 'identity_kernel_convs', 'op_counts',
    'compare_with_onnxruntime', 'describe_input'
]
