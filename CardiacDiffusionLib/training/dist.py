"""Several GPUs with ``torchrun``, without code change: detected from its environment variables.

``torchrun --nproc-per-node=N ...`` sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT; then
each process joins the group (NCCL on CUDA, gloo otherwise) and uses GPU ``LOCAL_RANK``.
Without WORLD_SIZE (or with 1 and no MASTER_ADDR) it is a plain single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    initialised_here: bool = False  # this code called init_process_group (and must destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.initialised_here

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when started by torchrun (or any launcher setting the same variables)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and "MASTER_ADDR" not in os.environ:
        return DistInfo()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), local_rank, dist.get_world_size())
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistInfo(rank, local_rank, world, initialised_here=True)


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """This process's GPU under torchrun (cuda:LOCAL_RANK); the device unchanged otherwise."""
    if device.type == "cuda" and info.world_size > 1:
        return torch.device("cuda", info.local_rank)
    return device


def all_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """Mean of a float over the processes (for logging)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def any_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True when any process has the flag (a stop request must stop all ranks at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    """Wait for every process (after a run that ended normally). A rank that tore down its gloo group and exited
    while rank 0 was still exporting the model died now and then with SIGABRT ("terminate called without an active
    exception"; 1 run in 4-8 of Testing/test_training.py's torchrun test on 2 busy cores)."""
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()
