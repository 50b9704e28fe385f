# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""What the drawing tools (``tools/visualize_attention.py``,
``tools/visualize_super_tokens.py``) share: their common arguments and
their run (:mod:`mmstvit.visualization` draws)."""
import sys


def add_drawing_arguments(parser) -> None:
    """``config``, ``image``, ``--out-dir``, ``--checkpoint``,
    ``--unsafe-load``, ``--device`` and ``--max-size``."""
    parser.add_argument('config', help='mmdet/mmseg/mmpretrain config whose '
                        "model.backbone is type='STViT'")
    parser.add_argument('image', help='image file')
    parser.add_argument('--out-dir', required=True,
                        help='folder for the PNGs (created if needed)')
    parser.add_argument('--checkpoint', help='mm checkpoint of an STViT '
                        "model or the authors' ImageNet file; without it "
                        'the weights are random')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='trust --checkpoint: unpickle it fully even if '
                        'it holds objects beyond weights (can run code it '
                        'holds; only for files from a source you trust)')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument('--max-size', type=int, default=1024,
                        help='longest side the network sees; larger images '
                        'are resized for the forward pass and drawn at '
                        'their own size (0: never resize). Default 1024')


def run_drawing(name: str, args, **kwargs) -> int:
    """Calls ``mmstvit.visualization.<name>`` on the arguments of
    :func:`add_drawing_arguments` and ``kwargs`` (third-party warnings
    quiet, ``--checkpoint`` trusted with ``--unsafe-load``) and prints the
    paths of the PNGs it wrote. Returns the exit status: 0, or 1 with the
    message on stderr for a ``VisualizationError`` (bad input)."""
    from mmstvit.cli.quiet import quiet_third_party_warnings
    quiet_third_party_warnings()
    if args.unsafe_load and args.checkpoint:
        from mmstvit.weights import trust
        trust(args.checkpoint)
    from mmstvit import visualization
    try:
        paths = getattr(visualization, name)(
            args.config, args.image, args.out_dir, checkpoint=args.checkpoint,
            device=args.device, max_size=args.max_size or None, **kwargs)
    except visualization.VisualizationError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0
