"""Helpers for the emulated CUDA kernels: fastvae._C_emu (csrc/emu/) runs csrc/cuda/*.cu on the CPU.

``torch.ops.fastvae_emu.<op>`` is the CUDA entry point of ``torch.ops.fastvae.<op>``, taking CPU
tensors; the entry points are those csrc/register.cpp declares, so new ops join automatically.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator, List, Optional

import torch

#: Set where the emulation build must exist (``make test``, CI): a skip becomes a failure.
REQUIRE_EMU = os.environ.get("FASTVAE_REQUIRE_EMU") == "1"
SKIP_REASON = "fastvae._C_emu is not built (FASTVAE_EMU=1 python setup.py build_ext --inplace)"


def _load() -> bool:
    """Imports fastvae._C_emu: the in-place build, or the one at FASTVAE_EMU_LIB (the
    AddressSanitizer build of .ci/run, made out of place so that it leaves the normal one alone)."""
    path = os.environ.get("FASTVAE_EMU_LIB")
    try:
        if path:
            spec = importlib.util.spec_from_file_location("fastvae._C_emu", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules["fastvae._C_emu"] = module
        else:
            importlib.import_module("fastvae._C_emu")
    except ImportError:
        return False
    return True


AVAILABLE = _load()


def op_names() -> List[str]:
    """Every entry point of the emulation build (the fastvae ops), without its controls (``_*``)."""
    names = [n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastvae_emu::")]
    return sorted({n.split(".")[0] for n in names if not n.startswith("_")})


@contextmanager
def configure(sm_count: Optional[int] = None, max_grid_y: Optional[int] = None,
              reverse: Optional[bool] = None) -> Iterator[None]:
    """The emulated device's SM count and grid-y limit, and the thread order, for the block."""
    ops = torch.ops.fastvae_emu
    old = ops._configure(-1 if sm_count is None else sm_count, -1 if max_grid_y is None else max_grid_y,
                         -1 if reverse is None else int(reverse))
    try:
        yield
    finally:
        ops._configure(*old)


@contextmanager
def routed() -> Iterator[None]:
    """Within the block, torch.ops.fastvae.* on CPU tensors run the emulated CUDA kernels, so that
    fastvae.functional and the ops' autograd rules run on them unchanged."""
    lib = torch.library.Library("fastvae", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel" is the point
            for name in op_names():
                lib.impl(name, getattr(torch.ops.fastvae_emu, name).default, "CPU")
        yield
    finally:
        lib._destroy()
