"""The VAE API with the image likelihoods (fastvae.vae.image_likelihoods): decoder sizes, log p(x|z)
through the fused ops against the float64 reference, the objectives, samples, config round
trips, argument errors and the command line (photos, bits/dim)."""
from __future__ import annotations

import math

import pytest
import torch

from fastvae import cli
from fastvae.vae import build_conv_vae, build_mlp_vae, build_vae
from fastvae.vae import image_likelihoods as il

# (likelihood, image shape, num_mixtures, bits): both colour layouts of the mixture, fewer bits.
CASES = [("dmol", (3, 6, 5), 3, 8), ("dmol", (1, 7, 7), 2, 5), ("logistic", (3, 5, 6), 1, 8),
         ("categorical", (1, 6, 6), 1, 5), ("continuous_bernoulli", (3, 5, 5), 1, 8)]
IDS = [f"{c[0]}-C{c[1][0]}-b{c[3]}" for c in CASES]


def _model(likelihood, shape, m, bits, arch="conv"):
    torch.manual_seed(0)
    if arch == "conv":
        return build_conv_vae(shape, channels=(6,), latent_dim=3, likelihood=likelihood, num_mixtures=m, bits=bits)
    return build_mlp_vae(math.prod(shape), hidden=(16,), latent_dim=3, likelihood=likelihood, num_mixtures=m,
                         bits=bits, data_shape=shape)


def _images(shape, batch=4, seed=1):
    """8-bit images in [0, 1], every level possible (both edges included)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(0, 256, (batch, *shape), generator=g)
    v.view(-1)[:2] = torch.tensor([0, 255])
    return v.float() / 255


@pytest.mark.parametrize("likelihood,shape,m,bits", CASES, ids=IDS)
@pytest.mark.parametrize("arch", ["conv", "mlp"])
def test_log_px_is_the_reference_and_the_loss_trains(likelihood, shape, m, bits, arch):
    vae = _model(likelihood, shape, m, bits, arch)
    x = _images(shape)
    per_pixel = il.decoder_channels(likelihood, shape[0], m, bits)
    params = vae.decode(torch.randn(4, 3))
    assert params.numel() == 4 * per_pixel * shape[1] * shape[2]
    recon, _ = vae._observation(params, (4,))
    fused = vae._log_px(recon, vae._flat(x), 0.0, fused=True)
    ref = vae._log_px(recon.double(), vae._flat(x).double(), 0.0, fused=False)
    assert fused.shape == (4,) and torch.isfinite(fused).all()
    torch.testing.assert_close(fused.double(), ref, rtol=1e-5, atol=1e-4 * shape[0] * shape[1] * shape[2] * 1e-2)
    loss = vae.loss(x)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and torch.isfinite(p.grad).all()
                                        for p in vae.parameters())
    ref_loss = vae.loss(x, impl="reference")
    assert torch.isfinite(ref_loss)


@pytest.mark.parametrize("likelihood,shape,m,bits", CASES, ids=IDS)
def test_levels_of_x_and_the_k_sample_paths(likelihood, shape, m, bits):
    vae = _model(likelihood, shape, m, bits)
    x = _images(shape, batch=3)
    v = il.levels(x, bits)
    assert v.dtype == torch.uint8 and int(v.max()) <= 2**bits - 1
    assert torch.equal(il.levels(x, 8).float(), torch.round(x * 255))
    iwae = vae.loss(x, objective="iwae", num_samples=4, gradient="dreg")
    iwae.backward()
    assert torch.isfinite(iwae)
    ll = vae.log_likelihood(x, num_samples=20, chunk_size=7)
    assert ll.shape == (3,) and torch.isfinite(ll).all()
    # log p(x) >= the ELBO in expectation: with K = 20 the estimate is above a one-sample ELBO mean.
    assert (ll.mean() > vae.elbo(x).mean() - 5 * shape[0] * shape[1] * shape[2] * 0.01)


@pytest.mark.parametrize("likelihood,shape,m,bits", CASES, ids=IDS)
def test_samples_and_config_round_trip(likelihood, shape, m, bits):
    vae = _model(likelihood, shape, m, bits)
    g = torch.Generator().manual_seed(3)
    for mean in (True, False):
        s = vae.sample(5, mean=mean, generator=g)
        assert s.shape == (5, *shape) and s.min() >= 0 and s.max() <= 1
    drawn = vae.sample(5, mean=False, generator=g)
    if likelihood in il.DISCRETE_LIKELIHOODS:  # on the level grid
        top = 2**bits - 1
        assert torch.allclose(drawn * top, torch.round(drawn * top), atol=1e-4)
    again = build_vae(vae.config)
    assert again.config == vae.config and again.num_mixtures == m and again.bits == bits
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in vae.parameters())


def test_image_likelihood_arguments_are_checked():
    with pytest.raises(ValueError, match=r"needs data_shape=\(C, H, W\)"):
        build_mlp_vae(48, likelihood="dmol")
    with pytest.raises(ValueError, match="1 or 3 colour channels"):
        build_conv_vae((2, 8, 8), likelihood="dmol")
    with pytest.raises(ValueError, match="needs likelihood='gaussian'"):
        build_conv_vae((3, 8, 8), likelihood="logistic", obs_var="scalar")
    with pytest.raises(ValueError, match="bits must be at most 8"):
        build_conv_vae((3, 8, 8), likelihood="categorical", bits=9)
    with pytest.raises(ValueError, match="num_mixtures"):
        build_conv_vae((3, 8, 8), likelihood="dmol", num_mixtures=0)
    vae = _model("dmol", (3, 6, 5), 3, 8)
    with pytest.raises(ValueError, match="needs 30 x 6 x 5"):
        il.image_log_px("dmol", torch.randn(2, 7), torch.rand(2, 90), (3, 6, 5), 3, 8)
    assert vae.likelihood == "dmol"


def test_cli_trains_a_dmol_vae_on_photos_and_reports_bits_per_dim(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    rc = cli.main(["train", "--data", "photos", "--arch", "conv", "--channels", "8,16", "--latent-dim", "8",
                   "--likelihood", "dmol", "--num-mixtures", "2", "--epochs", "1", "--max-steps", "3",
                   "--eval-samples", "5", "--num-images", "4", "--no-progress", "--device", "cpu",
                   "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    bpd = float(text.split(" bits/dim")[0].rsplit(", ", 1)[1])
    assert 0 < bpd < 16  # a 3-step model: about uniform's 8 bits/dim, not orders of magnitude off
    assert (out / "samples.png").is_file()
    rc = cli.main(["eval", str(out), "--num-samples", "5", "--max-examples", "10", "--device", "cpu"])
    assert rc == 0 and "bits/dim" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--arch", "hierarchical", "--likelihood", "dmol", "--out", str(tmp_path / "h")])
    assert exc.value.code == 2 and "--likelihood dmol needs --arch mlp or conv" in capsys.readouterr().err
