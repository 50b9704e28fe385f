# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Short lists in messages."""
from typing import Iterable


def summarise(names: Iterable[str], n: int = 12) -> str:
    """The first ``n`` of ``names`` joined by commas, and how many more:
    ``'a, b ... (+3 more)'``."""
    names = [str(x) for x in names]
    s = ', '.join(names[:n])
    return s + (f' ... (+{len(names) - n} more)' if len(names) > n else '')
