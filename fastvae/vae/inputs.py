"""What the VAE accepts as x, and its choice arguments: checked once, with errors naming them.

x is a tensor (batch, *data_shape) of any real dtype with at least one row; bool, integer and
other float dtypes are cast to the model's dtype (as the functional ops cast binary data).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

__all__ = ["check_input", "check_choice"]


def check_choice(name: str, value: object, choices: Tuple[str, ...]) -> None:
    """``value`` is one of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_input(
    x: object, data_shape: Optional[Tuple[int, ...]], dtype: torch.dtype
) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """(x cast to ``dtype``, the data shape): x checked against ``data_shape`` (the number of
    elements per example must match), or its own per-example shape when that is None."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor (batch, *data_shape), got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must be (batch, *data_shape), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"x holds no examples (shape {tuple(x.shape)}); pass at least one row")
    if x.is_complex():
        raise ValueError(f"x must be real (bool, integer or float), got dtype {x.dtype}")
    per_example = math.prod(x.shape[1:])
    if data_shape is None:
        data_shape = tuple(x.shape[1:])
    elif per_example != math.prod(data_shape):
        raise ValueError(f"x has {per_example} elements per example, the model expects data_shape {data_shape}")
    return (x if x.dtype == dtype else x.to(dtype)), data_shape
