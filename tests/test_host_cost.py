"""The host-cost harness: its dispatcher trace sees kernels and syncs; its step runs every impl and
the three losses it compares compute the same negative ELBO; its report has the promised rows."""
from __future__ import annotations

import pytest
import torch

from fastvae.bench import host
from fastvae.bench.dispatch import DispatchCounter

from .conftest import rel_err


def test_counter_finds_kernels_and_syncs_but_not_views():
    a = torch.randn(5, 3)
    with DispatchCounter() as c:
        b = a.view(15).mul(2.0)
        b.sum().item()
    assert "aten::mul.Tensor" in c.kernel_calls and "aten::sum" in c.kernel_calls
    assert not any(k.startswith("aten::view") for k in c.kernel_calls)
    assert c.syncs == ["aten::_local_scalar_dense"]


@pytest.mark.parametrize("impl", ["fused", "eager", "reference"])
def test_elbo_step_fills_every_gradient(impl):
    step = host.elbo_step(impl, batch=3, data_dim=7, latent_dim=2)
    step()
    # The step clears the gradients first, then writes each leaf's anew.
    grads = [t.grad for t in step.leaves]
    assert len(grads) == 3 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_elbo_step_rejects_bad_arguments():
    with pytest.raises(ValueError, match="impl"):
        host.elbo_step("numpy", 2)
    with pytest.raises(ValueError, match="batch"):
        host.elbo_step("fused", 0)


def test_the_three_losses_agree():
    """The lean eager loss, the reference and the fused ops: the same summed negative ELBO and the
    same gradients for recon, mu and logvar through the loss (the sample's noise aside)."""
    recon, mu, lv = torch.randn(6, 11) * 3, torch.randn(6, 4), torch.randn(6, 4) * 0.5
    x = (torch.rand(6, 11) < 0.5).float()
    out = {}
    for name, fn in (("eager", host.lean_eager_loss), ("reference", host.reference_loss), ("fused", host.fused_loss)):
        leaves = [t.double().requires_grad_() if name != "fused" else t.clone().requires_grad_()
                  for t in (recon, mu, lv)]
        _, loss = fn(leaves[0], x.to(leaves[0].dtype), leaves[1], leaves[2])
        out[name] = (loss.detach(), torch.autograd.grad(loss, leaves))
    for name in ("reference", "fused"):
        assert rel_err(out[name][0], out["eager"][0]) < 1e-6
        for got, want in zip(out[name][1], out["eager"][1]):
            assert rel_err(got, want) < 1e-6


def test_host_report_rows_and_ratios():
    rep = host.host_report(repeats=2, batches=(1, 3), impls=("fused", "eager", "reference"))
    assert [r["batch"] for r in rep["rows"]] == [1, 3]
    for r in rep["rows"]:
        assert r["threads"] == 1 and r["data_dim"] == host.DATA_DIM and "compile_us" not in r
        for impl in ("fused", "reference"):
            assert r[f"{impl}_over_eager"] == pytest.approx(r[f"{impl}_us"] / r["eager_us"])
        assert "eager_over_eager" not in r and all(r[f"{i}_iqr_us"] >= 0 for i in ("fused", "eager", "reference"))
        cpu = r["thread_cpu"]  # the same calls' CPU time on this thread
        assert set(cpu) == {"fused_us", "eager_us", "reference_us", "fused_over_eager", "reference_over_eager"}
        assert cpu["fused_over_eager"] == pytest.approx(cpu["fused_us"] / cpu["eager_us"]) and cpu["fused_us"] > 0
    assert rep["counts"]["syncs"] == 0 and rep["counts"]["kernel_calls"] == len(rep["counts"]["calls"])
    text = host.format_host(rep)
    assert "host B=1" in text and "host B=3" in text and "thread CPU time" in text
    assert f"{rep['counts']['kernel_calls']} kernel-launching" in text
