"""Command-line errors, and the checks that ask this machine rather than the value's form."""
from __future__ import annotations

from typing import Any

__all__ = ["CLIError", "check_device"]


class CLIError(ValueError):
    """A known failure the command line reports as one line (``error: ...``, exit status 2)."""


def check_device(value: Any, flag: str = "--device", kernels: bool = True) -> None:
    """``value`` names a device this machine has (fails here, not deep inside torch).

    ``kernels``: the fused ops will run on it, so a CUDA device needs fastvae's CUDA kernels.
    """
    import torch

    if value == "auto":
        return
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise CLIError(f"{flag} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}") from None
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise CLIError(f"{flag} {value}: only 'cpu' and 'cuda' devices are supported")
    if not torch.cuda.is_available():
        raise CLIError(f"{flag} {value}: CUDA is not available on this machine (no CUDA driver or no "
                       "visible GPU); use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise CLIError(f"{flag} {value}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    from .._extension import CUDA_BUILT

    if kernels and not CUDA_BUILT:
        raise CLIError(f"{flag} {value}: this fastvae was built without its CUDA kernels; rebuild it with "
                       "CUDA, or train with --loss-impl reference")
