# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Writes the toy data sets: data/toy_coco (instances) and data/toy_ade
(semantic segmentation). Does nothing if they are already up to date.

    python tools/misc/make_toy_data.py [--out data] [--force]
        [--num-train 200] [--num-val 50] [--seed 0]

The generator is loaded straight from its file, so this needs only numpy and
Pillow (not torch or the OpenMMLab packages that ``import mmstvit`` pulls in).
"""
import importlib.util
import sys
from pathlib import Path

GENERATOR = (Path(__file__).resolve().parents[2] / 'mmstvit' / 'data' /
             'toy_data.py')


def load_generator():
    """Imports ``mmstvit/data/toy_data.py`` without its package."""
    spec = importlib.util.spec_from_file_location('mmstvit_toy_data',
                                                  GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == '__main__':
    sys.exit(load_generator().main())
