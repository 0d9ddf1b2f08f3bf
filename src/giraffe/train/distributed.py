"""Several processes, one training run: torchrun's environment -> a process group.

Under `torchrun --nproc_per_node N` (or any launcher setting RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT) each process joins a group on gloo (CPU) or NCCL (GPUs);
the model is wrapped in DistributedDataParallel, which averages gradients across ranks
during backward. Each rank computes its own rows of the global batch
(`rank_rows`), so N processes take the same optimiser steps as one process with the
same global batch, up to the order of floating-point sums.

It does not know data files or the training loop's bookkeeping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Dist:
    """Join the process group torchrun described, or run alone when there is none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size())


def teardown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, d: Dist, device: str) -> torch.nn.Module:
    if d.world <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids)


def rank_rows(rows: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's contiguous slice of the global batch's rows."""
    if rows.shape[0] % d.world:
        raise ValueError(
            f"a global batch of {rows.shape[0]} rows does not split over {d.world} ranks"
        )
    per = rows.shape[0] // d.world
    return rows[d.rank * per : (d.rank + 1) * per]


def mean_across(value: float, d: Dist) -> float:
    """The mean of a number over all ranks (for logging losses)."""
    if d.world <= 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / d.world


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()
