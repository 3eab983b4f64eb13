"""The KL term of a diagonal Gaussian against the standard normal prior.

csrc: ``csrc/{cpu,cuda,autograd}/kl.*``; ops ``fastvae::kl_standard_normal`` and its backward.
"""
from __future__ import annotations

import torch

from ..ops import ops
from ._checks import as_rows, broadcast_shape, cast, check_devices, check_float, check_nonempty, common_dtype, split_event

__all__ = ["kl_standard_normal"]


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)), summed over the last dim."""
    check_float("mu", mu)
    check_float("logvar", logvar)
    check_devices(mu=mu, logvar=logvar)
    shape = broadcast_shape(mu=mu, logvar=logvar)
    if len(shape) == 0:
        raise ValueError("mu and logvar need a latent dim (at least 1-D)")
    check_nonempty(shape, "mu")
    dtype = common_dtype(mu, logvar)
    kl = ops.kl_standard_normal(
        as_rows(cast(mu, dtype), shape, 1, full=True), as_rows(cast(logvar, dtype), shape, 1, full=True)
    )
    return kl.view(split_event(shape, 1))
