"""The density family: ``gaussian_log_density`` (log q) and ``standard_normal_log_density`` (log p)
against their plain-PyTorch twins (values and gradients per dtype, sizes 1 to 100003, samples
broadcast over mu and logvar, non-contiguous inputs, float64 gradcheck)."""
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
class TestAgainstReference:
    def test_gaussian_density(self, device, dtype, cols):
        shape = (rows_for(cols), cols)
        z, mu, lv = inputs(shape, shape, shape, dtype=dtype, device=device)
        check_forward_and_backward(F.gaussian_log_density, R.gaussian_log_density, [z, mu, lv], dtype)

    def test_standard_normal_density(self, device, dtype, cols):
        (z,) = inputs((rows_for(cols), cols), dtype=dtype, device=device)
        check_forward_and_backward(F.standard_normal_log_density, R.standard_normal_log_density, [z], dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_density_broadcasts_samples(device):
    z, mu, lv = inputs((5, 3, 8), (3, 8), (3, 8), dtype=torch.float64, device=device)
    check_forward_and_backward(F.gaussian_log_density, R.gaussian_log_density, [z, mu, lv], torch.float64)
    # mu broadcast inside the latent dim and logvar with a size-1 batch dim
    z, mu, lv = inputs((5, 3, 8), (3, 1), (1, 8), dtype=torch.float64, device=device)
    check_forward_and_backward(F.gaussian_log_density, R.gaussian_log_density, [z, mu, lv], torch.float64)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_contiguous_inputs(device):
    logits = torch.randn(13, 20, dtype=torch.float64, device=device).t()  # transposed
    x = torch.rand(13, 20, dtype=torch.float64, device=device).t()
    check_forward_and_backward(F.gaussian_log_density, R.gaussian_log_density, [logits, x, logits.flip(0)], torch.float64)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_gradcheck(device):
    kw = dict(dtype=torch.float64, device=device)

    def leaf(*shape):
        return torch.randn(shape, **kw).requires_grad_()

    gc = torch.autograd.gradcheck
    assert gc(F.gaussian_log_density, (leaf(4, 3, 7), leaf(3, 7), leaf(3, 7)))
    assert gc(F.standard_normal_log_density, (leaf(4, 3, 7),))
