"""The image likelihoods of a `VAE`: how the decoder's output and grey levels in [0, 1] meet the
fused ops of `fastvae.functional` (and their `fastvae.reference` twins).

===================== ============================== ==========================================
likelihood            decoder output per pixel        log p(x | z) from
===================== ============================== ==========================================
"dmol"                10 M channels (C = 3), 3 M      discretized_mix_logistic_log_likelihood
                      (C = 1): NVAE's layout
"logistic"            2 C: means, then log-scales     discretized_logistic_log_likelihood
"categorical"         2^bits C, viewed as             categorical_log_likelihood
                      (2^bits, C): the class dim first
"continuous_bernoulli" C logits (any data shape)       continuous_bernoulli_log_likelihood
===================== ============================== ==========================================

The discrete ones read integer levels: the data are 8-bit images scaled to [0, 1], so
``round(255 x)`` recovers them exactly; ``bits`` < 8 keeps the top bits (``level >> (8 - bits)``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from .. import functional as _F
from .. import reference as _R
from ..functional.image_elbo import IMAGE_LIKELIHOODS

__all__ = ["IMAGE_LIKELIHOODS", "DISCRETE_LIKELIHOODS", "decoder_channels", "levels", "image_log_px",
           "elbo_operands", "image_mean", "image_sample"]

#: The likelihoods over integer levels (bits/dim is their unit).
DISCRETE_LIKELIHOODS = ("dmol", "logistic", "categorical")


def decoder_channels(likelihood: str, channels: int, num_mixtures: int, bits: int) -> int:
    """Decoder output channels per pixel for images of ``channels`` colour channels."""
    if likelihood == "dmol":
        if channels not in (1, 3):
            raise ValueError(f"likelihood='dmol' models 1 or 3 colour channels, the data have {channels}")
        return (10 if channels == 3 else 3) * num_mixtures
    if likelihood == "logistic":
        return 2 * channels
    if likelihood == "categorical":
        return 2**bits * channels
    return channels


def levels(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer levels 0 ... 2^bits - 1 (uint8) of 8-bit grey levels scaled to [0, 1]."""
    v = torch.round(x * 255).clamp_(0, 255).to(torch.uint8)
    return v if bits == 8 else torch.bitwise_right_shift(v, 8 - bits)


def _image(t: torch.Tensor, n: int, image_shape: Sequence[int], per_pixel: int) -> torch.Tensor:
    """(n, per_pixel, H, W) view of a decoder output with n rows."""
    _, h, w = image_shape
    if t.numel() != n * per_pixel * h * w:
        raise ValueError(f"the decoder gives {t.numel() // max(n, 1)} values per example; this likelihood needs "
                         f"{per_pixel} x {h} x {w} = {per_pixel * h * w}")
    return t.reshape(n, per_pixel, h, w)


def _op_layout(likelihood: str, params: torch.Tensor, n: int, image_shape: Sequence[int], num_mixtures: int,
               bits: int) -> torch.Tensor:
    """n rows of decoder outputs in a discrete likelihood op's layout: (n, K, H, W), for
    "categorical" (n, 2^bits, C, H, W). A view of a conv decoder's output (channels-last too)."""
    c = image_shape[0]
    p = _image(params, n, image_shape, decoder_channels(likelihood, c, num_mixtures, bits))
    return p.reshape(n, 2**bits, c, *image_shape[1:]) if likelihood == "categorical" else p


def image_log_px(likelihood: str, params: torch.Tensor, x_flat: torch.Tensor, image_shape: Sequence[int],
                 num_mixtures: int, bits: int, fused: bool = True) -> torch.Tensor:
    """log p(x | z) per example, shape ``params.shape[:-1]``: params (..., B, P) flattened decoder
    outputs (leading sample dims allowed), x_flat (B, D) grey levels in [0, 1]."""
    ops = _F if fused else _R
    lead = params.shape[:-1]
    n = math.prod(lead)
    if likelihood == "continuous_bernoulli":
        if params.shape[-1] != x_flat.shape[-1]:
            raise ValueError(f"decoder gives {params.shape[-1]} values per example but x has {x_flat.shape[-1]}")
        return ops.continuous_bernoulli_log_likelihood(params, x_flat, event_dims=1)
    v = levels(x_flat, bits).view(x_flat.shape[0], *image_shape)
    if n != x_flat.shape[0]:  # K samples per image: the levels (one byte each) repeated per sample
        v = v.expand(n // x_flat.shape[0], *v.shape).reshape(n, *image_shape)
    p = _op_layout(likelihood, params, n, image_shape, num_mixtures, bits)
    if likelihood == "dmol":
        ll = ops.discretized_mix_logistic_log_likelihood(p, v, num_mixtures, bits=bits)
    elif likelihood == "logistic":
        mean, log_scale = p.chunk(2, dim=1)
        ll = ops.discretized_logistic_log_likelihood(mean, log_scale, v, bits=bits)
    else:
        ll = ops.categorical_log_likelihood(p, v)
    return ll.view(lead)


def elbo_operands(likelihood: str, params: torch.Tensor, x_flat: torch.Tensor, image_shape: Sequence[int],
                  num_mixtures: int, bits: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(recon, x) for ``fastvae.functional.elbo(recon, x, ..., likelihood=likelihood)`` from one
    decoder output per image (any shape with B rows: a conv decoder's (B, K, H, W), channels-last
    included, is passed on as a view) and x_flat (B, D) grey levels in [0, 1]."""
    n = x_flat.shape[0]
    if likelihood == "continuous_bernoulli":
        if params.shape[0] != n or params.numel() != x_flat.numel():
            raise ValueError(f"decoder gives {params.numel() // max(params.shape[0], 1)} values per example but x "
                             f"has {x_flat.shape[-1]}")
        return params, x_flat.reshape(params.shape)
    v = levels(x_flat, bits).view(n, *image_shape)
    return _op_layout(likelihood, params, n, image_shape, num_mixtures, bits), v


def _logistic_mean_and_mixture(p: torch.Tensor, c: int, m: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """DMoL parameters (n, 10M | 3M, H, W) as (mixture logits (n, M, H, W), per-channel blocks
    (n, C, 3, M, H, W): means, log-scales, coupling coefficients)."""
    logit = p[:, :m]
    rest = p[:, m:].reshape(p.shape[0], c, 3 if c == 3 else 2, m, *p.shape[2:])
    return logit, rest


def _component(blocks: torch.Tensor, pick: torch.Tensor, j: int) -> torch.Tensor:
    """Entry j (0 means, 1 log-scales, 2 coefficients) of each pixel's picked mixture component:
    blocks (n, C, 3 | 2, M, H, W), pick (n, 1, H, W) component indices -> (n, C, H, W)."""
    n, c = blocks.shape[:2]
    index = pick.unsqueeze(1).expand(n, c, 1, *pick.shape[2:])
    return blocks[:, :, j].gather(2, index).squeeze(2)


def image_mean(likelihood: str, params: torch.Tensor, image_shape: Sequence[int], num_mixtures: int,
               bits: int) -> torch.Tensor:
    """A point estimate of x | z in [0, 1], (n, C, H, W): the mean (mixtures: the mean of the
    most probable component, with the colour coupling applied to the earlier channels' values)."""
    n, c = params.shape[0], image_shape[0]
    if likelihood == "continuous_bernoulli":
        mean = torch.distributions.ContinuousBernoulli(logits=params.float()).mean
        return mean.reshape(n, *image_shape)
    p = _image(params, n, image_shape, decoder_channels(likelihood, c, num_mixtures, bits)).float()
    top = 2**bits - 1
    if likelihood == "categorical":
        probs = p.view(n, 2**bits, c, *image_shape[1:]).softmax(dim=1)
        k = torch.arange(2**bits, dtype=probs.dtype, device=probs.device).view(1, -1, *([1] * len(image_shape)))
        return (probs * k).sum(1) / top
    if likelihood == "logistic":
        return ((p[:, :c].clamp(-1, 1) + 1) / 2)
    logit, blocks = _logistic_mean_and_mixture(p, c, num_mixtures)
    pick = logit.argmax(dim=1, keepdim=True)  # (n, 1, H, W)
    means = _component(blocks, pick, 0)
    out = means.clone()
    if c == 3:
        coef = torch.tanh(_component(blocks, pick, 2))
        red = out[:, 0].clamp(-1, 1)
        out[:, 1] = means[:, 1] + coef[:, 0] * red
        green = out[:, 1].clamp(-1, 1)
        out[:, 2] = means[:, 2] + coef[:, 1] * red + coef[:, 2] * green
    return (out.clamp(-1, 1) + 1) / 2


def image_sample(likelihood: str, params: torch.Tensor, image_shape: Sequence[int], num_mixtures: int,
                 bits: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x ~ p(x | z) in [0, 1], (n, C, H, W): levels / (2^bits - 1) for the discrete likelihoods,
    drawn by the fused samplers of `fastvae.functional` (mixture picked by Gumbel-max, colour
    coupling with the levels already drawn for the earlier channels); the continuous Bernoulli
    by its inverse CDF here."""
    n, c = params.shape[0], image_shape[0]
    if likelihood == "continuous_bernoulli":
        lam = torch.sigmoid(params.float())
        u = torch.rand(lam.shape, generator=generator, device=params.device).clamp(1e-6, 1 - 1e-6)
        # Inverse CDF: x = log(1 + u (2 lam - 1) / (1 - lam)) / log(lam / (1 - lam)), u itself at 1/2.
        near = (lam - 0.5).abs() < 1e-4
        safe = torch.where(near, torch.full_like(lam, 0.25), lam)
        x = torch.log1p(u * (2 * safe - 1) / (1 - safe)) / (torch.log(safe) - torch.log1p(-safe))
        return torch.where(near, u, x).clamp(0, 1).reshape(n, *image_shape)
    top = 2**bits - 1
    p = _image(params, n, image_shape, decoder_channels(likelihood, c, num_mixtures, bits))
    if likelihood == "categorical":
        v = _F.sample_categorical(p.view(n, 2**bits, c, *image_shape[1:]), generator)
    elif likelihood == "logistic":
        v = _F.sample_discretized_logistic(p[:, :c], p[:, c:], bits, generator)
    else:
        v = _F.sample_discretized_mix_logistic(p, num_mixtures, bits, generator)
    return v.float() / top
