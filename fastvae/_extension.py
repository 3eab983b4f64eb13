"""Loads the compiled extension, which registers the ``torch.ops.fastvae`` ops.

There is no pure-Python fallback: a missing or stale build raises ImportError with the fix.
"""
from __future__ import annotations

import importlib
from typing import List, Set

import torch

# Must equal FASTVAE_OPS_VERSION in csrc/register.cpp; bumped whenever an op schema or the
# module's attributes change (or the sampling stream: 8 put the Philox counter in curand's layout;
# 9: the likelihoods' schemas without grad_scale / compute_grad; 10: num_samples optional in the
# samplers; 11: the kl_normal family; 12: fastvae::iwae_bound and fastvae::dreg_gate;
# 13: the image likelihoods: continuous_bernoulli, categorical and the discretized_logistic family;
# 15: their samplers sample_discretized_mix_logistic, sample_discretized_logistic, sample_categorical;
# 16: the image_elbo family).
OPS_VERSION = 17

_BUILD_HINT = (
    "Build it from the repository root with:\n"
    "    pip install --no-build-isolation -e .\n"
    "(or `python setup.py build_ext --inplace`), using the torch that is installed now."
)


# The CPU flags (as /proc/cpuinfo names them) each setup.py FASTVAE_CPU_ISA needs.
_ISA_CPU_FLAGS = {
    "avx2": ("avx2", "fma", "f16c"),
    "avx512": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"),
}


def missing_cpu_flags(isa: str, cpu_flags: Set[str]) -> List[str]:
    """The CPU flags an ``isa`` build (setup.py FASTVAE_CPU_ISA) needs that ``cpu_flags`` lacks."""
    return [flag for flag in _ISA_CPU_FLAGS.get(isa, ()) if flag not in cpu_flags]


def _check_cpu_isa() -> None:
    """Refuse, before loading it, a build whose CPU kernels use instructions this CPU lacks (it
    would die of an illegal instruction instead)."""
    try:
        from fastvae._cpu_isa import CPU_ISA
    except ImportError:
        return  # built before the ISA was recorded
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return  # not Linux: nothing to read the CPU's flags from
    missing = missing_cpu_flags(CPU_ISA, flags)
    if missing:
        raise ImportError(
            f"fastvae's CPU kernels were compiled for {CPU_ISA}, but this CPU lacks {', '.join(missing)}.\n"
            f"{_BUILD_HINT}\n(on this machine, or with FASTVAE_CPU_ISA=avx2 or =generic for older CPUs)"
        )


def _load():
    _check_cpu_isa()
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
#: The vector ISA of the CPU kernels: "avx512", "avx2" or "generic".
CPU_ISA: str = str(_C.cpu_isa)


def cuda_available() -> bool:
    """True when fastvae's CUDA kernels are built and a CUDA device is visible."""
    return CUDA_BUILT and torch.cuda.is_available()
