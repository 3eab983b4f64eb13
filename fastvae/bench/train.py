"""End-to-end rows: Adam steps per second of the classic 784-400-20 MLP VAE with each loss.

``fused`` / ``eager``: the model eager with its fused loss / the same model's loss written with
:mod:`fastvae.reference` (``VAE.loss(x, impl="fused" | "reference")``); ``compile`` / ``fused_compile``: the whole objective (model +
reference / fused loss) under ``torch.compile``, as ``fastvae train --compile`` runs it.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch

from .cases import binary
from .timing import time_interleaved

TRAIN_IMPLS = ("fused", "eager", "compile", "fused_compile")


def make_train_step(batch: int, loss_impl: str, device: torch.device) -> Callable[[], None]:
    """One Adam step of the 784-400-20 MLP VAE (``fastvae.build_mlp_vae``) on random binary data,
    with the loss of ``loss_impl`` (see TRAIN_IMPLS); same seed, same model."""
    import fastvae  # the application layer, above the ops: only the training rows need it

    if loss_impl not in TRAIN_IMPLS:
        raise ValueError(f"loss_impl must be one of {TRAIN_IMPLS}, got {loss_impl!r}")
    torch.manual_seed(0)
    model = fastvae.build_mlp_vae(784, (400,), 20).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = binary((batch, 784), torch.float32, device)

    def objective(inputs: torch.Tensor) -> torch.Tensor:
        return model.loss(inputs, impl="fused" if loss_impl.startswith("fused") else "reference")

    if loss_impl in ("compile", "fused_compile"):
        torch._dynamo.reset()
        objective = torch.compile(objective)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        objective(x).backward()
        opt.step()

    return step


def train_steps_per_second(batch: int, loss_impl: str, device: torch.device, steps: int = 30,
                           warmup: int = 5) -> float:
    """Median Adam steps per second of `make_train_step` alone (the first step and ``warmup``
    more untimed). ``fastvae bench`` times every loss's steps interleaved instead."""
    t = time_interleaved({"step": make_train_step(batch, loss_impl, device)}, device, warmup=warmup, repeats=steps)
    return 1e3 / t.median["step"]


def train_rows(batches: Sequence[int], device: torch.device, compile: bool = True, steps: int = 30,
               retries: int = 0, max_other_load: float = 0.25) -> List[Dict[str, object]]:
    """Steps/s of every loss per batch size, the losses' steps interleaved round-robin like the op
    cases (separate, equal models), with the ratios between them."""
    rows = []
    for batch in batches:
        row: Dict[str, object] = {"batch": batch}
        fns = {impl: make_train_step(batch, impl, device) for impl in TRAIN_IMPLS if compile or "compile" not in impl}
        t = time_interleaved(fns, device, warmup=5, repeats=steps, retries=retries, max_other_load=max_other_load)
        for impl in fns:
            row[f"{impl}_steps_per_s"] = 1e3 / t.median[impl]
        row["other_load"], row["attempts"] = t.other_load, t.attempts
        row["speedup_vs_eager"] = train_ratio(row, "eager")
        row["speedup_vs_compile"] = train_ratio(row, "compile")
        row["fused_compile_vs_compile"] = train_ratio(row, "compile", "fused_compile")
        rows.append(row)
    return rows


def train_ratio(row: Dict[str, object], other: str, mine: str = "fused") -> Optional[float]:
    """Speed-up in steps/s: ``mine`` over ``other`` (None when either was not run)."""
    fused, base = row.get(f"{mine}_steps_per_s"), row.get(f"{other}_steps_per_s")
    return fused / base if fused and base else None
