"""Shared test fixtures: device parametrisation and fresh random inputs."""
from __future__ import annotations

import os
import zlib

import pytest
import torch

import fastvae

# Set on the GPU machine: a CUDA test that would be skipped fails instead, so a broken CUDA
# build cannot pass as "skipped".
REQUIRE_CUDA = os.environ.get("FASTVAE_REQUIRE_CUDA") == "1"


def cpu_and_cuda():
    """Parametrisation over the devices fastvae supports; CUDA cases carry ``needs_cuda``.

    The third, ``emu``, is CPU tensors with the CUDA kernels run by the SIMT emulator
    (fastvae._C_emu): torch.ops.fastvae.* are routed to them for the test (see tests/emu.py)."""
    return ("cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda),
            pytest.param("cpu", id="emu", marks=pytest.mark.emu(route=True)))


@pytest.fixture(autouse=True)
def _route_to_emulator(request):
    """For the ``emu`` device: the fastvae ops run the emulated CUDA kernels during the test."""
    if not any(m.kwargs.get("route") for m in request.node.iter_markers("emu")):
        yield
        return
    from . import emu

    if not emu.AVAILABLE:
        if emu.REQUIRE_EMU:
            pytest.fail(f"FASTVAE_REQUIRE_EMU=1 but {emu.SKIP_REASON}")
        pytest.skip(emu.SKIP_REASON)
    with emu.routed():
        yield


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_cuda") and not fastvae.cuda_available():
        reason = "needs a CUDA device and fastvae built with CUDA"
        if REQUIRE_CUDA:
            pytest.fail(f"FASTVAE_REQUIRE_CUDA=1 but {reason} (CUDA built: {fastvae.CUDA_BUILT})")
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Each test draws its own fresh inputs, repeatably: the seed comes from the test's id."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64."""
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
