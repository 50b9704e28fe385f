# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Pictures of an STViT's super tokens and attention (see the tools
``tools/visualize_super_tokens.py`` and ``tools/visualize_attention.py``).

:mod:`.association` holds the maths, :mod:`.drawing` the drawing,
:mod:`.loading` the model and image handling, and :mod:`.super_tokens` the
two visualisations that tie them together."""
from .association import (hard_assignment, initial_assignment,
                          pixel_attention)
from .drawing import render_heatmap, render_partition, token_colours
from .loading import (VisualizationError, build_stvit_from_config,
                      capture_attention_inputs, read_image)
from .super_tokens import visualize_attention, visualize_super_tokens

__all__ = [
    'VisualizationError', 'build_stvit_from_config',
    'capture_attention_inputs', 'hard_assignment', 'initial_assignment',
    'pixel_attention', 'read_image', 'render_heatmap', 'render_partition',
    'token_colours', 'visualize_attention', 'visualize_super_tokens'
]
