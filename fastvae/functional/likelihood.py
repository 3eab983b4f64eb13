"""Observation log-likelihoods log p(x|z): Bernoulli (decoder logits) and Gaussian (decoder mean).

csrc: ``csrc/{cpu,cuda,autograd}/likelihood.*``; ops ``fastvae::bernoulli_log_likelihood``,
``fastvae::gaussian_log_likelihood`` and the Gaussian one's backward.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from ..ops import ops
from ._checks import (
    FLOATS, as_rows, broadcast_shape, cast, check_devices, check_event_dims, check_float, check_logit_targets,
    check_nonempty, split_event,
)

__all__ = ["bernoulli_log_likelihood", "gaussian_log_likelihood"]


def bernoulli_log_likelihood(
    logits: torch.Tensor, x: torch.Tensor, event_dims: Optional[int] = None
) -> torch.Tensor:
    """sum x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)), stable for |l| up to 1e4.

    Summed over the last ``event_dims`` dims (default: every dim after the first). ``x`` may be
    float (cast to the logits' dtype), bool or uint8 (read as one byte per element) and may
    broadcast over leading dims of ``logits`` (e.g. K samples of logits against one batch).
    The gradient for ``logits`` is computed in the forward pass, when logits require grad.
    """
    return logit_rows(ops.bernoulli_log_likelihood, logits, x, event_dims)


def logit_rows(op: Callable, logits: torch.Tensor, x: torch.Tensor, event_dims: Optional[int]) -> torch.Tensor:
    """A likelihood of the logit-rows kind (csrc/{cpu,cuda}/logit_rows.*: the Bernoulli ones): the
    arguments checked, broadcast and flattened to rows, ``op(logits_rows, x_rows, compute_grad)``."""
    check_float("logits", logits)
    check_logit_targets(x)
    check_devices(logits=logits, x=x)
    shape = broadcast_shape(logits=logits, x=x)
    if len(shape) == 0:
        raise ValueError("logits must be at least 1-D")
    e = check_event_dims(event_dims, len(shape), "logits")
    check_nonempty(shape, "logits")
    if x.dtype in FLOATS:
        x = cast(x, logits.dtype)
    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    ll, _ = op(as_rows(logits, shape, e, full=True), as_rows(x, shape, e), compute_grad)
    return ll.view(split_event(shape, e))


def gaussian_log_likelihood(
    mean: torch.Tensor,
    x: torch.Tensor,
    logvar: Union[float, torch.Tensor] = 0.0,
    event_dims: Optional[int] = None,
) -> torch.Tensor:
    """log N(x | mean, exp(logvar)), summed over the last ``event_dims`` dims (default: all but the first).

    ``logvar`` is a Python float (fixed variance), a 0-dim tensor (one learned variance), a
    per-dim tensor shaped like the trailing dims, or a tensor shaped like ``mean`` (decoder
    output). ``x`` and ``logvar`` are cast to mean's dtype. The gradients come from the backward op.
    """
    check_float("mean", mean)
    check_float("x", x)
    if isinstance(logvar, (int, float)) and not isinstance(logvar, bool):
        logvar_t = torch.full((), float(logvar), dtype=mean.dtype, device=mean.device)
    else:
        logvar_t = check_float("logvar", logvar)
    check_devices(mean=mean, x=x, logvar=logvar_t)
    shape = broadcast_shape(mean=mean, x=x, logvar=logvar_t)
    if len(shape) == 0:
        raise ValueError("mean must be at least 1-D")
    e = check_event_dims(event_dims, len(shape), "mean")
    check_nonempty(shape, "mean")
    ll = ops.gaussian_log_likelihood(
        as_rows(mean, shape, e, full=True), as_rows(cast(x, mean.dtype), shape, e),
        as_rows(cast(logvar_t, mean.dtype), shape, e),
    )
    return ll.view(split_event(shape, e))
