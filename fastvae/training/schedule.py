"""The learning-rate schedule and the wall-clock budget of a training run.

A run's progress is the larger of its step fraction (of the epochs, or of ``max_steps``) and its
time fraction (of ``time_budget``), so a schedule reaches ``lr_final`` when the run ends, by
whichever limit ends it. Reading the clock costs no device sync.
"""
from __future__ import annotations

import math

from .config import TrainConfig

__all__ = ["progress", "lr_at", "out_of_time"]


def progress(cfg: TrainConfig, step: int, steps_per_epoch: int, elapsed: float) -> float:
    """How far the run is, in [0, 1]: step / total steps, or elapsed / time budget if larger."""
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    frac = step / max(total, 1)
    if cfg.time_budget is not None:
        frac = max(frac, elapsed / (60.0 * cfg.time_budget))
    return min(frac, 1.0)


def lr_at(cfg: TrainConfig, frac: float) -> float:
    """The learning rate at progress ``frac``: constant, cosine or exponential from lr to lr_final."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule == "cosine":
        return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1.0 + math.cos(math.pi * frac))
    return cfg.lr * (cfg.lr_final / cfg.lr) ** frac


def out_of_time(cfg: TrainConfig, elapsed: float) -> bool:
    """Whether the run has spent its time budget (never without one)."""
    return cfg.time_budget is not None and elapsed >= 60.0 * cfg.time_budget
