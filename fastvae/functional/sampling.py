"""Sampling: the reparameterisation trick, alone or with the KL term of the same (mu, logvar).

csrc: ``csrc/{cpu,cuda,autograd}/sampling*``; ops ``fastvae::reparameterize``,
``fastvae::reparameterize_with_kl`` and ``fastvae::reparameterize_backward``. The sample with its
KL against a given prior is the kl_normal family's (:mod:`.kl_normal`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..ops import ops
from .kl_normal import sample_with_kl_normal
from ._checks import (
    FLOATS, broadcast_shape, cast, check_devices, check_float, check_generator, check_nonempty, check_samples_fit,
    common_dtype,
)

__all__ = ["reparameterize", "reparameterize_with_kl"]

_Tensor = torch.Tensor
_FLOAT_SET = frozenset(FLOATS)
# The ops' overloads, bound once (num_samples None: one draw shaped like mu, no squeeze needed).
_reparameterize = ops.reparameterize.default
_reparameterize_with_kl = ops.reparameterize_with_kl.default
_sample_with_kl_normal = ops.reparameterize_with_kl_normal.default


def _sampling_inputs(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: Optional[int],
    generator: Optional[torch.Generator],
    need_latent_dim: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Checked mu and logvar of one dtype, broadcast and contiguous."""
    check_float("mu", mu)
    check_float("logvar", logvar)
    check_devices(mu=mu, logvar=logvar)
    if num_samples is not None and (
        not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1
    ):
        raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}")
    check_generator(generator, mu, "mu")
    shape = broadcast_shape(mu=mu, logvar=logvar)
    if need_latent_dim and len(shape) == 0:
        raise ValueError("mu and logvar need a latent dim (at least 1-D)")
    check_nonempty(shape, "mu")
    dtype = common_dtype(mu, logvar)
    check_samples_fit(1 if num_samples is None else num_samples, shape, dtype, mu.device)
    return cast(mu, dtype).expand(shape).contiguous(), cast(logvar, dtype).expand(shape).contiguous()


def _plain_pair(mu: object, logvar: object, num_samples: Optional[int], generator: object) -> bool:
    """True for the training step's case, one sample of an encoder's contiguous (B, Z) output:
    nothing to reshape in Python and nothing the op does not check itself but the device."""
    return (
        num_samples is None and generator is None and type(mu) is _Tensor and type(logvar) is _Tensor
        and mu.dim() == 2 and mu.shape == logvar.shape and mu.dtype is logvar.dtype and mu.dtype in _FLOAT_SET
        and mu.is_contiguous() and logvar.is_contiguous() and mu.device == logvar.device and mu.numel() > 0
    )


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Draw z = mu + exp(logvar / 2) * eps, eps ~ N(0, I), by the reparameterisation trick.

    eps comes from a counter-based Philox stream inside the kernel, seeded from ``generator``
    (default: torch's default generator for mu's device, so ``torch.manual_seed`` reproduces a
    run). It is not stored: the backward pass draws it again.

    Args:
        mu, logvar: mean and log-variance of q(z|x), broadcastable to each other.
        num_samples: K; when given the result has shape (K, *shape), otherwise ``shape``.
        generator: a ``torch.Generator`` on mu's device.
    """
    if _plain_pair(mu, logvar, num_samples, generator):
        return _reparameterize(mu, logvar, None, None)[0]
    mu_c, logvar_c = _sampling_inputs(mu, logvar, num_samples, generator)
    return _reparameterize(mu_c, logvar_c, num_samples, generator)[0]


def reparameterize_with_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    prior_mu: Optional[torch.Tensor] = None,
    prior_logvar: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(reparameterize(mu, logvar, ...), KL(q || p))`` from one pass.

    The sample and the KL term read the same mu and logvar, so the CUDA kernel computes both while
    it has them in registers, and the backward pass takes both terms' gradients in one pass too.
    z is exactly what :func:`reparameterize` draws from the same generator state; the KL has
    shape ``shape[:-1]`` (summed over the last, latent dim). Pass it to :func:`elbo` as ``kl=``.

    The prior p is N(0, I), or with ``prior_mu`` and ``prior_logvar`` (both or neither) the
    diagonal Gaussian N(prior_mu, diag exp(prior_logvar)): a learned prior (per dim or scalar,
    broadcast) or a per-row one such as the top-down prior of a hierarchical VAE's layer. The KL
    is then :func:`kl_normal`'s, z and KL come from one pass over the four tensors (forward and
    backward), and the prior's operands get their gradients too. A one-level VAE with a learned
    prior is one sampling op and one loss op::

        z, kl = reparameterize_with_kl(mu, logvar, prior_mu=pm, prior_logvar=plv)
        loss = elbo(decoder(z), x, None, None, kl=kl)
    """
    if prior_mu is None and prior_logvar is None:
        if _plain_pair(mu, logvar, num_samples, generator):
            z, kl, _ = _reparameterize_with_kl(mu, logvar, None, None)
            return z, kl
        mu_c, logvar_c = _sampling_inputs(mu, logvar, num_samples, generator, need_latent_dim=True)
        shape = mu_c.shape
        if mu_c.dim() == 2:
            z, kl, _ = _reparameterize_with_kl(mu_c, logvar_c, num_samples, generator)
            return z, kl
        z, kl, _ = _reparameterize_with_kl(
            mu_c.view(-1, shape[-1]), logvar_c.view(-1, shape[-1]), num_samples, generator
        )
        return z.view(shape if num_samples is None else (num_samples, *shape)), kl.view(shape[:-1])
    if prior_mu is None or prior_logvar is None:
        missing = "prior_mu" if prior_mu is None else "prior_logvar"
        raise ValueError(f"{missing} is None: give prior_mu and prior_logvar together, or neither (N(0, I))")
    if (_plain_pair(mu, logvar, num_samples, generator) and _plain_pair(prior_mu, prior_logvar, None, None)
            and prior_mu.shape == mu.shape and prior_mu.dtype is mu.dtype and prior_mu.device == mu.device):
        # A hierarchical layer's step: four contiguous (B, Z) tensors of one dtype, straight to the op.
        z, kl, _ = _sample_with_kl_normal(mu, logvar, prior_mu, prior_logvar, None, None)
        return z, kl
    mu_c, logvar_c = _sampling_inputs(mu, logvar, num_samples, generator, need_latent_dim=True)
    return sample_with_kl_normal(mu_c, logvar_c, num_samples, generator, prior_mu, prior_logvar)
