"""Discretized logistic likelihoods of 8-bit (2^bits-level) images: the mixture of logistics of
PixelCNN++ / NVAE / VDVAE decoders, and one logistic per subpixel (NVAE's ``DiscLogistic``).

csrc: ``csrc/{cpu,cuda,autograd}/discretized_logistic.*``, per-element math in
``csrc/common/discretized_logistic.h``; ops ``fastvae::discretized_mix_logistic_log_likelihood``
and ``fastvae::discretized_logistic_log_likelihood`` (their ``_with_grad`` twins write the
gradients for the autograd kernels, in the forward pass); the samplers
``fastvae::sample_discretized_mix_logistic`` and ``fastvae::sample_discretized_logistic``.

Bins: level v of ``2^bits`` levels is the value ``x = 2 v / (2^bits - 1) - 1`` in [-1, 1], its
bin ``[x - h, x + h]`` with ``h = 1 / (2^bits - 1)``; level 0's bin is open below and the top
level's open above. Every bin's probability is exact (no density-at-centre approximation in the
tails, no clamp of the probability): log sigmoid(a) + log sigmoid(-b) + log(1 - e^-(a - b)) for
the bin [b, a] in standardised units. Log-scales are clamped below at -7 (no gradient under the
clamp), as in PixelCNN++ / NVAE.

Sampling (for generation): the samplers draw integer levels from these distributions (their bins
exactly: a logistic draw clipped to [-1, 1] and rounded to the nearest level falls in level v with
the probability the likelihood gives v), from the counter-based Philox stream of
:func:`fastvae.functional.reparameterize`: a fresh stream per call from ``generator`` (default:
torch's default generator of the params' device, so ``torch.manual_seed`` reproduces them), which
the call moves on. Levels are uint8 for bits <= 8, int32 above (int16 would not hold 2^16 levels).
The CPU kernels and the CUDA kernels draw the same uniforms for the same (seed, offset) and run the
same per-pixel math; levels can differ only where a draw lies within a few ulp of a bin's edge
(the devices' exp / log / tanh differ in the last bits). Nothing is differentiable: no gradient.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch

from ..ops import ops
from ._checks import FLOATS, check_devices, check_float, check_generator

__all__ = ["discretized_mix_logistic_log_likelihood", "discretized_logistic_log_likelihood",
           "sample_discretized_mix_logistic", "sample_discretized_logistic"]

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


def _check_mix_params(params: object, num_mixtures: object, bits: object) -> int:
    """The mixture's params a floating (B, K, *spatial) tensor, num_mixtures an int >= 1; bits checked."""
    check_float("params", params)
    if params.dim() < 2:
        raise ValueError(f"params must be (B, K, *spatial), got shape {tuple(params.shape)}")
    if not isinstance(num_mixtures, numbers.Integral) or isinstance(num_mixtures, bool) or num_mixtures < 1:
        raise ValueError(f"num_mixtures must be an int >= 1, got {num_mixtures!r}")
    return _check_bits(bits)


def _check_logistic_args(mean: object, log_scale: object, bits: object) -> int:
    """One logistic's mean (B, C, *spatial) and log_scale floating tensors on one device; bits checked."""
    check_float("mean", mean)
    check_float("log_scale", log_scale)
    if mean.dim() < 2:
        raise ValueError(f"mean must be (B, C, *spatial), got shape {tuple(mean.shape)}")
    bits = _check_bits(bits)
    check_devices(mean=mean, log_scale=log_scale)
    return bits


def _mean_and_log_scale(mean: torch.Tensor, log_scale: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One logistic's operands as (B, C, S) pixels of mean's dtype: log_scale broadcast to mean's
    shape (read in place, not copied)."""
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
    return _pixels(mean), _pixels(ls.expand(mean.shape))


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
    bits = _check_mix_params(params, num_mixtures, bits)
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
    bits = _check_logistic_args(mean, log_scale, bits)
    xl = _levels(x, mean, "mean")
    if xl.shape != mean.shape:
        raise ValueError(f"x has shape {tuple(xl.shape)} but mean has shape {tuple(mean.shape)}")
    m, ls = _mean_and_log_scale(mean, log_scale)
    return ops.discretized_logistic_log_likelihood(m, ls, _pixels(xl), bits)


def sample_discretized_mix_logistic(
    params: torch.Tensor, num_mixtures: int, bits: int = 8, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Integer levels x ~ p(x) of :func:`discretized_mix_logistic_log_likelihood`'s mixture:
    shape (B, C, *spatial), C = 3 for params of 10 M channels, C = 1 for 3 M (NVAE's layout);
    uint8 for bits <= 8, int32 above.

    Per pixel: the component m by Gumbel-max over the M logits (logit_m - log(-log u_m)), then red,
    green, blue in turn by a logistic draw (inverse CDF, log-scale clamped below at -7) clipped to
    [-1, 1] and rounded to the nearest level; green's and blue's means are coupled through tanh of
    the coefficients with the level values 2 v / (2^bits - 1) - 1 drawn for the earlier channels,
    as the likelihood couples the data's, so the joint law of the C levels is the likelihood's.

    ``params`` any strides (channels-last read in place), float64 / float32 / bf16 / fp16 (drawn
    in float32, float64 for float64). ``generator``: a ``torch.Generator`` on the params' device
    (default: torch's default one). A NaN parameter that reaches a draw raises ValueError on the
    CPU; on CUDA (checking would cost a device sync) it gives level 0.
    """
    bits = _check_mix_params(params, num_mixtures, bits)
    K, M = params.shape[1], int(num_mixtures)
    if K not in (10 * M, 3 * M):
        raise ValueError(f"params has {K} channels but num_mixtures={M} needs {10 * M} (3 data channels) or "
                         f"{3 * M} (1 data channel)")
    if params.numel() == 0:
        raise ValueError(f"params is empty (shape {tuple(params.shape)}); fastvae ops need at least one element")
    check_generator(generator, params, "params")
    levels = ops.sample_discretized_mix_logistic(_pixels(params), M, bits, generator)
    return levels.view(params.shape[0], levels.shape[1], *params.shape[2:])


def sample_discretized_logistic(
    mean: torch.Tensor, log_scale: torch.Tensor, bits: int = 8, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Integer levels x ~ p(x) of :func:`discretized_logistic_log_likelihood`: one logistic draw
    per subpixel (log-scale clamped below at -7) clipped to [-1, 1] and rounded to the nearest
    level; shape of ``mean`` (B, C, *spatial), uint8 for bits <= 8, int32 above. ``log_scale``
    broadcasts to mean's shape as for the likelihood; strides, dtypes, ``generator`` and NaN as
    for :func:`sample_discretized_mix_logistic`.
    """
    bits = _check_logistic_args(mean, log_scale, bits)
    check_generator(generator, mean, "mean")
    m, ls = _mean_and_log_scale(mean, log_scale)
    return ops.sample_discretized_logistic(m, ls, bits, generator).view(mean.shape)
