"""Variational autoencoders built on fastvae's fused loss ops.

`VAE` wraps any encoder/decoder pair: the encoder maps x to ``2 * latent_dim`` features (the
posterior mean and log-variance), the decoder maps z to the parameters of p(x|z). Its training
loss, ELBO and importance-sampled log-likelihood all go through `fastvae.functional`, so
sampling, likelihood, density and KL terms run as fused kernels.

`build_mlp_vae` and `build_conv_vae` give ready-made architectures; `VAE.config` and
`build_vae` turn them into a plain dict and back, for checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import functional as _F

__all__ = [
    "VAEOutput",
    "VAE",
    "build_mlp_vae",
    "build_conv_vae",
    "build_vae",
    "LIKELIHOODS",
    "OBS_VARS",
]

LIKELIHOODS = ("bernoulli", "gaussian")
OBS_VARS = ("fixed", "scalar", "per_dim", "per_element")
_REDUCTIONS = ("mean", "sum", "none")
_ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU, "tanh": nn.Tanh}
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


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class VAE(nn.Module):
    """A VAE with a standard-normal prior and a diagonal-Gaussian posterior.

    Args:
        encoder: module mapping x (B, *data_shape) to (B, 2 * latent_dim): mu then logvar.
        decoder: module mapping z (N, latent_dim) to the parameters of p(x|z), (N, *data_shape),
            or (N, 2 * C, ...) / (N, 2 * D) for ``obs_var="per_element"`` (mean, then logvar).
        latent_dim: Z, the number of latent dimensions.
        likelihood: "bernoulli" (decoder gives logits) or "gaussian" (decoder gives the mean).
        obs_var: how the Gaussian observation variance is modelled: "fixed" (``obs_logvar``),
            "scalar" (one learned log-variance), "per_dim" (one learned log-variance per data
            element, needs ``data_shape``) or "per_element" (predicted by the decoder).
        obs_logvar: the fixed log-variance, or the initial value of a learned one.
        data_shape: shape of one example, e.g. (784,) or (1, 28, 28); inferred from the first
            batch when None (except for "per_dim", which needs it up front).
        beta: default weight of the KL term in `loss`.
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
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if obs_var not in OBS_VARS:
            raise ValueError(f"obs_var must be one of {OBS_VARS}, got {obs_var!r}")
        if likelihood == "bernoulli" and obs_var != "fixed":
            raise ValueError(
                f"obs_var={obs_var!r} needs likelihood='gaussian'; a Bernoulli likelihood has no variance"
            )
        if int(latent_dim) < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        obs_logvar = float(obs_logvar)
        if not math.isfinite(obs_logvar):
            raise ValueError(f"obs_logvar must be finite, got {obs_logvar}")
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = int(latent_dim)
        self.likelihood = likelihood
        self.obs_var = obs_var
        self.beta = float(beta)
        self.data_shape: Optional[Tuple[int, ...]] = tuple(int(s) for s in data_shape) if data_shape else None
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

    # ------------------------------------------------------------------ helpers
    def _param(self) -> torch.Tensor:
        for p in self.parameters():
            return p
        return torch.empty(0)

    def _data_dim(self) -> Optional[int]:
        return math.prod(self.data_shape) if self.data_shape is not None else None

    def _flat_x(self, x: torch.Tensor) -> torch.Tensor:
        """x as (B, D), remembering data_shape on first sight."""
        if x.dim() < 2:
            raise ValueError(f"x must be (batch, *data_shape), got shape {tuple(x.shape)}")
        if self.data_shape is None:
            self.data_shape = tuple(x.shape[1:])
        elif math.prod(x.shape[1:]) != self._data_dim():
            raise ValueError(
                f"x has {math.prod(x.shape[1:])} elements per example, the model expects "
                f"data_shape {self.data_shape}"
            )
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
        return recon, (0.0 if self.likelihood == "bernoulli" else self.obs_logvar)

    def _log_px(
        self, recon: torch.Tensor, x_flat: torch.Tensor, obs_logvar: Union[float, torch.Tensor]
    ) -> torch.Tensor:
        """log p(x|z) summed over the data dim; recon (..., B, D) broadcasts x_flat (B, D)."""
        if recon.shape[-1] != x_flat.shape[-1]:
            raise ValueError(
                f"decoder gives {recon.shape[-1]} values per example but x has {x_flat.shape[-1]}"
            )
        if self.likelihood == "bernoulli":
            return _F.bernoulli_log_likelihood(recon, x_flat, event_dims=1)
        return _F.gaussian_log_likelihood(recon, x_flat, obs_logvar, event_dims=1)

    def _data_mean(self, params: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z) in data space, shaped (N, *data_shape) when data_shape is known."""
        n = params.shape[0]
        recon, _ = self._observation(params, (n,))
        mean = torch.sigmoid(recon) if self.likelihood == "bernoulli" else recon
        return mean.reshape(n, *self.data_shape) if self.data_shape is not None else mean

    def _log_weights(
        self, x_flat: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """log p(x, z_k) - log q(z_k | x) for z (K, B, Z); returns (K, B)."""
        k, b = z.shape[0], z.shape[1]
        params = self.decode(z.reshape(k * b, self.latent_dim))
        recon, obs_logvar = self._observation(params, (k, b))
        log_px = self._log_px(recon, x_flat, obs_logvar)
        return log_px + _F.standard_normal_log_density(z) - _F.gaussian_log_density(z, mu, logvar)

    # ------------------------------------------------------------------ model
    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters (mu, logvar), each (B, latent_dim)."""
        h = self.encoder(x)
        if h.dim() != 2 or h.shape[1] != 2 * self.latent_dim:
            raise ValueError(
                f"encoder must return (batch, 2 * latent_dim = {2 * self.latent_dim}), "
                f"got shape {tuple(h.shape)}"
            )
        mu, logvar = h.chunk(2, dim=1)
        # The fused kernels read contiguous memory; chunk gives strided views.
        return mu.contiguous(), logvar.contiguous()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw decoder output for z (N, latent_dim): logits, mean, or mean+logvar stacked."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> VAEOutput:
        """Encode, draw one z per example and its KL term in one fused pass, decode."""
        self._flat_x(x)  # checks x against data_shape before the encoder sees it
        mu, logvar = self.encode(x)
        z, kl = _F.reparameterize_with_kl(mu, logvar)
        return VAEOutput(recon=self.decode(z), mu=mu, logvar=logvar, z=z, kl=kl)

    def loss_from_output(
        self,
        out: VAEOutput,
        x: torch.Tensor,
        beta: Optional[float] = None,
        free_bits: float = 0.0,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Negative ELBO of a finished forward pass (see `loss`)."""
        _check_reduction(reduction)
        beta = self.beta if beta is None else float(beta)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if free_bits < 0:
            raise ValueError(f"free_bits must be >= 0, got {free_bits}")
        x_flat = self._flat_x(x)
        recon, obs_logvar = self._observation(out.recon, (x_flat.shape[0],))
        if free_bits == 0:
            if recon.shape[-1] != x_flat.shape[-1]:
                raise ValueError(
                    f"decoder gives {recon.shape[-1]} values per example but x has {x_flat.shape[-1]}"
                )
            return _F.elbo(
                recon, x_flat, out.mu, out.logvar, likelihood=self.likelihood,
                obs_logvar=obs_logvar, beta=beta, reduction=reduction, kl=out.kl,
            )
        # Free bits need the KL of each latent dim before summing, which the fused KL does not
        # expose; the likelihood term stays fused.
        kl_dims = -0.5 * (1 + out.logvar - out.mu.pow(2) - out.logvar.exp())
        kl = kl_dims.clamp(min=free_bits).sum(-1)
        loss = -self._log_px(recon, x_flat, obs_logvar) + beta * kl
        return _reduce(loss, reduction)

    def loss(
        self,
        x: torch.Tensor,
        beta: Optional[float] = None,
        free_bits: float = 0.0,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Negative ELBO, -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)), with one z per example.

        beta: KL weight (default ``self.beta``). free_bits: floor, in nats, under the KL of each
        latent dim of each example (Kingma et al. 2016), so that no dim is pushed to the prior
        below it; 0 keeps the fully fused path. reduction: "mean" | "sum" | "none" over the batch.
        """
        return self.loss_from_output(self(x), x, beta=beta, free_bits=free_bits, reduction=reduction)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Single-sample ELBO per example (B,), in nats (beta = 1, no free bits)."""
        return -self.loss(x, beta=1.0, reduction="none")

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, sample_z: bool = False) -> torch.Tensor:
        """Mean of p(x|z) at z = posterior mean (or a posterior sample), shaped like x."""
        mu, logvar = self.encode(x)
        z = _F.reparameterize(mu, logvar) if sample_z else mu
        return self._data_mean(self.decode(z)).reshape(x.shape)

    @torch.no_grad()
    def sample(
        self, n: int, mean: bool = True, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Ancestral samples: z ~ N(0, I), then the mean of p(x|z) or (``mean=False``) x ~ p(x|z).

        Returns (n, *data_shape) (the decoder's shape when data_shape is unknown).
        """
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        ref = self._param()
        dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        z = torch.randn(int(n), self.latent_dim, device=ref.device, dtype=dtype, generator=generator)
        params = self.decode(z)
        if mean:
            return self._data_mean(params)
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
        self,
        x: torch.Tensor,
        num_samples: int = 5000,
        chunk_size: Optional[int] = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Importance-sampled estimate of log p(x) per example (B,), in nats.

        log (1/K) sum_k p(x, z_k) / q(z_k|x) with z_k ~ q(z|x) (Burda et al. 2016), a lower bound
        that tightens to log p(x) as K grows. Samples are drawn ``chunk_size`` at a time (default:
        as many as fit about 4M data elements) and merged with a running log-sum-exp, so memory
        does not grow with K. ``progress`` shows a tqdm bar over the samples.
        """
        num_samples = int(num_samples)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        x_flat = self._flat_x(x)
        if chunk_size is None:
            chunk_size = max(1, _CHUNK_ELEMENTS // max(1, x_flat.numel()))
        chunk_size = int(chunk_size)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        mu, logvar = self.encode(x)
        total: Optional[torch.Tensor] = None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_samples, desc="log-likelihood", unit="sample")
        try:
            done = 0
            while done < num_samples:
                k = min(chunk_size, num_samples - done)
                z = _F.reparameterize(mu, logvar, num_samples=k)
                chunk = torch.logsumexp(self._log_weights(x_flat, mu, logvar, z), dim=0)
                # logaddexp keeps the running sum exact in log space, whatever the weights' scale.
                total = chunk if total is None else torch.logaddexp(total, chunk)
                done += k
                if bar is not None:
                    bar.update(k)
        finally:
            if bar is not None:
                bar.close()
        return total - math.log(num_samples)

    def iwae_loss(
        self, x: torch.Tensor, num_samples: int = 5, reduction: str = "mean"
    ) -> torch.Tensor:
        """Negative IWAE bound, -log (1/K) sum_k p(x, z_k) / q(z_k|x), for training (K = num_samples)."""
        _check_reduction(reduction)
        num_samples = int(num_samples)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        x_flat = self._flat_x(x)
        mu, logvar = self.encode(x)
        z = _F.reparameterize(mu, logvar, num_samples=num_samples)
        log_w = self._log_weights(x_flat, mu, logvar, z)
        bound = torch.logsumexp(log_w, dim=0) - math.log(num_samples)
        return _reduce(-bound, reduction)

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
        return cfg

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, likelihood={self.likelihood!r}, obs_var={self.obs_var!r}, "
            f"data_shape={self.data_shape}, beta={self.beta}"
        )


# ---------------------------------------------------------------------- builders
def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]()


def _out_factor(vae_kwargs: Dict[str, Any]) -> int:
    # The decoder predicts mean and log-variance side by side for per-element variance.
    return 2 if vae_kwargs.get("obs_var", "fixed") == "per_element" else 1


def build_mlp_vae(
    input_dim: int = 784,
    hidden: Sequence[int] = (400,),
    latent_dim: int = 20,
    likelihood: str = "bernoulli",
    activation: str = "relu",
    **vae_kwargs: Any,
) -> VAE:
    """Fully connected VAE: input_dim -> hidden... -> 2*latent_dim, and back mirrored.

    Inputs of any shape with ``input_dim`` elements per example are flattened; pass
    ``data_shape=(1, 28, 28)`` to get reconstructions and samples in image shape.
    """
    hidden = tuple(int(h) for h in hidden)
    if int(input_dim) < 1:
        raise ValueError(f"input_dim must be >= 1, got {input_dim}")
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden sizes must be >= 1, got {hidden}")
    data_shape = vae_kwargs.pop("data_shape", None) or (int(input_dim),)
    if math.prod(data_shape) != int(input_dim):
        raise ValueError(f"data_shape {tuple(data_shape)} does not hold input_dim={input_dim} elements")

    enc: list = [nn.Flatten()]
    width = int(input_dim)
    for h in hidden:
        enc += [nn.Linear(width, h), _activation(activation)]
        width = h
    enc.append(nn.Linear(width, 2 * int(latent_dim)))

    dec: list = []
    width = int(latent_dim)
    for h in reversed(hidden):
        dec += [nn.Linear(width, h), _activation(activation)]
        width = h
    dec.append(nn.Linear(width, _out_factor(vae_kwargs) * int(input_dim)))

    vae = VAE(nn.Sequential(*enc), nn.Sequential(*dec), latent_dim, likelihood=likelihood,
              data_shape=data_shape, **vae_kwargs)
    vae._arch = {"arch": "mlp", "input_dim": int(input_dim), "hidden": list(hidden), "activation": activation}
    return vae


def build_conv_vae(
    image_shape: Sequence[int] = (1, 28, 28),
    channels: Sequence[int] = (32, 64),
    latent_dim: int = 20,
    likelihood: str = "bernoulli",
    activation: str = "relu",
    **vae_kwargs: Any,
) -> VAE:
    """Convolutional VAE for (C, H, W) images: stride-2 4x4 convs halving H and W per entry of
    ``channels``, a linear layer to 2*latent_dim, and the mirror image with transposed convs.

    Works for any H, W >= 2 ** len(channels), e.g. (1, 28, 28) MNIST or (1, 8, 8) digits.
    """
    if len(image_shape) != 3 or any(int(s) < 1 for s in image_shape):
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {tuple(image_shape)}")
    c, h, w = (int(s) for s in image_shape)
    channels = tuple(int(ch) for ch in channels)
    if not channels or any(ch < 1 for ch in channels):
        raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}")
    if "data_shape" in vae_kwargs and tuple(vae_kwargs["data_shape"]) != (c, h, w):
        raise ValueError(f"data_shape {vae_kwargs['data_shape']} differs from image_shape {(c, h, w)}")
    vae_kwargs.pop("data_shape", None)
    # Spatial sizes after each conv (k=4, s=2, p=1 gives floor(n / 2)).
    sizes = [(h, w)]
    for _ in channels:
        ph, pw = sizes[-1]
        sizes.append((ph // 2, pw // 2))
    if min(sizes[-1]) < 1:
        raise ValueError(
            f"image_shape {(c, h, w)} is too small for {len(channels)} stride-2 convs; "
            f"H and W must be >= {2 ** len(channels)}"
        )

    enc: list = []
    prev = c
    for ch in channels:
        enc += [nn.Conv2d(prev, ch, 4, stride=2, padding=1), _activation(activation)]
        prev = ch
    fh, fw = sizes[-1]
    enc += [nn.Flatten(), nn.Linear(prev * fh * fw, 2 * int(latent_dim))]

    dec: list = [nn.Linear(int(latent_dim), prev * fh * fw), _activation(activation), nn.Unflatten(1, (prev, fh, fw))]
    outs = list(reversed(channels[:-1])) + [_out_factor(vae_kwargs) * c]
    for i, ch in enumerate(outs):
        (ih, iw), (th, tw) = sizes[-1 - i], sizes[-2 - i]
        # A transposed conv gives 2n; output_padding adds the row/column an odd size lost.
        dec.append(nn.ConvTranspose2d(prev, ch, 4, stride=2, padding=1, output_padding=(th - 2 * ih, tw - 2 * iw)))
        if i < len(outs) - 1:
            dec.append(_activation(activation))
        prev = ch

    vae = VAE(nn.Sequential(*enc), nn.Sequential(*dec), latent_dim, likelihood=likelihood,
              data_shape=(c, h, w), **vae_kwargs)
    vae._arch = {"arch": "conv", "image_shape": [c, h, w], "channels": list(channels), "activation": activation}
    return vae


def build_vae(config: Dict[str, Any]) -> VAE:
    """Rebuild a VAE (fresh weights) from `VAE.config`; load a state_dict on top for a checkpoint."""
    cfg = dict(config)
    arch = cfg.pop("arch", None)
    if arch == "mlp":
        return build_mlp_vae(**cfg)
    if arch == "conv":
        cfg.pop("data_shape", None)  # implied by image_shape
        return build_conv_vae(**cfg)
    if arch is None:
        raise ValueError("config has no 'arch': the VAE was built from custom modules, rebuild it by hand")
    raise ValueError(f"config['arch'] must be 'mlp' or 'conv', got {arch!r}")
