"""The likelihood family: ``bernoulli_log_likelihood`` and ``gaussian_log_likelihood`` against their
plain-PyTorch twins (values and gradients per dtype, sizes 1 to 100003, every variance form,
targets broadcast over samples, one-byte targets, non-contiguous inputs, float64 gradcheck),
numerics at huge logits and NaN, bad input."""
from __future__ import annotations

import pytest
import torch

from fastvae import functional as F
from fastvae import reference as R

from .conftest import cpu_and_cuda, rel_err
from .reference_checks import COLS, DTYPES, check_forward_and_backward, inputs, rows_for


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", COLS)
class TestAgainstReference:
    def test_bernoulli(self, device, dtype, cols):
        rows = rows_for(cols)
        (logits,) = inputs((rows, cols), dtype=dtype, device=device, scale=4.0)
        x = torch.rand(rows, cols, device=device).to(dtype)  # soft targets, so x gets a gradient too
        check_forward_and_backward(F.bernoulli_log_likelihood, R.bernoulli_log_likelihood, [logits, x], dtype)

    def test_gaussian_per_element(self, device, dtype, cols):
        shape = (rows_for(cols), cols)
        mean, x, lv = inputs(shape, shape, shape, dtype=dtype, device=device)
        check_forward_and_backward(F.gaussian_log_likelihood, R.gaussian_log_likelihood, [mean, x, lv], dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", ["float", "scalar", "per_dim", "per_element"])
def test_gaussian_variance_forms(device, dtype, form):
    mean, x = inputs((9, 7, 13), (9, 7, 13), dtype=dtype, device=device)
    logvar = {
        "float": 0.3,
        "scalar": torch.randn((), device=device).to(dtype),
        "per_dim": torch.randn(7, 13, device=device).to(dtype),
        "per_element": torch.randn(9, 7, 13, device=device).to(dtype),
    }[form]
    if form == "float":
        fused = lambda m, xx: F.gaussian_log_likelihood(m, xx, logvar)  # noqa: E731
        ref = lambda m, xx: R.gaussian_log_likelihood(m, xx, logvar)  # noqa: E731
        check_forward_and_backward(fused, ref, [mean, x], dtype)
    else:
        check_forward_and_backward(F.gaussian_log_likelihood, R.gaussian_log_likelihood, [mean, x, logvar], dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_broadcast_targets_over_samples(device):
    """K samples of decoder output against one batch of x: x is read in place, grads sum back."""
    logits, xg = inputs((4, 6, 33), (6, 33), dtype=torch.float64, device=device)
    xb = torch.rand(6, 33, device=device, dtype=torch.float64)
    f = lambda l, xx: F.bernoulli_log_likelihood(l, xx, event_dims=1)  # noqa: E731
    r = lambda l, xx: R.bernoulli_log_likelihood(l, xx, event_dims=1)  # noqa: E731
    check_forward_and_backward(f, r, [logits, xb], torch.float64)
    g = lambda m, xx: F.gaussian_log_likelihood(m, xx, 0.5, event_dims=1)  # noqa: E731
    gr = lambda m, xx: R.gaussian_log_likelihood(m, xx, 0.5, event_dims=1)  # noqa: E731
    check_forward_and_backward(g, gr, [logits, xg], torch.float64)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("xdtype", [torch.bool, torch.uint8])
def test_binary_targets_stay_one_byte(device, xdtype):
    logits = torch.randn(7, 1025, device=device, requires_grad=True)
    x = torch.rand(7, 1025, device=device) > 0.5
    out = F.bernoulli_log_likelihood(logits, x.to(xdtype))
    ref = R.bernoulli_log_likelihood(logits.detach().double(), x.double())
    assert rel_err(out, ref) < 1e-6
    out.sum().backward()
    assert rel_err(logits.grad, x.float() - torch.sigmoid(logits.detach())) < 1e-6


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_contiguous_inputs(device):
    logits = torch.randn(13, 20, dtype=torch.float64, device=device).t()  # transposed
    x = torch.rand(13, 20, dtype=torch.float64, device=device).t()
    check_forward_and_backward(F.bernoulli_log_likelihood, R.bernoulli_log_likelihood, [logits, x], torch.float64)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_gradcheck(device):
    kw = dict(dtype=torch.float64, device=device)

    def leaf(*shape):
        return torch.randn(shape, **kw).requires_grad_()

    gc = torch.autograd.gradcheck
    assert gc(F.bernoulli_log_likelihood, (leaf(3, 7), torch.rand(3, 7, **kw).requires_grad_()))
    assert gc(lambda m, x, v: F.gaussian_log_likelihood(m, x, v, event_dims=1), (leaf(2, 3, 7), leaf(3, 7), leaf(7)))
    assert gc(F.gaussian_log_likelihood, (leaf(3, 7), leaf(3, 7), leaf()))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_bernoulli_stable_for_huge_logits(device):
    logits = torch.tensor([[-1e4, -50.0, 0.0, 50.0, 1e4]], device=device, requires_grad=True)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]], device=device)
    ll = F.bernoulli_log_likelihood(logits, x)
    # -1e4 (x=1): -1e4; -50 (x=0): ~0; 0: log 0.5; 50 (x=1): ~0; 1e4 (x=0): -1e4.
    expected = -1e4 + torch.log(torch.tensor(0.5)).item() - 1e4
    assert torch.isfinite(ll).all() and abs(ll.item() - expected) < 1e-2
    ll.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_nan_propagates(device):
    logits = torch.randn(2, 5, device=device)
    logits[0, 1] = float("nan")
    ll = F.bernoulli_log_likelihood(logits, torch.rand(2, 5, device=device))
    assert torch.isnan(ll[0]) and torch.isfinite(ll[1])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: F.bernoulli_log_likelihood(torch.randn(3, 4), torch.randint(0, 2, (3, 4))), "x must be"),
        (lambda: F.bernoulli_log_likelihood(torch.randn(3, 4), torch.rand(3, 4), event_dims=3), "event_dims"),
        (lambda: F.gaussian_log_likelihood(torch.randn(3, 4), torch.randn(3, 4), "1"), "logvar"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_raw_op_rejects_bad_layouts():
    with pytest.raises(RuntimeError, match="must divide"):
        torch.ops.fastvae.bernoulli_log_likelihood(torch.randn(6, 4), torch.rand(4, 4), False)
