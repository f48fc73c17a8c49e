"""Data-parallel training across processes (`torchrun --nproc_per_node=N`, gloo on CPU).

Every rank draws the same batch of systems and windows (same seed, same
sampler state) and computes the losses of its share, items `rank::world`; the
gradients are summed across ranks with `all_reduce`, so an outer step equals
the single-process step up to float summation order. `DistributedDataParallel`
is not used: its hooks fire on `module.forward`, which the `torch.func`
functional calls of the inner loops bypass; the all-reduce is the same maths.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); False when running alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return True


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks (missing gradients count as zeros, so every rank joins every call)."""
    if world()[1] == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)


def all_reduce_sum(value: float) -> float:
    """Sum of a float over ranks."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t)


def broadcast_params(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if world()[1] == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, 0)
