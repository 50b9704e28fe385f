# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The measurements behind tools/analysis_tools/ as a library, one job per
module (docs/architecture.md, "Analysis library", has the map).
``import mmstvit`` does not import it: ``from mmstvit.analysis import
timing``."""
