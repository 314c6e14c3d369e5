"""DistributedDataParallel on CPU (gloo) or GPU (nccl), launched with ``torchrun --nproc_per_node=N``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun set up (gloo on CPU, nccl with CUDA); a no-op for a single process."""
    if dist.is_available() and not dist.is_initialized() and launched_by_torchrun():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
    return dist_info()


def dist_info() -> DistInfo:
    """This process's rank, the world size and local rank (0, 1, 0 without distributed training)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo(0, 1, 0)


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over all ranks (identity without distributed training)."""
    info = dist_info()
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier() -> None:
    if dist_info().enabled:
        dist.barrier()


def broadcast_object(value: object) -> object:
    """Rank 0's ``value`` on every rank (``value`` itself without distributed training)."""
    if not dist_info().enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
