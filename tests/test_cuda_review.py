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


# ---------------------------------------------------------------- item 5: the generator's device
def test_generator_of_another_device_is_refused():
    """A generator of another GPU would hand that GPU's seed and offset pointers to mu's kernel
    (and a CUDA graph on mu's device would not advance it): refused, naming both devices. The
    emulator makes its generators stand for one on cuda:1 (mu: the emulated kernels' cpu)."""
    ops = torch.ops.fastvae_emu
    mu, lv = torch.randn(4, 6), torch.randn(4, 6)
    gen = torch.Generator().manual_seed(3)
    old = ops._generator_device(1)
    try:
        for call in (ops.reparameterize, ops.reparameterize_with_kl):
            for g in (gen, None):  # given, or the default generator (also on cuda:1 here)
                with pytest.raises(RuntimeError, match=r"generator is on cuda:1 but mu is on cpu"):
                    call(mu, lv, 1, g)
        # A given rng_state reads no generator.
        state = torch.tensor([12345, 8])
        assert torch.equal(ops.reparameterize(mu, lv, 1, gen, state)[1], state)
    finally:
        ops._generator_device(old)
    # Its own device again: the draw is the CPU op's for a generator in the same state.
    z, s = ops.reparameterize(mu, lv, 2, torch.Generator().manual_seed(3))
    z_cpu, s_cpu = torch.ops.fastvae.reparameterize(mu, lv, 2, torch.Generator().manual_seed(3))
    assert torch.equal(s, s_cpu) and rel_err(z, z_cpu) < 1e-6


# ---------------------------------------------------------------- item 6: empty sampling calls
@pytest.mark.parametrize("shape", [(0, 5), (3, 0)], ids=["no_rows", "no_cols"])
@pytest.mark.parametrize("op", ["reparameterize", "reparameterize_with_kl"])
def test_empty_sampling_calls_return_the_state_they_used(op, shape):
    """With nothing to draw the CUDA ops still return the (seed, offset) of the call, as the CPU
    ops do: the generator's (the same for generators in the same state) or the given rng_state.
    reparameterize_with_kl returned uninitialised memory, reparameterize zeros."""
    mu, lv = torch.randn(shape), torch.randn(shape)
    # Memory the uninitialised state would likely reuse: not zeros, not a seed.
    garbage = torch.full((2,), 0x7EADBEEF, dtype=torch.int64)
    del garbage
    emu_out = getattr(torch.ops.fastvae_emu, op)(mu, lv, 2, torch.Generator().manual_seed(21))
    cpu_out = getattr(torch.ops.fastvae, op)(mu, lv, 2, torch.Generator().manual_seed(21))
    assert torch.equal(emu_out[-1], cpu_out[-1]) and cpu_out[-1][0].item() != 0
    for e, c in zip(emu_out[:-1], cpu_out[:-1]):
        assert e.shape == c.shape and torch.equal(e, c)
    state = torch.tensor([0x1234_5678_9ABC, 44])
    assert torch.equal(getattr(torch.ops.fastvae_emu, op)(mu, lv, 2, None, state)[-1], state)


# ---------------------------------------------------------------- item 7: the same bits on every GPU
def _sums_of_every_kind():
    """Outputs of row sums and repeat sums at shapes whose launch path depended on the SM count:
    40 rows of 100 packs (32 lanes on one SM, a block per row on 132), 300 rows of 7 columns,
    3000 rows over one shared variance (repeat_sums' chunks), an ELBO with a shared variance and
    the KL from mu and logvar."""
    ops = torch.ops.fastvae_emu
    gen = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    out = [ops.kl_standard_normal(r(40, 400), r(40, 400)), ops.kl_standard_normal(r(300, 7), r(300, 7)),
           ops.gaussian_log_density(r(200, 48), r(1, 48), r(1, 48))]
    mean, x, lv = r(3000, 5), r(1, 5), r(1, 5)
    out += ops.gaussian_log_likelihood_backward(r(3000), mean, x, lv, True)
    out += ops.gaussian_log_density_backward(r(3000), mean, x, lv)
    recon, mu, logvar = r(3000, 5), r(3000, 40), r(3000, 40)
    out += [t for t in ops.elbo_loss(recon, r(1, 5), None, mu, logvar, lv, 0.0, "gaussian", 0.7, "mean",
                                     [True, True, True]) if t.numel()]
    return out


def test_summation_order_does_not_depend_on_the_sm_count():
    """An emulated GPU of 1 SM and one of 132 give the same bits for every sum: the reduction
    tree and the chunks are functions of the shapes alone."""
    with emu.configure(sm_count=1):
        one = _sums_of_every_kind()
    with emu.configure(sm_count=132):
        many = _sums_of_every_kind()
    assert len(one) == len(many) >= 10
    for k, (a, b) in enumerate(zip(one, many)):
        assert torch.equal(a, b), k


# ---------------------------------------------------------------- item 2: the whole-ELBO KL pass
def _launches(log):
    """(grid x, grid y, threads, the rest: kernel @ launching site) of each logged launch."""
    out = []
    for line in log:
        grid, threads, rest = line.split(" ", 2)
        gx, gy, _ = (int(v) for v in grid.split(","))
        out.append((gx, gy, int(threads), rest))
    return out


@pytest.mark.parametrize("latent", [20, 512, 4096])
def test_elbo_kl_from_mu_and_logvar_runs_on_the_row_machinery(latent):
    """elbo(recon, x, mu, logvar) at B = 256 on an emulated 132-SM GPU: the KL and its gradients
    come from one row-sum pass over (mu, logvar) in 16-byte packs (8 or 32 lanes a row, or a block
    a row for long rows), not from the finishing kernel, whose threads walked whole rows (one
    block of 256 threads for 256 rows, 4096 steps each at latent 4096); loss and gradients
    against float64."""
    from fastvae import reference as R

    rows = 256
    recon, x = torch.randn(rows, 24), (torch.rand(rows, 24) > 0.5).float()
    mu, logvar = torch.randn(rows, latent), 0.5 * torch.randn(rows, latent)
    torch.ops.fastvae_emu._launch_log()
    with emu.configure(sm_count=132):
        loss, g_recon, _, g_mu, g_lv, _ = torch.ops.fastvae_emu.elbo_loss(
            recon, x, None, mu, logvar, None, 0.0, "bernoulli", 0.8, "mean", [True, True, False])
    kl = [l for l in _launches(torch.ops.fastvae_emu._launch_log()) if "KlRows" in l[3]]
    packs = latent // 4  # float32: 4 a pack
    if packs <= 512:
        lanes = 8 if packs <= 8 else 32
        assert [l[:3] for l in kl] == [(rows * lanes // 256, 1, 256)], kl
        assert f"launch_row_sums_by_lanesILi4ELi{lanes}E" in kl[0][3]
    else:
        assert [l[:3] for l in kl] == [(1, rows, 256)] and "row_sums_packedILi4E" in kl[0][3], kl
    leaves = [recon.double().requires_grad_(), mu.double().requires_grad_(), logvar.double().requires_grad_()]
    ref = R.elbo(leaves[0], x.double(), leaves[1], leaves[2], "bernoulli", beta=0.8, reduction="mean")
    assert rel_err(loss, ref.detach()) < 1e-6
    for got, want in zip((g_recon, g_mu, g_lv), torch.autograd.grad(ref, leaves)):
        assert rel_err(got, want) < 1e-6


# ---------------------------------------------------------------- found on the H200: broadcast sums
@pytest.mark.parametrize("shape", [(65536, 20), (4099, 7)])
def test_broadcast_variance_gradient_sums_within_rounding_of_its_terms(shape):
    # A per-dim log-variance's gradient sums one term per row, of both signs when the upstream
    # gradient has both: the sum can be far smaller than its terms, so its error is measured
    # against the sum of the terms' magnitudes (what a summation can promise), in float64.
    import fastvae.functional as F
    from fastvae import reference as R

    mean, x, per_dim = torch.randn(shape), torch.randn(shape), torch.randn(shape[1])
    upstream = torch.linspace(-1, 1, shape[0])
    grads = []
    for routed in (False, True):
        leaves = [t.clone().requires_grad_() for t in (mean, x, per_dim)]
        with emu.routed() if routed else torch.enable_grad():
            F.gaussian_log_likelihood(*leaves).backward(upstream)
        grads.append(leaves[2].grad.double())
    m64, x64, v64 = (t.double().requires_grad_() for t in (mean, x, per_dim))
    R.gaussian_log_likelihood(m64, x64, v64).backward(upstream.double())
    terms = 0.5 * upstream.double()[:, None] * ((x64 - m64) ** 2 * torch.exp(-v64) - 1)
    scale = terms.detach().abs().sum(0)
    for got, where in zip(grads, ("cpu", "emulated CUDA")):
        # each term is rounded to float32 a few times (~1e-6 of the magnitudes at most)
        assert ((got - v64.grad).abs() / scale).max() < 2e-5, where
