"""STL and DReG for the hierarchical VAE (fastvae.vae.hierarchical_estimators), statistically:
over a few hundred draws on a small two- and three-layer model, each estimator's mean gradient
equals the mean of the plain reparameterised gradient of the same objective (drawn on other
seeds), DReG's gradient of q's own networks varies less than reparam's, and K = 1 ties DReG to
STL exactly. DReG with q's means and log-variances detached instead of its parameters is shown
biased."""
from __future__ import annotations

import pytest
import torch

from fastvae.vae import HierarchicalVAE, build_hierarchical_vae
from fastvae.vae import hierarchical_estimators as est

from .test_objectives import Z_MAX, _max_z

DRAWS = 300


def _model(levels: int = 2):
    torch.manual_seed(4321)
    dims, hidden = [4, 3, 2][:levels], [[7], [6], [5]][:levels]
    m = build_hierarchical_vae(input_dim=10, latent_dims=dims, hidden=hidden, activation="tanh").double()
    x = (torch.rand(3, 10) > 0.5).double()
    return m, x


def _draws(model: HierarchicalVAE, loss_fn, seed: int) -> torch.Tensor:
    """(DRAWS, P) flattened parameter gradients of the mean loss."""
    torch.manual_seed(seed)
    params = list(model.parameters())
    grads = []
    for _ in range(DRAWS):
        g = torch.autograd.grad(loss_fn().mean(), params, allow_unused=True)
        grads.append(torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1)
                                for t, p in zip(g, params)]))
    return torch.stack(grads)


def _loss(model, x, objective, k, gradient, impl="fused"):
    return lambda: model.loss(x, objective=objective, num_samples=k, gradient=gradient, impl=impl,
                              reduction="none")


@pytest.mark.parametrize("levels", [2, 3])
@pytest.mark.parametrize("objective, k, gradient", [("elbo", 2, "stl"), ("iwae", 4, "dreg")])
def test_mean_gradient_equals_the_reparameterised_gradient(levels, objective, k, gradient):
    model, x = _model(levels)
    grads = _draws(model, _loss(model, x, objective, k, gradient), seed=11)
    reparam = _draws(model, _loss(model, x, objective, k, "reparam"), seed=12)
    assert _max_z(grads, reparam) < Z_MAX
    other = "iwae" if objective == "elbo" else "elbo"  # power: the other objective's gradient differs
    assert _max_z(grads, _draws(model, _loss(model, x, other, k, "reparam"), seed=13)) > 2 * Z_MAX


def test_dreg_with_q_outputs_detached_instead_of_its_parameters_is_biased(monkeypatch):
    """The routing the module avoids: the lower layer's log q with its mean and log-variance
    detached, which also cuts log q's path through the sample above. For STL that path is zero in
    mean, but DReG weighs it by w~_k, which depends on the samples: on the same draws the mean
    gradient moves (a paired z-score, so a small shift is seen)."""
    model, x = _model(2)
    right = _draws(model, _loss(model, x, "iwae", 10, "dreg"), seed=22)
    monkeypatch.setattr(est, "functional_call", lambda module, params, args: module(*args).detach())
    cut = _draws(model, _loss(model, x, "iwae", 10, "dreg"), seed=22)
    d = cut - right
    assert (d.mean(0).abs() / (d.std(0) / DRAWS ** 0.5 + 1e-12)).max().item() > Z_MAX


def test_dreg_gradient_of_q_networks_varies_less_than_reparam():
    model, x = _model(2)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    # q's own networks: the bottom-up nets, the top head and the posterior heads.
    own = torch.cat([torch.full((s,), n.startswith(("encoder.", "top_head.", "post_heads.")))
                     for n, s in zip(names, sizes)])
    variance = {g: _draws(model, _loss(model, x, "iwae", 20, g), seed=31)[:, own].var(0).sum().item()
                for g in ("reparam", "dreg")}
    assert variance["dreg"] < 0.5 * variance["reparam"]


def test_one_sample_dreg_is_stl_and_reference_impl_agrees():
    """K = 1: w~ = 1, so DReG's gradient is STL's for the same draw, bit for bit; the unfused
    impl (hooks instead of gates) has the fused mean gradient."""
    model, x = _model(3)
    params = list(model.parameters())
    torch.manual_seed(5)
    dreg = torch.autograd.grad(_loss(model, x, "iwae", 1, "dreg")().sum(), params)
    torch.manual_seed(5)
    stl = torch.autograd.grad(_loss(model, x, "elbo", 1, "stl")().sum(), params)
    for a, b in zip(dreg, stl):
        assert torch.equal(a, b)
    fused = _draws(model, _loss(model, x, "iwae", 4, "dreg"), seed=41)
    ref = _draws(model, _loss(model, x, "iwae", 4, "dreg", impl="reference"), seed=42)
    assert _max_z(fused, ref) < Z_MAX


def test_bound_values_are_the_objectives():
    """The value is the bound of the same draws: the IWAE bound of log-weights scored live."""
    model, x = _model(2)
    torch.manual_seed(7)
    value = model.loss(x, objective="iwae", num_samples=6, gradient="dreg", reduction="none")
    torch.manual_seed(7)
    plain = model.loss(x, objective="iwae", num_samples=6, gradient="reparam", reduction="none")
    assert torch.allclose(value, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("objective, gradient", [("iwae", "dreg"), ("elbo", "stl")])
def test_cli_trains_the_hierarchy_with_each_estimator(tmp_path, objective, gradient):
    from fastvae import cli
    from fastvae.training import load_model

    out = tmp_path / "run"
    assert cli.main(["train", "--arch", "hierarchical", "--levels", "2", "--latent-dim", "4", "--epochs", "1",
                     "--objective", objective, "--num-samples", "3", "--gradient", gradient, "--eval-samples", "5",
                     "--hidden", "16", "--no-progress", "--device", "cpu", "--no-plots", "--out", str(out)]) == 0
    model, state = load_model(out)
    assert isinstance(model, HierarchicalVAE) and state["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_dreg_compiles_fullgraph_to_the_same_loss_and_gradients():
    model, x = _model(2)
    model = model.float()
    x = x.float()
    fn = torch.compile(lambda x: model.loss(x, objective="iwae", num_samples=3, gradient="dreg"), fullgraph=True)
    params = list(model.parameters())
    torch.manual_seed(1)
    compiled = fn(x)
    g_compiled = torch.autograd.grad(compiled, params)
    torch.manual_seed(1)
    eager = model.loss(x, objective="iwae", num_samples=3, gradient="dreg")
    g_eager = torch.autograd.grad(eager, params)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    for a, b in zip(g_compiled, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
