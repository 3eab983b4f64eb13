"""Minibatches of an in-memory training set: where the data lives, and one rank's slice of a batch.

Nothing here waits for the device: rows are gathered where the data lives (on the CUDA device
when it fits, otherwise into pinned host memory copied with ``non_blocking``), and dynamic
binarisation is `fastvae.vae.data.binarize` over the whole global batch, with the uniforms drawn
on the CPU from the data generator every rank holds, so all ranks and devices see one draw.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..vae.data import binarize
from .distributed import DistInfo

__all__ = ["eval_data", "check_data", "check_grey_levels", "steps_per_epoch", "place", "rank_batch",
           "DEVICE_DATA_FRACTION"]

#: Share of the free CUDA memory a training set may take and still be kept on the device.
DEVICE_DATA_FRACTION = 0.25


def check_data(name: str, data: object) -> torch.Tensor:
    """``data`` is a float tensor of N >= 1 examples."""
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of examples, got {type(data).__name__}")
    if data.dim() < 2 or data.shape[0] == 0:
        raise ValueError(f"{name} must be (N, ...) with N >= 1, got shape {tuple(data.shape)}")
    if not data.is_floating_point():
        raise ValueError(f"{name} must hold floats, got dtype {data.dtype}")
    return data


def check_grey_levels(name: str, data: torch.Tensor) -> None:
    """Dynamic binarisation draws x ~ Bernoulli(data): the data must be probabilities (checked
    once here, so that no training step reads the data on the host)."""
    if data.min() < 0 or data.max() > 1:
        raise ValueError(f"{name} must lie in [0, 1] for binarize='dynamic' (the Bernoulli "
                         f"probabilities); scale it first")


def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps in one pass (a last batch smaller than the world size is dropped)."""
    steps = math.ceil(n / batch_size)
    last = n - (steps - 1) * batch_size
    return steps - 1 if last < world_size else steps


def place(data: torch.Tensor, device: torch.device) -> Tuple[torch.Tensor, bool]:
    """On CUDA, the training set on the device when it fits comfortably, so a step only gathers
    rows there; otherwise (data, True): batches go through pinned memory. Returns (data, pinned)."""
    if device.type != "cuda" or data.device == device:
        return data, False
    nbytes = data.numel() * data.element_size()
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes <= DEVICE_DATA_FRACTION * free:
        return data.to(device), False
    return data, True


def rank_batch(
    data: torch.Tensor,
    order: torch.Tensor,
    index: int,
    batch_size: int,
    dist: DistInfo,
    device: torch.device,
    pinned: bool,
    binarize_mode: Optional[str],
    generator: torch.Generator,
) -> Tuple[torch.Tensor, int]:
    """This rank's slice of global batch ``index`` in ``order``, on ``device``, and how many
    examples the batch loses so that it splits evenly over the ranks."""
    w = dist.world_size
    n_idx = min(batch_size, order.shape[0] - index * batch_size)
    usable = n_idx - n_idx % w
    per_rank = usable // w
    start = index * batch_size + dist.rank * per_rank
    rows = order[start:start + per_rank]
    if pinned:
        x = torch.empty((per_rank, *data.shape[1:]), dtype=data.dtype, pin_memory=True)
        torch.index_select(data, 0, rows, out=x)
    else:
        x = data[rows]
    x = x.to(device, non_blocking=True)
    if binarize_mode == "dynamic":
        x = binarize(x, "dynamic", generator, share=(dist.rank, w), check_range=False)
    return x, n_idx - usable


def eval_data(x: torch.Tensor, binarize_mode: Optional[str], seed: int) -> torch.Tensor:
    """The held-out set as a run with these settings evaluates it: grey levels, thresholded
    ("static"), or for "dynamic" one fixed Bernoulli draw from ``seed + 1``."""
    if binarize_mode not in (None, "static", "dynamic"):
        raise ValueError(f"binarize must be one of (None, 'static', 'dynamic'), got {binarize_mode!r}")
    if binarize_mode is None:
        return x
    return binarize(x, binarize_mode, torch.Generator().manual_seed(int(seed) + 1))
