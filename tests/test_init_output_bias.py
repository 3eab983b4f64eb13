"""`init_output_bias`: the decoder's output bias set to the data's marginal (logits for a
Bernoulli likelihood, means for a Gaussian one), per element for a Linear output layer and per
channel for a conv one; argument errors."""
from __future__ import annotations

import pytest
import torch

from fastvae.vae import build_conv_vae, build_hierarchical_vae, build_mlp_vae, init_output_bias


def _sparse_binary(n: int, d: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(d, generator=g) * 0.3  # mostly-off pixels, as in MNIST
    return (torch.rand(n, d, generator=g) < probs).float()


def _last_linear(model):
    return [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]


@pytest.mark.parametrize("make", [lambda: build_hierarchical_vae(input_dim=37, latent_dims=(6, 3), hidden=((11,), (5,))),
                                  lambda: build_mlp_vae(37, hidden=(11,), latent_dim=4)])
def test_bernoulli_bias_is_the_marginal_logit(make):
    torch.manual_seed(0)
    model = make()
    x = _sparse_binary(257, 37)
    x[:, 5] = 0.0  # a pixel that is never on: clamped, finite
    assert init_output_bias(model, x) is model
    bias = _last_linear(model).bias.detach().double()
    p = x.double().mean(0).clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(bias, torch.log(p / (1 - p)), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(bias).all()


def test_gaussian_bias_is_the_mean():
    torch.manual_seed(0)
    model = build_mlp_vae(19, hidden=(7,), latent_dim=3, likelihood="gaussian")
    x = torch.randn(101, 19) * 2 + torch.linspace(-3, 3, 19)
    init_output_bias(model, x)
    torch.testing.assert_close(_last_linear(model).bias.detach().double(), x.double().mean(0), rtol=1e-6, atol=1e-6)


def test_conv_bias_is_the_channel_mean():
    torch.manual_seed(0)
    model = build_conv_vae(image_shape=(2, 8, 8), channels=(4,), latent_dim=3, likelihood="gaussian")
    x = torch.randn(33, 2, 8, 8) + torch.tensor([1.5, -0.5]).view(1, 2, 1, 1)
    init_output_bias(model, x)
    layer = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    torch.testing.assert_close(layer.bias.detach().double(), x.double().mean(dim=(0, 2, 3)), rtol=1e-6, atol=1e-6)


def test_the_initial_reconstruction_cost_drops_to_about_the_marginal():
    """With the default bias every pixel starts at p = 1/2; from the marginal the initial
    -log p(x | z) is close to the marginal's own cost (the weights add a little noise)."""
    x = _sparse_binary(500, 64)
    torch.manual_seed(0)
    default = build_hierarchical_vae(input_dim=64, latent_dims=(8, 4), hidden=((32,), (16,)))
    torch.manual_seed(0)
    marginal = init_output_bias(build_hierarchical_vae(input_dim=64, latent_dims=(8, 4), hidden=((32,), (16,))), x)
    p = x.mean(0).clamp(1e-3, 1 - 1e-3)
    entropy = -(x * p.log() + (1 - x) * (1 - p).log()).sum(-1).mean()
    with torch.no_grad():
        torch.manual_seed(1)
        rec_default = default.loss(x, beta=0.0).item()
        torch.manual_seed(1)
        rec_marginal = marginal.loss(x, beta=0.0).item()
    assert rec_marginal < rec_default
    assert abs(rec_marginal - entropy.item()) < abs(rec_default - entropy.item()) / 4


def test_argument_errors():
    model = build_mlp_vae(10, hidden=(5,), latent_dim=2)
    with pytest.raises(ValueError, match="data"):
        init_output_bias(model, torch.zeros(0, 10))
    with pytest.raises(ValueError, match="eps"):
        init_output_bias(model, torch.rand(4, 10), eps=0.7)
    with pytest.raises(ValueError, match="model"):
        init_output_bias(torch.nn.Linear(2, 2), torch.rand(4, 10))
    with pytest.raises(ValueError, match="per_element"):
        init_output_bias(build_mlp_vae(10, hidden=(5,), latent_dim=2, likelihood="gaussian", obs_var="per_element"),
                         torch.rand(4, 10))
    with pytest.raises(ValueError, match="not 'continuous_bernoulli'"):
        init_output_bias(build_mlp_vae(10, hidden=(5,), latent_dim=2, likelihood="continuous_bernoulli"),
                         torch.rand(4, 10))


def test_trainer_option_sets_the_bias_and_resume_keeps_the_saved_weights(tmp_path):
    from fastvae.training import Trainer, TrainConfig

    data = _sparse_binary(64, 37)
    cfg = dict(epochs=1, batch_size=16, device="cpu", seed=2, progress=False)
    torch.manual_seed(0)
    fresh = Trainer(build_hierarchical_vae(input_dim=37, latent_dims=(6, 3), hidden=((12,), (8,))), data, None,
                    TrainConfig(output_bias="marginal", **cfg), out_dir=tmp_path / "run")
    p = data.double().mean(0).clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(_last_linear(fresh.model).bias.detach().double(), torch.log(p / (1 - p)),
                               rtol=1e-6, atol=1e-6)
    torch.manual_seed(0)
    plain = Trainer(build_hierarchical_vae(input_dim=37, latent_dims=(6, 3), hidden=((12,), (8,))), data, None,
                    TrainConfig(**cfg))
    assert not torch.allclose(_last_linear(plain.model).bias, _last_linear(fresh.model).bias)
    fresh.fit()
    trained = _last_linear(fresh.model).bias.detach().clone()
    resumed = Trainer.from_checkpoint(str(tmp_path / "run"), data, None, out_dir=tmp_path / "run", epochs=2)
    assert resumed.config.output_bias == "marginal"
    assert torch.equal(_last_linear(resumed.model).bias.detach(), trained)


def test_cli_output_bias_flag(tmp_path):
    from fastvae import cli
    from fastvae.training import load_model

    out = tmp_path / "run"
    assert cli.main(["train", "--arch", "hierarchical", "--levels", "2", "--latent-dim", "4", "--epochs", "1",
                     "--output-bias", "marginal", "--out", str(out), "--hidden", "16", "--no-progress",
                     "--device", "cpu", "--no-plots"]) == 0
    assert load_model(out)[1]["train_config"]["output_bias"] == "marginal"
    with pytest.raises(SystemExit):
        cli.main(["train", "--output-bias", "mean", "--out", str(tmp_path / "bad")])
