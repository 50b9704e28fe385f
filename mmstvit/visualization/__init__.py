# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Pictures of an STViT's super tokens and attention (see the tools
``tools/visualize_super_tokens.py`` and ``tools/visualize_attention.py``)."""
from .super_tokens import (VisualizationError, build_stvit_from_config,
                           capture_attention_inputs, hard_assignment,
                           initial_assignment, pixel_attention, read_image,
                           render_heatmap, render_partition, token_colours,
                           visualize_attention, visualize_super_tokens)

__all__ = [
    'VisualizationError', 'build_stvit_from_config',
    'capture_attention_inputs', 'hard_assignment', 'initial_assignment',
    'pixel_attention', 'read_image', 'render_heatmap', 'render_partition',
    'token_colours', 'visualize_attention', 'visualize_super_tokens'
]
