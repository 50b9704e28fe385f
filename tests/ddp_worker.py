# Copyright (c) mmstvit contributors. Licensed under the Apache License 2.0.
"""Two CPU processes (gloo) train one step of a small STViT under
DistributedDataParallel; run by ``tests/test_ddp.py``, not collected by
pytest.

    python tests/ddp_worker.py OUT_DIR PORT [--layout stored|contiguous]
        [--drop-path-rate 0.1]

Each rank writes ``OUT_DIR/rank{r}.pt``: the gradients after the second
step (both ranks see the same batch, so DDP's average equals one process's
gradient) and the warnings Python recorded. ``--layout contiguous`` first
lays every parameter out contiguously with no gradient re-layout (the
layout before the fix), as a control.
"""
import argparse
import os
import sys
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARCH = dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
            num_heads=[1, 2, 2, 4], layer_scale=[False, False, True, True])
STOKEN = (8, 4, 2, 1)
SHAPE = (2, 3, 96, 64)


def build_model(drop_path_rate=0.):
    """The model and batch every process builds (same seed, same values;
    stochastic depth draws the same masks in every process)."""
    from mmstvit import STViT
    torch.manual_seed(0)
    model = STViT(arch=ARCH, stoken_size=STOKEN,
                  drop_path_rate=drop_path_rate)
    model.train()
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))
    return model, x


def loss_of(outputs):
    return sum((o * o).mean() for o in outputs)


def worker(rank, world, out_dir, port, layout, drop_path_rate):
    os.environ['MASTER_ADDR'] = '127.0.0.1'
    os.environ['MASTER_PORT'] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        train_and_save(rank, out_dir, layout, drop_path_rate)
    finally:
        # the DDP wrapper holding the group went with train_and_save's frame
        from mmstvit.cli.dist import release_process_group
        release_process_group()


def train_and_save(rank, out_dir, layout, drop_path_rate):
    """Two DDP steps; writes this rank's gradients, strides and warnings."""
    model, x = build_model(drop_path_rate)
    if layout == 'contiguous':
        from mmstvit.models.backbones import kernels
        kernels.store_contiguous(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        for _ in range(2):
            ddp.zero_grad(set_to_none=True)
            loss_of(ddp(x)).backward()
    torch.save(
        dict(grads={n: p.grad.clone() for n, p in model.named_parameters()
                    if p.grad is not None},
             strides={n: (p.stride(), p.grad.stride())
                      for n, p in model.named_parameters()
                      if p.grad is not None},
             warnings=[str(w.message) for w in caught]),
        os.path.join(out_dir, f'rank{rank}.pt'))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('out_dir')
    parser.add_argument('port', type=int)
    parser.add_argument('--layout', choices=('stored', 'contiguous'),
                        default='stored')
    parser.add_argument('--drop-path-rate', type=float, default=0.)
    args = parser.parse_args()
    mp.spawn(worker, args=(2, args.out_dir, args.port, args.layout,
                           args.drop_path_rate),
             nprocs=2, join=True)


if __name__ == '__main__':
    main()
