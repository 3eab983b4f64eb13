"""VAE models: shapes, the fused loss against the reference, the importance-sampled likelihood
against a closed form, chunking, config round trips and argument errors."""
from __future__ import annotations

import json
import math
import types

import pytest
import torch
from torch import nn

import fastvae.functional as fvf
import fastvae.vae.model as models
import fastvae.vae.objectives as objectives
from fastvae import reference
from fastvae.vae import VAE, VAEOutput, build_conv_vae, build_mlp_vae, build_vae

from .conftest import cpu_and_cuda

GAUSSIAN_MODES = ["fixed", "scalar", "per_dim", "per_element"]
# (likelihood, obs_var) pairs every method must handle.
ALL_MODES = [("bernoulli", "fixed")] + [("gaussian", m) for m in GAUSSIAN_MODES]


def _small_model(kind: str, likelihood: str, obs_var: str, **kw) -> VAE:
    if kind == "mlp":
        return build_mlp_vae(input_dim=20, hidden=(16,), latent_dim=3, likelihood=likelihood,
                             obs_var=obs_var, obs_logvar=-0.5, **kw)
    if kind == "conv28":
        return build_conv_vae((1, 28, 28), channels=(4, 8), latent_dim=3, likelihood=likelihood,
                              obs_var=obs_var, obs_logvar=-0.5, **kw)
    return build_conv_vae((2, 9, 7), channels=(4, 8), latent_dim=3, likelihood=likelihood,
                          obs_var=obs_var, obs_logvar=-0.5, **kw)


def _data(vae: VAE, batch: int = 6, device="cpu") -> torch.Tensor:
    x = torch.rand(batch, *vae.data_shape, device=device)
    return x.bernoulli() if vae.likelihood == "bernoulli" else x


def _fixed_eps_functional(eps: torch.Tensor) -> types.SimpleNamespace:
    """fastvae.functional, but reparameterize reads eps from ``eps`` in order, sample by sample."""
    state = {"pos": 0}

    def reparameterize(mu, logvar, num_samples=None, generator=None):
        k = 1 if num_samples is None else num_samples
        e = eps[state["pos"]:state["pos"] + k]
        assert e.shape[0] == k, "ran out of eps"
        state["pos"] += k
        z = mu + torch.exp(0.5 * logvar) * e
        return z[0] if num_samples is None else z

    ns = types.SimpleNamespace(**{n: getattr(fvf, n) for n in fvf.__all__})
    ns.reparameterize = reparameterize
    return ns


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("kind", ["mlp", "conv28", "conv_odd"])
@pytest.mark.parametrize("likelihood,obs_var", ALL_MODES)
def test_every_method_has_the_documented_shape(kind, likelihood, obs_var):
    vae = _small_model(kind, likelihood, obs_var)
    x = _data(vae)
    b, z = x.shape[0], vae.latent_dim
    out = vae(x)
    assert isinstance(out, VAEOutput)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (b, z)
    assert out.recon.shape[0] == b
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (b, z)
    assert vae.decode(out.z).shape == out.recon.shape
    for red, shape in (("mean", ()), ("sum", ()), ("none", (b,))):
        assert vae.loss(x, reduction=red).shape == shape
        assert vae.loss(x, free_bits=0.2, reduction=red).shape == shape
        assert vae.iwae_loss(x, 3, reduction=red).shape == shape
    assert vae.elbo(x).shape == (b,)
    assert vae.log_likelihood(x, num_samples=9, chunk_size=4).shape == (b,)
    assert vae.reconstruct(x).shape == x.shape
    assert vae.reconstruct(x, sample_z=True).shape == x.shape
    assert vae.sample(4).shape == (4, *vae.data_shape)
    drawn = vae.sample(4, mean=False)
    assert drawn.shape == (4, *vae.data_shape)
    if likelihood == "bernoulli":
        assert set(drawn.unique().tolist()) <= {0.0, 1.0}
        assert 0 < vae.sample(2).min() and vae.sample(2).max() < 1


@pytest.mark.parametrize("likelihood,obs_var", ALL_MODES)
def test_loss_backward_reaches_every_parameter(likelihood, obs_var):
    vae = _small_model("mlp", likelihood, obs_var)
    x = _data(vae)
    for loss in (vae.loss(x), vae.loss(x, free_bits=0.3), vae.iwae_loss(x, 4)):
        vae.zero_grad()
        loss.backward()
        for name, p in vae.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
    if obs_var in ("scalar", "per_dim"):
        assert isinstance(vae.obs_logvar, nn.Parameter)
        assert vae.obs_logvar.shape == ((), (20,))[obs_var == "per_dim"]


def test_mlp_vae_accepts_image_shaped_input():
    vae = build_mlp_vae(input_dim=784, hidden=(32,), latent_dim=2, data_shape=(1, 28, 28))
    x = torch.rand(3, 1, 28, 28).bernoulli()
    assert vae.loss(x).isfinite()
    assert vae.reconstruct(x).shape == (3, 1, 28, 28)
    assert vae.sample(2).shape == (2, 1, 28, 28)


def test_data_shape_is_inferred_from_the_first_batch():
    enc, dec = nn.Linear(10, 4), nn.Linear(2, 10)
    vae = VAE(enc, dec, latent_dim=2)
    assert vae.data_shape is None
    vae.loss(torch.rand(5, 10).bernoulli())
    assert vae.data_shape == (10,)
    with pytest.raises(ValueError, match="data_shape"):
        vae.loss(torch.rand(5, 11))


# ---------------------------------------------------------------------------- loss
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("likelihood,obs_var", ALL_MODES)
def test_loss_matches_reference_elbo_for_the_same_z(device, likelihood, obs_var):
    vae = _small_model("conv_odd", likelihood, obs_var, beta=0.7).to(device)
    if obs_var in ("scalar", "per_dim"):
        with torch.no_grad():
            vae.obs_logvar.copy_(torch.randn_like(vae.obs_logvar) * 0.3)
    x = _data(vae, device=device)
    out = vae(x)
    got = vae.loss_from_output(out, x, reduction="none")

    b = x.shape[0]
    if obs_var == "per_element":
        mean, lv = out.recon.chunk(2, dim=1)
        recon, obs_lv = mean.reshape(b, -1), lv.reshape(b, -1)
    else:
        recon = out.recon.reshape(b, -1)
        obs_lv = vae.obs_logvar if obs_var != "fixed" else -0.5
    want = reference.elbo(recon, x.reshape(b, -1), out.mu, out.logvar, likelihood=likelihood,
                          obs_logvar=obs_lv, beta=0.7, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # The same decomposition, by hand: -log p(x|z) + beta * KL, and -ELBO at beta = 1.
    if likelihood == "bernoulli":
        log_px = reference.bernoulli_log_likelihood(recon, x.reshape(b, -1))
    else:
        log_px = reference.gaussian_log_likelihood(recon, x.reshape(b, -1), obs_lv)
    kl = reference.kl_standard_normal(out.mu, out.logvar)
    torch.testing.assert_close(got, -log_px + 0.7 * kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(vae.loss_from_output(out, x, beta=1.0, reduction="sum"),
                               (-log_px + kl).sum(), rtol=1e-5, atol=1e-3)


def test_loss_is_loss_from_output_of_forward_with_the_same_seed():
    vae = _small_model("mlp", "bernoulli", "fixed")
    x = _data(vae)
    torch.manual_seed(123)
    a = vae.loss(x)
    torch.manual_seed(123)
    out = vae(x)
    b = vae.loss_from_output(out, x)
    assert torch.equal(a, b)
    torch.manual_seed(123)
    torch.testing.assert_close(vae.elbo(x).mean(), -a)
    # z really is mu + sigma * eps: standardised, it is centred with unit spread.
    big = build_mlp_vae(input_dim=20, hidden=(8,), latent_dim=3)
    o = big(torch.rand(4000, 20).bernoulli())
    eps = (o.z - o.mu) / torch.exp(0.5 * o.logvar)
    assert eps.mean().abs() < 0.05 and (eps.std() - 1).abs() < 0.05


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_forward_kl_from_the_sampling_pass_gives_the_loss_of_mu_and_logvar(device):
    vae = _small_model("mlp", "bernoulli", "fixed").to(device)
    x = _data(vae, device=device)
    out = vae(x)
    torch.testing.assert_close(out.kl, fvf.kl_standard_normal(out.mu, out.logvar), rtol=1e-6, atol=1e-6)
    without = VAEOutput(out.recon, out.mu, out.logvar, out.z)  # kl=None: computed from mu, logvar
    params = [p for p in vae.parameters() if p.requires_grad]
    with_grads = torch.autograd.grad(vae.loss_from_output(out, x, beta=0.6), params, retain_graph=True)
    without_grads = torch.autograd.grad(vae.loss_from_output(without, x, beta=0.6), params)
    for a, b in zip(with_grads, without_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("likelihood,obs_var", [("bernoulli", "fixed"), ("gaussian", "per_element")])
def test_free_bits_clamps_each_latent_dims_kl(likelihood, obs_var):
    vae = _small_model("mlp", likelihood, obs_var)
    x = _data(vae, batch=8)
    out = vae(x)
    b = x.shape[0]
    kl_dims = -0.5 * (1 + out.logvar - out.mu.pow(2) - out.logvar.exp())
    free = kl_dims.median().item()  # some dims below the floor, some above
    assert (kl_dims < free).any() and (kl_dims > free).any()
    no_fb = vae.loss_from_output(out, x, beta=2.0, reduction="none")
    fb = vae.loss_from_output(out, x, beta=2.0, free_bits=free, reduction="none")
    want = no_fb + 2.0 * (kl_dims.clamp(min=free) - kl_dims).sum(-1)
    torch.testing.assert_close(fb, want, rtol=1e-5, atol=1e-4)
    # A floor above every dim's KL makes the KL term the constant beta * Z * floor.
    rec = vae.loss_from_output(out, x, beta=0.0, reduction="none")
    high = vae.loss_from_output(out, x, beta=0.5, free_bits=100.0, reduction="none")
    torch.testing.assert_close(high, rec + 0.5 * 3 * 100.0, rtol=1e-6, atol=1e-3)
    # The floored dims get no gradient through the KL term.
    mu = out.mu.detach().requires_grad_()
    o2 = VAEOutput(out.recon.detach(), mu, out.logvar.detach(), out.z.detach())
    vae.loss_from_output(o2, x, free_bits=100.0, reduction="sum").backward()
    assert torch.count_nonzero(mu.grad) == 0


def test_beta_defaults_to_the_models_beta():
    vae = _small_model("mlp", "bernoulli", "fixed", beta=3.0)
    x = _data(vae)
    out = vae(x)
    torch.testing.assert_close(vae.loss_from_output(out, x), vae.loss_from_output(out, x, beta=3.0))
    assert not torch.allclose(vae.loss_from_output(out, x), vae.loss_from_output(out, x, beta=1.0))


# ---------------------------------------------------------------------------- likelihood
def _linear_gaussian(obs_var: str, exact_posterior: bool) -> tuple:
    """A linear-Gaussian VAE in float64, x = W z + b + noise, whose marginal p(x) is Gaussian.

    W has orthogonal columns, so with a fixed isotropic noise the true posterior is diagonal and
    the encoder can be set to it exactly. Returns the model and a function giving exact log p(x).
    """
    d, z = 4, 2
    q, _ = torch.linalg.qr(torch.randn(d, z, dtype=torch.float64))
    w = q * torch.tensor([1.5, 0.8], dtype=torch.float64)
    bias = torch.randn(d, dtype=torch.float64)
    noise_lv = torch.full((d,), math.log(0.4), dtype=torch.float64)
    if obs_var in ("per_dim", "per_element"):
        noise_lv = noise_lv + 0.5 * torch.randn(d, dtype=torch.float64)

    enc = nn.Linear(d, 2 * z).double()
    out_dim = 2 * d if obs_var == "per_element" else d
    dec = nn.Linear(z, out_dim).double()
    with torch.no_grad():
        dec.weight.zero_()
        dec.weight[:d] = w
        dec.bias[:d] = bias
        if obs_var == "per_element":
            dec.bias[d:] = noise_lv  # logvar rows ignore z
        var = math.exp(noise_lv[0].item())
        post_var = 1.0 / (1.0 + (w * w).sum(0) / var)  # exact when the noise is isotropic
        gain = post_var[:, None] * w.T / var
        if exact_posterior:
            enc.weight.zero_()
            enc.weight[:z] = gain
            enc.bias[:z] = -gain @ bias
            enc.bias[z:] = post_var.log()
        else:
            # A deliberately poor but wider-than-posterior proposal.
            enc.weight[:z] = gain * 0.8
            enc.weight[z:] = 0.0
            enc.bias[:z] = -gain @ bias * 0.8 + 0.1
            enc.bias[z:] = (post_var * 1.8).log()
    vae = VAE(enc, dec, latent_dim=z, likelihood="gaussian", obs_var=obs_var,
              obs_logvar=math.log(0.4), data_shape=(d,))
    if obs_var in ("scalar", "per_dim"):
        with torch.no_grad():
            vae.obs_logvar.copy_(noise_lv if obs_var == "per_dim" else noise_lv[0])
    vae = vae.double()
    cov = w @ w.T + torch.diag(noise_lv.exp())
    marginal = torch.distributions.MultivariateNormal(bias, covariance_matrix=cov)

    def sample_x(n: int) -> torch.Tensor:
        return marginal.sample((n,))

    return vae, marginal.log_prob, sample_x


def test_log_likelihood_is_exact_with_the_true_posterior():
    vae, exact, sample_x = _linear_gaussian("fixed", exact_posterior=True)
    x = sample_x(16)
    want = exact(x)
    # Every importance weight equals p(x): the estimate and the ELBO are exact for any K.
    torch.testing.assert_close(vae.log_likelihood(x, num_samples=3), want, rtol=1e-10, atol=1e-10)
    # The ELBO uses the analytic KL, so only its expectation is exact: averaged over draws.
    elbo = torch.stack([vae.elbo(x).detach() for _ in range(500)]).mean()
    assert abs(elbo.item() - want.mean().item()) < 0.03
    torch.testing.assert_close(-vae.iwae_loss(x, 5, reduction="none").detach(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("obs_var", GAUSSIAN_MODES)
def test_log_likelihood_converges_to_the_closed_form_marginal(obs_var):
    vae, exact, sample_x = _linear_gaussian(obs_var, exact_posterior=False)
    x = sample_x(12)
    want = exact(x)
    got = vae.log_likelihood(x, num_samples=20000, chunk_size=3000)
    elbo = torch.stack([vae.elbo(x).detach() for _ in range(200)]).mean(0)
    gap = (want - elbo).mean().item()
    assert gap > 0.2, f"proposal too good for the test to discriminate (ELBO gap {gap:.3f})"
    # Monte Carlo error at K = 20000 is about 0.006 nats per example here (it shrinks as
    # 1/sqrt(K)); the ELBO misses by more than 0.2.
    err = (got - want).abs().max().item()
    assert err < 0.04, f"IWAE estimate off by {err:.4f} nats (ELBO gap {gap:.3f})"
    assert abs((got - want).mean().item()) < 0.01


def test_log_likelihood_upper_bounds_the_elbo_on_average():
    vae = _small_model("mlp", "bernoulli", "fixed")
    x = _data(vae, batch=32)
    ll = vae.log_likelihood(x, num_samples=500)
    elbo = torch.stack([vae.elbo(x).detach() for _ in range(50)]).mean(0)
    assert ll.mean() > elbo.mean() + 0.05
    iwae5 = -torch.stack([vae.iwae_loss(x, 5).detach() for _ in range(50)]).mean()
    assert elbo.mean() < iwae5 < ll.mean()


def test_chunked_log_likelihood_equals_unchunked_for_the_same_eps(monkeypatch):
    vae = _small_model("conv_odd", "gaussian", "per_element")
    x = _data(vae, batch=5)
    eps = torch.randn(120, 5, vae.latent_dim)
    results = []
    for chunk in (None, 120, 37, 1):
        monkeypatch.setattr(models, "_F", _fixed_eps_functional(eps))
        results.append(vae.log_likelihood(x, num_samples=120, chunk_size=chunk))
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-6, atol=1e-5)
    # And the value is log-mean-exp of the weights computed with the reference ops.
    mu, logvar = vae.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    params = vae.decode(z.reshape(-1, vae.latent_dim))
    mean, lv = params.chunk(2, dim=1)
    log_px = reference.gaussian_log_likelihood(mean.reshape(120, 5, -1), x.reshape(5, -1),
                                               lv.reshape(120, 5, -1), event_dims=1)
    log_w = log_px + reference.standard_normal_log_density(z) - reference.gaussian_log_density(z, mu, logvar)
    torch.testing.assert_close(results[0], torch.logsumexp(log_w, 0) - math.log(120), rtol=1e-5, atol=1e-4)


def test_chunked_log_likelihood_agrees_with_fused_sampling_within_noise():
    vae = _small_model("mlp", "bernoulli", "fixed")
    x = _data(vae, batch=4)
    a = vae.log_likelihood(x, num_samples=3000, chunk_size=3000)
    b = vae.log_likelihood(x, num_samples=3000, chunk_size=64)
    assert (a - b).abs().max() < 0.1
    assert not torch.equal(a, b)  # fresh samples, so not bitwise equal


def test_log_likelihood_has_no_grad_and_the_evaluation_shows_progress(capsys):
    from fastvae.training import evaluate

    vae = _small_model("mlp", "bernoulli", "fixed")
    x = _data(vae, batch=3)
    ll = vae.log_likelihood(x, num_samples=50, chunk_size=10)
    assert not ll.requires_grad
    assert capsys.readouterr().err == ""  # the model shows no progress bar; the evaluation does
    evaluate(vae, x, 1, torch.device("cpu"), 0, num_samples=50, progress=True)
    assert "3/3" in capsys.readouterr().err


def test_iwae_loss_matches_reference_for_the_same_eps(monkeypatch):
    vae = _small_model("mlp", "gaussian", "scalar")
    x = _data(vae, batch=6)
    eps = torch.randn(7, 6, vae.latent_dim)
    # iwae_loss draws through fastvae.vae.objectives (VAE.loss(objective="iwae")).
    monkeypatch.setattr(objectives, "_F", _fixed_eps_functional(eps))
    got = vae.iwae_loss(x, 7, reduction="none")
    mu, logvar = vae.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_px = reference.gaussian_log_likelihood(vae.decode(z.reshape(-1, 3)).reshape(7, 6, -1), x,
                                               vae.obs_logvar, event_dims=1)
    log_w = log_px + reference.standard_normal_log_density(z) - reference.gaussian_log_density(z, mu, logvar)
    torch.testing.assert_close(got, -(torch.logsumexp(log_w, 0) - math.log(7)), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------- sampling
def test_sample_is_reproducible_with_a_generator():
    vae = _small_model("conv28", "bernoulli", "fixed")
    a = vae.sample(3, mean=False, generator=torch.Generator().manual_seed(5))
    b = vae.sample(3, mean=False, generator=torch.Generator().manual_seed(5))
    c = vae.sample(3, mean=False, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gaussian_samples_have_the_observation_variance():
    vae = build_mlp_vae(input_dim=5, hidden=(4,), latent_dim=2, likelihood="gaussian",
                        obs_var="per_dim", obs_logvar=0.0)
    with torch.no_grad():
        vae.obs_logvar.copy_(torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]))
        vae.decoder[-1].weight.zero_()  # mean independent of z: spread is the noise alone
    x = vae.sample(20000, mean=False, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.var(0).log(), vae.obs_logvar.detach(), atol=0.05, rtol=0)


def test_reconstruct_uses_the_posterior_mean():
    vae = _small_model("mlp", "bernoulli", "fixed")
    x = _data(vae)
    mu, _ = vae.encode(x)
    torch.testing.assert_close(vae.reconstruct(x), torch.sigmoid(vae.decode(mu)).detach())


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize("build", [
    lambda: build_mlp_vae(input_dim=12, hidden=(10, 6), latent_dim=2, likelihood="gaussian",
                          obs_var="per_dim", obs_logvar=-1.0, beta=0.5, activation="elu"),
    lambda: build_mlp_vae(input_dim=64, hidden=(8,), latent_dim=2, data_shape=(1, 8, 8)),
    lambda: build_conv_vae((1, 28, 28), channels=(4, 8), latent_dim=5),
    lambda: build_conv_vae((3, 8, 8), channels=(4, 6, 8), latent_dim=4, likelihood="gaussian",
                           obs_var="per_element", activation="silu"),
])
def test_config_round_trips_through_json(build):
    vae = build()
    cfg = json.loads(json.dumps(vae.config))
    clone = build_vae(cfg)
    assert clone.config == vae.config
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in vae.state_dict().items()}
    clone.load_state_dict(vae.state_dict())
    x = torch.rand(3, *vae.data_shape)
    mu_a, _ = vae.encode(x)
    mu_b, _ = clone.encode(x)
    torch.testing.assert_close(mu_a, mu_b)
    torch.testing.assert_close(vae.decode(mu_a), clone.decode(mu_a))


def test_custom_vae_config_cannot_be_rebuilt():
    vae = VAE(nn.Linear(4, 4), nn.Linear(2, 4), latent_dim=2, data_shape=(4,))
    cfg = vae.config
    assert cfg["arch"] is None and cfg["latent_dim"] == 2
    with pytest.raises(ValueError, match="custom modules"):
        build_vae(cfg)
    with pytest.raises(ValueError, match="arch"):
        build_vae({**cfg, "arch": "transformer"})


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(likelihood="poisson"), "likelihood"),
    (dict(obs_var="learned"), "obs_var"),
    (dict(obs_var="scalar"), "obs_var='scalar' needs likelihood='gaussian'"),
    (dict(likelihood="gaussian", obs_var="per_dim", data_shape=None), "data_shape"),
    (dict(latent_dim=0), "latent_dim"),
    (dict(beta=-1.0), "beta"),
    (dict(obs_logvar=float("nan")), "obs_logvar"),
])
def test_vae_rejects_bad_arguments(kwargs, match):
    args = dict(latent_dim=2, data_shape=(4,))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        VAE(nn.Linear(4, 4), nn.Linear(2, 4), **args)


def test_methods_reject_bad_arguments():
    vae = _small_model("mlp", "bernoulli", "fixed")
    x = _data(vae)
    for call, match in [
        (lambda: vae.loss(x, reduction="avg"), "reduction"),
        (lambda: vae.loss(x, free_bits=-1.0), "free_bits"),
        (lambda: vae.loss(x, beta=-0.1), "beta"),
        (lambda: vae.log_likelihood(x, num_samples=0), "num_samples"),
        (lambda: vae.log_likelihood(x, num_samples=5, chunk_size=0), "chunk_size"),
        (lambda: vae.iwae_loss(x, 0), "num_samples"),
        (lambda: vae.sample(0), "n must"),
        (lambda: vae.loss(torch.rand(20)), "batch"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()
    wrong_enc = VAE(nn.Linear(20, 5), nn.Linear(2, 20), latent_dim=2)
    with pytest.raises(ValueError, match="2 \\* latent_dim"):
        wrong_enc.loss(x)
    wrong_dec = VAE(nn.Linear(20, 4), nn.Linear(2, 19), latent_dim=2)
    with pytest.raises(ValueError, match="decoder gives 19"):
        wrong_dec.loss(x)


def test_builders_reject_bad_arguments():
    with pytest.raises(ValueError, match="too small"):
        build_conv_vae((1, 6, 6), channels=(4, 4, 4))
    with pytest.raises(ValueError, match="image_shape"):
        build_conv_vae((28, 28))
    with pytest.raises(ValueError, match="channels"):
        build_conv_vae((1, 28, 28), channels=())
    with pytest.raises(ValueError, match="activation"):
        build_mlp_vae(activation="gelu2")
    with pytest.raises(ValueError, match="hidden"):
        build_mlp_vae(hidden=(0,))
    with pytest.raises(ValueError, match="data_shape"):
        build_mlp_vae(input_dim=10, data_shape=(3, 3))


def test_top_level_api():
    """`from fastvae import ...` gives the names torch-style users reach for first."""
    import fastvae
    from fastvae import ELBOLoss, Trainer, VAE, build_conv_vae, build_mlp_vae, functional
    from fastvae import training, vae

    assert VAE is vae.VAE and Trainer is training.Trainer and ELBOLoss is fastvae.loss.ELBOLoss
    assert build_mlp_vae is vae.build_mlp_vae and build_conv_vae is vae.build_conv_vae
    assert functional.elbo is fastvae.functional.elbo
    assert isinstance(build_mlp_vae(input_dim=6, hidden=(5,), latent_dim=2), VAE)
    assert set(fastvae.__all__) <= set(dir(fastvae))
    with pytest.raises(AttributeError, match="no attribute 'Trainr'"):
        fastvae.Trainr  # noqa: B018
