"""The K-sample objectives of `VAE.loss` (fastvae.vae.objectives), statistically: over a few hundred
draws on a small fixed model, each estimator's mean gradient equals the mean of a plain-PyTorch
reference estimator of the same objective (IWAE, reparam or DReG: the reference reparam gradient;
STL: the ELBO gradient), DReG's encoder gradient varies less than reparam's, and the reported
bound equals the reference bound in mean. Means are compared by z-scores of their difference
(independent draws), and each comparison is shown to reject a different objective."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as TF
from torch.distributions import Normal

import fastvae

DRAWS = 300
Z_MAX = 5.0  # |z| of a difference of means over ~150 coordinates: above 5 is not chance


def _model():
    torch.manual_seed(1234)
    model = fastvae.build_mlp_vae(8, (6,), 2, activation="tanh").double()
    x = (torch.rand(4, 8) > 0.5).double()
    return model, x


def _reference_loss(model, x, objective, k):
    """The objectives written the usual way: x repeated K times, BCE with logits, torch.distributions."""
    mu, logvar = model.encoder(x).chunk(2, -1)
    q = Normal(mu, (0.5 * logvar).exp())
    z = q.rsample((k,))
    logits = model.decoder(z.reshape(-1, z.shape[-1])).view(k, *x.shape)
    log_px = -TF.binary_cross_entropy_with_logits(logits, x.repeat(k, 1, 1), reduction="none").sum(-1)
    if objective == "elbo":  # analytic KL
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)
        return -(log_px.mean(0) - kl)
    log_w = log_px + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
    return -(torch.logsumexp(log_w, 0) - math.log(k))


def _draws(loss_fn, model, seed):
    """(DRAWS, P) flattened parameter gradients of the mean loss and (DRAWS, B) per-example losses."""
    torch.manual_seed(seed)
    grads, values = [], []
    params = list(model.parameters())
    for _ in range(DRAWS):
        loss = loss_fn()
        g = torch.autograd.grad(loss.mean(), params)
        grads.append(torch.cat([t.reshape(-1) for t in g]))
        values.append(loss.detach())
    return torch.stack(grads), torch.stack(values)


def _max_z(a, b):
    """Largest |z-score| over coordinates of mean(a) - mean(b), a and b (N, P) independent draws."""
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    scale = torch.cat([a, b]).abs().mean()
    return ((a.mean(0) - b.mean(0)).abs() / (se + 1e-9 * scale)).max().item()


def _fused(model, x, objective, k, gradient):
    return lambda: model.loss(x, objective=objective, num_samples=k, gradient=gradient, reduction="none")


@pytest.fixture(scope="module")
def reference_draws():
    model, x = _model()
    return {(obj, k): _draws(lambda: _reference_loss(model, x, obj, k), model, seed=7)
            for obj, k in (("iwae", 5), ("elbo", 1), ("elbo", 3))}


@pytest.mark.parametrize("objective, k, gradient", [
    ("iwae", 5, "reparam"), ("iwae", 5, "dreg"), ("elbo", 1, "stl"), ("elbo", 3, "stl"), ("elbo", 3, "reparam"),
])
def test_mean_gradient_equals_the_reference_estimators(reference_draws, objective, k, gradient):
    model, x = _model()
    grads, _ = _draws(_fused(model, x, objective, k, gradient), model, seed=11)
    ref_grads, _ = reference_draws[(objective, k)]
    assert _max_z(grads, ref_grads) < Z_MAX
    # The comparison has the power to tell objectives apart: the other objective's gradient differs.
    other = ("elbo", 1) if objective == "iwae" else ("iwae", 5)
    assert _max_z(grads, reference_draws[other][0]) > 2 * Z_MAX


@pytest.mark.parametrize("gradient", ["reparam", "dreg"])
def test_reported_bound_equals_the_reference_bound_in_mean(reference_draws, gradient):
    model, x = _model()
    _, values = _draws(_fused(model, x, "iwae", 5, gradient), model, seed=13)
    _, ref_values = reference_draws[("iwae", 5)]
    assert _max_z(values, ref_values) < Z_MAX
    assert _max_z(values, reference_draws[("elbo", 1)][1]) > Z_MAX  # the IWAE bound is the tighter one


def test_dreg_encoder_gradient_varies_less_than_reparam():
    model, x = _model()
    n_enc = sum(p.numel() for p in model.encoder.parameters())  # the encoder's parameters come first
    variance = {}
    for gradient in ("reparam", "dreg"):
        grads, _ = _draws(_fused(model, x, "iwae", 20, gradient), model, seed=17)
        variance[gradient] = grads[:, :n_enc].var(0).sum().item()
    assert variance["dreg"] < 0.5 * variance["reparam"]


def test_reference_impl_runs_the_same_estimators():
    """``impl="reference"`` (plain PyTorch, DReG through a hook on z) has the fused mean gradient."""
    model, x = _model()
    for objective, k, gradient in (("iwae", 5, "dreg"), ("elbo", 3, "stl")):
        fused, _ = _draws(_fused(model, x, objective, k, gradient), model, seed=19)
        ref, _ = _draws(lambda: model.loss(x, objective=objective, num_samples=k, gradient=gradient,
                                           reduction="none", impl="reference"), model, seed=23)
        assert _max_z(fused, ref) < Z_MAX


@pytest.mark.parametrize("kwargs, match", [
    (dict(objective="iwae", gradient="stl"), "gradient='stl' is not supported with objective='iwae'"),
    (dict(objective="elbo", gradient="dreg"), "gradient='dreg' is not supported with objective='elbo'"),
    (dict(objective="vimco"), "objective must be one of"),
    (dict(gradient="score"), "gradient must be one of"),
    (dict(objective="iwae", num_samples=0), "num_samples"),
    (dict(objective="iwae", num_samples=2.0), "num_samples"),
    (dict(objective="iwae", num_samples=3, free_bits=0.5), "free_bits"),
])
def test_unsupported_combinations_raise_value_errors(kwargs, match):
    model, x = _model()
    with pytest.raises(ValueError, match=match):
        model.loss(x, **kwargs)


def test_default_loss_is_the_one_sample_fused_elbo():
    """elbo + reparam + K=1 keeps today's path: the same value for the same noise."""
    model, x = _model()
    torch.manual_seed(3)
    a = model.loss(x, reduction="none")
    torch.manual_seed(3)
    b = model.loss(x, reduction="none", objective="elbo", num_samples=1, gradient="reparam")
    assert torch.equal(a, b)
