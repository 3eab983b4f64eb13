"""Log densities of latent codes: log q(z|x) (diagonal Gaussian) and log p(z) (standard normal).

csrc: ``csrc/{cpu,cuda,autograd}/density.*``; ops ``fastvae::gaussian_log_density``,
``fastvae::standard_normal_log_density`` and their backwards.
"""
from __future__ import annotations

import torch

from ..ops import ops
from ._checks import as_rows, broadcast_shape, cast, check_devices, check_float, check_nonempty, common_dtype, split_event

__all__ = ["gaussian_log_density", "standard_normal_log_density"]


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z | mu, diag exp(logvar)) summed over the last dim: log q(z|x).

    ``z`` may carry leading sample dims, e.g. (K, B, Z) against mu/logvar (B, Z); mu and logvar
    are then read once per sample without being copied.
    """
    for name, t in (("z", z), ("mu", mu), ("logvar", logvar)):
        check_float(name, t)
    check_devices(z=z, mu=mu, logvar=logvar)
    params = broadcast_shape(mu=mu, logvar=logvar)
    shape = broadcast_shape(z=z, mu=mu, logvar=logvar)
    if len(shape) == 0:
        raise ValueError("z needs a latent dim (at least 1-D)")
    check_nonempty(shape, "z")
    dtype = common_dtype(z, mu, logvar)
    mu_rows = as_rows(cast(mu, dtype).expand(params), shape, 1)
    logvar_rows = as_rows(cast(logvar, dtype).expand(params), shape, 1)
    out = ops.gaussian_log_density(as_rows(cast(z, dtype), shape, 1, full=True), mu_rows, logvar_rows)
    return out.view(split_event(shape, 1))


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z | 0, I) summed over the last dim: log p(z)."""
    check_float("z", z)
    if z.dim() == 0:
        raise ValueError("z needs a latent dim (at least 1-D)")
    check_nonempty(z.shape, "z")
    return ops.standard_normal_log_density(as_rows(z, z.shape, 1, full=True)).view(z.shape[:-1])
