"""Random number state of a training process: seeding, per-rank streams, save and restore.

Checkpoints store every rank's global generator states (torch CPU and CUDA, numpy, Python) in
types ``torch.load(weights_only=True)`` accepts, so that a resumed run draws the same noise.
"""
from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch

__all__ = ["seed_everything", "rank_seed", "rng_state", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and every CUDA device) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)




def rank_seed(seed: int, rank: int) -> int:
    # Rank 0 keeps the plain seed (a one-process run is rank 0); other ranks get independent
    # streams, so no two ranks draw the same reparameterisation noise.
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, np.uint64)[0] >> 1)



def rng_state(device: torch.device) -> Dict[str, Any]:
    """This process's global RNG states in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))

