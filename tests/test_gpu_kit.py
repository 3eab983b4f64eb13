"""The GPU kit (`make gpu-kit`, build/gpu-kit): it imports under its Python 3.12 + torch 2.11 venv
and runs a fused ELBO on the CPU against the reference, carries sm_90 code, and fits the device
call. Slow: it needs the kit built first (minutes); skipped when it is not."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIT = os.path.join(ROOT, "build", "gpu-kit")
KIT_PY = os.path.join(ROOT, "build", "gpu-kit-venv", "bin", "python")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (os.path.isdir(KIT) and os.path.exists(KIT_PY)), reason="no build/gpu-kit: run `make gpu-kit`")]

PROGRAM = """
import sys, torch, fastvae
from fastvae import functional as F, reference as R
assert sys.version_info[:2] == (3, 12) and torch.__version__.startswith("2.11.0"), (sys.version, torch.__version__)
assert fastvae.__file__.startswith(sys.argv[1]), fastvae.__file__
assert fastvae.CUDA_BUILT and fastvae._extension.CPU_ISA == "avx2"
torch.manual_seed(0)
recon, mu, lv = (torch.randn(37, n, dtype=torch.float64).float().requires_grad_() for n in (784, 20, 20))
x = (torch.rand(37, 784) < 0.5).float()
loss = F.elbo(recon, x, mu, lv)
ref = R.elbo(recon.double(), x.double(), mu.double(), lv.double())
rel = abs(loss.item() - ref.item()) / abs(ref.item())
assert rel < 1e-5, rel
loss.backward()
assert recon.grad is not None and mu.grad.abs().sum() > 0
print("ok", rel)
"""


def test_kit_imports_under_python312_torch211_and_runs_a_fused_elbo_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": KIT}
    proc = subprocess.run([KIT_PY, "-c", PROGRAM, KIT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stdout + proc.stderr


def test_kit_fits_the_device_call_and_carries_sm90_code():
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(KIT, "**"), recursive=True) if os.path.isfile(p))
    assert size <= 40 * 2**20, size
    (so,) = glob.glob(os.path.join(KIT, "fastvae", "_C*.so"))
    assert ".debug_info" not in subprocess.run(["readelf", "-S", so], capture_output=True, text=True).stdout
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump is None:  # torch's triton wheel carries one
        try:
            import triton
        except ImportError:
            triton = None
        path = triton and os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        cuobjdump = path if path and os.path.exists(path) else None
    if cuobjdump is None:
        pytest.skip("no cuobjdump")
    elves = subprocess.run([cuobjdump, "--list-elf", so], capture_output=True, text=True, check=True).stdout
    archs = {line.split(".")[-2] for line in elves.splitlines() if line.strip()}
    assert archs == {"sm_90"}, elves
