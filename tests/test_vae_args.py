"""The VAE API's inputs (issue 23): one strict rule for integers and reals, errors that name the
argument, and x of any real dtype cast to the model's dtype.

Each bad input is a row of one table: the call, and the argument its ValueError must name. A
new argument of the VAE API is a new row, not an ad-hoc test.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from fastvae._args import check_int, check_real
from fastvae.training import TrainConfig
from fastvae.vae import VAE, build_conv_vae, build_mlp_vae

NAN, INF = float("nan"), float("inf")


def _mlp(**kw):
    torch.manual_seed(0)
    return build_mlp_vae(input_dim=12, hidden=(8,), latent_dim=3, **kw)


def _x(rows=5, dim=12):
    torch.manual_seed(1)
    return torch.rand(rows, dim).round()


# (id, call, argument named in the error)
BAD = [
    ("latent_dim=-1", lambda: build_mlp_vae(latent_dim=-1), "latent_dim"),
    ("latent_dim=0", lambda: build_conv_vae(image_shape=(1, 8, 8), latent_dim=0), "latent_dim"),
    ("latent_dim=2.5", lambda: build_mlp_vae(latent_dim=2.5), "latent_dim"),
    ("latent_dim=True", lambda: build_mlp_vae(latent_dim=True), "latent_dim"),
    ("latent_dim='3'", lambda: build_mlp_vae(latent_dim="3"), "latent_dim"),
    ("input_dim=7.0", lambda: build_mlp_vae(input_dim=7.0), "input_dim"),
    ("hidden=(4.5,)", lambda: build_mlp_vae(hidden=(4.5,)), "hidden"),
    ("hidden='64'", lambda: build_mlp_vae(hidden="64"), "hidden"),
    ("channels=(0,)", lambda: build_conv_vae(image_shape=(1, 8, 8), channels=(0,)), "channels"),
    ("image_shape=(1, 8.0, 8)", lambda: build_conv_vae(image_shape=(1, 8.0, 8)), "image_shape"),
    ("activation=relu()", lambda: build_mlp_vae(activation=torch.nn.ReLU), "activation"),
    ("obs_logvar='x'", lambda: _mlp(likelihood="gaussian", obs_logvar="x"), "obs_logvar"),
    ("obs_logvar=nan", lambda: _mlp(likelihood="gaussian", obs_logvar=NAN), "obs_logvar"),
    ("obs_logvar=True", lambda: _mlp(likelihood="gaussian", obs_logvar=True), "obs_logvar"),
    ("VAE beta=nan", lambda: _mlp(beta=NAN), "beta"),
    ("VAE beta=inf", lambda: _mlp(beta=INF), "beta"),
    ("VAE beta=-1", lambda: _mlp(beta=-1.0), "beta"),
    ("VAE beta='1'", lambda: _mlp(beta="1"), "beta"),
    ("VAE data_shape=(3.0, 4)", lambda: VAE(torch.nn.Identity(), torch.nn.Identity(), 2, data_shape=(3.0, 4)),
     "data_shape"),
    ("likelihood=None", lambda: _mlp(likelihood=None), "likelihood"),
    ("sample(None)", lambda: _mlp().sample(None), "n"),
    ("sample(2.5)", lambda: _mlp().sample(2.5), "n"),
    ("sample(True)", lambda: _mlp().sample(True), "n"),
    ("sample('5')", lambda: _mlp().sample("5"), "n"),
    ("sample(0)", lambda: _mlp().sample(0), "n"),
    ("log_likelihood num_samples=None", lambda: _mlp().log_likelihood(_x(), num_samples=None), "num_samples"),
    ("log_likelihood num_samples=2.5", lambda: _mlp().log_likelihood(_x(), num_samples=2.5), "num_samples"),
    ("log_likelihood num_samples=True", lambda: _mlp().log_likelihood(_x(), num_samples=True), "num_samples"),
    ("log_likelihood num_samples='5'", lambda: _mlp().log_likelihood(_x(), num_samples="5"), "num_samples"),
    ("log_likelihood chunk_size=2.5", lambda: _mlp().log_likelihood(_x(), 4, chunk_size=2.5), "chunk_size"),
    ("log_likelihood chunk_size=0", lambda: _mlp().log_likelihood(_x(), 4, chunk_size=0), "chunk_size"),
    ("iwae_loss num_samples=2.5", lambda: _mlp().iwae_loss(_x(), num_samples=2.5), "num_samples"),
    ("iwae_loss reduction='avg'", lambda: _mlp().iwae_loss(_x(), reduction="avg"), "reduction"),
    ("loss beta='1'", lambda: _mlp().loss(_x(), beta="1"), "beta"),
    ("loss beta=nan", lambda: _mlp().loss(_x(), beta=NAN), "beta"),
    ("loss free_bits=nan", lambda: _mlp().loss(_x(), free_bits=NAN), "free_bits"),
    ("loss free_bits=inf", lambda: _mlp().loss(_x(), free_bits=INF), "free_bits"),
    ("loss free_bits=-1", lambda: _mlp().loss(_x(), free_bits=-1.0), "free_bits"),
    ("loss reduction='avg'", lambda: _mlp().loss(_x(), reduction="avg"), "reduction"),
    ("loss impl='cuda'", lambda: _mlp().loss(_x(), impl="cuda"), "impl"),
    ("loss x=list", lambda: _mlp().loss(_x().tolist()), "x"),
    ("loss x=ndarray", lambda: _mlp().loss(_x().numpy()), "x"),
    ("loss x with 0 rows", lambda: _mlp().loss(_x()[:0]), "x"),
    ("loss x 1-D", lambda: _mlp().loss(_x()[0]), "x"),
    ("loss x complex", lambda: _mlp().loss(_x().to(torch.complex64)), "x"),
    ("loss x of another size", lambda: _mlp().loss(torch.rand(5, 13)), "data_shape"),
    ("elbo x with 0 rows", lambda: _mlp().elbo(_x()[:0]), "x"),
    ("reconstruct x of another size", lambda: _mlp().reconstruct(torch.rand(5, 13)), "data_shape"),
    ("reconstruct x 1-D", lambda: _mlp().reconstruct(torch.rand(12)), "x"),
    ("reconstruct x=list", lambda: _mlp().reconstruct([[0.0] * 12]), "x"),
    ("encode x 1-D", lambda: _mlp().encode(torch.rand(12)), "x"),
    ("TrainConfig epochs=2.5", lambda: TrainConfig(epochs=2.5), "epochs"),
    ("TrainConfig batch_size=True", lambda: TrainConfig(batch_size=True), "batch_size"),
    ("TrainConfig lr='1e-3'", lambda: TrainConfig(lr="1e-3"), "lr"),
    ("TrainConfig free_bits=inf", lambda: TrainConfig(free_bits=INF), "free_bits"),
    ("TrainConfig beta=nan", lambda: TrainConfig(beta=NAN), "beta"),
    ("TrainConfig seed=-1", lambda: TrainConfig(seed=-1), "seed"),
    ("TrainConfig progress=1", lambda: TrainConfig(progress=1), "progress"),
]


@pytest.mark.parametrize("call,name", [(c, n) for _, c, n in BAD], ids=[i for i, _, _ in BAD])
def test_a_bad_argument_is_a_value_error_naming_it(call, name):
    with pytest.raises(ValueError, match=rf"(^|\W){re.escape(name)}\W"):
        call()


# ---------------------------------------------------------------------- x of another dtype
@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.int64, torch.int32, torch.float64,
                                   torch.float16])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_x_of_any_real_dtype_is_cast_to_the_models(dtype, likelihood):
    model = _mlp(likelihood=likelihood)
    x = _x()
    assert x.max() == 1 and x.min() == 0  # binary data, exact in every dtype
    xd = x.to(dtype)
    for method in ("loss", "elbo"):
        torch.manual_seed(5)
        expected = getattr(model, method)(x)
        torch.manual_seed(5)
        got = getattr(model, method)(xd)
        assert torch.equal(got, expected), (method, dtype)
    torch.manual_seed(5)
    expected = model.loss(x, impl="reference")
    torch.manual_seed(5)
    assert torch.equal(model.loss(xd, impl="reference"), expected)
    assert torch.equal(model.reconstruct(xd), model.reconstruct(x))
    torch.manual_seed(6)
    expected = model.log_likelihood(x, num_samples=7)
    torch.manual_seed(6)
    assert torch.equal(model.log_likelihood(xd, num_samples=7), expected)


def test_float32_x_on_a_float64_model():
    model = _mlp().double()
    x = torch.rand(4, 12)
    torch.manual_seed(2)
    got = model.loss(x)
    torch.manual_seed(2)
    expected = model.loss(x.double())
    assert got.dtype == torch.float64 and torch.equal(got, expected)
    assert model.reconstruct(x).dtype == torch.float64
    got.backward()  # gradients flow to the float64 parameters
    assert all(p.grad is not None and p.grad.dtype == torch.float64 for p in model.parameters())


def test_reconstruct_keeps_the_shape_of_x_and_checks_it_against_data_shape():
    model = build_mlp_vae(input_dim=16, hidden=(8,), latent_dim=2, data_shape=(1, 4, 4))
    x = torch.rand(3, 1, 4, 4)
    assert model.reconstruct(x).shape == x.shape
    assert model.reconstruct(x.reshape(3, 16)).shape == (3, 16)
    with pytest.raises(ValueError, match="data_shape"):
        model.reconstruct(torch.rand(3, 1, 5, 5))


# ---------------------------------------------------------------------- the shared rule
@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3)])
def test_check_int_accepts_integers(value):
    assert check_int("k", value, 1) == 3 and type(check_int("k", value)) is int


@pytest.mark.parametrize("value", [True, False, 2.5, 3.0, "3", None, np.float64(3.0), torch.tensor(3)])
def test_check_int_refuses_everything_else(value):
    with pytest.raises(ValueError, match=r"^k must be an integer"):
        check_int("k", value)


def test_check_int_bounds_name_the_range():
    with pytest.raises(ValueError, match=r"k must be an integer >= 1 and <= 4, got 5"):
        check_int("k", 5, 1, 4)
    with pytest.raises(ValueError, match=r"k must be an integer >= 1, got 0"):
        check_int("k", 0, 1)


@pytest.mark.parametrize("value", [2, 2.5, np.float32(2.5), np.int64(2), -1e300])
def test_check_real_accepts_finite_reals(value):
    assert check_real("r", value) == float(value) and type(check_real("r", value)) is float


@pytest.mark.parametrize("value", [NAN, INF, -INF, True, "1", None, 1j, torch.tensor(1.0)])
def test_check_real_refuses_everything_else(value):
    with pytest.raises(ValueError, match=r"^r must be a finite number"):
        check_real("r", value)


def test_check_real_bounds_and_infinities():
    assert check_real("r", INF, 0.0, allow_inf=True) == INF
    with pytest.raises(ValueError, match=r"r must be a number >= 0"):
        check_real("r", -INF, 0.0, allow_inf=True)
    with pytest.raises(ValueError, match=r"r must be a number"):
        check_real("r", NAN, allow_inf=True)
    with pytest.raises(ValueError, match=r"r must be a finite number > 0, got 0.0"):
        check_real("r", 0.0, 0.0, strict_low=True)
    assert check_real("r", 1e-300, 0.0, strict_low=True) == 1e-300
    assert math.isclose(check_real("r", 0.5, 0.0, 1.0), 0.5)
    with pytest.raises(ValueError, match=r"<= 1"):
        check_real("r", 1.5, 0.0, 1.0)
