"""The KL family: ``kl_standard_normal`` against its plain-PyTorch twin (values and gradients per
dtype, sizes 1 to 100003, non-contiguous inputs, float64 gradcheck), IEEE specials, bad input.
The KL that comes with the sample (``reparameterize_with_kl``) is tested in test_sampling.py."""
from __future__ import annotations

import pytest
import torch

from fastvae import functional as F
from fastvae import reference as R

from .conftest import cpu_and_cuda
from .reference_checks import COLS, DTYPES, check_forward_and_backward, inputs, rows_for


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", COLS)
def test_kl_against_reference(device, dtype, cols):
    mu, lv = inputs((rows_for(cols), cols), (rows_for(cols), cols), dtype=dtype, device=device)
    check_forward_and_backward(F.kl_standard_normal, R.kl_standard_normal, [mu, lv], dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_contiguous_inputs(device):
    base = torch.randn(40, 26, dtype=torch.float64, device=device)
    mu, lv = base[::2, :13], base[1::2, 13:].t().t()  # strided slices
    assert not mu.is_contiguous() and not lv.is_contiguous()
    check_forward_and_backward(F.kl_standard_normal, R.kl_standard_normal, [mu, lv], torch.float64)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_gradcheck(device):
    kw = dict(dtype=torch.float64, device=device)

    def leaf(*shape):
        return torch.randn(shape, **kw).requires_grad_()

    assert torch.autograd.gradcheck(F.kl_standard_normal, (leaf(3, 7), leaf(3, 7)))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_nan_and_inf_propagate(device):
    mu = torch.randn(3, 4, device=device)
    lv = torch.randn(3, 4, device=device)
    mu[1, 2] = float("nan")
    mu[2, 0] = float("inf")
    lv[3 - 1, 3] = -float("inf")  # exp(-inf) - (-inf) = +inf as well
    kl = F.kl_standard_normal(mu, lv)
    assert torch.isfinite(kl[0]) and torch.isnan(kl[1]) and kl[2] == float("inf")
    lv[0, 0] = float("inf")  # exp(inf) - inf: IEEE says NaN, as the reference does
    assert torch.isnan(F.kl_standard_normal(mu, lv)[0]) and torch.isnan(R.kl_standard_normal(mu, lv)[0])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: F.kl_standard_normal(torch.randn(3, 4), torch.randn(3, 5)), "broadcast"),
        (lambda: F.kl_standard_normal(torch.arange(12).view(3, 4), torch.randn(3, 4)), "mu must be a floating"),
        (lambda: F.kl_standard_normal(torch.randn(0, 4), torch.randn(0, 4)), "empty"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.needs_cuda
def test_mixed_devices_raise():
    with pytest.raises(ValueError, match="logvar is on"):
        F.kl_standard_normal(torch.randn(3, 4, device="cuda"), torch.randn(3, 4))


def test_raw_op_rejects_bad_layouts():
    with pytest.raises(RuntimeError, match="must be 2-D"):
        torch.ops.fastvae.kl_standard_normal(torch.randn(3), torch.randn(3))
