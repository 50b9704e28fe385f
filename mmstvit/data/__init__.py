# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Toy data generation and pre-training data checks (numpy + Pillow only).

Names are loaded lazily (PEP 562) so that
``python -m mmstvit.data.toy_data`` does not import ``toy_data`` twice
(which makes runpy warn) and so that importing this package stays cheap.
"""
import importlib

_EXPORTS = {
    'toy_data': (
        'generate_toy_data', 'generate_toy_coco', 'generate_toy_ade',
        'generate_toy_cls', 'generate_scene', 'generate_cls_image',
        'mask_to_polygons', 'GENERATOR_VERSION',
        'TOY_COCO_CLASSES', 'TOY_COCO_PALETTE', 'TOY_SEG_CLASSES',
        'TOY_SEG_PALETTE', 'TOY_COCO_DIR', 'TOY_ADE_DIR', 'TOY_CLS_DIR',
        'TOY_CLS_CLASSES'),
    'checks': ('DataError', 'check_data_root', 'check_coco_annotation',
               'check_seg_label_maps'),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        module = importlib.import_module(f'{__name__}.{_WHERE[name]}')
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(set(globals()) | set(__all__))
