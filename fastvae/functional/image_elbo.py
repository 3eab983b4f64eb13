"""The whole negative ELBO of an image VAE in one op: an image likelihood (discretized mixture of
logistics, one discretized logistic, 256-way categorical, continuous Bernoulli), the KL, beta
weighting and the reduction. :func:`fastvae.functional.elbo` calls it for those likelihoods.

csrc: ``csrc/{cpu,cuda,autograd}/image_elbo.*`` and ``csrc/common/image_elbo.h``; ops
``fastvae::image_elbo`` (the loss) and ``fastvae::image_elbo_loss`` (the loss and the gradients it
writes). The likelihood kernel writes d log p / d recon in the pass that computes log p; the op
scales it in place into d loss / d recon, and backward hands it on (in place again, moving no
bytes for an incoming gradient of 1): no gradient-sized buffer beyond that one, no device sync.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch

from ..ops import ops
from ._checks import FLOATS, check_devices, check_float, kl_operands, real
from .discretized_logistic import _check_bits, _levels

__all__ = ["image_elbo", "IMAGE_LIKELIHOODS"]

IMAGE_LIKELIHOODS = ("dmol", "logistic", "categorical", "continuous_bernoulli")
_REDUCTIONS = ("mean", "sum", "none")
_INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _image_x(likelihood: str, recon: torch.Tensor, x: object, num_mixtures: Optional[int], bits: int) -> torch.Tensor:
    """x as the op reads it, after the shape checks of ``likelihood``'s recon layout."""
    b = recon.shape[0]
    if likelihood == "continuous_bernoulli":
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        check_devices(recon=recon, x=x)
        if x.shape != recon.shape:
            raise ValueError(f"x has shape {tuple(x.shape)} but recon has shape {tuple(recon.shape)}")
        if x.dtype in FLOATS:
            return x.detach().to(recon.dtype)
        if x.dtype not in (torch.bool, torch.uint8):
            raise ValueError(f"x must be float in [0, 1], bool or uint8, got {x.dtype}")
        return x.detach()
    if likelihood == "categorical":
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in _INTS:
            raise ValueError(f"x must hold integer levels (uint8 or another integer dtype), got {x.dtype}")
        check_devices(recon=recon, x=x)
        if recon.dim() < 3 or recon.shape[1] != 2**bits:
            raise ValueError(f"recon must be (B, 2^bits = {2**bits}, C, *spatial) logits, got shape "
                             f"{tuple(recon.shape)}")
        want = (b, *recon.shape[2:])
        if tuple(x.shape) != want:
            raise ValueError(f"x has shape {tuple(x.shape)}, but recon {tuple(recon.shape)} needs x of shape {want}")
        return x if x.dtype == torch.uint8 else x.long()
    xl = _levels(x, recon, "recon")
    if xl.dim() != recon.dim() or xl.shape[0] != b or xl.shape[2:] != recon.shape[2:]:
        raise ValueError(f"x has shape {tuple(xl.shape)} but recon has shape {tuple(recon.shape)}: "
                         "batch and spatial dims must match")
    c = xl.shape[1]
    if likelihood == "logistic":
        if recon.shape[1] != 2 * c:
            raise ValueError(f"recon has {recon.shape[1]} channels; x with {c} channels needs 2 x {c} (means, "
                             "then log-scales)")
        return xl
    if c not in (1, 3):
        raise ValueError(f"likelihood='dmol' models 1 or 3 channels, x has {c}")
    k = (10 if c == 3 else 3) * num_mixtures
    if recon.shape[1] != k:
        raise ValueError(f"recon has {recon.shape[1]} channels but num_mixtures={num_mixtures} with {c} data "
                         f"channels needs {k}")
    return xl


def image_elbo(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: Optional[torch.Tensor],
    logvar: Optional[torch.Tensor],
    likelihood: str,
    num_mixtures: Optional[int] = None,
    bits: int = 8,
    beta: float = 1.0,
    reduction: str = "mean",
    kl: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Negative ELBO of an image VAE: -log p(x|z) + beta * KL(q(z|x) || N(0, I)) per image, reduced.

    ``recon`` is the decoder's output in the layout of ``likelihood``'s op (any strides:
    channels-last is read in place):

    ======================== ===================================== =================================
    likelihood               recon                                 x
    ======================== ===================================== =================================
    "dmol"                   (B, 10 M, *spatial) for RGB, (B, 3 M, (B, C, *spatial), C = 3 or 1:
                             *spatial) for grey: NVAE's layout      integer levels 0 .. 2^bits - 1
                             (:func:`discretized_mix_logistic_     (or float values in [-1, 1])
                             log_likelihood`), M = num_mixtures
    "logistic"               (B, 2 C, *spatial): C means, then C   as for "dmol", any C
                             log-scales (one discretized logistic
                             per subpixel)
    "categorical"            (B, 2^bits, C, *spatial) logits, the  (B, C, *spatial) integer levels
                             class dim where F.cross_entropy has it
    "continuous_bernoulli"   (B, *) logits                         recon's shape, values in [0, 1]
    ======================== ===================================== =================================

    ``bits``: bits per subpixel of the discrete likelihoods (default 8). ``kl``: the KL term per
    image when already computed (e.g. by :func:`reparameterize_with_kl`, or with free bits); mu
    and logvar are then not read. ``beta`` >= 0, ``reduction`` "mean" | "sum" | "none". x is data
    and gets no gradient. The result is float32 for float32 / bf16 / fp16 recon (float64 for
    float64); every gradient is written by the forward pass and backward only scales it in place.
    """
    if likelihood not in IMAGE_LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {IMAGE_LIKELIHOODS}, got {likelihood!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    beta = real("beta", beta)
    check_float("recon", recon)
    if recon.dim() < 2 or recon.numel() == 0:
        raise ValueError(f"recon must be a non-empty (B, ...) tensor, got shape {tuple(recon.shape)}")
    if likelihood == "dmol":
        if (not isinstance(num_mixtures, numbers.Integral) or isinstance(num_mixtures, bool)
                or num_mixtures < 1):
            raise ValueError(f"num_mixtures must be an int >= 1 for likelihood='dmol', got {num_mixtures!r}")
        num_mixtures = int(num_mixtures)
    bits = _check_bits(bits)
    xo = _image_x(likelihood, recon, x, num_mixtures, bits)
    b = recon.shape[0]
    kl2, mu2, lv2 = kl_operands(mu, logvar, kl, recon.dtype, b, (b,))
    return ops.image_elbo(recon, xo, kl2, mu2, lv2, likelihood, num_mixtures or 0, bits, beta, reduction)
