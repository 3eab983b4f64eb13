"""The training loss as one module, so that DistributedDataParallel can wrap it whole."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..vae import VAE
from .config import TrainConfig
from .distributed import DistInfo

__all__ = ["training_objective"]


class _Objective(nn.Module):
    """``x, beta -> model.loss(x, beta, free_bits, impl, objective...)``: the batch's mean loss."""

    def __init__(self, model: VAE, cfg: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.loss_impl = cfg.loss_impl
        self.free_bits = cfg.free_bits
        self.objective = dict(objective=cfg.objective, num_samples=cfg.num_samples, gradient=cfg.gradient)

    def forward(self, x: torch.Tensor, beta: float) -> torch.Tensor:
        return self.model.loss(x, beta=beta, free_bits=self.free_bits, impl=self.loss_impl, **self.objective)


def training_objective(
    model: VAE, cfg: TrainConfig, info: DistInfo, device: torch.device
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The loss a training step calls: DDP-wrapped under torchrun, with the networks compiled
    in place when ``cfg.compile`` (their state_dict keys do not change)."""
    objective: nn.Module = _Objective(model, cfg)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        # Compile the networks, not the loss: beta changes every warm-up step and would
        # recompile a graph that holds it; the fused loss is one kernel per term anyway.
        for net in (model.encoder, model.decoder):
            net.compile()
    return objective
