"""A decoder's last linear layer fused with the Bernoulli likelihood: log p(x | input @ W.T + b).

csrc: ``csrc/autograd/linear_bernoulli.cpp`` (the node) over ``fastvae::bernoulli_log_likelihood_``
(``csrc/{cpu,cuda}/likelihood.*``, the kernel that writes d ll / d logits over the logits); op
``fastvae::linear_bernoulli_log_likelihood``.

The logits of K samples of a decoder are its largest tensor ((K * B, D): 15.7 MB at K=50, B=100,
D=784 in float32). Eager code holds them, their sigmoid or gradient and the repeated targets at
once; here their buffer becomes their gradient in the same pass and nothing else of that size is
kept, so an IWAE step's peak memory is about that of its hidden layers plus one (K * B, D) buffer.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops import ops
from ._checks import FLOATS, cast, check_devices, check_float, check_logit_targets

__all__ = ["linear_bernoulli_log_likelihood"]


def linear_bernoulli_log_likelihood(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """sum_j x_j log sigmoid(l_j) + (1 - x_j) log sigmoid(-l_j) with l = input @ weight.T + bias.

    input: (*S, H), the last hidden layer of the decoder; weight (D, H) and bias (D,) or None, an
    ``nn.Linear(H, D)``'s parameters; x: (*T, D) targets, float (of input's dtype), bool or uint8,
    where T is a suffix of S (x broadcasts over the leading dims, e.g. K samples against one
    batch). Returns (*S,), float32 for float32/bf16/fp16 and float64 for float64. Equal to
    ``bernoulli_log_likelihood(torch.nn.functional.linear(input, weight, bias), x, event_dims=1)``
    without keeping the logits; gradients flow to input, weight and bias (not to x).
    """
    check_float("input", input)
    check_float("weight", weight)
    check_logit_targets(x)
    if bias is not None:
        check_float("bias", bias)
    check_devices(input=input, weight=weight, x=x, **({} if bias is None else {"bias": bias}))
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != input.dtype:
            raise ValueError(f"{name} must have input's dtype ({input.dtype}), got {t.dtype}")
    if input.dim() < 1 or weight.dim() != 2 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"input (*, H) and weight (D, H) do not fit: shapes {tuple(input.shape)} and {tuple(weight.shape)}")
    d = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"bias must be ({d},), got {tuple(bias.shape)}")
    lead, x_lead = tuple(input.shape[:-1]), tuple(x.shape[:-1])
    if x.dim() < 1 or x.shape[-1] != d or len(x_lead) > len(lead) or lead[len(lead) - len(x_lead):] != x_lead:
        raise ValueError(f"x must be (*T, {d}) with T a suffix of input's leading dims {lead}, got {tuple(x.shape)}")
    if input.numel() == 0 or d == 0:
        raise ValueError(f"input and weight must be non-empty, got shapes {tuple(input.shape)} and {tuple(weight.shape)}")
    if x.dtype in FLOATS:
        x = cast(x, input.dtype)
    if x.requires_grad:
        raise ValueError("x must not require grad here (the fused head keeps no logits to differentiate it with); "
                         "use bernoulli_log_likelihood on the logits for soft targets that need a gradient")
    rows = input.reshape(-1, input.shape[-1])
    x_rows = x.reshape(-1, d).contiguous()
    ll = ops.linear_bernoulli_log_likelihood(rows, weight, bias, x_rows)
    return ll.view(lead)
