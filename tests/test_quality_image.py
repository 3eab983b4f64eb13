"""benchmarks/quality_image.py without training: the eager baseline's input and loss as plugged
into a VAE, its one-channel formula, bits/dim and the results table."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

from fastvae import reference as R
from fastvae.vae import build_conv_vae
from tests.scripts import load_script

Q = load_script("quality_image")


def _model(channels: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_conv_vae((channels, 6, 5), channels=(4,), latent_dim=3, likelihood="dmol", num_mixtures=2)


def _images(channels: int, n: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, 6, 5)).float() / 255


def test_baseline_input_is_the_bin_centres():
    x = _images(3, 4)
    got = Q.baseline_input(x.flatten(1), (3, 6, 5), 8)
    assert got.shape == (4, 3, 6, 5)
    torch.testing.assert_close(got.double(), torch.round(x.double() * 255) / 127.5 - 1, rtol=0, atol=1e-6)
    five = Q.baseline_input(x, (3, 6, 5), 5)
    torch.testing.assert_close(five.double(), torch.floor(torch.round(x.double() * 255) / 8) * 2 / 31 - 1,
                               rtol=0, atol=1e-6)


def test_bits_per_dim():
    bpd = float(torch.rand(()) * 8)
    assert Q.bits_per_dim(-bpd * 3072 * math.log(2), 3072) == pytest.approx(bpd, rel=1e-12)
    with pytest.raises(ValueError, match="dims"):
        Q.bits_per_dim(-1.0, 0)


def test_eager_one_channel_matches_the_reference_where_bins_are_wide():
    torch.manual_seed(3)
    m, bits = 3, 5
    params = torch.randn(2, 3 * m, 7, 5, dtype=torch.float64)
    params[:, m:2 * m] = params[:, m:2 * m].clamp(-0.5, 0.5) * 0.2  # means near 0
    params[:, 2 * m:] = 0.3 + 0.2 * params[:, 2 * m:].clamp(-1, 1)  # wide logistics: every bin > 1e-5
    v = torch.randint(0, 2**bits, (2, 1, 7, 5))
    want = R.discretized_mix_logistic_log_likelihood(params, v, m, bits=bits)
    got = Q.eager_dmol_log_likelihood(params, v.double() * 2 / (2**bits - 1) - 1, m, bits)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("channels", [1, 3])
def test_eager_baseline_vae_trains_the_baseline_and_evaluates_exactly(channels):
    model = _model(channels)
    eager = Q.eager_baseline(model)
    assert eager.encoder is model.encoder and eager.decoder is model.decoder
    assert eager.config == model.config
    x = _images(channels)
    beta = 0.7
    torch.manual_seed(5)
    got = eager.loss(x, beta=beta, reduction="none")
    torch.manual_seed(5)
    out = model(x)
    want = -Q.eager_dmol_log_likelihood(out.recon, Q.baseline_input(x, x.shape[1:], 8), 2, 8) + beta * out.kl
    torch.testing.assert_close(got, want)
    got.mean().backward()  # the baseline's gradient reaches the shared networks
    assert all(p.grad is not None for p in model.parameters())
    eager.eval()
    torch.manual_seed(6)
    exact = eager.loss(x, beta=beta, reduction="none")
    torch.manual_seed(6)
    torch.testing.assert_close(exact, model.loss(x, beta=beta, reduction="none"))


def test_eager_baseline_vae_refuses_what_it_does_not_train():
    eager = Q.eager_baseline(_model(3))
    with pytest.raises(ValueError, match="plain one-sample ELBO"):
        eager.loss(_images(3), free_bits=0.1)
    with pytest.raises(ValueError, match="likelihood='dmol'"):
        Q.eager_baseline(build_conv_vae((1, 6, 5), channels=(4,), latent_dim=3, likelihood="logistic"))


def test_paired_log_likelihood_scores_both_formulas_on_one_draw():
    model = _model(3)
    x = _images(3, 5)
    exact, base = Q.paired_log_likelihood(model, x, num_samples=4, seed=1, rows=8)
    assert exact.shape == base.shape == (5,)
    assert torch.isfinite(exact).all() and torch.isfinite(base).all()
    again, _ = Q.paired_log_likelihood(model, x, num_samples=4, seed=1, rows=8)
    torch.testing.assert_close(again, exact, rtol=0, atol=0)  # its own seeded stream
    # An untrained model spreads its bins wide: both formulas agree on every image there.
    torch.testing.assert_close(base, exact, rtol=1e-4, atol=1e-3)


def test_table_lists_each_variant_with_its_seeds_in_order():
    def result(data, variant, seed):
        return {"data": data, "variant": variant, "seed": seed, "bits_per_dim": 4 + seed / 10,
                "bits_per_dim_elbo": 5.0, "paired_bits_per_dim_baseline_formula": 4.5, "train_seconds": 60.0}

    text = Q.table([result("mnist", "eager", 1), result("photos", "fused", 1), result("photos", "fused", 0),
                    result("mnist", "fused", 0)])
    lines = text.splitlines()
    assert len(lines) == 5
    assert lines[2].startswith("| photos | fused") and "4.0000 / 4.1000" in lines[2]
    assert f"{statistics.mean([4.0, 4.1]):.4f} ± {statistics.stdev([4.0, 4.1]):.4f}" in lines[2]
    assert "| - |" in lines[4]  # one seed: no spread
    assert lines[3].startswith("| mnist | fused") and lines[4].startswith("| mnist | eager")
