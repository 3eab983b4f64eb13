"""Joining the process group that ``torchrun`` describes (WORLD_SIZE > 1) for DDP training."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup_distributed", "mean_over_ranks", "any_rank", "leave"]


@dataclass
class DistInfo:
    """This process's place in the group (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False)
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return DistInfo(), device
        if not dist.is_available():
            raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            # nccl needs each rank on its own device before the group forms.
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, True)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return info, device


def mean_over_ranks(value: torch.Tensor, info: DistInfo) -> float:
    """The mean of ``value`` (a float64 scalar on this rank's device) over all ranks, read on
    the host (collective: every rank must call it)."""
    if info.enabled:
        dist.all_reduce(value)
        value = value / info.world_size
    return value.item()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank (collective; waits for the device)."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def leave(info: DistInfo, barrier: bool = True) -> None:
    """Leave the process group if ``info`` created it.

    ``barrier`` first waits for every rank (collective), so that no rank tears its connections
    down while another still uses them (gloo aborts on that); pass False after an error, when the
    other ranks may never arrive.
    """
    if info.owns_group and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
        info.owns_group = False
