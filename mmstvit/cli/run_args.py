# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""The flags ``tools/train.py`` and ``tools/test.py`` share, and how they
change the config (as the toolboxes' own tools do)."""
import os
import os.path as osp


def add_run_arguments(parser, unsafe_help: str) -> None:
    """The flags both tools take besides their own: ``--work-dir``,
    ``--cfg-options``, ``--launcher``, ``--unsafe-load``, ``--local-rank``."""
    from mmengine.config import DictAction
    parser.add_argument(
        '--work-dir', help='the directory for logs, checkpoints and metrics')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value pairs, e.g. '
        'model.backbone.init_cfg=None or train_cfg.max_iters=100; a list is '
        'key="[a,b]" or key=a,b, no white space')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--unsafe-load', action='store_true', help=unsafe_help)
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or
    # --local_rank; torchrun sets LOCAL_RANK
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_run_args(parser, argv=None):
    """``parser.parse_args`` that also exports ``LOCAL_RANK``."""
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def apply_run_arguments(cfg, args) -> None:
    """``--launcher``, ``--cfg-options`` and the work dir (command line >
    config > ./work_dirs/<config name>), as the toolboxes' tools do."""
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
