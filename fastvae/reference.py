"""Plain-PyTorch twins of every fused op, written the way users write them in eager code.

They are the oracle for the tests and the baseline for the benchmarks, so they stay
deliberately naive: no fusion, no custom autograd, the standard torch formulas.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)

__all__ = [
    "reparameterize",
    "reparameterize_with_kl",
    "kl_standard_normal",
    "kl_normal",
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "linear_bernoulli_log_likelihood",
    "continuous_bernoulli_log_likelihood",
    "cb_log_normalizer",
    "categorical_log_likelihood",
    "gaussian_log_density",
    "standard_normal_log_density",
    "elbo",
    "iwae_bound",
    "discretized_logistic_log_likelihood",
    "discretized_mix_logistic_log_likelihood",
]


def _sum_event(t: torch.Tensor, event_dims: Optional[int]) -> torch.Tensor:
    if t.dim() == 0:
        return t
    if event_dims is None:
        event_dims = max(t.dim() - 1, 1) if t.dim() > 1 else 1
    return t.sum(dim=tuple(range(t.dim() - event_dims, t.dim())))


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: Optional[int] = None,
    eps: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I) (or the given ``eps``)."""
    shape = torch.broadcast_shapes(mu.shape, logvar.shape)
    if num_samples is not None:
        shape = (num_samples, *shape)
    if eps is None:
        eps = torch.randn(shape, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) summed over the last dim."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def kl_normal(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, diag exp(logvar_q)) || N(mu_p, diag exp(logvar_p))) summed over the last dim, the
    closed form hierarchical VAEs write by hand (VDVAE's ``gaussian_analytical_kl``, in
    log-variances, the variance ratio taken as exp(logvar_q - logvar_p)); equal to
    ``torch.distributions.kl_divergence(Normal, Normal).sum(-1)``."""
    ratio = torch.exp(logvar_q - logvar_p)
    return torch.sum(0.5 * (ratio + (mu_q - mu_p).pow(2) * torch.exp(-logvar_p) - 1 - (logvar_q - logvar_p)), dim=-1)


def reparameterize_with_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: Optional[int] = None,
    eps: Optional[torch.Tensor] = None,
    prior_mu: Optional[torch.Tensor] = None,
    prior_logvar: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The sample and the KL term (against N(0, I), or N(prior_mu, exp(prior_logvar)) when both
    are given), each computed on its own."""
    if prior_mu is None and prior_logvar is None:
        return reparameterize(mu, logvar, num_samples, eps), kl_standard_normal(mu, logvar)
    return reparameterize(mu, logvar, num_samples, eps), kl_normal(mu, logvar, prior_mu, prior_logvar)


def bernoulli_log_likelihood(
    logits: torch.Tensor, x: torch.Tensor, event_dims: Optional[int] = None
) -> torch.Tensor:
    """sum x*log(sigmoid(l)) + (1-x)*log(1-sigmoid(l)) over every dim after the first."""
    x = x.to(logits.dtype)
    logits, x = torch.broadcast_tensors(logits, x)
    ll = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return _sum_event(ll, event_dims)


def linear_bernoulli_log_likelihood(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """bernoulli_log_likelihood of the logits input @ weight.T + bias, summed over their last dim."""
    return bernoulli_log_likelihood(F.linear(input, weight, bias), x, event_dims=1)


def _cb_series_coefficients(terms: int) -> Tuple[float, ...]:
    """c_1 .. c_terms of log(C(l) / 2) = sum_n c_n l^(2n), c_n = 2 (2^(2n-1) - 1) B_2n / ((2n)! 2n),
    from the Bernoulli numbers B_2n computed exactly (fractions)."""
    from fractions import Fraction

    bern = [Fraction(1)]
    for m in range(1, 2 * terms + 1):
        bern.append(-sum(math.comb(m + 1, k) * bern[k] for k in range(m)) / (m + 1))
    return tuple(float(2 * (2 ** (2 * n - 1) - 1) * bern[2 * n] / (math.factorial(2 * n) * 2 * n))
                 for n in range(1, terms + 1))


def cb_log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C of the continuous Bernoulli at lambda = sigmoid(logits), C = l / tanh(l / 2), in the
    logits' dtype (use float64 for an oracle): a 24-term series in l below |l| = 1 (truncation
    under 1e-24 of the result), log|l| + log1p(e^-|l|) - log(-expm1(-|l|)) above."""
    a = logits.abs()
    near = torch.where(a < 1, logits, torch.zeros_like(logits))  # no inf * 0 in the unused branch's gradient
    t = near * near
    series = torch.zeros_like(logits)
    for c in reversed(_cb_series_coefficients(24)):
        series = (series + c) * t
    series = series + math.log(2.0)
    ac = torch.where(a < 1, torch.ones_like(a), a)  # clamp_min would pass no gradient at a == 1
    closed = ac.log() + torch.log1p(torch.exp(-ac)) - torch.log(-torch.expm1(-ac))
    return torch.where(a < 1, series, closed)


def continuous_bernoulli_log_likelihood(
    logits: torch.Tensor, x: torch.Tensor, event_dims: Optional[int] = None
) -> torch.Tensor:
    """The continuous Bernoulli log-density of x in [0, 1] summed over every dim after the first:
    the Bernoulli term plus :func:`cb_log_normalizer` (torch.distributions.ContinuousBernoulli's
    value, which cuts off to a series in lambda within 1e-3 of 1/2)."""
    x = x.to(logits.dtype)
    logits, x = torch.broadcast_tensors(logits, x)
    ll = -F.binary_cross_entropy_with_logits(logits, x, reduction="none") + cb_log_normalizer(logits)
    return _sum_event(ll, event_dims)


def categorical_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log softmax(logits, dim=1)[x] summed per image: -F.cross_entropy(reduction="none") summed
    over every dim after the first, the way users write it. logits (B, K, C, *spatial), x
    (B, C, *spatial) integer levels."""
    ce = F.cross_entropy(logits, x.long(), reduction="none")
    return -ce.flatten(1).sum(1)


def gaussian_log_likelihood(
    mean: torch.Tensor,
    x: torch.Tensor,
    logvar: Union[float, torch.Tensor] = 0.0,
    event_dims: Optional[int] = None,
) -> torch.Tensor:
    """log N(x | mean, exp(logvar)) summed over every dim after the first."""
    if not isinstance(logvar, torch.Tensor):
        logvar = torch.tensor(float(logvar), dtype=mean.dtype, device=mean.device)
    x = x.to(mean.dtype)
    ll = -0.5 * (LOG_2PI + logvar + (x - mean).pow(2) * torch.exp(-logvar))
    ll = ll.expand(torch.broadcast_shapes(mean.shape, x.shape, logvar.shape))
    return _sum_event(ll, event_dims)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z | mu, diag exp(logvar)) summed over the last dim (log q(z|x))."""
    return -0.5 * torch.sum(LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar), dim=-1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z | 0, I) summed over the last dim (log p(z))."""
    return -0.5 * torch.sum(LOG_2PI + z.pow(2), dim=-1)


def elbo(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    likelihood: str = "bernoulli",
    obs_logvar: Union[float, torch.Tensor] = 0.0,
    beta: float = 1.0,
    reduction: str = "mean",
    kl: Optional[torch.Tensor] = None,
    num_mixtures: Optional[int] = None,
    bits: int = 8,
) -> torch.Tensor:
    """Negative ELBO as users write it: summed BCE-with-logits (or Gaussian NLL, or an image
    likelihood's -log p in fastvae.functional.image_elbo's recon layout) + beta * KL (``kl``, when
    given, is the KL term already computed from mu and logvar)."""
    if likelihood == "bernoulli":
        rec = F.binary_cross_entropy_with_logits(
            recon, x.to(recon.dtype).expand_as(recon), reduction="none"
        ).flatten(1).sum(1)
    elif likelihood == "gaussian":
        rec = -gaussian_log_likelihood(recon, x, obs_logvar)
    elif likelihood == "dmol":
        rec = -discretized_mix_logistic_log_likelihood(recon, x, num_mixtures, bits)
    elif likelihood == "logistic":
        mean, log_scale = recon.chunk(2, dim=1)
        rec = -discretized_logistic_log_likelihood(mean, log_scale, x, bits)
    elif likelihood == "categorical":
        rec = -categorical_log_likelihood(recon, x)
    elif likelihood == "continuous_bernoulli":
        rec = -continuous_bernoulli_log_likelihood(recon, x)
    else:
        raise ValueError(f"likelihood must be 'bernoulli', 'gaussian' or an image likelihood, got {likelihood!r}")
    if kl is None:
        kl = kl_standard_normal(mu, logvar)
    loss = rec + beta * kl
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def iwae_bound(log_w: torch.Tensor, gate: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(log (1/K) sum_k exp(log_w[k]) per example, softmax weights), from (K, B) log-weights.

    ``gate`` is accepted for the fused op's signature and ignored: the reference DReG gradient
    scales z's gradient with a tensor hook instead (see `fastvae.vae.objectives`).
    """
    bound = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
    return bound, torch.softmax(log_w.detach(), dim=0)


# ---------------------------------------------------------------- discretized logistic (exact)
def _bin_values(x: torch.Tensor, bits: int, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(value in [-1, 1], has an upper edge, has a lower edge) of each level of x: integer levels,
    or float values in [-1, 1] rounded to the nearest level."""
    top = 2**bits - 1
    v = x.to(torch.float64)
    if x.is_floating_point():
        v = torch.round((v + 1) * 0.5 * top)
    return (2 * v / top - 1).to(dtype), v < top, v > 0


def _bin_log_mass(xv: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bits: int,
                  up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """log P(bin of xv) under Logistic(mean, e^max(log_scale, -7)), exact in every regime: the bin
    [b, a] in standardised units has log sigmoid(a) + log sigmoid(-b) + log(1 - e^-(a - b))."""
    inv_s = torch.exp(-torch.clamp(log_scale, min=-7.0))
    c = (xv - mean) * inv_s
    hs = inv_s / (2**bits - 1)
    a, b, d = c + hs, c - hs, 2 * hs
    log1mexp = torch.where(d <= math.log(2.0), torch.log(-torch.expm1(-d)), torch.log1p(-torch.exp(-d)))
    zero = torch.zeros((), dtype=c.dtype, device=c.device)
    return (torch.where(up, F.logsigmoid(a), zero) + torch.where(down, F.logsigmoid(-b), zero)
            + torch.where(up & down, log1mexp, zero))


def discretized_logistic_log_likelihood(mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor,
                                        bits: int = 8) -> torch.Tensor:
    """log p(x) of one discretized logistic per subpixel, summed over all dims but the first."""
    xv, up, down = _bin_values(x, bits, mean.dtype)
    return _bin_log_mass(xv, mean, log_scale, bits, up, down).flatten(1).sum(1)


def discretized_mix_logistic_log_likelihood(params: torch.Tensor, x: torch.Tensor, num_mixtures: int,
                                            bits: int = 8) -> torch.Tensor:
    """log p(x) of the NVAE / PixelCNN++ discretized mixture of logistics, summed per image.

    params (B, 10 M, *spatial) for x (B, 3, *spatial): M logits, then per channel M means,
    M log-scales, M coefficients (tanh; green + c0 x_red, blue + c1 x_red + c2 x_green); or
    (B, 3 M, *spatial) for x (B, 1, *spatial): logits, means, log-scales.
    """
    M, B, C = num_mixtures, params.shape[0], x.shape[1]
    spatial = params.shape[2:]
    logits = params[:, :M]
    xv, up, down = _bin_values(x, bits, params.dtype)
    blocks = params[:, M:].reshape(B, C, 3 if C == 3 else 2, M, *spatial)
    means, log_scales = blocks[:, :, 0], blocks[:, :, 1]
    xs = xv.unsqueeze(2)  # (B, C, 1, *spatial)
    if C == 3:
        coef = torch.tanh(blocks[:, :, 2])
        means = torch.stack([means[:, 0], means[:, 1] + coef[:, 0] * xs[:, 0],
                             means[:, 2] + coef[:, 1] * xs[:, 0] + coef[:, 2] * xs[:, 1]], dim=1)
    terms = _bin_log_mass(xs, means, log_scales, bits, up.unsqueeze(2), down.unsqueeze(2)).sum(1)
    return torch.logsumexp(terms + F.log_softmax(logits, dim=1), dim=1).flatten(1).sum(1)
