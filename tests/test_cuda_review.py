"""Findings of the csrc/cuda review (issue 22) that the emulated CUDA entry points can show: a
raw op that crashed the process, an operand read with the wrong strides, the generator's device,
the state of an empty sampling call, the whole-ELBO pass's launches and a summation order that
depended on the device's SM count. The Philox stream itself: tests/test_sampling_stream.py.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from . import emu
from .conftest import rel_err

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.emu,
              pytest.mark.skipif(not emu.AVAILABLE and not emu.REQUIRE_EMU, reason=emu.SKIP_REASON)]


def _run_isolated(code: str) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter (with tests.emu loaded): a crash there fails the test
    instead of ending the test run."""
    script = "import torch\nfrom tests import emu\nassert emu.AVAILABLE\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- item 3: no rows, broadcast operands
def test_zero_rows_with_broadcast_operands_do_not_crash():
    """0 rows against a broadcast variance (or posterior) of one row: the sums over no rows are
    zero, as on the CPU. This divided by zero (SIGFPE) in repeat_sums and ended the process."""
    proc = _run_isolated("""
        for ops in (torch.ops.fastvae_emu, torch.ops.fastvae):
            gm, glv = ops.gaussian_log_likelihood_backward(
                torch.zeros(0), torch.randn(0, 5), torch.randn(1, 5), torch.randn(1, 5), True)
            assert gm.shape == (0, 5) and glv.shape == (1, 5) and glv.abs().max().item() == 0, glv
            gz, gmu, glv = ops.gaussian_log_density_backward(
                torch.zeros(0), torch.randn(0, 5), torch.randn(1, 5), torch.randn(1, 5))
            assert gz.shape == (0, 5) and gmu.shape == glv.shape == (1, 5)
            assert gmu.abs().max().item() == 0 and glv.abs().max().item() == 0, (gmu, glv)
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])


# ---------------------------------------------------------------- item 4: strided logvar
@pytest.mark.parametrize("ops_name", ["fastvae_emu", "fastvae"])
def test_kl_backward_refuses_a_logvar_it_cannot_read_as_row_major(ops_name):
    """logvar from h.chunk(2, 1) has mu's shape but rows 2 * cols apart: the kernels index it as
    a contiguous matrix, so the op must refuse it (as the forward does), naming logvar, instead of
    returning the gradient of other elements. A logvar of another dtype likewise."""
    ops = getattr(torch.ops, ops_name)
    mu, logvar = torch.randn(6, 16), torch.randn(6, 32).chunk(2, 1)[1]
    grad = torch.randn(6)
    with pytest.raises(RuntimeError, match="logvar must be contiguous"):
        ops.kl_standard_normal_backward(grad, mu, logvar)
    with pytest.raises(RuntimeError, match="mu and logvar must share a dtype"):
        ops.kl_standard_normal_backward(grad, mu, logvar.contiguous().double())
    # Contiguous: the closed-form gradient, against float64.
    gm, glv = ops.kl_standard_normal_backward(grad, mu, logvar.contiguous())
    g64, lv64 = grad.double()[:, None], logvar.double()
    assert rel_err(glv, g64 * (lv64.exp() - 1) / 2) < 1e-6 and rel_err(gm, g64 * mu.double()) < 1e-6
