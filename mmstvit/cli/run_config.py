# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""A run's config and its toolbox: loading, registering, the Runner."""
from mmstvit.builder import TASKS, detect_task

from .config_path import check_config_path
from .errors import ToolError
from .quiet import quiet_third_party_warnings


def register_toolbox(task: str) -> None:
    """Registers every module of the toolbox, as its own
    ``register_all_modules`` does, mmstvit's included; raises
    :class:`ToolError` naming the toolbox when it cannot be imported. The
    default scope itself is set by the Runner from ``cfg.default_scope``."""
    if task not in TASKS:
        return
    from mmstvit.registry import register_toolbox as register
    try:
        register(task)
    except ImportError as e:
        raise ToolError(f'mmstvit: this is a {task} config, but {e}') \
            from None


def load_run_config(config: str):
    """The config of a run and its toolbox, that toolbox imported with every
    module registered (mmstvit's included). Returns ``(cfg, task)``.

    Raises:
        ConfigPathError: ``config`` is no file (names the nearest ones).
        ToolError: it names an ``mmstvit::`` base config that an
            uninstalled checkout cannot resolve, or its toolbox is missing.
    """
    from mmengine.config import Config
    quiet_third_party_warnings()
    check_config_path(config)
    try:
        cfg = Config.fromfile(config)
    except FileNotFoundError as e:
        if 'mmstvit' in str(e) and '.mim' in str(e):
            raise ToolError(
                f'mmstvit: {config} names an mmstvit:: config, but this '
                'mmstvit is a checkout that was never installed (it has no '
                'mmstvit/.mim): run `make install` (or `pip install -e .`) '
                'in it, or install the wheel; or give the path of the '
                f'config in the checkout instead ({e})') from None
        raise
    task = detect_task(cfg)
    register_toolbox(task)
    if task == 'mmdet':
        # fewer recompilations with torch.compile, as mmdet's tools do
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    return cfg, task


def build_runner(cfg):
    """The Runner of a config (``runner_type`` honoured)."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)
