# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What a weights file that cannot be used says: the errors and the help
texts (where the official files are, how to trust or convert a file)."""
import pickle
from typing import List

OFFICIAL_WEIGHTS_HELP = (
    'The official STViT ImageNet weights (stvit-small-224.pth, '
    'stvit-base-224.pth, stvit-large-224.pth and the -384 files) are in the '
    "authors' Google Drive folder linked from the README of "
    'github.com/hhb072/STViT (folder id 1uaT5OarQd9iPrnFufHocHpM3zhyTcetB). '
    'Download the one you need into pretrained/ (e.g. '
    'pretrained/stvit-small-224.pth); they load as they are, or convert one '
    'to an mm checkpoint with: python tools/model_converters/stvit_to_mm.py '
    'pretrained/stvit-small-224.pth pretrained/stvit-small-224_mm.pth '
    '(add --to safetensors for a .safetensors file, which loads without '
    'pickle)')

#: how a user loads a file that needs more than the allow-list
UNSAFE_HOW = (
    'Only if you trust where this file comes from (loading it can run any '
    'code it holds): pass --unsafe-load to tools/train.py, tools/test.py or '
    "the other tools, or set unsafe_load=True in the backbone's "
    "init_cfg=dict(type='Pretrained', ...). Better: re-save its weights "
    'alone where you trust it, e.g. torch.save({"state_dict": '
    'model.state_dict()}, "clean.pth"); for an official STViT file, '
    'convert it once: python tools/model_converters/stvit_to_mm.py SRC.pth '
    'DST.safetensors --unsafe-load, and use DST.safetensors (no pickle).')


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model it is loaded into."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A weights file that holds objects beyond the allow-list.

    Attributes:
        filename (str): The file.
        globals (list[str]): The globals it holds that are not allowed.
    """

    def __init__(self, filename: str, names: List[str], detail: str = ''):
        self.filename = filename
        self.globals = list(names)
        shown = ', '.join(names[:8]) if names else detail or 'unknown'
        super().__init__(
            f'mmstvit refuses to unpickle {filename}: it holds {shown}, '
            'beyond the tensors, argparse.Namespace, numpy and mmengine '
            'HistoryBuffer objects that weights files need. '
            f'{UNSAFE_HOW}')


class NotSafetensorsError(ValueError):
    """A file named ``.safetensors`` that is not one (a pickle renamed).

    It is refused, never unpickled: a ``.safetensors`` name promises a file
    that runs no code. Attributes: ``filename``, ``kind`` (what it holds:
    ``'a PyTorch zip checkpoint'``, ``'a pickle'``, ``'no known format'``).
    """

    def __init__(self, filename: str, kind: str):
        self.filename, self.kind = filename, kind
        super().__init__(
            f'{filename} is named .safetensors but is {kind}, not a '
            'safetensors file; mmstvit reads .safetensors files only with '
            'safetensors and never unpickles them. If it is a PyTorch '
            'checkpoint from a source you trust, give it its real name '
            '(.pth) and convert it once: python '
            'tools/model_converters/stvit_to_mm.py FILE.pth FILE.safetensors '
            '--to safetensors')


def summarise_keys(keys, n: int = 12) -> str:
    """The first ``n`` of ``keys``, comma-separated, and how many more."""
    keys = list(keys)
    s = ', '.join(keys[:n])
    return s + (f' ... (+{len(keys) - n} more)' if len(keys) > n else '')
