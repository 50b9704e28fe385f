# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Distributed runs with CPU processes (gloo), which mmengine 0.10.7 cannot
start by itself: its ``init_dist`` calls ``torch.cuda.set_device``
unconditionally (an error without a GPU) and its ``Runner.wrap_model`` passes
``device_ids=[LOCAL_RANK]`` to ``DistributedDataParallel``, which refuses
device ids for CPU modules. The environment of each launcher (torchrun,
slurm, MPI) is mmengine's own ``init_dist``'s."""
import contextlib
import os
from unittest import mock

from .errors import ToolError

# each launcher's environment variable with the rank of the process, set
# before the process starts (so before any process group exists)
LAUNCHER_RANK_VARS = dict(
    pytorch='RANK', slurm='SLURM_PROCID', mpi='OMPI_COMM_WORLD_RANK')


def launcher_rank(launcher: str) -> int:
    """The rank of this process in a job started by ``launcher`` (``RANK``
    from torchrun, ``SLURM_PROCID`` from srun, ``OMPI_COMM_WORLD_RANK``
    from mpirun); 0 for ``'none'`` and where the variable is not set."""
    var = LAUNCHER_RANK_VARS.get(launcher, None)
    try:
        return int(os.environ.get(var, 0)) if var else 0
    except ValueError:
        return 0


def register_cpu_ddp():
    """Registers (once) and returns ``CPUDistributedDataParallel`` in
    mmengine's ``MODEL_WRAPPERS``."""
    from mmengine.model import MMDistributedDataParallel
    from mmengine.model.utils import revert_sync_batchnorm
    from mmengine.registry import MODEL_WRAPPERS

    if 'CPUDistributedDataParallel' in MODEL_WRAPPERS.module_dict:
        return MODEL_WRAPPERS.get('CPUDistributedDataParallel')

    @MODEL_WRAPPERS.register_module()
    class CPUDistributedDataParallel(MMDistributedDataParallel):
        """``MMDistributedDataParallel`` for CPU processes (gloo).

        Drops the ``device_ids`` the Runner passes (DDP refuses them for CPU
        modules) and turns SyncBN layers back into BatchNorm, since torch's
        SyncBatchNorm only runs on accelerators: each process then normalises
        with its own batch statistics.
        """

        def __init__(self, module, device_ids=None, output_device=None,
                     **kwargs):
            from mmengine.logging import print_log
            from torch.nn.modules.batchnorm import SyncBatchNorm
            if any(isinstance(m, SyncBatchNorm) for m in module.modules()):
                print_log(
                    'mmstvit: SyncBatchNorm only runs on accelerators; this '
                    'CPU run uses plain BatchNorm (statistics per process)',
                    logger='current',
                    level=30)
                module = revert_sync_batchnorm(module)
            super().__init__(module=module, **kwargs)

    return CPUDistributedDataParallel


@contextlib.contextmanager
def _no_cuda_device():
    """``torch.cuda.set_device`` as a no-op while mmengine's ``init_dist``
    runs without a GPU (it is the only CUDA call on its way)."""
    with mock.patch('torch.cuda.set_device', lambda device: None):
        yield


def init_cpu_process_group(launcher: str, dist_cfg: dict) -> None:
    """mmengine's ``init_dist(launcher, backend='gloo', ...)`` on a machine
    without a GPU: the rank, world size and master address come from the
    launcher's environment as mmengine reads them."""
    from mmengine.dist import init_dist
    kwargs = {k: v for k, v in dist_cfg.items()
              if k not in ('backend', 'port')}
    if launcher == 'slurm' and dist_cfg.get('port') is not None:
        kwargs['port'] = dist_cfg['port']
    import multiprocessing as mp
    start_method = mp.get_start_method(allow_none=True)
    try:
        with _no_cuda_device():
            init_dist(launcher, backend='gloo', **kwargs)
    except KeyError as e:  # mmengine reads the launcher's variables
        what = str(e.args[0] if e.args else e)
        if what.isidentifier():
            what = f'the environment variable {what} is not set'
        raise ToolError(f'mmstvit: --launcher {launcher}: {what}') from None
    finally:
        if start_method is None:  # init_dist sets 'spawn'; the Runner sets
            mp.set_start_method(None, force=True)  # env_cfg.mp_cfg's


def setup_cpu_distributed(cfg, launcher: str) -> bool:
    """Prepares a distributed run for CPU processes when CUDA is absent.

    Sets ``env_cfg.dist_cfg.backend='gloo'``, starts the process group
    (:func:`init_cpu_process_group`; the Runner then finds it started) and
    makes the Runner wrap the model with ``CPUDistributedDataParallel``.
    Returns False (and changes nothing) for non-distributed runs or where
    CUDA is available.
    """
    import torch
    import torch.distributed as torch_dist
    from mmengine.logging import print_log
    if launcher == 'none' or torch.cuda.is_available():
        return False
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        print_log(
            f"mmstvit: no CUDA device, using the 'gloo' backend instead of "
            f"{dist_cfg.get('backend', 'nccl')!r} for this CPU "
            'distributed run',
            logger='current')
    dist_cfg['backend'] = 'gloo'
    if not torch_dist.is_initialized():
        init_cpu_process_group(launcher, dist_cfg)
    register_cpu_ddp()
    wrapper = cfg.get('model_wrapper_cfg', None)
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type='CPUDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    elif wrapper.get('type', 'MMDistributedDataParallel') in (
            'MMDistributedDataParallel', 'mmengine.MMDistributedDataParallel'):
        wrapper['type'] = 'CPUDistributedDataParallel'
    return True


def finish_distributed() -> None:
    """Waits for every process and destroys the process group, so that its
    threads end while the interpreter still runs. Drop the runner first.

    A gloo process group destroyed during interpreter shutdown sometimes
    aborts the process ("terminate called without an active exception",
    SIGABRT, no Python frame left) after a run that finished well, and
    torchrun then reports the run as failed: 3 of 70 two-process runs on a
    loaded 2-core machine. ``destroy_process_group`` alone is not enough:
    the runner's DDP wrapper still holds the group, and the runner lives in
    reference cycles until the final collection. So the cycles are
    collected first (:func:`release_process_group`).
    """
    import torch.distributed as torch_dist
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        release_process_group()


def release_process_group() -> None:
    """Destroys the process group now, with no barrier (also after an
    error, where another process may never reach one). The DDP wrappers
    that hold it must be unreachable by then; their reference cycles are
    collected first, so that the group is freed here and not during
    interpreter shutdown (see :func:`finish_distributed`)."""
    import gc

    import torch.distributed as torch_dist
    gc.collect()
    torch_dist.destroy_process_group()
