"""The continuous Bernoulli log-likelihood log p(x | logits) for x in [0, 1] (Loaiza-Ganem &
Cunningham, 2019): the normalised density of grey levels under a Bernoulli-style decoder.

csrc: ``csrc/{cpu,cuda,autograd}/continuous_bernoulli.*``, math in
``csrc/common/continuous_bernoulli.h``; op ``fastvae::continuous_bernoulli_log_likelihood``.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops import ops
from .likelihood import logit_rows

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
    return logit_rows(ops.continuous_bernoulli_log_likelihood, logits, x, event_dims)
