"""Loads the compiled extension, which registers the ``torch.ops.fastvae`` ops.

There is no pure-Python fallback: a missing or stale build raises ImportError with the fix.
"""
from __future__ import annotations

import importlib

import torch

# Must equal FASTVAE_OPS_VERSION in csrc/register.cpp; bumped whenever an op schema changes.
OPS_VERSION = 6

_BUILD_HINT = (
    "Build it from the repository root with:\n"
    "    pip install --no-build-isolation -e .\n"
    "(or `python setup.py build_ext --inplace`), using the torch that is installed now."
)


def _load():
    try:
        module = importlib.import_module("fastvae._C")
    except ImportError as err:
        raise ImportError(
            f"fastvae's compiled extension fastvae._C could not be loaded ({err}).\n{_BUILD_HINT}"
        ) from err
    built = getattr(module, "ops_version", None)
    if built != OPS_VERSION:
        raise ImportError(
            f"fastvae._C is stale: it was built with ops version {built}, this source needs "
            f"{OPS_VERSION}.\n{_BUILD_HINT}"
        )
    return module


_C = _load()

#: True when the extension was compiled with its CUDA kernels.
CUDA_BUILT: bool = bool(_C.cuda_built)


def cuda_available() -> bool:
    """True when fastvae's CUDA kernels are built and a CUDA device is visible."""
    return CUDA_BUILT and torch.cuda.is_available()
