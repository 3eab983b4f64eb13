"""The importance-weighted bound over K samples per example, and the DReG gradient gate.

csrc: ``csrc/{cpu,cuda,autograd}/iwae.*``; ops ``fastvae::iwae_bound`` and ``fastvae::dreg_gate``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..ops import ops
from ._checks import check_devices, check_float

__all__ = ["iwae_bound", "dreg_gate"]


def iwae_bound(log_w: torch.Tensor, gate: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The bound log (1/K) sum_k exp(log_w[k]) of each example and the normalised weights.

    log_w: (K, B) log-weights log p(x, z_k) - log q(z_k | x) of K samples of B examples (K >= 1).
    Returns (bound (B,), weights (K, B)), in float32 (float64 for float64 input), from one kernel
    (max-shifted, NaN-propagating). The bound's gradient is the weights (times the incoming
    gradient): the IWAE's reparameterisation gradient. The weights are not differentiable.

    gate: the token `dreg_gate` returned next to z, for the doubly reparameterised gradient; the
    bound's value does not depend on it.
    """
    check_float("log_w", log_w)
    if log_w.dim() != 2 or log_w.shape[0] < 1:
        raise ValueError(f"log_w must be a (K, B) matrix with K >= 1 samples, got shape {tuple(log_w.shape)}")
    if gate is not None:
        check_float("gate", gate)
        check_devices(log_w=log_w, gate=gate)
        if gate.shape != log_w.shape:
            raise ValueError(f"gate must have log_w's shape {tuple(log_w.shape)}, got {tuple(gate.shape)}")
        gate = gate.contiguous()
    return ops.iwae_bound(log_w.contiguous(), gate)


def dreg_gate(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """z unchanged and a zero token (z.shape[:-1]) for `iwae_bound`'s ``gate``.

    Everything that reads the samples must read the returned z. In the backward pass the
    gradient of z is multiplied by the normalised weights the bound sends to the token, so that
    z's path (the encoder) gets sum_k w_k^2 d log w_k / d z_k while the decoder keeps
    sum_k w_k d log w_k (Tucker et al. 2018), with log q's parameters stopped by the caller.
    """
    check_float("z", z)
    if z.dim() == 0:
        raise ValueError("z needs a latent dim (at least 1-D)")
    return ops.dreg_gate(z)
