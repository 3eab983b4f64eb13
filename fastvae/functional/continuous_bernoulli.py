"""The continuous Bernoulli log-likelihood log p(x | logits) for x in [0, 1] (Loaiza-Ganem &
Cunningham, 2019): the normalised density of grey levels under a Bernoulli-style decoder.

csrc: ``csrc/{cpu,cuda,autograd}/continuous_bernoulli.*``, math in
``csrc/common/continuous_bernoulli.h``; op ``fastvae::continuous_bernoulli_log_likelihood``.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops import ops
from ._checks import (
    FLOATS, as_rows, broadcast_shape, cast, check_devices, check_event_dims, check_float, check_nonempty, split_event,
)

__all__ = ["continuous_bernoulli_log_likelihood"]


def continuous_bernoulli_log_likelihood(
    logits: torch.Tensor, x: torch.Tensor, event_dims: Optional[int] = None
) -> torch.Tensor:
    """sum x log lambda + (1 - x) log(1 - lambda) + log C(lambda), lambda = sigmoid(logits).

    C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda) = l / tanh(l / 2) for the logit l. The sum
    is evaluated as (x - 1/2) l - log(sinh(l / 2) / (l / 2)), the same function with nothing
    cancelling, the second term by its Taylor series in l for |l| < 1 (around lambda = 1/2, where
    ``torch.distributions.ContinuousBernoulli`` cuts off to a series in lambda) and in closed
    form above: stable for every logit. Reductions and broadcasting as
    :func:`bernoulli_log_likelihood`: summed over the last ``event_dims`` dims (default: every
    dim after the first); ``x`` may be float (cast to the logits' dtype), bool or uint8 and may
    broadcast over leading dims of ``logits``. ``x`` outside [0, 1] is not checked (that would
    read the data on the host); the density is then meaningless. The gradient for ``logits`` is
    computed in the forward pass, when logits require grad.
    """
    check_float("logits", logits)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not (x.dtype in FLOATS or x.dtype in (torch.bool, torch.uint8)):
        raise ValueError(f"x must be float, bool or uint8, got {x.dtype}")
    check_devices(logits=logits, x=x)
    shape = broadcast_shape(logits=logits, x=x)
    if len(shape) == 0:
        raise ValueError("logits must be at least 1-D")
    e = check_event_dims(event_dims, len(shape), "logits")
    check_nonempty(shape, "logits")
    if x.dtype in FLOATS:
        x = cast(x, logits.dtype)
    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    ll, _ = ops.continuous_bernoulli_log_likelihood(
        as_rows(logits, shape, e, full=True), as_rows(x, shape, e), compute_grad
    )
    return ll.view(split_event(shape, e))
