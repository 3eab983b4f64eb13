"""`WeightAverage`: an exponential moving average of a model's parameters (Polyak averaging).

Evaluating the averaged weights instead of the last ones removes most of the noise the last
Adam steps leave in them; VDVAE and NVAE report their likelihoods this way. The average is
updated with one fused ``_foreach_lerp_`` per step (no device sync) and its decay ramps up as
``min(decay, (1 + t) / (10 + t))`` at update t, so the first updates are not dominated by the
random initial weights.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List

import torch
from torch import nn

__all__ = ["WeightAverage", "decay_at"]


def decay_at(decay: float, updates: int) -> float:
    """The decay used by update number ``updates`` (0-based): ``decay``, ramped in."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightAverage:
    """The moving average of ``model``'s parameters (buffers are taken as they are).

    Args:
        model: the trained module; its parameters are read, never replaced.
        decay: in (0, 1); the average forgets at a rate of 1 - decay per update.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self._names = [name for name, _ in model.named_parameters()]
        self._params = [p for _, p in model.named_parameters()]
        self.averaged: List[torch.Tensor] = [p.detach().clone() for p in self._params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current parameters (call after each optimizer step)."""
        weight = 1.0 - decay_at(self.decay, self.updates)
        torch._foreach_lerp_(self.averaged, [p.detach() for p in self._params], weight)
        self.updates += 1

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Parameter name -> averaged value (on the CPU), as `load_state_dict` takes it."""
        return {n: a.detach().cpu() for n, a in zip(self._names, self.averaged)}

    def load_state_dict(self, state: Dict[str, torch.Tensor], updates: int) -> None:
        """Restore the average (names and shapes must match the model's parameters)."""
        missing = [n for n in self._names if n not in state]
        unexpected = [n for n in state if n not in self._names]
        if missing or unexpected:
            raise ValueError(f"the averaged weights do not fit the model: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        for name, avg in zip(self._names, self.averaged):
            if state[name].shape != avg.shape:
                raise ValueError(f"averaged weight {name!r} is {tuple(state[name].shape)}, "
                                 f"the model needs {tuple(avg.shape)}")
            avg.copy_(state[name])
        self.updates = int(updates)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the model holds the averaged weights; its own come back after."""
        with torch.no_grad():
            kept = [p.detach().clone() for p in self._params]
            torch._foreach_copy_(self._params, self.averaged)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._params, kept)

