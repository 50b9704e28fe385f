# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""A sample that cannot be loaded while a run goes on, named by its file
and its index in the data set.

:class:`NameLoadErrors` wraps a pipeline's loading transform
(``LoadImageFromFile``, ``LoadAnnotations`` ...) and turns its failure into
a :class:`DataLoadError`; ``tools/train.py`` wraps the loading transforms of
its data sets with it and prints the error as one line. Registered in
mmengine's root ``TRANSFORMS``, so every toolbox's pipeline can name it::

    dict(type='NameLoadErrors', transform=dict(type='LoadImageFromFile'))
"""
import re
from typing import Optional

from mmengine.registry import TRANSFORMS

# the last line of a DataLoader worker's traceback, which is all of the
# error that reaches the main process (torch re-raises DataLoadError(text))
_WORKER_LINE = re.compile(
    r'DataLoadError: cannot load (.+) \(sample index (\d+|\?)\): (.*)')


class DataLoadError(RuntimeError):
    """A sample's file could not be loaded.

    Args:
        path (str): The file, or the text of a DataLoader worker's
            traceback ending in a DataLoadError (how torch re-raises an
            error of a worker in the main process); ``path``, ``index``
            and ``cause`` are then read back from its last line.
        index (int, optional): The sample's index in the data set.
        cause (str | BaseException, optional): What failed.

    Attributes:
        saved_checkpoint (str | None): set by whoever saved the run's last
            completed iteration after the error (the train loop), for the
            tools' message.
    """

    saved_checkpoint: Optional[str] = None

    def __init__(self, path, index: Optional[int] = None, cause=None):
        found = _WORKER_LINE.findall(str(path)) if index is None else []
        if found:
            path, index, cause = found[-1]
            index = None if index == '?' else int(index)
        if isinstance(cause, BaseException):
            cause = f'{type(cause).__name__}: {cause}'.rstrip(': ')
        self.path, self.index, self.cause = str(path), index, cause
        super().__init__(self.path, index, cause)

    def __str__(self) -> str:
        index = '?' if self.index is None else self.index
        return f'cannot load {self.path} (sample index {index}): {self.cause}'


def _type_name(transform) -> str:
    if isinstance(transform, dict):
        return str(transform.get('type', '')).split('.')[-1]
    return type(transform).__name__


@TRANSFORMS.register_module()
class NameLoadErrors:
    """Runs a loading transform; any exception it raises becomes a
    :class:`DataLoadError` naming the file (``results[path_key]``) and the
    sample's index (``results['sample_idx']``, which mmengine's
    ``BaseDataset.get_data_info`` sets), with the exception chained.

    Args:
        transform (dict | callable): The loading transform or its config.
        path_key (str, optional): The key of the file it reads; by default
            ``seg_map_path`` for ``*Annotations`` transforms that have one,
            else ``img_path``.
    """

    def __init__(self, transform, path_key: Optional[str] = None):
        self.name = _type_name(transform)
        self.transform = TRANSFORMS.build(transform) \
            if isinstance(transform, dict) else transform
        self.path_key = path_key

    def _path(self, results) -> str:
        keys = [self.path_key] if self.path_key else (
            ['seg_map_path', 'img_path'] if 'Annotations' in self.name else
            ['img_path'])
        for key in keys + ['img_path', 'filename']:
            if results.get(key, None):
                return str(results[key])
        return '<unknown file>'

    def __call__(self, results):
        try:
            return self.transform(results)
        except Exception as e:
            raise DataLoadError(self._path(results),
                                results.get('sample_idx', None), e) from e

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.transform!r})'


def is_loading_transform(transform) -> bool:
    """True for a transform config that reads files (``Load*``)."""
    return _type_name(transform).startswith('Load') and \
        _type_name(transform) != 'LoadImageFromNDArray'
