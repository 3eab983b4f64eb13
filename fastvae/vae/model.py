"""The `VAE` module: any encoder/decoder pair with a standard-normal prior.

The encoder maps x to ``2 * latent_dim`` features (the posterior mean and log-variance), the
decoder maps z to the parameters of p(x|z). The training loss, ELBO and importance-sampled
log-likelihood go through `fastvae.functional`, so sampling, likelihood, density and KL terms
run as fused kernels; ``loss(x, impl="reference")`` runs the same model through
`fastvae.reference`, the plain-PyTorch formulas, for comparison.

Inputs: x is a tensor (batch, *data_shape) of any real dtype; bool, integer and other float
dtypes are cast to the dtype of the model's parameters (binary data as 0/1, grey levels as
they are: scale 0..255 images to [0, 1] first).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .. import functional as _F
from .. import reference as _R
from .._args import check_int, check_real
from .inputs import check_choice as _check_choice
from .inputs import check_input
from . import image_likelihoods as _I
from . import objectives as _O
from .objectives import Objective, free_bits_kl, make_objective

__all__ = ["VAEOutput", "VAE", "LIKELIHOODS", "OBS_VARS", "LOSS_IMPLS", "free_bits_kl"]

#: The likelihoods of the whole-ELBO op (`fastvae.functional.elbo`).
_ELBO_OP_LIKELIHOODS = ("bernoulli", "gaussian")
#: Those, then the image likelihoods (`fastvae.vae.image_likelihoods`).
LIKELIHOODS = _ELBO_OP_LIKELIHOODS + _I.IMAGE_LIKELIHOODS
OBS_VARS = ("fixed", "scalar", "per_dim", "per_element")
#: `VAE.loss` implementations: the fused kernels, or plain PyTorch (`fastvae.reference`).
LOSS_IMPLS = ("fused", "reference")
_REDUCTIONS = ("mean", "sum", "none")
# Default budget for one chunk of log_likelihood: samples * batch * data elements.
_CHUNK_ELEMENTS = 1 << 22


@dataclass
class VAEOutput:
    """One pass through a VAE.

    recon: raw decoder output (Bernoulli logits, Gaussian mean, or for ``obs_var="per_element"``
    mean and log-variance stacked along dim 1); mu, logvar: posterior parameters (B, Z);
    z: the reparameterised sample (B, Z); kl: KL(q(z|x) || p(z)) per example (B,), computed in
    the same pass as z, or None (the loss then computes it from mu and logvar).
    """

    recon: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    kl: Optional[torch.Tensor] = None


class VAE(nn.Module):
    """A VAE with a standard-normal prior and a diagonal-Gaussian posterior.

    Args:
        encoder: module mapping x (B, *data_shape) to (B, 2 * latent_dim): mu then logvar.
        decoder: module mapping z (N, latent_dim) to the parameters of p(x|z), (N, *data_shape),
            or (N, 2 * C, ...) / (N, 2 * D) for ``obs_var="per_element"`` (mean, then logvar).
        latent_dim: Z, the number of latent dimensions.
        likelihood: "bernoulli" (decoder gives logits) or "gaussian" (decoder gives the mean),
            or an image likelihood: "dmol", "logistic", "categorical" (8-bit images in [0, 1],
            ``data_shape`` (C, H, W) up front) or "continuous_bernoulli" (grey levels in [0, 1]);
            see `fastvae.vae.image_likelihoods` for what the decoder gives.
        obs_var: how the Gaussian observation variance is modelled: "fixed" (``obs_logvar``),
            "scalar" (one learned log-variance), "per_dim" (one learned log-variance per data
            element, needs ``data_shape``) or "per_element" (predicted by the decoder).
        obs_logvar: the fixed log-variance, or the initial value of a learned one.
        data_shape: shape of one example, e.g. (784,) or (1, 28, 28); inferred from the first
            batch when None (except for "per_dim", which needs it up front).
        beta: default weight of the KL term in `loss`.
        num_mixtures: logistic mixture components per pixel for likelihood="dmol".
        bits: bits per subpixel of the discrete image likelihoods (5 ... 8).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        likelihood: str = "bernoulli",
        obs_var: str = "fixed",
        obs_logvar: float = 0.0,
        data_shape: Optional[Sequence[int]] = None,
        beta: float = 1.0,
        num_mixtures: int = 10,
        bits: int = 8,
    ) -> None:
        super().__init__()
        _check_choice("likelihood", likelihood, LIKELIHOODS)
        _check_choice("obs_var", obs_var, OBS_VARS)
        if likelihood != "gaussian" and obs_var != "fixed":
            raise ValueError(
                f"obs_var={obs_var!r} needs likelihood='gaussian'; a {likelihood} likelihood has no variance"
            )
        self.num_mixtures = check_int("num_mixtures", num_mixtures, 1)
        self.bits = check_int("bits", bits, 1)
        if bits > 8:
            raise ValueError(f"bits must be at most 8 (the data are 8-bit images), got {bits}")
        if likelihood in _I.DISCRETE_LIKELIHOODS and (data_shape is None or len(data_shape) != 3):
            raise ValueError(f"likelihood={likelihood!r} needs data_shape=(C, H, W), got {data_shape!r}")
        self.latent_dim = check_int("latent_dim", latent_dim, 1)
        self.beta = check_real("beta", beta, 0.0)
        obs_logvar = check_real("obs_logvar", obs_logvar)
        if data_shape is not None:
            if isinstance(data_shape, (str, torch.Tensor)) or not isinstance(data_shape, Sequence):
                raise ValueError(f"data_shape must be a sequence of positive integers, got {data_shape!r}")
            data_shape = tuple(check_int("data_shape entries", s, 1) for s in data_shape)
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.obs_var = obs_var
        self.data_shape: Optional[Tuple[int, ...]] = data_shape or None
        self._obs_logvar_init = obs_logvar
        # Set by the builders so that `config` can describe the architecture.
        self._arch: Optional[Dict[str, Any]] = None

        # obs_logvar is what the likelihood op receives: a float, a learned tensor, or None
        # when the decoder predicts it per element.
        self.obs_logvar: Union[float, nn.Parameter, None]
        if obs_var == "fixed":
            self.obs_logvar = obs_logvar
        elif obs_var == "scalar":
            self.obs_logvar = nn.Parameter(torch.tensor(obs_logvar))
        elif obs_var == "per_dim":
            if self.data_shape is None:
                raise ValueError("obs_var='per_dim' needs data_shape to size its log-variances")
            self.obs_logvar = nn.Parameter(torch.full((math.prod(self.data_shape),), obs_logvar))
        else:
            self.obs_logvar = None

    # ------------------------------------------------------------------ inputs
    def _dtype(self) -> torch.dtype:
        """The dtype inputs are cast to: the first floating parameter's, else torch's default."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    def _input(self, x: object) -> torch.Tensor:
        """x checked against data_shape (remembered on first sight) and cast to the model's dtype."""
        x, self.data_shape = check_input(x, self.data_shape, self._dtype())
        return x

    @staticmethod
    def _flat(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    def _observation(
        self, params: torch.Tensor, lead: Tuple[int, ...]
    ) -> Tuple[torch.Tensor, Union[float, torch.Tensor]]:
        """Split decoder output into (recon flattened to (*lead, D), observation log-variance)."""
        if self.obs_var == "per_element":
            if params.shape[1] % 2:
                raise ValueError(
                    f"obs_var='per_element' needs a decoder with an even dim 1 (mean, logvar); "
                    f"got output shape {tuple(params.shape)}"
                )
            mean, logvar = params.chunk(2, dim=1)
            return mean.reshape(*lead, -1), logvar.reshape(*lead, -1)
        recon = params.reshape(*lead, -1)
        return recon, (self.obs_logvar if self.likelihood == "gaussian" else 0.0)

    def _check_recon(self, recon: torch.Tensor, x_flat: torch.Tensor) -> None:
        if self.likelihood in _ELBO_OP_LIKELIHOODS and recon.shape[-1] != x_flat.shape[-1]:
            raise ValueError(
                f"decoder gives {recon.shape[-1]} values per example but x has {x_flat.shape[-1]}"
            )

    def _log_px(
        self, recon: torch.Tensor, x_flat: torch.Tensor, obs_logvar: Union[float, torch.Tensor], fused: bool = True
    ) -> torch.Tensor:
        """log p(x|z) summed over the data dim; recon (..., B, D) broadcasts x_flat (B, D)."""
        self._check_recon(recon, x_flat)
        ops = _F if fused else _R
        if self.likelihood in _I.IMAGE_LIKELIHOODS:
            return _I.image_log_px(self.likelihood, recon, x_flat, self.data_shape, self.num_mixtures, self.bits,
                                   fused)
        if self.likelihood == "bernoulli":
            return ops.bernoulli_log_likelihood(recon, x_flat, event_dims=1)
        return ops.gaussian_log_likelihood(recon, x_flat, obs_logvar, event_dims=1)

    def _data_mean(self, params: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z) in data space, shaped (N, *data_shape) when data_shape is known."""
        n = params.shape[0]
        if self.likelihood in _I.IMAGE_LIKELIHOODS:
            return _I.image_mean(self.likelihood, params, self.data_shape, self.num_mixtures, self.bits)
        recon, _ = self._observation(params, (n,))
        mean = torch.sigmoid(recon) if self.likelihood == "bernoulli" else recon
        return mean.reshape(n, *self.data_shape) if self.data_shape is not None else mean

    def _fused_head(self) -> Optional[nn.Linear]:
        """The decoder's last layer where the K-sample paths may fuse it with the likelihood
        (`fastvae.functional.linear_bernoulli_log_likelihood`, which never keeps the K * B logits):
        a Bernoulli VAE whose decoder is a plain nn.Sequential ending in nn.Linear, with no hooks
        and `decode` not overridden. None where any of that does not hold."""
        dec = self.decoder
        if (self.likelihood != "bernoulli" or type(self).decode is not VAE.decode or type(dec) is not nn.Sequential
                or len(dec) == 0 or type(dec[-1]) is not nn.Linear):
            return None
        if any(m._forward_hooks or m._forward_pre_hooks for m in (dec, dec[-1])):
            return None
        return dec[-1]

    def _log_px_z(self, z: torch.Tensor, x_flat: torch.Tensor, fused: bool = True) -> torch.Tensor:
        """log p(x|z_k) for z (K, B, Z), the decoder run once on all K * B rows; returns (K, B)."""
        k, b = z.shape[0], z.shape[1]
        head = self._fused_head() if fused else None
        if head is not None:
            if head.out_features != x_flat.shape[-1]:
                raise ValueError(f"decoder gives {head.out_features} values per example but x has {x_flat.shape[-1]}")
            h = z.reshape(k * b, self.latent_dim)
            for i in range(len(self.decoder) - 1):
                h = self.decoder[i](h)
            return _F.linear_bernoulli_log_likelihood(h.reshape(k, b, -1), head.weight, head.bias, x_flat)
        recon, obs_logvar = self._observation(self.decode(z.reshape(k * b, self.latent_dim)), (k, b))
        return self._log_px(recon, x_flat, obs_logvar, fused)

    # ------------------------------------------------------------------ model
    def _encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        if h.dim() != 2 or h.shape[1] != 2 * self.latent_dim:
            raise ValueError(
                f"encoder must return (batch, 2 * latent_dim = {2 * self.latent_dim}), "
                f"got shape {tuple(h.shape)}"
            )
        mu, logvar = h.chunk(2, dim=1)
        # The fused kernels read contiguous memory; chunk gives strided views.
        return mu.contiguous(), logvar.contiguous()

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters (mu, logvar), each (B, latent_dim)."""
        return self._encode(self._input(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw decoder output for z (N, latent_dim): logits, mean, or mean+logvar stacked."""
        return self.decoder(z)

    def _forward(self, x: torch.Tensor) -> VAEOutput:
        mu, logvar = self._encode(x)
        z, kl = _F.reparameterize_with_kl(mu, logvar)
        return VAEOutput(recon=self.decode(z), mu=mu, logvar=logvar, z=z, kl=kl)

    def forward(self, x: torch.Tensor) -> VAEOutput:
        """Encode, draw one z per example and its KL term in one fused pass, decode."""
        return self._forward(self._input(x))

    def _loss_args(self, beta: Optional[float], free_bits: float, reduction: str) -> Tuple[float, float]:
        _check_choice("reduction", reduction, _REDUCTIONS)
        beta = self.beta if beta is None else check_real("beta", beta, 0.0)
        return beta, check_real("free_bits", free_bits, 0.0)

    def loss_from_output(
        self,
        out: VAEOutput,
        x: torch.Tensor,
        beta: Optional[float] = None,
        free_bits: float = 0.0,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Negative ELBO of a finished forward pass (see `loss`)."""
        return self._fused_loss(out, self._input(x), *self._loss_args(beta, free_bits, reduction), reduction)

    def _fused_loss(self, out: VAEOutput, x: torch.Tensor, beta: float, free_bits: float,
                    reduction: str) -> torch.Tensor:
        x_flat = self._flat(x)
        if self.likelihood in _I.IMAGE_LIKELIHOODS:
            # One op (fastvae::image_elbo), free bits included: their KL is passed in as kl.
            kl = free_bits_kl(out.mu, out.logvar, free_bits) if free_bits else out.kl
            recon, xo = _I.elbo_operands(self.likelihood, out.recon, x_flat, self.data_shape, self.num_mixtures,
                                         self.bits)
            return _F.elbo(recon, xo, out.mu, out.logvar, likelihood=self.likelihood, beta=beta,
                           reduction=reduction, kl=kl, num_mixtures=self.num_mixtures, bits=self.bits)
        recon, obs_logvar = self._observation(out.recon, (x_flat.shape[0],))
        if free_bits == 0 and self.likelihood in _ELBO_OP_LIKELIHOODS:
            self._check_recon(recon, x_flat)
            return _F.elbo(recon, x_flat, out.mu, out.logvar, likelihood=self.likelihood,
                           obs_logvar=obs_logvar, beta=beta, reduction=reduction, kl=out.kl)
        # Free bits need the KL of each latent dim before summing; the likelihood stays fused.
        kl = free_bits_kl(out.mu, out.logvar, free_bits) if free_bits else out.kl
        if kl is None:
            kl = _F.kl_standard_normal(out.mu, out.logvar)
        loss = -self._log_px(recon, x_flat, obs_logvar) + beta * kl
        return _O.reduce(loss, reduction)

    def _reference_loss(self, x: torch.Tensor, beta: float, free_bits: float, reduction: str) -> torch.Tensor:
        """`loss` through `fastvae.reference`: the same model, the plain-PyTorch formulas."""
        x_flat = self._flat(x)
        mu, logvar = self._encode(x)
        z = _R.reparameterize(mu, logvar)
        recon, obs_logvar = self._observation(self.decode(z), (x_flat.shape[0],))
        if free_bits == 0 and self.likelihood in _ELBO_OP_LIKELIHOODS:
            self._check_recon(recon, x_flat)
            return _R.elbo(recon, x_flat, mu, logvar, likelihood=self.likelihood,
                           obs_logvar=obs_logvar, beta=beta, reduction=reduction)
        kl = free_bits_kl(mu, logvar, free_bits) if free_bits else _R.kl_standard_normal(mu, logvar)
        loss = -self._log_px(recon, x_flat, obs_logvar, fused=False) + beta * kl
        return _O.reduce(loss, reduction)

    def _multi_sample_loss(self, x: torch.Tensor, beta: float, reduction: str, objective: Objective,
                           fused: bool) -> torch.Tensor:
        """`loss` of a K-sample objective or a gradient other than reparam (fastvae.vae.objectives)."""
        x_flat = self._flat(x)
        mu, logvar = self._encode(x)
        ops = _F if fused else _R
        if objective.analytic_kl:  # K samples of log p(x|z), the KL in closed form
            z, kl = ops.reparameterize_with_kl(mu, logvar, num_samples=objective.num_samples)
            return _O.reduce(beta * kl - self._log_px_z(z, x_flat, fused).mean(0), reduction)
        s = _O.draw(mu, logvar, objective, fused)
        log_px = self._log_px_z(s.z, x_flat, fused)
        log_pz, log_qz = ops.standard_normal_log_density(s.z), ops.gaussian_log_density(s.z, s.q_mu, s.q_logvar)
        return _O.reduce(-_O.bound(log_px, log_pz, log_qz, objective, s, beta, fused), reduction)

    def loss(
        self,
        x: torch.Tensor,
        beta: Optional[float] = None,
        free_bits: float = 0.0,
        reduction: str = "mean",
        impl: str = "fused",
        objective: str = "elbo",
        num_samples: int = 1,
        gradient: str = "reparam",
    ) -> torch.Tensor:
        """Negative ELBO, -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)), with one z per example,
        or another objective of K samples (`fastvae.vae.objectives`).

        beta: KL weight (default ``self.beta``). free_bits: floor, in nats, under the KL of each
        latent dim of each example (Kingma et al. 2016), so that no dim is pushed to the prior
        below it; 0 keeps the fully fused path. reduction: "mean" | "sum" | "none" over the batch.
        impl: "fused" (fastvae.functional's kernels) or "reference" (fastvae.reference, plain
        PyTorch: what users write by hand, for comparison). objective: "elbo" or "iwae" (the
        importance-weighted bound); num_samples: K; gradient: "reparam", "stl" (ELBO) or "dreg"
        (IWAE). Free bits need the one-sample reparam ELBO.
        """
        _check_choice("impl", impl, LOSS_IMPLS)
        beta, free_bits = self._loss_args(beta, free_bits, reduction)
        x = self._input(x)
        if not (objective == "elbo" and num_samples == 1 and gradient == "reparam"):
            obj = make_objective(objective, num_samples, gradient)
            if free_bits:
                raise ValueError("free_bits needs objective='elbo', num_samples=1 and gradient='reparam'")
            return self._multi_sample_loss(x, beta, reduction, obj, impl == "fused")
        if impl == "reference":
            return self._reference_loss(x, beta, free_bits, reduction)
        return self._fused_loss(self._forward(x), x, beta, free_bits, reduction)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Single-sample ELBO per example (B,), in nats (beta = 1, no free bits)."""
        return -self.loss(x, beta=1.0, reduction="none")

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, sample_z: bool = False) -> torch.Tensor:
        """Mean of p(x|z) at z = posterior mean (or a posterior sample), shaped like x."""
        shape = x.shape if isinstance(x, torch.Tensor) else None
        mu, logvar = self.encode(x)
        z = _F.reparameterize(mu, logvar) if sample_z else mu
        return self._data_mean(self.decode(z)).reshape(shape)

    def _sample_latent(self, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """n draws of the latent the decoder reads, here z ~ N(0, I) (n, latent_dim)."""
        ref = next(iter(self.parameters()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        return torch.randn(n, self.latent_dim, device=device, dtype=self._dtype(), generator=generator)

    @torch.no_grad()
    def sample(
        self, n: int, mean: bool = True, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Ancestral samples: z ~ N(0, I), then the mean of p(x|z) or (``mean=False``) x ~ p(x|z).

        Returns (n, *data_shape) (the decoder's shape when data_shape is unknown).
        """
        n = check_int("n", n, 1)
        params = self.decode(self._sample_latent(n, generator))
        if mean:
            return self._data_mean(params)
        if self.likelihood in _I.IMAGE_LIKELIHOODS:
            return _I.image_sample(self.likelihood, params, self.data_shape, self.num_mixtures, self.bits, generator)
        if self.likelihood == "bernoulli":
            return torch.bernoulli(self._data_mean(params), generator=generator)
        # Gaussian: every obs_logvar form (float, 0-dim, (D,), (n, D)) broadcasts over (n, D).
        x_mean, obs_logvar = self._observation(params, (params.shape[0],))
        std = torch.exp(0.5 * torch.as_tensor(obs_logvar, dtype=x_mean.dtype, device=x_mean.device))
        noise = torch.randn(x_mean.shape, device=x_mean.device, dtype=x_mean.dtype, generator=generator)
        x = x_mean + std * noise
        return x.reshape(x.shape[0], *self.data_shape) if self.data_shape is not None else x

    @torch.no_grad()
    def log_likelihood(
        self, x: torch.Tensor, num_samples: int = 5000, chunk_size: Optional[int] = None
    ) -> torch.Tensor:
        """Importance-sampled estimate of log p(x) per example (B,), in nats.

        log (1/K) sum_k p(x, z_k) / q(z_k|x) with z_k ~ q(z|x) (Burda et al. 2016), a lower bound
        that tightens to log p(x) as K grows. Samples are drawn ``chunk_size`` at a time (default:
        as many as fit about 4M data elements) and merged with a running log-sum-exp, so memory
        does not grow with K.
        """
        num_samples = check_int("num_samples", num_samples, 1)
        x = self._input(x)
        x_flat = self._flat(x)
        if chunk_size is None:
            chunk_size = max(1, _CHUNK_ELEMENTS // max(1, x_flat.numel()))
        chunk_size = check_int("chunk_size", chunk_size, 1)
        mu, logvar = self._encode(x)
        total: Optional[torch.Tensor] = None
        for done in range(0, num_samples, chunk_size):
            z = _F.reparameterize(mu, logvar, num_samples=min(chunk_size, num_samples - done))
            log_w = self._log_px_z(z, x_flat) + _F.standard_normal_log_density(z)
            chunk = torch.logsumexp(log_w - _F.gaussian_log_density(z, mu, logvar), dim=0)
            # logaddexp keeps the running sum exact in log space, whatever the weights' scale.
            total = chunk if total is None else torch.logaddexp(total, chunk)
        return total - math.log(num_samples)

    def iwae_loss(
        self, x: torch.Tensor, num_samples: int = 5, reduction: str = "mean"
    ) -> torch.Tensor:
        """Negative IWAE bound, -log (1/K) sum_k p(x, z_k) / q(z_k|x), for training (K = num_samples):
        ``loss(x, beta=1, objective="iwae", num_samples=K)``."""
        return self.loss(x, beta=1.0, reduction=reduction, objective="iwae", num_samples=num_samples)

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> Dict[str, Any]:
        """JSON-friendly description from which `build_vae` rebuilds this architecture.

        "arch" is None for a VAE built from custom modules; `build_vae` cannot rebuild those.
        """
        cfg: Dict[str, Any] = {"arch": None}
        if self._arch is not None:
            cfg.update(self._arch)
        cfg.update(
            latent_dim=self.latent_dim,
            likelihood=self.likelihood,
            obs_var=self.obs_var,
            obs_logvar=self._obs_logvar_init,
            data_shape=list(self.data_shape) if self.data_shape is not None else None,
            beta=self.beta,
        )
        if self.likelihood in _I.IMAGE_LIKELIHOODS:
            cfg.update(num_mixtures=self.num_mixtures, bits=self.bits)
        return cfg

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, likelihood={self.likelihood!r}, obs_var={self.obs_var!r}, "
            f"data_shape={self.data_shape}, beta={self.beta}"
        )
