"""The compiled extension: loud failures for a missing or stale build, and op registration."""
from __future__ import annotations

import importlib
import types

import pytest
import torch

import fastvae
from fastvae import _extension


def test_missing_build_says_how_to_build(monkeypatch):
    def fail(name):
        raise ImportError("No module named 'fastvae._C'")

    monkeypatch.setattr(importlib, "import_module", fail)
    with pytest.raises(ImportError, match="pip install --no-build-isolation -e ."):
        _extension._load()


def test_stale_build_is_refused(monkeypatch):
    stale = types.SimpleNamespace(ops_version=_extension.OPS_VERSION - 1, cuda_built=False)
    monkeypatch.setattr(importlib, "import_module", lambda name: stale)
    with pytest.raises(ImportError, match="stale"):
        _extension._load()


def test_every_op_has_a_cpu_kernel():
    names = [
        "reparameterize", "reparameterize_with_kl", "reparameterize_backward", "kl_standard_normal",
        "kl_standard_normal_backward", "bernoulli_log_likelihood", "gaussian_log_likelihood",
        "gaussian_log_likelihood_backward", "gaussian_log_density", "gaussian_log_density_backward",
        "standard_normal_log_density", "standard_normal_log_density_backward",
    ]
    for name in names:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastvae::{name}", "CPU"), name
        if fastvae.CUDA_BUILT:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastvae::{name}", "CUDA"), name
