"""torchrun for the trainer: ``clipcompare.distributed`` (process group, rank-0-only writes) plus the
two reductions a training step needs. Without torchrun every helper is a no-op.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from clipcompare.distributed import DistInfo, barrier, cleanup, init_distributed, is_main

__all__ = ["DistInfo", "barrier", "cleanup", "init_distributed", "is_main", "mean_over_processes",
           "min_over_processes"]


def mean_over_processes(value: float, device: str | torch.device) -> float:
    """The mean of a scalar over all processes (itself when single)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def min_over_processes(value: int, device: str | torch.device) -> int:
    """The smallest of an integer over all processes (itself when single)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
