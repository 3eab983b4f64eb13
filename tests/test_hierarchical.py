"""The hierarchical VAE: its fused loss and importance-sampled log-likelihood against a plain
torch.distributions evaluation of the same weights and samples; sampling; config, checkpoints
and resume through the Trainer; the command line; argument errors."""
from __future__ import annotations

import math
from typing import List, Optional

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from fastvae import cli
from fastvae.training import Trainer, TrainConfig, load_model
from fastvae.vae import HierarchicalVAE, build_hierarchical_vae, build_vae
from fastvae.vae.hierarchical import _split
from fastvae.vae.hierarchical_builders import halved_levels

FAST = ["--hidden", "16", "--no-progress", "--device", "cpu", "--no-plots"]


def _model(levels: int = 3, conv: bool = False, dtype=torch.float64) -> HierarchicalVAE:
    torch.manual_seed(1)
    dims = [9, 5, 3][:levels]
    hidden = [[13, 11], [7], [6, 5]][:levels]
    if conv:
        m = build_hierarchical_vae(latent_dims=dims, hidden=hidden, image_shape=(1, 8, 8), channels=(4, 6),
                                   activation="elu")
    else:
        m = build_hierarchical_vae(input_dim=37, latent_dims=dims, hidden=hidden, activation="tanh")
    return m.to(dtype)


def _data(n: int, d: int, dtype=torch.float64) -> torch.Tensor:
    return torch.bernoulli(torch.rand(n, d, generator=torch.Generator().manual_seed(n + d))).to(dtype)


def _normal(mu: torch.Tensor, logvar: torch.Tensor) -> Normal:
    return Normal(mu, torch.exp(0.5 * logvar))


def _plain_loss(m: HierarchicalVAE, x: torch.Tensor, eps: List[torch.Tensor], beta: float = 1.0,
                free_bits: float = 0.0) -> torch.Tensor:
    """Negative ELBO per example written with torch.distributions, z_l = mu + sigma * eps_l."""
    hs, h = [], x
    for net in m.encoder:
        h = net(h)
        hs.append(h)
    mu, lv = _split(m.top_head(hs[-1]))
    q = _normal(mu, lv)
    z = q.loc + q.scale * eps[-1]
    kls = [kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)]
    for level in reversed(range(m.levels - 1)):
        td = m.down[level](z)
        p = _normal(*_split(m.prior_heads[level](td)))
        q = _normal(*_split(m.post_heads[level](torch.cat([hs[level], td], -1))))
        z = q.loc + q.scale * eps[level]
        kls.insert(0, kl_divergence(q, p).sum(-1))
    kl = sum(k.clamp(min=free_bits * d) for k, d in zip(kls, m.latent_dims))
    log_px = Bernoulli(logits=m.decoder(z).reshape(x.shape[0], -1)).log_prob(x.reshape(x.shape[0], -1)).sum(-1)
    return -log_px + beta * kl


def _plain_terms(m: HierarchicalVAE, x: torch.Tensor, zs: List[torch.Tensor]):
    """(log p(x | z_1), log p(z) - log q(z | x)) for given samples zs (bottom to top, (K, B, Z_l))."""
    k, b = zs[0].shape[:2]
    hs, h = [], x
    for net in m.encoder:
        h = net(h)
        hs.append(h)
    q = _normal(*_split(m.top_head(hs[-1])))
    log_w = Normal(0.0, 1.0).log_prob(zs[-1]).sum(-1) - q.log_prob(zs[-1]).sum(-1)
    for level in reversed(range(m.levels - 1)):
        above = zs[level + 1]
        td = m.down[level](above)
        p = _normal(*_split(m.prior_heads[level](td)))
        q = _normal(*_split(m.post_heads[level](torch.cat([hs[level].expand(k, b, -1), td], -1))))
        log_w = log_w + p.log_prob(zs[level]).sum(-1) - q.log_prob(zs[level]).sum(-1)
    logits = m.decoder(zs[0].reshape(k * b, -1)).reshape(k, b, -1)
    return Bernoulli(logits=logits).log_prob(x.reshape(b, -1)).sum(-1), log_w


def _plain_log_weights(m: HierarchicalVAE, x: torch.Tensor, zs: List[torch.Tensor]) -> torch.Tensor:
    """log p(x, z) - log q(z | x) for given samples zs."""
    log_px, log_ratio = _plain_terms(m, x, zs)
    return log_px + log_ratio


def _eps_of(out) -> List[torch.Tensor]:
    return [((z - mu) * torch.exp(-0.5 * lv)).detach() for z, mu, lv in zip(out.zs, out.mus, out.logvars)]


@pytest.mark.parametrize("levels,conv", [(1, False), (2, False), (3, False), (3, True)])
@pytest.mark.parametrize("beta,free_bits", [(1.0, 0.0), (0.7, 0.3)])
def test_fused_loss_and_gradients_equal_plain_pytorch(levels, conv, beta, free_bits):
    m = _model(levels, conv)
    x = _data(6, 64 if conv else 37)
    out = m(x)
    loss = m.loss_from_output(out, x, beta=beta, free_bits=free_bits, reduction="none")
    grads = torch.autograd.grad(loss.sum(), list(m.parameters()))
    plain = _plain_loss(m, x, _eps_of(out), beta, free_bits)
    plain_grads = torch.autograd.grad(plain.sum(), list(m.parameters()))
    torch.testing.assert_close(loss, plain, rtol=1e-9, atol=1e-9)
    assert any(g.abs().sum() > 0 for g in grads)
    for g, pg in zip(grads, plain_grads):
        torch.testing.assert_close(g, pg, rtol=1e-7, atol=1e-9)


def test_float32_loss_matches_plain_and_free_bits_per_layer():
    m = _model(2, dtype=torch.float32)
    x = _data(5, 37, torch.float32)
    out = m(x)
    eps = _eps_of(out)
    torch.testing.assert_close(m.loss_from_output(out, x, reduction="none"), _plain_loss(m, x, eps),
                               rtol=1e-5, atol=1e-4)
    # One floor per layer: layer l's KL floored at free_bits[l] * Z_l.
    per_layer = m.loss_from_output(out, x, free_bits=[0.0, 2.0], reduction="none")
    kls = out.kls
    expected = (m.loss_from_output(out, x, reduction="none") - kls[1] + kls[1].clamp(min=2.0 * m.latent_dims[1]))
    torch.testing.assert_close(per_layer, expected, rtol=1e-5, atol=1e-4)
    assert (per_layer > m.loss_from_output(out, x, reduction="none")).all()


@pytest.mark.parametrize("levels,conv", [(2, False), (3, True)])
def test_importance_weights_and_log_likelihood_equal_plain_pytorch(levels, conv):
    m = _model(levels, conv)
    x = _data(4, 64 if conv else 37)
    x_flat = x.reshape(4, -1)
    hs = m._bottom_up(x)
    torch.manual_seed(5)
    log_w, zs = m._importance_weights(x_flat, hs, 7)
    assert log_w.shape == (7, 4) and [z.shape for z in zs] == [(7, 4, d) for d in m.latent_dims]
    torch.testing.assert_close(log_w, _plain_log_weights(m, x, zs), rtol=1e-9, atol=1e-8)

    # log_likelihood draws its chunks in order from the global generator: replay them.
    torch.manual_seed(11)
    ll = m.log_likelihood(x, num_samples=10, chunk_size=4)
    torch.manual_seed(11)
    plain = torch.cat([_plain_log_weights(m, x, m._importance_weights(x_flat, hs, k)[1]) for k in (4, 4, 2)])
    torch.testing.assert_close(ll, torch.logsumexp(plain, 0) - math.log(10), rtol=1e-9, atol=1e-8)
    torch.manual_seed(3)
    iwae = m.iwae_loss(x, num_samples=6, reduction="none")
    torch.manual_seed(3)
    zs = m._importance_weights(x_flat, hs, 6)[1]
    torch.testing.assert_close(iwae, math.log(6) - torch.logsumexp(_plain_log_weights(m, x, zs), 0))
    # A K-sample Monte Carlo ELBO with beta weighting log p(z) - log q(z | x).
    torch.manual_seed(8)
    mc = m.loss(x, beta=0.5, objective="elbo", num_samples=5, reduction="none")
    torch.manual_seed(8)
    zs = m._importance_weights(x_flat, hs, 5)[1]
    log_px, log_ratio = _plain_terms(m, x, zs)
    torch.testing.assert_close(mc, -(log_px + 0.5 * log_ratio).mean(0), rtol=1e-9, atol=1e-8)


def test_log_likelihood_bounds_and_reference_impl():
    m = _model(2)
    x = _data(8, 37)
    torch.manual_seed(0)
    ll = m.log_likelihood(x, num_samples=2000)
    elbo = torch.stack([m.elbo(x) for _ in range(200)]).mean(0)
    assert (ll > elbo).all()  # the K-sample bound is tighter than the 1-sample one
    ref = torch.stack([m.loss(x, impl="reference", reduction="none") for _ in range(200)]).mean(0)
    torch.testing.assert_close(ref, -elbo, rtol=0.02, atol=0.5)  # same model, other noise
    loss = m.loss(x, impl="reference")
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("conv", [False, True])
def test_sampling_shapes_and_generator(conv):
    m = _model(3, conv, torch.float32)
    shape = (1, 8, 8) if conv else (37,)
    means = m.sample(5, generator=torch.Generator().manual_seed(2))
    assert means.shape == (5, *shape) and ((means > 0) & (means < 1)).all()
    again = m.sample(5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(means, again)
    assert not torch.equal(means, m.sample(5, generator=torch.Generator().manual_seed(3)))
    drawn = m.sample(4, mean=False)
    assert drawn.shape == (4, *shape) and set(drawn.unique().tolist()) <= {0.0, 1.0}
    x = _data(3, math.prod(shape), torch.float32).reshape(3, *shape)
    assert m.reconstruct(x).shape == x.shape and m.encode(x)[0].shape == (3, m.latent_dims[-1])


def test_config_round_trip_rebuilds_the_same_model():
    for conv in (False, True):
        m = _model(3, conv)
        rebuilt = build_vae(m.config).to(torch.float64)
        rebuilt.load_state_dict(m.state_dict())
        assert rebuilt.config == m.config and isinstance(rebuilt, HierarchicalVAE)
        x = _data(4, 64 if conv else 37)
        torch.manual_seed(0)
        a = m.loss(x)
        torch.manual_seed(0)
        assert torch.equal(a, rebuilt.loss(x))
    default = build_hierarchical_vae()
    assert default.latent_dims == (100, 50) and default.config["hidden"] == [[100, 100], [50, 50]]
    assert halved_levels(2, (100, 100), 100) == ([100, 50], [[100, 100], [50, 50]])


def test_trainer_checkpoint_resume_is_exact(tmp_path):
    data = _data(60, 37, torch.float32)

    def trained(epochs: int, out, resume: Optional[str] = None):
        if resume is not None:
            return Trainer.from_checkpoint(resume, data, data[:20], out_dir=out, epochs=epochs)
        torch.manual_seed(0)
        m = build_hierarchical_vae(input_dim=37, latent_dims=(6, 3), hidden=((12,), (8,)))
        return Trainer(m, data, data[:20], TrainConfig(epochs=epochs, batch_size=16, device="cpu", seed=4,
                                                        free_bits=0.1, progress=False), out_dir=out)

    straight = trained(3, tmp_path / "a")
    straight.fit()
    first = trained(1, tmp_path / "b")
    first.fit()
    resumed = trained(3, tmp_path / "b", resume=str(tmp_path / "b"))
    resumed.fit()
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name
    model, state = load_model(tmp_path / "b")
    assert isinstance(model, HierarchicalVAE) and state["epoch"] == 3
    assert math.isfinite(straight.log_likelihood(20))


def test_cli_train_resume_eval_sample(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--arch", "hierarchical", "--levels", "3", "--latent-dim", "4", "--epochs", "1",
                     "--eval-samples", "5", "--out", str(out), *FAST]) == 0
    model, state = load_model(out)
    assert model.latent_dims == (4, 2, 1) and model.config["hidden"] == [[16], [8], [4]]
    assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert load_model(out)[1]["epoch"] == 2
    assert cli.main(["eval", str(out), "-k", "5", "--max-examples", "20", "--json", "--no-progress"]) == 0
    assert '"test_log_likelihood"' in capsys.readouterr().out
    assert cli.main(["sample", str(out), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0
    conv = tmp_path / "conv"
    assert cli.main(["train", "--arch", "hierarchical-conv", "--channels", "4,8", "--epochs", "1",
                     "--out", str(conv), *FAST]) == 0
    assert load_model(conv)[0].config["channels"] == [4, 8]
    with pytest.raises(SystemExit):
        cli.main(["train", "--levels", "2", "--epochs", "1", "--out", str(tmp_path / "bad"), *FAST])
    assert "--levels needs --arch hierarchical" in capsys.readouterr().err


def test_cli_hidden_per_level(tmp_path, capsys):
    # "a,b/c" gives each stochastic layer its widths (bottom first); the latent dims still halve.
    out = tmp_path / "run"
    assert cli.main(["train", "--arch", "hierarchical", "--hidden", "16,12/6", "--latent-dim", "4", "--epochs", "1",
                     "--eval-samples", "0", "--out", str(out), *FAST[2:]]) == 0
    model, _ = load_model(out)
    assert model.latent_dims == (4, 2) and model.config["hidden"] == [[16, 12], [6]]
    assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert load_model(out)[0].config["hidden"] == [[16, 12], [6]]
    with pytest.raises(SystemExit):
        cli.main(["train", "--arch", "hierarchical", "--hidden", "16/8/4", "--levels", "2", "--epochs", "1",
                  "--out", str(tmp_path / "bad"), *FAST[2:]])
    assert "3 groups of widths for --levels 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--hidden", "16/8", "--epochs", "1", "--out", str(tmp_path / "mlp"), *FAST[2:]])
    assert "needs --arch hierarchical" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--arch", "hierarchical", "--hidden", "16/0", "--epochs", "1",
                  "--out", str(tmp_path / "zero"), *FAST[2:]])
    assert "--hidden must be comma-separated positive integers" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs,match", [
    (dict(latent_dims=()), "latent_dims"),
    (dict(latent_dims=(4, 0), hidden=((8,), (4,))), "latent_dims"),
    (dict(latent_dims=(4, 2), hidden=((8,),)), "hidden"),
    (dict(latent_dims=(4, 2), hidden=((8,), ())), "hidden"),
    (dict(activation="gelu"), "activation"),
    (dict(image_shape=(1, 8, 8)), "image_shape"),
    (dict(image_shape=(8, 8), channels=(4,)), "image_shape"),
    (dict(image_shape=(1, 2, 2), channels=(4, 4)), "too small"),
    (dict(input_dim=37, data_shape=(6, 6)), "data_shape"),
])
def test_builder_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_hierarchical_vae(**kwargs)


def test_model_arguments_raise_value_error():
    m = _model(2, dtype=torch.float32)
    x = _data(3, 37, torch.float32)
    for kwargs, match in [(dict(free_bits=[0.1]), "free_bits"), (dict(free_bits=-1.0), "free_bits"),
                          (dict(free_bits=[0.1, float("nan")]), "free_bits"), (dict(beta=-1.0), "beta"),
                          (dict(impl="eager"), "impl"), (dict(reduction="max"), "reduction")]:
        with pytest.raises(ValueError, match=match):
            m.loss(x, **kwargs)
    for kwargs, match in [(dict(objective="vimco", num_samples=2), "objective"),
                          (dict(objective="iwae", num_samples=0), "num_samples"),
                          (dict(objective="elbo", num_samples=3, gradient="dreg"), "gradient='dreg' is not supported"),
                          (dict(objective="iwae", num_samples=3, free_bits=0.5), "free_bits")]:
        with pytest.raises(ValueError, match=match):
            m.loss(x, **kwargs)
    for call, match in [(lambda: m.log_likelihood(x, 0), "num_samples"),
                        (lambda: m.log_likelihood(x, 4, chunk_size=0), "chunk_size"),
                        (lambda: m.iwae_loss(x, 0), "num_samples"), (lambda: m.sample(0), "n"),
                        (lambda: m.loss(_data(3, 36, torch.float32)), "data_shape"),
                        (lambda: halved_levels(0, (4,), 2), "levels")]:
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(ValueError, match="down and down_dims"):
        HierarchicalVAE([torch.nn.Identity()] * 2, [], torch.nn.Identity(), (2, 2), (4, 4), ())
    with pytest.raises(ValueError, match="up and up_dims"):
        HierarchicalVAE([torch.nn.Identity()], [torch.nn.Identity()], torch.nn.Identity(), (2, 2), (4, 4), (3,))
