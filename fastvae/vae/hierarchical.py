"""`HierarchicalVAE`: a top-down VAE with L stochastic layers z_1 (bottom) ... z_L (top).

Generative model: z_L ~ N(0, I), z_l ~ p(z_l | z_{l+1}) = N(mu_p, e^logvar_p) from a network of
z_{l+1}, and x ~ p(x | z_1). Inference runs bottom-up once over x (deterministic features h_1 ...
h_L) and then top-down with the generative path: q(z_L | x) from h_L, and q(z_l | z_{l+1}, x) from
h_l and the prior network's features of the z_{l+1} just drawn (Ladder VAE / NVAE / VDVAE
style). Because q and p of a layer condition on the same z_{l+1}, the negative ELBO is

    -log p(x | z_1) + sum_l KL(q(z_l | z_{l+1}, x) || p(z_l | z_{l+1}))     (top: against N(0, I))

with every KL analytic: each layer is one fused sample-plus-KL op
(`fastvae.functional.reparameterize_with_kl` with the prior), and the likelihood and the sum
go through the fused `fastvae.functional.elbo` with ``kl=``. The importance-sampled
log-likelihood scores log p and log q of every layer with `gaussian_log_density`.

The class is a `VAE` (same loss / elbo / log_likelihood / sample / config surface, so the
`Trainer`, checkpoints and the CLI take it as they are): ``encoder`` is the ModuleList of the
bottom-up networks, ``decoder`` is p(x | z_1), ``latent_dim`` is the top layer's size, and
`encode` gives q(z_L | x). `fastvae.vae.hierarchical_builders` builds the ready-made MLP and
conv variants.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .. import functional as _F
from .. import reference as _R
from .._args import check_int, check_real
from .inputs import check_choice as _check_choice
from .hierarchical_estimators import stopped_q_bound
from .model import _CHUNK_ELEMENTS, _REDUCTIONS, LOSS_IMPLS, VAE
from .objectives import make_objective
from .objectives import reduce as _reduce

__all__ = ["HierarchicalVAE", "HierarchicalOutput"]

_Pair = Tuple[torch.Tensor, torch.Tensor]
# (mu_q, logvar_q, mu_p, logvar_p) -> (z, KL or None); the prior is None for the top layer.
_Sampler = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]],
                    Tuple[torch.Tensor, Optional[torch.Tensor]]]


def _fused_sampler(mu, logvar, prior_mu, prior_logvar):
    """One fused op per layer: z and KL(q || p) (p = N(0, I) when no prior is given)."""
    return _F.reparameterize_with_kl(mu, logvar, prior_mu=prior_mu, prior_logvar=prior_logvar)


def _reference_sampler(mu, logvar, prior_mu, prior_logvar):
    """The same layer in plain PyTorch (`fastvae.reference`)."""
    z = _R.reparameterize(mu, logvar)
    if prior_mu is None:
        return z, _R.kl_standard_normal(mu, logvar)
    return z, _R.kl_normal(mu, logvar, prior_mu, prior_logvar)


def _mean_sampler(mu, logvar, prior_mu, prior_logvar):
    """No noise: z = the posterior mean (for `reconstruct`)."""
    return mu, None


@dataclass
class HierarchicalOutput:
    """One pass through a `HierarchicalVAE`; lists run bottom (z_1) to top (z_L).

    recon: raw decoder output for z_1; mus, logvars: posterior parameters per layer (B, Z_l);
    prior_mus, prior_logvars: p(z_l | z_{l+1}) per layer (None for the top, whose prior is
    N(0, I)); zs: the samples; kls: KL(q || p) per example and layer (B,).
    """

    recon: torch.Tensor
    mus: List[torch.Tensor]
    logvars: List[torch.Tensor]
    prior_mus: List[Optional[torch.Tensor]]
    prior_logvars: List[Optional[torch.Tensor]]
    zs: List[torch.Tensor]
    kls: List[Optional[torch.Tensor]]


def _split(h: torch.Tensor) -> _Pair:
    mu, logvar = h.chunk(2, dim=-1)
    # The fused kernels read contiguous memory; chunk gives strided views.
    return mu.contiguous(), logvar.contiguous()


class HierarchicalVAE(VAE):
    """A top-down VAE with ``len(latent_dims)`` stochastic layers (see the module docstring).

    Args:
        up: L bottom-up networks: ``up[0]`` maps x (B, *data_shape) to h_1 (B, up_dims[0]),
            ``up[l]`` maps h_l to h_{l+1} (B, up_dims[l]).
        down: L - 1 top-down networks: ``down[l]`` maps z_{l+2} (B, latent_dims[l+1]) to the
            features (B, down_dims[l]) from which p(z_{l+1} | z_{l+2}) and, with h_{l+1},
            q(z_{l+1} | z_{l+2}, x) are read by linear heads this class adds.
        decoder: p(x | z_1): maps z_1 (N, latent_dims[0]) to the parameters of p(x | z_1).
        latent_dims: sizes of z_1 ... z_L.
        up_dims, down_dims: output widths of the ``up`` and ``down`` networks.
        **vae_kwargs: likelihood, obs_var, obs_logvar, data_shape, beta as for `VAE`.
    """

    def __init__(
        self,
        up: Sequence[nn.Module],
        down: Sequence[nn.Module],
        decoder: nn.Module,
        latent_dims: Sequence[int],
        up_dims: Sequence[int],
        down_dims: Sequence[int],
        **vae_kwargs: Any,
    ) -> None:
        latent_dims = [check_int("latent_dims entries", z, 1) for z in latent_dims]
        levels = len(latent_dims)
        if levels < 1:
            raise ValueError("latent_dims must name at least one layer")
        up, down = list(up), list(down)
        up_dims = [check_int("up_dims entries", d, 1) for d in up_dims]
        down_dims = [check_int("down_dims entries", d, 1) for d in down_dims]
        if len(up) != levels or len(up_dims) != levels:
            raise ValueError(f"up and up_dims need one entry per layer ({levels}), got {len(up)} and {len(up_dims)}")
        if len(down) != levels - 1 or len(down_dims) != levels - 1:
            raise ValueError(f"down and down_dims need {levels - 1} entries (one per layer under the top), "
                             f"got {len(down)} and {len(down_dims)}")
        super().__init__(nn.ModuleList(up), decoder, latent_dims[-1], **vae_kwargs)
        self.latent_dims = tuple(latent_dims)
        self.down = nn.ModuleList(down)
        self.top_head = nn.Linear(up_dims[-1], 2 * latent_dims[-1])
        self.prior_heads = nn.ModuleList(nn.Linear(down_dims[l], 2 * latent_dims[l]) for l in range(levels - 1))
        self.post_heads = nn.ModuleList(
            nn.Linear(up_dims[l] + down_dims[l], 2 * latent_dims[l]) for l in range(levels - 1))

    @property
    def levels(self) -> int:
        """L, the number of stochastic layers."""
        return len(self.latent_dims)

    # ------------------------------------------------------------------ passes
    def _bottom_up(self, x: torch.Tensor) -> List[torch.Tensor]:
        hs, h = [], x
        for net in self.encoder:
            h = net(h)
            hs.append(h)
        return hs

    def _top(self, hs: List[torch.Tensor]) -> _Pair:
        out = self.top_head(hs[-1])
        if out.dim() != 2:
            raise ValueError(f"the top bottom-up network must give (batch, features), got shape {tuple(hs[-1].shape)}")
        return _split(out)

    def _prior(self, level: int, td: torch.Tensor) -> _Pair:
        """p(z_l | z_{l+1})'s parameters for layer ``level`` (0-based) from the top-down features td."""
        return _split(self.prior_heads[level](td))

    def _posterior(self, level: int, h: torch.Tensor, td: torch.Tensor,
                   head: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> _Pair:
        """q(z_l | z_{l+1}, x)'s parameters from h_l and the top-down features td; ``head``
        replaces the layer's own posterior head (STL / DReG pass it with detached weights)."""
        return _split((head or self.post_heads[level])(torch.cat([h, td], dim=-1)))

    def _layer(self, level: int, h: torch.Tensor, z_above: torch.Tensor) -> Tuple[_Pair, _Pair]:
        """(posterior, prior) parameters of layer ``level`` (0-based) given h_l and z_{l+1}."""
        td = self.down[level](z_above)
        return self._posterior(level, h, td), self._prior(level, td)

    def _top_down(self, hs: List[torch.Tensor], sampler: _Sampler, decode: bool = True) -> HierarchicalOutput:
        mu, logvar = self._top(hs)
        z, kl = sampler(mu, logvar, None, None)
        out = HierarchicalOutput(None, [mu], [logvar], [None], [None], [z], [kl])
        for level in reversed(range(self.levels - 1)):
            (mu, logvar), (mu_p, logvar_p) = self._layer(level, hs[level], z)
            z, kl = sampler(mu, logvar, mu_p, logvar_p)
            for seq, value in zip((out.mus, out.logvars, out.prior_mus, out.prior_logvars, out.zs, out.kls),
                                  (mu, logvar, mu_p, logvar_p, z, kl)):
                seq.insert(0, value)
        out.recon = self.decode(z) if decode else None
        return out

    def _forward(self, x: torch.Tensor) -> HierarchicalOutput:
        return self._top_down(self._bottom_up(x), _fused_sampler)

    def forward(self, x: torch.Tensor) -> HierarchicalOutput:
        """Bottom-up features, then one fused sample-and-KL op per layer from the top, decode z_1."""
        return self._forward(self._input(x))

    def encode(self, x: torch.Tensor) -> _Pair:
        """q(z_L | x), the top layer's posterior (mu, logvar), each (B, latent_dim)."""
        return self._top(self._bottom_up(self._input(x)))

    # ------------------------------------------------------------------ loss
    def _free_bits(self, free_bits: Union[float, Sequence[float]]) -> Tuple[float, ...]:
        if isinstance(free_bits, (list, tuple)):
            if len(free_bits) != self.levels:
                raise ValueError(f"free_bits needs one value per layer ({self.levels}), got {len(free_bits)}")
            return tuple(check_real("free_bits entries", f, 0.0) for f in free_bits)
        return (check_real("free_bits", free_bits, 0.0),) * self.levels

    def _loss_args(self, beta: Optional[float], free_bits: Any, reduction: str) -> Tuple[float, Tuple[float, ...]]:
        _check_choice("reduction", reduction, _REDUCTIONS)
        beta = self.beta if beta is None else check_real("beta", beta, 0.0)
        return beta, self._free_bits(free_bits)

    def _kl_total(self, kls: List[torch.Tensor], free_bits: Tuple[float, ...]) -> torch.Tensor:
        """Sum of the layers' KL per example; with free bits, layer l's KL floored at
        free_bits[l] * Z_l nats (free_bits[l] nats per latent dim, on the layer as a whole)."""
        total = None
        for kl, floor, dim in zip(kls, free_bits, self.latent_dims):
            term = kl.clamp(min=floor * dim) if floor > 0 else kl
            total = term if total is None else total + term
        return total

    def _loss_of(self, out: HierarchicalOutput, x: torch.Tensor, beta: float, free_bits: Tuple[float, ...],
                 reduction: str, fused: bool) -> torch.Tensor:
        x_flat = self._flat(x)
        recon, obs_logvar = self._observation(out.recon, (x_flat.shape[0],))
        self._check_recon(recon, x_flat)
        ops = _F if fused else _R
        return ops.elbo(recon, x_flat, None, None, likelihood=self.likelihood, obs_logvar=obs_logvar, beta=beta,
                        reduction=reduction, kl=self._kl_total(out.kls, free_bits))

    def _fused_loss(self, out: HierarchicalOutput, x: torch.Tensor, beta: float, free_bits: Tuple[float, ...],
                    reduction: str) -> torch.Tensor:
        return self._loss_of(out, x, beta, free_bits, reduction, fused=True)

    def _reference_loss(self, x: torch.Tensor, beta: float, free_bits: Tuple[float, ...],
                        reduction: str) -> torch.Tensor:
        out = self._top_down(self._bottom_up(x), _reference_sampler)
        return self._loss_of(out, x, beta, free_bits, reduction, fused=False)

    def loss(
        self,
        x: torch.Tensor,
        beta: Optional[float] = None,
        free_bits: Union[float, Sequence[float]] = 0.0,
        reduction: str = "mean",
        impl: str = "fused",
        objective: str = "elbo",
        num_samples: int = 1,
        gradient: str = "reparam",
    ) -> torch.Tensor:
        """Negative ELBO, -log p(x | z_1) + beta * sum_l KL(q(z_l | .) || p(z_l | z_{l+1})), one
        sample per layer and example, each layer's KL analytic (given the sample above).

        free_bits: nats per latent dim, one number for every layer or one per layer; layer l's KL
        is floored at free_bits[l] * Z_l per example (the fused KL of a layer is summed over its
        dims, so the floor applies to the layer as a whole). beta, reduction, impl: as `VAE.loss`.
        objective / num_samples / gradient: "elbo" with K > 1 averages K Monte Carlo ELBOs
        (log p(x, z) - log q(z | x) of the whole hierarchy, the prior terms weighted by beta),
        "iwae" is the importance-weighted bound over K such samples; gradient "reparam", "stl"
        (with "elbo") or "dreg" (with "iwae"), as `VAE.loss`: log q of every layer with all of
        the model's parameters stopped and its samples live (`hierarchical_estimators`). Free
        bits only with the one-sample reparameterised ELBO.
        """
        if objective == "elbo" and num_samples == 1 and gradient == "reparam":
            return super().loss(x, beta=beta, free_bits=free_bits, reduction=reduction, impl=impl)
        _check_choice("impl", impl, LOSS_IMPLS)
        chosen = make_objective(objective, num_samples, gradient)
        beta, free_bits = self._loss_args(beta, free_bits, reduction)
        if any(free_bits):
            raise ValueError("free_bits needs objective='elbo', num_samples=1 and gradient='reparam'")
        x, fused = self._input(x), impl == "fused"
        if chosen.stops_q:
            return _reduce(-stopped_q_bound(self, x, chosen, beta, fused=fused)[0], reduction)
        log_px, log_ratio, _ = self._importance_terms(self._flat(x), self._bottom_up(x), chosen.num_samples,
                                                      fused=fused)
        log_w = log_px + beta * log_ratio
        if objective == "elbo":
            return _reduce(-log_w.mean(0), reduction)
        return _reduce(-(_F if fused else _R).iwae_bound(log_w)[0], reduction)

    # ------------------------------------------------------------------ importance sampling
    def _importance_terms(self, x_flat: torch.Tensor, hs: List[torch.Tensor], num_samples: int,
                          fused: bool = True) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """For K = num_samples draws of the whole hierarchy from q: log p(x | z_1) (K, B),
        log p(z_1..L) - log q(z_1..L | x) (K, B), and the draws (bottom to top, (K, B, Z_l))."""
        ops = _F if fused else _R
        k, b = num_samples, x_flat.shape[0]
        mu, logvar = self._top(hs)
        z = ops.reparameterize(mu, logvar, num_samples=k)
        log_ratio = ops.standard_normal_log_density(z) - ops.gaussian_log_density(z, mu, logvar)
        zs = [z]
        for level in reversed(range(self.levels - 1)):
            h = hs[level].expand(k, *hs[level].shape).reshape(k * b, -1)
            (mu, logvar), (mu_p, logvar_p) = self._layer(level, h, z.reshape(k * b, -1))
            z = ops.reparameterize(mu, logvar)
            log_ratio = log_ratio + (ops.gaussian_log_density(z, mu_p, logvar_p)
                                     - ops.gaussian_log_density(z, mu, logvar)).view(k, b)
            z = z.view(k, b, -1)
            zs.insert(0, z)
        recon, obs_logvar = self._observation(self.decode(z.reshape(k * b, -1)), (k, b))
        return self._log_px(recon, x_flat, obs_logvar, fused), log_ratio, zs

    def _importance_weights(self, x_flat: torch.Tensor, hs: List[torch.Tensor],
                            num_samples: int) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """log p(x, z_1..L) - log q(z_1..L | x) for K = num_samples draws, (K, B), and the draws."""
        log_px, log_ratio, zs = self._importance_terms(x_flat, hs, num_samples)
        return log_px + log_ratio, zs

    @torch.no_grad()
    def log_likelihood(
        self, x: torch.Tensor, num_samples: int = 5000, chunk_size: Optional[int] = None
    ) -> torch.Tensor:
        """Importance-sampled log p(x) per example (B,), in nats, with the proposal q(z_1..L | x)
        of the whole hierarchy; drawn ``chunk_size`` samples at a time (default: about 4M data
        elements) and merged with a running log-sum-exp, as `VAE.log_likelihood`."""
        num_samples = check_int("num_samples", num_samples, 1)
        x = self._input(x)
        x_flat = self._flat(x)
        chunk_size = check_int("chunk_size", chunk_size if chunk_size is not None
                               else max(1, _CHUNK_ELEMENTS // max(1, x_flat.numel())), 1)
        hs = self._bottom_up(x)
        total: Optional[torch.Tensor] = None
        for done in range(0, num_samples, chunk_size):
            log_w, _ = self._importance_weights(x_flat, hs, min(chunk_size, num_samples - done))
            chunk = torch.logsumexp(log_w, dim=0)
            total = chunk if total is None else torch.logaddexp(total, chunk)
        return total - math.log(num_samples)

    def iwae_loss(self, x: torch.Tensor, num_samples: int = 5, reduction: str = "mean") -> torch.Tensor:
        """Negative IWAE bound with the whole hierarchy's samples, for training (K = num_samples):
        ``loss(x, beta=1, objective="iwae", num_samples=K)``."""
        return self.loss(x, beta=1.0, reduction=reduction, objective="iwae", num_samples=num_samples)

    # ------------------------------------------------------------------ sampling
    def _sample_latent(self, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Ancestral draw down to z_1: z_L ~ N(0, I), then z_l ~ p(z_l | z_{l+1})."""
        z = super()._sample_latent(n, generator)
        for level in reversed(range(self.levels - 1)):
            mu_p, logvar_p = _split(self.prior_heads[level](self.down[level](z)))
            z = _F.reparameterize(mu_p, logvar_p, generator=generator)
        return z

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, sample_z: bool = False) -> torch.Tensor:
        """Mean of p(x | z_1) with every layer at its posterior mean (or sampled), shaped like x."""
        shape = x.shape if isinstance(x, torch.Tensor) else None
        hs = self._bottom_up(self._input(x))
        out = self._top_down(hs, _fused_sampler if sample_z else _mean_sampler)
        return self._data_mean(out.recon).reshape(shape)

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> Dict[str, Any]:
        """JSON-friendly description from which `build_vae` rebuilds this architecture."""
        cfg = super().config
        cfg.pop("latent_dim")  # latent_dims says it
        return cfg

    def extra_repr(self) -> str:
        return f"latent_dims={list(self.latent_dims)}, " + super().extra_repr()

