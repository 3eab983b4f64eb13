"""The continuous_bernoulli family: ``continuous_bernoulli_log_likelihood`` against its float64 twin
(values and gradients per dtype, sizes 1 to 100003, logits near and far from 0), against
``torch.distributions.ContinuousBernoulli`` away from lambda = 1/2, the log-normaliser near 1/2
against the float64 series and across the series/closed-form switch, edge logits and targets,
float64 gradcheck, torch.compile, bad input; the emulated CUDA kernels through ``emu``."""
from __future__ import annotations

import pytest
import torch

from fastvae import functional as F
from fastvae import reference as R

from .conftest import cpu_and_cuda, rel_err
from .reference_checks import COLS, DTYPES, check_compile_fullgraph, check_forward_and_backward, inputs, rows_for

SWITCH = 1.0  # csrc/common/continuous_bernoulli.h kCbSeriesBelow


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("scale", [0.3, 4.0])  # mostly the series, mostly the closed form
def test_against_reference(device, dtype, cols, scale):
    rows = rows_for(cols)
    (logits,) = inputs((rows, cols), dtype=dtype, device=device, scale=scale)
    x = torch.rand(rows, cols, device=device).to(dtype)  # soft targets, so x gets a gradient too
    check_forward_and_backward(F.continuous_bernoulli_log_likelihood, R.continuous_bernoulli_log_likelihood,
                               [logits, x], dtype)


def _per_element(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The fused op's value per element: rows of one column."""
    return F.continuous_bernoulli_log_likelihood(logits.reshape(-1, 1), x.reshape(-1, 1))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_matches_torch_distribution_away_from_half(device):
    """float64, lambda outside torch's cut-off (0.499, 0.501). torch's own float64 error grows with
    |logit| (it goes through lambda: ~3e-13 at |l| ~ 10), hence 1e-11."""
    logits = torch.randn(4000, dtype=torch.float64) * 4
    logits = logits[logits.abs() > 0.05].to(device)
    x = torch.rand_like(logits)
    want = torch.distributions.ContinuousBernoulli(logits=logits).log_prob(x)
    got = _per_element(logits, x)
    assert (got - want).abs().max() < 1e-11 and rel_err(got, want) < 1e-12


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_log_normalizer_near_half(device):
    """Near lambda = 1/2 (|logit| up to 2e-2, where torch cuts off to a series in lambda at
    |lambda - 1/2| < 1e-3): float64 within a few ulp of the 24-term series, float32 within 2 ulp
    of log 2; the gradient x - sigmoid(l) + l/6 - ... alike."""
    l64 = torch.cat([torch.linspace(-2e-2, 2e-2, 2001, dtype=torch.float64), torch.tensor([0.0, 1e-300, -1e-30])])
    x = torch.rand_like(l64)
    want = R.continuous_bernoulli_log_likelihood(l64.reshape(-1, 1), x.reshape(-1, 1))
    got = _per_element(l64.to(device), x.to(device)).cpu()
    assert (got - want).abs().max() < 4e-16
    l32 = l64.float().double()
    want32 = R.continuous_bernoulli_log_likelihood(l32.reshape(-1, 1), x.float().double().reshape(-1, 1))
    got32 = _per_element(l32.float().to(device), x.float().to(device)).cpu().double()
    assert (got32 - want32).abs().max() < 2 * torch.finfo(torch.float32).eps
    # More accurate than torch.distributions in float32 there (its error is ~1e-5 near 1/2).
    theirs = torch.distributions.ContinuousBernoulli(logits=l32.float()).log_prob(x.float()).double()
    assert (got32 - want32).abs().max() * 10 < (theirs - want32.flatten()).abs().max()
    # The normaliser's own gradient, with x = sigmoid(l) cancelling the Bernoulli part's.
    leaf = l64.clone().to(device).requires_grad_(True)
    _per_element(leaf, torch.sigmoid(l64).to(device)).sum().backward()
    ref = l64.clone().requires_grad_(True)
    R.cb_log_normalizer(ref).sum().backward()
    assert (leaf.grad.cpu() - ref.grad).abs().max() < 4e-16


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_continuous_across_the_switch(device, dtype):
    """Just below and just above |l| = 1/4 (series, closed form): values and gradients differ by
    the slope times the step, up to rounding."""
    eps = torch.finfo(dtype).eps
    for sign in (1.0, -1.0):
        base = torch.tensor(sign * SWITCH, dtype=torch.float64)
        steps = torch.arange(-4, 5, dtype=torch.float64) * 64 * eps * SWITCH
        l = (base + steps).to(dtype).to(device).reshape(-1, 1).requires_grad_(True)
        x = torch.full_like(l, 0.3).detach()
        v = F.continuous_bernoulli_log_likelihood(l, x)
        v.sum().backward()
        ref_l = l.detach().double().cpu().requires_grad_(True)
        ref = R.continuous_bernoulli_log_likelihood(ref_l, x.double().cpu())
        ref.sum().backward()
        tol = 4 * eps
        assert (v.detach().double().cpu() - ref.detach()).abs().max() < tol
        assert (l.grad.double().cpu() - ref_l.grad).abs().max() < tol * 8


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_edge_logits_and_targets(device, dtype):
    """Logits at +-80 and near 0, x exactly 0 and 1, in the vector path and the row tail."""
    vals = torch.tensor([80.0, -80.0, 30.0, -30.0, 1e-3, -1e-3, 0.0, 2.5, -2.5], dtype=torch.float64)
    logits = vals.repeat(5, 4)[:, :37].clone()
    x = torch.zeros_like(logits)
    x[:, ::2] = 1.0
    x[1] = torch.rand(logits.shape[1], dtype=torch.float64)
    check_forward_and_backward(F.continuous_bernoulli_log_likelihood, R.continuous_bernoulli_log_likelihood,
                               [logits.to(dtype).to(device), x.to(dtype).to(device)], dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_broadcast_targets_and_byte_targets(device):
    logits = torch.randn(4, 6, 33, dtype=torch.float64, device=device) * 3
    xb = torch.rand(6, 33, dtype=torch.float64, device=device)
    f = lambda l, xx: F.continuous_bernoulli_log_likelihood(l, xx, event_dims=1)  # noqa: E731
    r = lambda l, xx: R.continuous_bernoulli_log_likelihood(l, xx, event_dims=1)  # noqa: E731
    check_forward_and_backward(f, r, [logits, xb], torch.float64)
    xu = (xb > 0.5).to(torch.uint8)
    assert rel_err(F.continuous_bernoulli_log_likelihood(logits, xu), R.continuous_bernoulli_log_likelihood(
        logits, xu.double())) < 1e-13


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_contiguous_and_channels_last(device):
    base = torch.randn(5, 3, 8, 6, dtype=torch.float32, device=device) * 3
    for logits in (base.to(memory_format=torch.channels_last), base.transpose(2, 3), base[:, :, ::2]):
        x = torch.rand(logits.shape, device=device)
        check_forward_and_backward(F.continuous_bernoulli_log_likelihood, R.continuous_bernoulli_log_likelihood,
                                   [logits, x], torch.float32)


def test_gradcheck_float64():
    logits = torch.tensor([[-3.0, -0.3, -0.2, 0.0, 0.1, 0.26, 1.7, 6.0]], dtype=torch.float64).repeat(3, 1)
    logits = (logits + 0.01 * torch.randn_like(logits)).requires_grad_(True)
    x = torch.rand_like(logits).requires_grad_(True)
    assert torch.autograd.gradcheck(F.continuous_bernoulli_log_likelihood, (logits, x))


def test_compile_fullgraph():
    check_compile_fullgraph(F.continuous_bernoulli_log_likelihood, (torch.randn(6, 40) * 2).requires_grad_(True),
                            torch.rand(6, 40))


@pytest.mark.parametrize("logits, x, name", [
    (torch.randn(3, 4), torch.ones(3, 4, dtype=torch.int64), "x"),
    (torch.randn(3, 4), [[0.5] * 4] * 3, "x"),
    (torch.randn(3, 4).long(), torch.rand(3, 4), "logits"),
    (torch.randn(3, 4), torch.rand(3, 5), "logits"),
    (torch.randn(3, 4), torch.rand(3, 4, device="meta"), "x"),
])
def test_bad_input_names_the_argument(logits, x, name):
    with pytest.raises(ValueError, match=name):
        F.continuous_bernoulli_log_likelihood(logits, x)
