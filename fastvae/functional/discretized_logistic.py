"""Discretized logistic likelihoods of 8-bit (2^bits-level) images: the mixture of logistics of
PixelCNN++ / NVAE / VDVAE decoders, and one logistic per subpixel (NVAE's ``DiscLogistic``).

csrc: ``csrc/{cpu,cuda,autograd}/discretized_logistic.*``, per-element math in
``csrc/common/discretized_logistic.h``; ops ``fastvae::discretized_mix_logistic_log_likelihood``
and ``fastvae::discretized_logistic_log_likelihood`` (their ``_with_grad`` twins write the
gradients for the autograd kernels, in the forward pass).

Bins: level v of ``2^bits`` levels is the value ``x = 2 v / (2^bits - 1) - 1`` in [-1, 1], its
bin ``[x - h, x + h]`` with ``h = 1 / (2^bits - 1)``; level 0's bin is open below and the top
level's open above. Every bin's probability is exact (no density-at-centre approximation in the
tails, no clamp of the probability): log sigmoid(a) + log sigmoid(-b) + log(1 - e^-(a - b)) for
the bin [b, a] in standardised units. Log-scales are clamped below at -7 (no gradient under the
clamp), as in PixelCNN++ / NVAE.
"""
from __future__ import annotations

import math
import numbers

import torch

from ..ops import ops
from ._checks import FLOATS, check_devices, check_float

__all__ = ["discretized_mix_logistic_log_likelihood", "discretized_logistic_log_likelihood"]

_INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_bits(bits: object) -> int:
    if not isinstance(bits, numbers.Integral) or isinstance(bits, bool) or not 1 <= int(bits) <= 16:
        raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
    return int(bits)


def _levels(x: object, like: torch.Tensor, like_name: str) -> torch.Tensor:
    """x as the kernels read it: uint8 / int32 / int64 levels, or float32 / float64 values."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _INTS and x.dtype not in FLOATS:
        raise ValueError(f"x must be integer levels (uint8 or int) or float values in [-1, 1], got {x.dtype}")
    check_devices(**{like_name: like, "x": x})
    if x.dtype in (torch.int8, torch.int16):
        return x.to(torch.int32)
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.to(torch.float32)
    return x.detach()


def _pixels(t: torch.Tensor) -> torch.Tensor:
    """(B, K, *spatial) as (B, K, S): a view where the spatial dims merge (contiguous or
    channels-last), else a copy."""
    return t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


def discretized_mix_logistic_log_likelihood(
    params: torch.Tensor, x: torch.Tensor, num_mixtures: int, bits: int = 8
) -> torch.Tensor:
    """log p(x) under a discretized mixture of logistics, summed over each image: shape (B,).

    ``x``: (B, C, *spatial), C = 1 or 3, integer levels 0 .. 2^bits - 1 (uint8 or any int dtype)
    or float values in [-1, 1] (the PixelCNN++ / VDVAE convention), which are rounded to the
    nearest level. A level outside the range raises ValueError on the CPU; on CUDA (where
    checking would cost a device sync) its image's log-likelihood is NaN. x gets no gradient.

    ``params``: (B, 10 M, *spatial) for C = 3 in NVAE's layout (M mixture logits, then per channel
    a block of M means, M log-scales, M coupling coefficients), (B, 3 M, *spatial) for C = 1
    (logits, means, log-scales). The coefficients go through tanh and couple the channels with
    the data's values: green's mean + c0 x_red, blue's mean + c1 x_red + c2 x_green (c_k from
    block k). Mixtures combine by log-sum-exp with log-softmax weights.

    Any strides (channels-last params are read without a copy); float32 accumulation for
    float32 / bf16 / fp16 params (result float32; float64 for float64). The gradient for params is
    written during the forward pass when params require grad; backward scales it.
    """
    check_float("params", params)
    if params.dim() < 2:
        raise ValueError(f"params must be (B, K, *spatial), got shape {tuple(params.shape)}")
    if not isinstance(num_mixtures, numbers.Integral) or isinstance(num_mixtures, bool) or num_mixtures < 1:
        raise ValueError(f"num_mixtures must be an int >= 1, got {num_mixtures!r}")
    bits = _check_bits(bits)
    xl = _levels(x, params, "params")
    if xl.dim() != params.dim() or xl.shape[0] != params.shape[0] or xl.shape[2:] != params.shape[2:]:
        raise ValueError(f"x has shape {tuple(xl.shape)} but params has shape {tuple(params.shape)}: "
                         "batch and spatial dims must match")
    C = xl.shape[1]
    if C not in (1, 3):
        raise ValueError(f"x must have 1 or 3 channels, got {C}")
    K = (10 if C == 3 else 3) * int(num_mixtures)
    if params.shape[1] != K:
        raise ValueError(f"params has {params.shape[1]} channels but num_mixtures={num_mixtures} with {C} data "
                         f"channels needs {K}")
    if params.numel() == 0:
        raise ValueError(f"params is empty (shape {tuple(params.shape)}); fastvae ops need at least one element")
    return ops.discretized_mix_logistic_log_likelihood(_pixels(params), _pixels(xl), int(num_mixtures), bits)


def discretized_logistic_log_likelihood(
    mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor, bits: int = 8
) -> torch.Tensor:
    """log p(x) under one discretized logistic per subpixel, summed over each image: shape (B,).

    ``mean``: (B, C, *spatial), any C; ``log_scale`` broadcasts to mean's shape (per subpixel,
    per channel, one value: read in place, its gradient summed over what it served) and is cast
    to mean's dtype; ``x`` has mean's shape, levels or float values in [-1, 1] as for
    :func:`discretized_mix_logistic_log_likelihood` (same bins, same clamp of the log-scale).
    """
    check_float("mean", mean)
    check_float("log_scale", log_scale)
    if mean.dim() < 2:
        raise ValueError(f"mean must be (B, C, *spatial), got shape {tuple(mean.shape)}")
    bits = _check_bits(bits)
    check_devices(mean=mean, log_scale=log_scale)
    xl = _levels(x, mean, "mean")
    if xl.shape != mean.shape:
        raise ValueError(f"x has shape {tuple(xl.shape)} but mean has shape {tuple(mean.shape)}")
    try:
        torch.broadcast_shapes(log_scale.shape, mean.shape)
    except RuntimeError:
        raise ValueError(f"log_scale of shape {tuple(log_scale.shape)} does not broadcast to mean's "
                         f"{tuple(mean.shape)}") from None
    if torch.broadcast_shapes(log_scale.shape, mean.shape) != mean.shape:
        raise ValueError(f"log_scale of shape {tuple(log_scale.shape)} does not broadcast to mean's "
                         f"{tuple(mean.shape)}")
    if mean.numel() == 0:
        raise ValueError(f"mean is empty (shape {tuple(mean.shape)}); fastvae ops need at least one element")
    ls = log_scale if log_scale.dtype == mean.dtype else log_scale.to(mean.dtype)
    return ops.discretized_logistic_log_likelihood(_pixels(mean), _pixels(ls.expand(mean.shape)), _pixels(xl), bits)
