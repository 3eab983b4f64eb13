"""The ELBO family's arguments: ``elbo`` / ``ELBOLoss`` and the raw op fastvae::elbo_loss refuse bad
input with an error naming the argument; NumPy and tensor scalars are accepted."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fastvae
from fastvae import functional as F

from .conftest import rel_err

ops = torch.ops.fastvae


def test_empty_batch_raises_the_value_error_of_the_other_ops():
    with pytest.raises(ValueError, match="empty"):
        F.kl_standard_normal(torch.randn(0, 4), torch.randn(0, 4))
    with pytest.raises(ValueError, match="recon is empty"):
        F.elbo(torch.randn(0, 4), torch.rand(0, 4), torch.randn(0, 2), torch.randn(0, 2))
    with pytest.raises(ValueError, match="recon is empty"):
        fastvae.ELBOLoss(likelihood="gaussian")(torch.randn(0, 3, 3), torch.rand(0, 3, 3), torch.randn(0, 2),
                                                torch.randn(0, 2))


def test_numpy_and_tensor_scalars_accepted():
    recon, x, mu, lv = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 2), torch.randn(3, 2)
    want = F.elbo(recon, x, mu, lv, likelihood="gaussian", obs_logvar=0.25, beta=0.5)
    for obs, beta in ((np.float32(0.25), np.float32(0.5)), (np.float64(0.25), np.int64(1) / 2),
                      (torch.tensor(0.25), 0.5)):
        got = F.elbo(recon, x, mu, lv, likelihood="gaussian", obs_logvar=obs, beta=beta)
        assert rel_err(got, want) < 1e-6
        got = fastvae.ELBOLoss("gaussian", obs_logvar=obs, beta=beta)(recon, x, mu, lv)
        assert rel_err(got, want) < 1e-6
    with pytest.raises(ValueError, match="beta must be a real number"):
        F.elbo(recon, x, mu, lv, beta="1")
    with pytest.raises(ValueError, match="obs_logvar must be a real number"):
        F.elbo(recon, x, mu, lv, likelihood="gaussian", obs_logvar="1")


def test_negative_beta_rejected_like_the_cli():
    recon, x, mu, lv = torch.randn(3, 5), torch.rand(3, 5), torch.randn(3, 2), torch.randn(3, 2)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        F.elbo(recon, x, mu, lv, beta=-0.1)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        fastvae.ELBOLoss(beta=-1.0)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        F.elbo(recon, x, mu, lv, beta=float("nan"))
    assert torch.isfinite(F.elbo(recon, x, mu, lv, beta=0.0))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ops.elbo_loss(torch.randn(3, 4), torch.rand(3, 4), None, None, None, None, 0.0, "bernoulli", 1.0,
                               "mean", [True, True, False]), "needs kl, or mu and logvar"),
        (lambda: ops.elbo_loss(torch.randn(6, 4), torch.rand(4, 4), torch.rand(6), None, None, None, 0.0,
                               "bernoulli", 1.0, "mean", [False, False, False]), "must divide"),
        (lambda: ops.elbo_loss(torch.randn(3, 4), torch.rand(3, 4), torch.rand(3).double(), None, None, None, 0.0,
                               "bernoulli", 1.0, "mean", [False, False, False]), "kl must be a contiguous"),
        (lambda: ops.elbo_loss(torch.randn(3, 4), torch.rand(3, 4), torch.rand(3), None, None, torch.rand(2, 4), 0.0,
                               "gaussian", 1.0, "mean", [False, False, False]), "obs_logvar"),
        (lambda: ops.elbo_loss(torch.randn(3, 4), torch.rand(3, 4), torch.rand(3), None, None, None, 0.0,
                               "poisson", 1.0, "mean", [False, False, False]), "likelihood"),
        (lambda: ops.elbo_loss(torch.randn(3, 4), torch.rand(3, 4), torch.rand(3), None, None, None, 0.0,
                               "bernoulli", 1.0, "avg", [False, False, False]), "reduction"),
    ],
)
def test_raw_op_checks_name_the_argument(call, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        call()


def test_grad_mask_off_then_backward_raises():
    recon = torch.randn(3, 4, requires_grad=True)
    loss = ops.elbo_loss(recon, torch.rand(3, 4), torch.rand(3), None, None, None, 0.0, "bernoulli", 1.0, "mean",
                         [False, False, False])[0]
    with pytest.raises(RuntimeError, match="no gradient for recon"):
        loss.backward()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: F.elbo(torch.randn(3, 4), torch.rand(3, 4), torch.randn(3, 2), torch.randn(3, 2), reduction="avg"), "reduction"),
        (lambda: F.elbo(torch.randn(3, 4), torch.rand(3, 4), torch.randn(3, 2), torch.randn(3, 2), likelihood="poisson"), "likelihood"),
        (lambda: F.elbo(torch.randn(3, 4), torch.rand(3, 4), torch.randn(5, 2), torch.randn(5, 2)), "batch dims"),
        (lambda: F.elbo(torch.randn(3, 4), torch.rand(3, 4), torch.randn(3, 2), torch.randn(3, 2), kl=torch.rand(5)), "batch dims"),
        (lambda: F.elbo(torch.randn(3, 4), torch.rand(3, 4), torch.randn(3, 2), torch.randn(3, 2), kl=[1.0]), "kl must be"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
