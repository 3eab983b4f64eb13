"""The categorical log-likelihood of integer levels (e.g. 8-bit pixels: 256 classes per subpixel),
the fused form of ``-F.cross_entropy(logits, x, reduction="none")`` summed per image.

csrc: ``csrc/{cpu,cuda,autograd}/categorical.*``, checks and math in ``csrc/common/categorical.h``;
op ``fastvae::categorical_log_likelihood``; its sampler ``fastvae::sample_categorical``.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops import ops
from ._checks import check_devices, check_float, check_generator, check_nonempty

__all__ = ["categorical_log_likelihood", "sample_categorical"]

_LEVEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def categorical_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[x] summed over each image's subpixels: shape (B,).

    ``logits``: (B, K, C, *spatial) (K classes in dim 1, where ``F.cross_entropy`` has them, e.g.
    K = 2^bits levels), float64/32, bf16 or fp16, any strides: a channels-last decoder output
    (classes or channels innermost) is read in place when its spatial dims merge into one (a view,
    as for every conv output), else reshaped once. ``x``: (B, C, *spatial) integer levels 0 .. K - 1 (uint8 is read as is,
    other integer dtypes as int64). A level outside 0 .. K - 1 raises ValueError on the CPU; the
    CUDA kernels, which cannot raise without a device sync, give that image NaN instead.

    One pass per subpixel: a running max and sum of exps over the K logits (the log-softmax is
    never stored), and, when the logits require grad, onehot(x) - softmax written in the same pass
    (strided like the logits), so that backward is one scaling. Accumulated in float32 for
    bf16/fp16 (float64 for float64); the result is float32 (float64).
    """
    check_float("logits", logits)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _LEVEL_DTYPES:
        raise ValueError(f"x must hold integer levels (uint8 or another integer dtype), got {x.dtype}")
    if logits.dim() < 3:
        raise ValueError(f"logits must be (B, K, C, *spatial), at least 3-D, got shape {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(x.shape) != expected:
        raise ValueError(f"x has shape {tuple(x.shape)}, but logits {tuple(logits.shape)} need x of shape {expected}")
    if logits.shape[1] < 1:
        raise ValueError("logits must have at least one class (dim 1)")
    check_devices(logits=logits, x=x)
    check_nonempty(logits.shape, "logits")
    if x.dtype != torch.uint8:
        x = x.long()
    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    # (B, K, C, P): the spatial dims merge into a view for any conv output's layout (contiguous or
    # channels-last, where C or K is innermost); C stays apart, its stride need not match theirs.
    b, k, c = logits.shape[:3]
    ll, _ = ops.categorical_log_likelihood(logits.reshape(b, k, c, -1), x.reshape(b, -1).contiguous(), compute_grad)
    return ll


def sample_categorical(logits: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Integer levels x ~ softmax(logits) per subpixel, the sampler of
    :func:`categorical_log_likelihood`: logits (B, K, C, *spatial) -> x (B, C, *spatial), uint8 for
    K <= 256 classes, int32 above.

    Each subpixel draws by the inverse CDF at one uniform u: a walk over its K logits for their
    max and sum of exps, then the first class whose cumulative weight passes u times the sum (the
    log-softmax is never stored; float32 sums for bf16 / fp16 / float32, float64 for float64). The
    uniforms come from the Philox stream of :func:`fastvae.functional.reparameterize` (a fresh
    stream per call from ``generator``, default torch's default generator of the logits' device),
    the same on the CPU and CUDA kernels, so the levels agree but where u lands within a few ulp
    of a class boundary. Logits of any strides (channels-last read in place). A subpixel whose
    logits are not a distribution (a NaN, all -inf, two +inf) raises ValueError on the CPU and
    gives level 0 on CUDA (checking would cost a device sync). No gradient.
    """
    check_float("logits", logits)
    if logits.dim() < 3:
        raise ValueError(f"logits must be (B, K, C, *spatial), at least 3-D, got shape {tuple(logits.shape)}")
    if logits.shape[1] < 1:
        raise ValueError("logits must have at least one class (dim 1)")
    check_nonempty(logits.shape, "logits")
    check_generator(generator, logits, "logits")
    b, k, c = logits.shape[:3]
    return ops.sample_categorical(logits.reshape(b, k, c, -1), generator).view(b, c, *logits.shape[3:])
