"""The host-cost harness: its dispatcher trace sees kernels and syncs; its step runs every impl."""
from __future__ import annotations

import pytest
import torch

from fastvae.host_cost import DispatchCounter, elbo_step, host_table


def test_counter_finds_kernels_and_syncs_but_not_views():
    a = torch.randn(5, 3)
    with DispatchCounter() as c:
        b = a.view(15).mul(2.0)
        b.sum().item()
    assert "aten::mul.Tensor" in c.kernel_calls and "aten::sum" in c.kernel_calls
    assert not any(k.startswith("aten::view") for k in c.kernel_calls)
    assert c.syncs == ["aten::_local_scalar_dense"]


@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_elbo_step_fills_every_gradient(impl):
    step = elbo_step(impl, batch=3, data_dim=7, latent_dim=2)
    step()
    # The step clears the gradients first, then writes each leaf's anew.
    leaves = [t for t in step.__closure__ if isinstance(getattr(t, "cell_contents", None), torch.Tensor)]
    grads = [c.cell_contents.grad for c in leaves if c.cell_contents.requires_grad]
    assert len(grads) == 3 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_elbo_step_rejects_bad_arguments():
    with pytest.raises(ValueError, match="impl"):
        elbo_step("numpy", 2)
    with pytest.raises(ValueError, match="batch"):
        elbo_step("fused", 0)


def test_host_table_has_a_row_per_batch():
    rows = [{"batch": 1, "fused_us": 50.0, "eager_us": 150.0, "compile_us": 120.0,
             "fused_over_eager": 1 / 3, "compile_over_eager": 0.8}]
    table = host_table(rows, {"kernel_calls": 4, "syncs": 0})
    assert "| 1 | 50.0 | 150.0 | 120.0 | 0.33× | 0.80× |" in table and "4 kernel-launching" in table
