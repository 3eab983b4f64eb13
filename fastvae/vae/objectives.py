"""Training objectives over K posterior samples and their gradient estimators, for any model that
can give log p(x|z_k), log p(z_k) and log q(z_k|x) per sample.

==========  ==========  ====================================================================
objective   gradient    per example, from K samples z_k ~ q(z|x)
==========  ==========  ====================================================================
"elbo"      "reparam"   mean_k log p(x|z_k) - beta * KL(q || p) (analytic KL; K = 1 is the
                        fused one-sample ELBO)
"elbo"      "stl"       mean_k [log p(x|z_k) + beta * (log p(z_k) - log q(z_k|x))] with q's
                        parameters stopped in log q: "sticking the landing" (Roeder et al.
                        2017), the score term's zero-mean noise dropped
"iwae"      "reparam"   log (1/K) sum_k w_k, log w_k = log p(x|z_k) + beta * (log p(z_k) -
                        log q(z_k|x)) (Burda et al. 2016); gradient sum_k w~_k d log w_k
"iwae"      "dreg"      the same bound; the doubly reparameterised gradient (Tucker et al.
                        2018): encoder sum_k w~_k^2 d log w_k / d z_k d z_k / d phi with q's
                        parameters stopped in log q, decoder sum_k w~_k d log w_k / d theta
==========  ==========  ====================================================================

w~ are the normalised weights. The IWAE bound, its weights and the DReG routing come from the
fused ops `fastvae.functional.iwae_bound` and `fastvae.functional.dreg_gate`; x is never
repeated K times (the likelihood ops broadcast it over the sample dim). ``fused=False`` runs the
same estimators on `fastvae.reference` (DReG through a tensor hook on z).

A model uses them in three steps: `draw` the samples (and, for DReG, the gate token), compute
its log-terms of the returned z and q parameters, and take `bound` of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .. import functional as _F
from .. import reference as _R
from .._args import check_int

__all__ = ["OBJECTIVES", "GRADIENTS", "SUPPORTED", "Objective", "make_objective", "Samples", "draw", "bound",
           "reduce", "free_bits_kl"]

OBJECTIVES = ("elbo", "iwae")
GRADIENTS = ("reparam", "stl", "dreg")
#: The (objective, gradient) pairs `make_objective` accepts.
SUPPORTED = (("elbo", "reparam"), ("elbo", "stl"), ("iwae", "reparam"), ("iwae", "dreg"))
_REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class Objective:
    """A checked (objective, num_samples, gradient) triple; see `make_objective`."""

    name: str = "elbo"
    num_samples: int = 1
    gradient: str = "reparam"

    @property
    def stops_q(self) -> bool:
        """Whether log q(z|x) takes q's parameters detached (STL, DReG)."""
        return self.gradient != "reparam"

    @property
    def analytic_kl(self) -> bool:
        """The ELBO with its KL in closed form (reparam gradient)."""
        return self.name == "elbo" and self.gradient == "reparam"


def make_objective(objective: str = "elbo", num_samples: int = 1, gradient: str = "reparam") -> Objective:
    """Check an objective, its sample count K and its gradient estimator (ValueError naming the bad one)."""
    for name, value, choices in (("objective", objective, OBJECTIVES), ("gradient", gradient, GRADIENTS)):
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    num_samples = check_int("num_samples", num_samples, 1)
    if (objective, gradient) not in SUPPORTED:
        why = {("elbo", "dreg"): "DReG is an IWAE estimator (for the ELBO, gradient='stl' is its one-weight form)",
               ("iwae", "stl"): "STL is biased for the IWAE bound (use gradient='dreg')"}[(objective, gradient)]
        raise ValueError(f"gradient={gradient!r} is not supported with objective={objective!r}: {why}; "
                         f"supported pairs: {SUPPORTED}")
    return Objective(objective, num_samples, gradient)


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """``loss`` (B,) reduced over the batch: "mean", "sum" or "none"."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def free_bits_kl(mu: torch.Tensor, logvar: torch.Tensor, free_bits: float) -> torch.Tensor:
    """KL(q || N(0, I)) per example with each latent dim's term floored at ``free_bits`` nats
    (Kingma et al. 2016). The fused KL sums the dims inside the kernel, so this one is eager."""
    kl_dims = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    return kl_dims.clamp(min=free_bits).sum(-1)


@dataclass
class Samples:
    """K posterior samples z (K, B, Z) to read everything from, the q parameters log q(z|x)
    must use (detached for STL and DReG), and DReG's gate token (K, B) or None."""

    z: torch.Tensor
    q_mu: torch.Tensor
    q_logvar: torch.Tensor
    token: Optional[torch.Tensor] = None


def draw(mu: torch.Tensor, logvar: torch.Tensor, objective: Objective, fused: bool = True) -> Samples:
    """K reparameterised samples of N(mu, diag e^logvar) for ``objective`` (not for the analytic-KL
    ELBO, which draws with its KL)."""
    k = objective.num_samples
    z = _F.reparameterize(mu, logvar, num_samples=k) if fused else _R.reparameterize(mu, logvar, num_samples=k)
    token = None
    if objective.gradient == "dreg" and fused:
        z, token = _F.dreg_gate(z)
    if objective.stops_q:
        mu, logvar = mu.detach(), logvar.detach()
    return Samples(z, mu, logvar, token)


def bound(
    log_px: torch.Tensor,
    log_pz: torch.Tensor,
    log_qz: torch.Tensor,
    objective: Objective,
    samples: Samples,
    beta: float = 1.0,
    fused: bool = True,
) -> torch.Tensor:
    """The objective's bound per example (B,) from (K, B) terms log p(x|z_k), log p(z_k) and
    log q(z_k|x) computed from ``samples`` (its z and q parameters). Maximise it (the loss is
    its negative). beta weighs the prior and posterior terms (1: the true bound)."""
    log_prior_ratio = log_pz - log_qz
    log_w = log_px + (log_prior_ratio if beta == 1.0 else beta * log_prior_ratio)
    if objective.name == "elbo":
        return log_w.mean(0)
    if fused:
        return _F.iwae_bound(log_w, samples.token)[0]
    value, weights = _R.iwae_bound(log_w)
    if objective.gradient == "dreg" and samples.z.requires_grad:
        # z's gradient (w~_k d log w_k / d z_k) times w~_k once more.
        samples.z.register_hook(lambda g: g * weights.unsqueeze(-1).to(g.dtype))
    return value
