"""The discretized mixture of logistics as users run it today (the PixelCNN++ / NVAE / VDVAE
formula, written here from its description): the benchmark baseline of
``benchmarks/bench_discretized_logistic.py``. Never imported by fastvae's core.

What it does that the fused op does not: a bin whose probability is below 1e-5 gets the density
at its centre times the bin width instead of its probability (and the difference of the two CDFs
is clamped at 1e-10 inside the log), and the edge bins are chosen by ``x < -0.999`` /
``x > 0.999`` (PixelCNN++'s thresholds: level 2^bits - 2 stays an interior bin; NVAE's ``x > 0.99``
would send 8-bit level 254 to the top bin). Every intermediate is a (B, C, M, H, W) tensor that
autograd keeps. Grey images (C = 1, PixelCNN++'s one-channel variant) take params (B, 3 M, H, W):
logits, means, log-scales, no channel coupling.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def eager_dmol_log_likelihood(params: torch.Tensor, x: torch.Tensor, num_mixtures: int,
                              bits: int = 8) -> torch.Tensor:
    """log p(x) per image (B,) for params (B, 10 M, H, W) and x (B, 3, H, W) float in [-1, 1]
    (or params (B, 3 M, H, W) and x (B, 1, H, W))."""
    M = num_mixtures
    B, C, H, W = x.shape
    if C not in (1, 3):
        raise ValueError(f"x must have 1 or 3 channels, got {C}")
    top = 2**bits - 1
    logits = params[:, :M]
    blocks = params[:, M:].reshape(B, C, (3 if C == 3 else 2) * M, H, W)
    means = blocks[:, :, :M]
    log_scales = torch.clamp(blocks[:, :, M:2 * M], min=-7.0)
    xe = x.unsqueeze(2).expand(B, C, M, H, W)
    if C == 3:
        coefs = torch.tanh(blocks[:, :, 2 * M:3 * M])
        green = means[:, 1] + coefs[:, 0] * xe[:, 0]
        blue = means[:, 2] + coefs[:, 1] * xe[:, 0] + coefs[:, 2] * xe[:, 1]
        means = torch.stack([means[:, 0], green, blue], dim=1)
    centred = xe - means
    inv_s = torch.exp(-log_scales)
    plus = inv_s * (centred + 1.0 / top)
    minus = inv_s * (centred - 1.0 / top)
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    log_cdf_plus = plus - F.softplus(plus)
    log_one_minus_cdf_min = -F.softplus(minus)
    mid = inv_s * centred
    log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid)
    log_mid = torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-10)),
                          log_pdf_mid - math.log(top / 2.0))
    log_probs = torch.where(xe < -0.999, log_cdf_plus, torch.where(xe > 0.999, log_one_minus_cdf_min, log_mid))
    log_probs = log_probs.sum(dim=1) + F.log_softmax(logits, dim=1)
    return torch.logsumexp(log_probs, dim=1).flatten(1).sum(1)
