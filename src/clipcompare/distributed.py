"""Process-group set-up for jobs started by ``torchrun`` (one process per GPU, or several on CPU).

``torchrun --nproc_per_node N -m clipcompare ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
the rendezvous variables; :func:`init_distributed` reads them, joins the group (NCCL for CUDA,
gloo for CPU) and returns this process's place in it. Started without torchrun it is a one-process
"group" and every helper here is a no-op, so callers need no second code path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's rank among ``world_size``, its rank on this machine and the device it uses."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not started by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def init_distributed(device: torch.device | str) -> DistInfo:
    """Join torchrun's process group when started by it; ``device`` becomes ``cuda:LOCAL_RANK`` on CUDA.

    Idempotent: a second call returns the same information without re-initialising.
    """
    device = torch.device(device)
    world = env_world_size()
    if world == 1:
        return DistInfo(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per process, whatever index was asked for
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
        log.info("rank %d of %d (local rank %d) on %s, backend %s", rank, world, local_rank, device, backend)
    return DistInfo(rank, world, local_rank, device)


def is_initialized() -> bool:
    """Whether this process has joined a process group."""
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """True on rank 0, and in a process not started by torchrun."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (pickled; for small things such as an error message)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()
