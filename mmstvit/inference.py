# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""One-image (or one-folder) inference with an STViT config, through the
toolbox's own inferencer: mmdet's ``DetInferencer``, mmseg's
``MMSegInferencer``, mmpretrain's ``ImageClassificationInferencer``.

:func:`infer` writes, under ``out_dir``:

* ``vis/``: each image with its predictions drawn (boxes and masks, the
  colour-coded label map, or the top classes);
* ``preds/<image stem>.json``: the predictions of each image (detection:
  class, score, box ``[x1, y1, x2, y2]`` in pixels and the mask as COCO RLE;
  segmentation: the classes present with their pixel share, and the label
  map as ``preds/<stem>.png``; classification: the top-5 classes);
* ``predictions.json``: all of them in one list.

``tools/infer.py`` is the command line.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np

from mmstvit.engine.deploy import switch_to_deploy

TASKS = ('mmdet', 'mmseg', 'mmpretrain')
TASK_NAMES = dict(
    mmdet='detection', mmseg='semantic segmentation',
    mmpretrain='classification')
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


class InputError(ValueError):
    """Input that cannot be used; the message names the problem and the fix.
    """


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------


def _read_image(path: str):
    import cv2
    return cv2.imread(path, cv2.IMREAD_COLOR)


def list_images(path: str) -> List[str]:
    """The image at ``path``, or the images directly inside the folder
    ``path`` (sorted by name).

    Raises:
        InputError: the path does not exist, is not an image, or is a
            folder with no images in it.
    """
    exts = ', '.join(IMAGE_EXTS)
    if not osp.exists(path):
        raise InputError(f'{path}: no such file or folder; give an image '
                         f'file or a folder of images')
    if osp.isdir(path):
        files = sorted(
            osp.join(path, name) for name in os.listdir(path)
            if name.lower().endswith(IMAGE_EXTS)
            and osp.isfile(osp.join(path, name)))
        if not files:
            raise InputError(
                f'{path} is a folder with no images in it (looked for '
                f'{exts}); put images there or give one image file')
        for f in files:
            if _read_image(f) is None:
                raise InputError(
                    f'{f} cannot be decoded as an image (a broken or '
                    f'mislabelled file); remove it from {path} or replace it')
        return files
    if _read_image(path) is None:
        kind = 'a broken image' if path.lower().endswith(IMAGE_EXTS) else \
            'not an image'
        raise InputError(
            f'{path} is {kind} (OpenCV cannot decode it); give an image file '
            f'({exts}) or a folder of images')
    return [path]


def _type_name(t) -> str:
    if isinstance(t, str):
        return t.split('.')[-1]
    return getattr(t, '__name__', str(t))


def backbone_types(model_cfg) -> List[str]:
    """The ``type`` of every ``backbone`` in a model config (nested
    wrappers included)."""
    found = []

    def walk(obj):
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key == 'backbone' and isinstance(value, dict) and \
                        'type' in value:
                    found.append(_type_name(value['type']))
                walk(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value)

    walk(model_cfg)
    return found


def require_stvit(cfg, config_path: str, task: str) -> None:
    """Raises :class:`InputError` unless ``cfg`` is an mmdet, mmseg or
    mmpretrain config whose model has an STViT backbone."""
    if task not in TASKS:
        raise InputError(
            f'{config_path} is not an mmdet, mmseg or mmpretrain config '
            f"(default_scope is {cfg.get('default_scope', None)!r}); give a "
            'detection, segmentation or classification config (e.g. '
            'configs/mask_rcnn_stvit_s_1x.py, '
            'configs/upernet_stvit_s_160k_ade20k.py, '
            'configs/stvit_s_in1k_224.py)')
    model = cfg.get('model', None)
    types = backbone_types(model) if isinstance(model, dict) else []
    if 'STViT' not in types:
        other = ', '.join(sorted(set(types))) or 'none'
        raise InputError(
            f'{config_path} has no STViT backbone (backbone: {other}); this '
            "tool runs STViT models. Use one of this repo's configs, or set "
            "model.backbone.type='STViT' with custom_imports=dict("
            "imports=['mmstvit']) in your config (README, 'In your own "
            "project'); for other backbones use the toolbox's own demo "
            'scripts')


def resolve_checkpoint(path: Optional[str], task: str):
    """``(what to load, note)`` for a checkpoint given to a tool: mm
    checkpoints as they are, the authors' files through the converting
    ``stvit-official://`` scheme (as tools/test.py loads them); ``note``
    says what an official file brings, else None.

    Raises:
        InputError: the file is missing or is no checkpoint of either kind.
    """
    if path is None:
        return None, None
    import pickle

    from mmstvit.weights import (OFFICIAL_BACKBONE_SCHEME,
                                          OFFICIAL_SCHEME, checkpoint_format,
                                          register_official_scheme)
    from mmstvit.utils.paths import is_remote
    if is_remote(path):
        return path, None
    if not osp.isfile(path):
        raise InputError(f'{path}: no such file')
    try:
        fmt = checkpoint_format(path)
    except (ValueError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        raise InputError(f'{path} cannot be read as a checkpoint: {e}')
    if fmt == 'official':
        if task != 'mmpretrain':
            # the neck and heads would predict from random weights
            raise InputError(
                f'{path} is an official STViT ImageNet file: it holds the '
                'backbone only, and the rest of this model would predict '
                'from random weights. Train the model first (python '
                'tools/train.py CONFIG: its init_cfg loads this file into '
                'the backbone) and pass the checkpoint the run saves.')
        note = 'an official STViT ImageNet file: converted while loading'
        register_official_scheme()
        scheme = OFFICIAL_SCHEME if task == 'mmpretrain' else \
            OFFICIAL_BACKBONE_SCHEME
        return scheme + path, note
    if fmt != 'mm':
        raise InputError(
            f"{path} is neither an mm checkpoint (with 'state_dict') nor an "
            "official STViT file (with 'model')")
    return path, None


# ---------------------------------------------------------------------------
# class names
# ---------------------------------------------------------------------------


def _num_classes(model, task: str) -> Optional[int]:
    try:
        if task == 'mmdet':
            return int(model.roi_head.bbox_head.num_classes)
        if task == 'mmseg':
            return int(model.decode_head.num_classes)
        return int(model.head.num_classes)
    except AttributeError:
        return None


def config_metainfo(cfg, task: str) -> Dict:
    """``classes`` (and ``palette``) of the config's test data set: its
    ``metainfo`` or its dataset class's ``METAINFO``."""
    import importlib
    loader = cfg.get('test_dataloader', None) or {}
    ds = loader.get('dataset', None) or {}
    while isinstance(ds, dict) and 'dataset' in ds and 'type' not in ds:
        ds = ds['dataset']
    meta = dict(ds.get('metainfo', None) or {})
    if 'classes' not in meta and ds.get('type'):
        registry = importlib.import_module(f'{task}.registry').DATASETS
        cls = registry.get(ds['type'])
        meta = dict(getattr(cls, 'METAINFO', {}) or {})
    return meta


def choose_classes(loaded: Optional[Sequence[str]], cfg, task: str,
                   n: Optional[int]) -> List[str]:
    """Class names for ``n`` outputs: those the checkpoint brought when they
    fit, else the config's data set's, else ``class 0`` ... ``class n-1``.
    """
    if loaded is not None and (n is None or len(loaded) == n):
        return list(loaded)
    cfg_classes = config_metainfo(cfg, task).get('classes', None)
    if cfg_classes is not None and (n is None or len(cfg_classes) == n):
        return list(cfg_classes)
    return [f'class {i}' for i in range(n or 0)]


# ---------------------------------------------------------------------------
# the three tasks
# ---------------------------------------------------------------------------


def _stem(path: str) -> str:
    return osp.splitext(osp.basename(path))[0]


def _mask_rle(mask: np.ndarray) -> Dict:
    import pycocotools.mask as mask_util
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode()
    return dict(size=[int(s) for s in rle['size']], counts=rle['counts'])


def _fix_det_meta(inferencer, cfg):
    model = inferencer.model
    meta = dict(getattr(model, 'dataset_meta', None) or {})
    n = _num_classes(model, 'mmdet')
    classes = choose_classes(meta.get('classes'), cfg, 'mmdet', n)
    if list(meta.get('classes') or []) != classes:
        palette = config_metainfo(cfg, 'mmdet').get('palette', None)
        meta['classes'] = classes
        meta['palette'] = palette if palette is not None and \
            len(palette) >= len(classes) else 'random'
        model.dataset_meta = meta
        inferencer.visualizer.dataset_meta = meta
    return classes


def _det(cfg, images, weights, device, out_dir, score_thr):
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(
        model=cfg, weights=weights, device=device, show_progress=False)
    switch_to_deploy(inferencer.model)
    classes = _fix_det_meta(inferencer, cfg)
    results = []
    for img in images:
        out = inferencer(
            img, out_dir=out_dir, no_save_pred=True, return_datasamples=True,
            pred_score_thr=score_thr)
        sample = out['predictions'][0]
        inst = sample.pred_instances.cpu().numpy()
        objects = []
        for i in range(len(inst.scores)):
            obj = dict(
                label=int(inst.labels[i]),
                score=float(inst.scores[i]),
                bbox=[round(float(v), 2) for v in inst.bboxes[i]])
            obj['class'] = classes[obj['label']] if \
                obj['label'] < len(classes) else str(obj['label'])
            if 'masks' in inst:
                obj['mask'] = _mask_rle(inst.masks[i])
            objects.append(obj)
        objects.sort(key=lambda o: -o['score'])
        results.append(
            dict(image=img, objects=objects, score_thr=score_thr,
                 picture=osp.join(out_dir, 'vis', osp.basename(img))))
    return results


def _seg(cfg, images, weights, device, out_dir):
    from mmseg.apis import MMSegInferencer
    from PIL import Image
    inferencer = MMSegInferencer(model=cfg, weights=weights, device=device)
    model = inferencer.model
    switch_to_deploy(model)
    meta = dict(getattr(model, 'dataset_meta', None) or {})
    n = _num_classes(model, 'mmseg')
    classes = choose_classes(meta.get('classes'), cfg, 'mmseg', n)
    if list(meta.get('classes') or []) != classes:
        palette = config_metainfo(cfg, 'mmseg').get('palette', None)
        if palette is None or len(palette) < len(classes):
            rng = np.random.RandomState(42)
            palette = rng.randint(0, 255, (len(classes), 3)).tolist()
        model.dataset_meta = dict(classes=classes, palette=palette)
    vis_dir = osp.join(out_dir, 'vis')
    pred_dir = osp.join(out_dir, 'preds')
    os.makedirs(pred_dir, exist_ok=True)
    results = []
    for img in images:
        for data in inferencer.preprocess([img], batch_size=1):
            preds = inferencer.forward(data)
        inferencer.visualize([img], preds, img_out_dir=vis_dir)
        label_map = preds[0].pred_sem_seg.data[0].cpu().numpy()
        png = osp.join(pred_dir, _stem(img) + '.png')
        Image.fromarray(label_map.astype(np.uint8)).save(png)
        ids, counts = np.unique(label_map, return_counts=True)
        total = float(label_map.size)
        present = [
            dict(label=int(i), name=classes[i] if i < len(classes) else
                 str(int(i)), pixels=int(c), fraction=round(c / total, 4))
            for i, c in sorted(zip(ids, counts), key=lambda t: -t[1])
        ]
        results.append(
            dict(image=img, shape=list(label_map.shape), label_map=png,
                 classes=present,
                 picture=osp.join(vis_dir, osp.basename(img))))
    return results


def _cls(cfg, images, weights, device, out_dir, topk=5):
    from mmpretrain.apis import ImageClassificationInferencer
    inferencer = ImageClassificationInferencer(
        model=cfg, pretrained=weights or False, device=device)
    switch_to_deploy(inferencer.model)
    n = _num_classes(inferencer.model, 'mmpretrain')
    inferencer.classes = choose_classes(inferencer.classes, cfg, 'mmpretrain',
                                        n)
    vis_dir = osp.join(out_dir, 'vis')
    os.makedirs(vis_dir, exist_ok=True)
    results = []
    for img in images:
        out = inferencer(img, show_dir=vis_dir)[0]
        scores = np.asarray(out['pred_scores'])
        order = np.argsort(-scores)[:topk]
        top = [
            dict(label=int(i), name=inferencer.classes[i],
                 score=round(float(scores[i]), 5)) for i in order
        ]
        results.append(
            dict(image=img, top=top,
                 picture=osp.join(vis_dir, _stem(img) + '.png')))
    return results


def infer(cfg, images: Sequence[str], task: str, out_dir: str,
          weights: Optional[str] = None, device: str = 'cpu',
          score_thr: float = 0.3) -> List[Dict]:
    """Runs the toolbox's inferencer of ``task`` on ``images`` and writes
    pictures and JSON under ``out_dir`` (see the module docstring).

    Returns one dict per image (what its JSON file holds, plus ``json``,
    the file's path)."""
    from mmengine.registry import init_default_scope
    init_default_scope(task)
    os.makedirs(out_dir, exist_ok=True)
    cfg = cfg.copy()
    if task == 'mmdet':
        results = _det(cfg, images, weights, device, out_dir, score_thr)
    elif task == 'mmseg':
        results = _seg(cfg, images, weights, device, out_dir)
    else:
        results = _cls(cfg, images, weights, device, out_dir)
    pred_dir = osp.join(out_dir, 'preds')
    os.makedirs(pred_dir, exist_ok=True)
    for r in results:
        r['task'] = TASK_NAMES[task]
        r['weights'] = weights
        path = osp.join(pred_dir, _stem(r['image']) + '.json')
        with open(path, 'w') as f:
            json.dump(r, f, indent=1)
        r['json'] = path
    with open(osp.join(out_dir, 'predictions.json'), 'w') as f:
        json.dump(results, f, indent=1)
    return results


def summary_line(result: Dict, task: str, max_items: int = 5) -> str:
    """One line per image for the console."""
    name = osp.basename(result['image'])
    if task == 'mmdet':
        thr = result['score_thr']
        kept = [o for o in result['objects'] if o['score'] >= thr]
        items = ', '.join(f'{o["class"]} {o["score"]:.2f}'
                          for o in kept[:max_items])
        more = f' (+{len(kept) - max_items})' if len(kept) > max_items \
            else ''
        return (f'{name}: {len(kept)} objects with score >= {thr:g}'
                + (f': {items}{more}' if kept else '')
                + f' ({len(result["objects"])} in the JSON)')
    if task == 'mmseg':
        items = ', '.join(f'{c["name"]} {100 * c["fraction"]:.1f}%'
                          for c in result['classes'][:max_items])
        return f'{name}: {items}'
    # ImageNet names are lists of synonyms: the first one is enough here
    items = ', '.join(f'{t["name"].split(", ")[0]} {t["score"]:.3f}'
                      for t in result['top'])
    return f'{name}: {items}'


__all__ = [
    'InputError', 'IMAGE_EXTS', 'TASKS', 'list_images', 'backbone_types',
    'require_stvit', 'resolve_checkpoint', 'choose_classes',
    'config_metainfo', 'infer', 'summary_line'
]
