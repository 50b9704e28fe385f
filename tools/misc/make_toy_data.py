# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Writes the toy data sets: data/toy_coco (instances) and data/toy_ade
(semantic segmentation). Does nothing if they are already up to date.

    python tools/misc/make_toy_data.py [--out data] [--force]
        [--num-train 200] [--num-val 50] [--seed 0]

From an installed mmstvit, in any folder (``--out`` is relative to it)::

    python -m mmstvit make_toy_data [--out data] ...

The generator is loaded straight from its file, so this needs only numpy and
Pillow (not torch or the OpenMMLab packages that ``import mmstvit`` pulls in).
"""
import importlib
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve()


def find_generator() -> Path:
    """``mmstvit/data/toy_data.py``: in the checkout this file is in
    (``tools/misc/``), or in the installed package whose ``.mim/tools/misc``
    holds it, or of the mmstvit Python finds."""
    parents = list(HERE.parents)
    candidates = [parents[2] / 'mmstvit'] + parents[3:4]
    spec = importlib.util.find_spec('mmstvit')  # (does not import it)
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]))
    for package in candidates:
        path = package / 'data' / 'toy_data.py'
        if path.is_file():
            return path
    raise SystemExit('make_toy_data: mmstvit/data/toy_data.py not found '
                     f'(looked in {", ".join(map(str, candidates))})')


def load_generator():
    """Imports ``mmstvit/data/toy_data.py`` without mmstvit's own
    ``__init__`` (torch): its folder ``mmstvit/data`` as a package of its
    own, ``mmstvit_data``, so that the generator's modules import each
    other."""
    folder = find_generator().parent
    if 'mmstvit_data' not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            'mmstvit_data', folder / '__init__.py',
            submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules['mmstvit_data'] = package
        spec.loader.exec_module(package)
    return importlib.import_module('mmstvit_data.toy_data')


if __name__ == '__main__':
    sys.exit(load_generator().main())
