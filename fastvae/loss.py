"""``ELBOLoss``: the fused negative ELBO as an ``nn.Module``."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn

from . import functional as F
from .functional._checks import real
from .functional.elbo import LIKELIHOODS, REDUCTIONS


class ELBOLoss(nn.Module):
    """Negative ELBO, a drop-in for the hand-written BCE/Gaussian-NLL + KL loss.

    Args:
        likelihood: "bernoulli" (recon = logits) or "gaussian" (recon = mean), or for image VAEs
            "dmol", "logistic", "categorical" or "continuous_bernoulli" (recon in that
            likelihood's layout, x integer levels: see ``fastvae.functional.image_elbo``).
        obs_logvar: observation log-variance for "gaussian": float, 0-dim, per-dim or
            per-element tensor. ``forward``'s ``obs_logvar`` overrides it (learned variances).
        beta: weight of the KL term (beta-VAE; KL warm-up), a real number >= 0.
        reduction: "mean" over examples, "sum" or "none".
        num_mixtures: logistic mixture components of likelihood="dmol".
        bits: bits per subpixel of the discrete image likelihoods (default 8).

    Example::

        loss_fn = fastvae.ELBOLoss()
        loss = loss_fn(decoder(z), x, mu, logvar)
    """

    def __init__(
        self,
        likelihood: str = "bernoulli",
        obs_logvar: Union[float, torch.Tensor] = 0.0,
        beta: float = 1.0,
        reduction: str = "mean",
        num_mixtures: Optional[int] = None,
        bits: int = 8,
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        # The rules of fastvae.functional.elbo (and the CLI), checked once here: beta a real >= 0,
        # obs_logvar a real number or a floating tensor.
        beta = real("beta", beta)
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        if not isinstance(obs_logvar, torch.Tensor):
            obs_logvar = real("obs_logvar", obs_logvar)
        if likelihood == "dmol" and (not isinstance(num_mixtures, int) or isinstance(num_mixtures, bool)
                                     or num_mixtures < 1):
            raise ValueError(f"num_mixtures must be an int >= 1 for likelihood='dmol', got {num_mixtures!r}")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
        self.likelihood = likelihood
        self.obs_logvar = obs_logvar
        self.beta = beta
        self.reduction = reduction
        self.num_mixtures = num_mixtures
        self.bits = bits

    def forward(
        self,
        recon: torch.Tensor,
        x: torch.Tensor,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        obs_logvar: Optional[Union[float, torch.Tensor]] = None,
        kl: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Negative ELBO; ``kl`` is the KL term per example when already computed (by
        ``fastvae.functional.reparameterize_with_kl``), so mu and logvar are not read again."""
        return F.elbo(
            recon, x, mu, logvar,
            likelihood=self.likelihood,
            obs_logvar=self.obs_logvar if obs_logvar is None else obs_logvar,
            beta=self.beta,
            reduction=self.reduction,
            kl=kl,
            num_mixtures=self.num_mixtures,
            bits=self.bits,
        )

    def extra_repr(self) -> str:
        extra = f", num_mixtures={self.num_mixtures}" if self.likelihood == "dmol" else ""
        if self.likelihood in ("dmol", "logistic", "categorical"):
            extra += f", bits={self.bits}"
        return f"likelihood={self.likelihood!r}, beta={self.beta}, reduction={self.reduction!r}{extra}"
