"""The KL between two diagonal Gaussians: a learned prior, a conditional VAE, or the top-down
prior of a hierarchical VAE's layer, alone and fused with the sample of q.

csrc: ``csrc/{cpu,cuda,autograd}/kl_normal.*``; ops ``fastvae::kl_normal``,
``fastvae::reparameterize_with_kl_normal`` and their backwards. The sampler is reached through
:func:`fastvae.functional.reparameterize_with_kl` with ``prior_mu`` and ``prior_logvar``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..ops import ops
from ._checks import as_rows, broadcast_shape, cast, check_devices, check_float, check_nonempty, common_dtype, split_event

__all__ = ["kl_normal"]

_Tensor = torch.Tensor
_kl_normal = ops.kl_normal.default
_sample_with_kl_normal = ops.reparameterize_with_kl_normal.default


def _operands(
    mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor, names: Tuple[str, ...]
) -> Tuple[torch.Size, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The broadcast shape and the four operands as the ops take them: q's as full contiguous
    (rows, D) matrices, the prior's with only the rows they have (broadcast over q's by the
    kernels, a per-dim or scalar prior read as one row, not copied)."""
    tensors = dict(zip(names, (mu_q, logvar_q, mu_p, logvar_p)))
    for name, t in tensors.items():
        check_float(name, t)
    check_devices(**tensors)
    shape = broadcast_shape(**tensors)
    if len(shape) == 0:
        raise ValueError(f"{names[0]}, {names[1]}, {names[2]} and {names[3]} need a latent dim (at least 1-D)")
    check_nonempty(shape, names[0])
    dtype = common_dtype(mu_q, logvar_q, mu_p, logvar_p)
    return (
        shape,
        as_rows(cast(mu_q, dtype), shape, 1, full=True),
        as_rows(cast(logvar_q, dtype), shape, 1, full=True),
        as_rows(cast(mu_p, dtype), shape, 1),
        as_rows(cast(logvar_p, dtype), shape, 1),
    )


def kl_normal(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, diag exp(logvar_q)) || N(mu_p, diag exp(logvar_p))), summed over the last dim.

    The four broadcast to one shape; the result has that shape without its last (latent) dim.
    The prior (mu_p, logvar_p) may be per row (a network's output, e.g. the top-down prior of a
    hierarchical VAE), per dim (a learned prior shared by every row) or a scalar: it is read in
    place, and its gradient is summed over the rows it served. Every input that requires grad
    gets its gradient. Computed from exp(logvar_q - logvar_p) and (mu_q - mu_p) exp(-logvar_p / 2),
    so nothing overflows where the KL is finite; float32 accumulation for bf16 / fp16, whose
    result is float32 (float64 for float64).
    """
    shape, mq, lq, mp, lp = _operands(mu_q, logvar_q, mu_p, logvar_p, ("mu_q", "logvar_q", "mu_p", "logvar_p"))
    return _kl_normal(mq, lq, mp, lp).view(split_event(shape, 1))


def sample_with_kl_normal(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: Optional[int],
    generator: Optional[torch.Generator],
    prior_mu: torch.Tensor,
    prior_logvar: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`fastvae.functional.reparameterize_with_kl` against a given prior (its arguments
    checked there, but the prior's): z and KL(q || prior) from one pass."""
    shape, m, lv, pm, plv = _operands(mu, logvar, prior_mu, prior_logvar, ("mu", "logvar", "prior_mu", "prior_logvar"))
    z, kl, _ = _sample_with_kl_normal(m, lv, pm, plv, num_samples, generator)
    if len(shape) != 2:
        z = z.view(shape if num_samples is None else (num_samples, *shape))
    return z, kl.view(split_event(shape, 1))
