"""The image_elbo family: the whole negative ELBO of an image VAE (DMoL, one discretized logistic,
categorical, continuous Bernoulli) as one op, against the float64 reference (fastvae.reference.elbo):
values and gradients for C = 1 and 3, odd sizes, channels-last and non-contiguous recon, bf16,
every reduction, beta, kl given or mu / logvar; gradcheck, opcheck, torch.compile fullgraph, the
gradient written once and scaled in place, and one image-VAE step's dispatcher calls; the
emulated CUDA kernels through ``emu``.
"""
from __future__ import annotations

import pytest
import torch

import fastvae
from fastvae import functional as F
from fastvae import reference as R
from fastvae.bench.dispatch import DispatchCounter

from .conftest import TOL, cpu_and_cuda, rel_err

ops = torch.ops.fastvae
LIKELIHOODS = ("dmol", "logistic", "categorical", "continuous_bernoulli")


def _case(likelihood, B, C, spatial, dtype=torch.float64, device="cpu", M=3, bits=8):
    """Fresh (recon, x) in the likelihood's layout; levels 0 and the top level forced in."""
    top = 2**bits - 1
    if likelihood == "continuous_bernoulli":
        return (torch.randn(B, C, *spatial, dtype=torch.float64) * 3).to(device, dtype), \
            torch.rand(B, C, *spatial, device=device).to(dtype)
    x = torch.randint(0, top + 1, (B, C, *spatial))
    x.view(B, -1)[:, 0] = 0
    x.view(B, -1)[:, -1] = top
    x = x.to(device=device, dtype=torch.uint8 if bits <= 8 else torch.int32)
    if likelihood == "dmol":
        k = (10 if C == 3 else 3) * M
        recon = torch.randn(B, k, *spatial, dtype=torch.float64)
        recon[:, M:] *= 0.6
    elif likelihood == "logistic":
        recon = torch.cat([torch.rand(B, C, *spatial, dtype=torch.float64) * 2.2 - 1.1,
                           torch.rand(B, C, *spatial, dtype=torch.float64) * 3 - 5], 1)
    else:
        recon = torch.randn(B, 2**bits, C, *spatial, dtype=torch.float64) * 2
    return recon.to(device, dtype), x


def _latent(B, Z=5, dtype=torch.float64, device="cpu"):
    return (torch.randn(B, Z, dtype=dtype, device=device).requires_grad_(),
            (torch.randn(B, Z, dtype=dtype, device=device) * 0.5).requires_grad_())


def _check(likelihood, recon, x, mu, logvar, dtype, reduction="mean", beta=1.0, kl_given=False, M=3, bits=8,
           tol=None):
    """Loss and every input gradient against reference.elbo in float64 on the same (rounded) inputs."""
    leaf = recon.detach().clone().requires_grad_()
    r64 = recon.detach().cpu().double().requires_grad_()
    mu64, lv64 = (t.detach().cpu().double().requires_grad_() for t in (mu, logvar))
    x64 = x.cpu().double() if x.is_floating_point() else x.cpu()
    if kl_given:
        kl = R.kl_standard_normal(mu, logvar)
        kl64 = R.kl_standard_normal(mu64, lv64)
        out = F.elbo(leaf, x, None, None, likelihood=likelihood, beta=beta, reduction=reduction, kl=kl,
                     num_mixtures=M, bits=bits)
        ref = R.elbo(r64, x64, None, None, likelihood=likelihood, beta=beta, reduction=reduction, kl=kl64,
                     num_mixtures=M, bits=bits)
        inputs, inputs64 = (leaf, mu, logvar), (r64, mu64, lv64)
    else:
        out = F.elbo(leaf, x, mu, logvar, likelihood=likelihood, beta=beta, reduction=reduction,
                     num_mixtures=M, bits=bits)
        ref = R.elbo(r64, x64, mu64, lv64, likelihood=likelihood, beta=beta, reduction=reduction,
                     num_mixtures=M, bits=bits)
        inputs, inputs64 = (leaf, mu, logvar), (r64, mu64, lv64)
    assert out.shape == ref.shape and out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = tol or TOL[dtype]
    assert rel_err(out.cpu(), ref) <= tol, (rel_err(out.cpu(), ref), tol)
    w = torch.rand_like(ref) + 0.5
    grads = torch.autograd.grad(out, inputs, w.to(out.device, out.dtype), allow_unused=True)
    want = torch.autograd.grad(ref, inputs64, w, allow_unused=True)
    assert grads[0].shape == leaf.shape and grads[0].dtype == leaf.dtype
    for g, gw in zip(grads, want):
        if gw is None or (beta == 0 and g is None):
            continue
        assert rel_err(g.cpu(), gw) <= 4 * tol
    return out, grads


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_against_reference(device, likelihood, C, dtype):
    recon, x = _case(likelihood, 3, C, (5, 7), dtype, device)
    mu, logvar = _latent(3, dtype=dtype, device=device)
    _check(likelihood, recon, x, mu, logvar, dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("beta, kl_given", [(0.0, False), (0.7, True), (2.5, False)])
def test_reductions_beta_and_kl_given(device, likelihood, reduction, beta, kl_given):
    recon, x = _case(likelihood, 4, 3, (3, 5), torch.float32, device)
    mu, logvar = _latent(4, dtype=torch.float32, device=device)
    _check(likelihood, recon, x, mu, logvar, torch.float32, reduction, beta, kl_given)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("spatial", [(1, 1), (3, 11), (17,), (2, 3, 5)])
def test_odd_spatial_sizes(device, likelihood, spatial):
    recon, x = _case(likelihood, 2, 3, spatial, torch.float32, device, M=2)
    mu, logvar = _latent(2, dtype=torch.float32, device=device)
    _check(likelihood, recon, x, mu, logvar, torch.float32, M=2)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_channels_last_and_non_contiguous_recon(device, likelihood, layout):
    recon, x = _case(likelihood, 3, 3, (6, 5), torch.float32, device)
    if layout == "channels_last":
        # A conv decoder's channels-last output: the (class / parameter) channels innermost.
        flat = recon.reshape(3, -1, 6, 5).contiguous(memory_format=torch.channels_last)
        recon = flat.view(recon.shape)
        assert not recon.is_contiguous()
    else:
        recon = torch.cat([recon, recon], -1)[..., ::2]
    mu, logvar = _latent(3, dtype=torch.float32, device=device)
    out, grads = _check(likelihood, recon, x, mu, logvar, torch.float32)
    if layout == "channels_last":
        assert grads[0].stride() == recon.stride()  # the gradient in the recon's own layout


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_gradcheck(device, likelihood):
    recon, x = _case(likelihood, 2, 3, (2, 3), torch.float64, device, M=2, bits=3)
    mu, logvar = _latent(2, 3, device=device)
    recon.requires_grad_()
    for reduction, kl_given in [("mean", False), ("none", True)]:
        def loss(r, m, lv):
            kl = F.kl_standard_normal(m, lv) if kl_given else None
            return F.elbo(r, x, m, lv, likelihood=likelihood, reduction=reduction, beta=0.8, kl=kl,
                          num_mixtures=2, bits=3)
        assert torch.autograd.gradcheck(loss, (recon, mu, logvar))


def test_double_backward_raises_naming_the_op():
    recon, x = _case("dmol", 2, 1, (3,), M=2)
    mu, logvar = _latent(2)
    recon.requires_grad_()
    (g,) = torch.autograd.grad(F.elbo(recon, x, mu, logvar, likelihood="dmol", num_mixtures=2), recon,
                               create_graph=True)
    with pytest.raises(RuntimeError, match="image_elbo does not support double"):
        g.sum().backward()


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    cases = []
    for likelihood, dtype in [("dmol", torch.float32), ("logistic", torch.bfloat16), ("categorical", torch.float32),
                              ("continuous_bernoulli", torch.float32)]:
        recon, x = _case(likelihood, 2, 3, (3, 4), dtype, device, M=2, bits=4 if likelihood == "categorical" else 8)
        bits = 4 if likelihood == "categorical" else 8
        mu, logvar = _latent(2, dtype=dtype, device=device)
        kl = F.kl_standard_normal(mu, logvar).detach().requires_grad_()
        recon.requires_grad_()
        for reduction in ("mean", "none"):
            cases.append((recon, x, None, mu, logvar, likelihood, 2, bits, 0.5, reduction))
            cases.append((recon, x, kl, None, None, likelihood, 2, bits, 1.0, reduction))
        cases.append((recon.detach(), x, kl.detach(), None, None, likelihood, 2, bits, 1.0, "sum"))
    for args in cases:
        torch.library.opcheck(ops.image_elbo, args)
        mask = [args[0].requires_grad, args[2] is not None and args[2].requires_grad or args[3] is not None]
        torch.library.opcheck(ops.image_elbo_loss, (*[a.detach() if isinstance(a, torch.Tensor) else a
                                                      for a in args], mask))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("likelihood", ["dmol", "categorical"])
def test_compile_fullgraph(device, likelihood):
    torch._dynamo.reset()
    k = 10 * 2 if likelihood == "dmol" else 16 * 3
    dec = torch.nn.Conv2d(4, k, 1).to(device)
    z = torch.randn(2, 4, 5, 7, device=device)
    mu, logvar = _latent(2, dtype=torch.float32, device=device)
    x = _case(likelihood, 2, 3, (5, 7), torch.float32, device, M=2, bits=4 if likelihood == "categorical" else 8)[1]

    def step(z):
        r = dec(z)
        if likelihood == "categorical":
            r = r.unflatten(1, (16, 3))
        return F.elbo(r, x, mu, logvar, likelihood=likelihood, num_mixtures=2, bits=4 if k == 48 else 8, beta=0.5)

    got = torch.compile(step, fullgraph=True, backend="inductor")(z)
    got.backward()
    grads = [p.grad.clone() for p in (*dec.parameters(), mu, logvar)]
    for p in (*dec.parameters(), mu, logvar):
        p.grad = None
    want = step(z)
    want.backward()
    assert rel_err(got, want) < 1e-6
    for g, p in zip(grads, (*dec.parameters(), mu, logvar)):
        assert rel_err(g, p.grad) < 1e-5


def test_gradient_is_written_once_and_scaled_in_place():
    """The only gradient-sized buffer is the one the likelihood kernel writes: the backward pass
    scales it in place (one elbo_rescale_, no out-of-place rescale or multiply)."""
    recon, x = _case("categorical", 2, 3, (4, 5), torch.float32)
    mu, logvar = _latent(2, dtype=torch.float32)
    recon.requires_grad_()
    with DispatchCounter() as calls:
        F.elbo(recon, x, mu, logvar, likelihood="categorical", beta=0.5).backward(torch.tensor(3.0))
    assert calls.counts["image_elbo_loss"] == 1 and calls.counts["elbo_rescale_"] == 1, calls.calls
    assert "elbo_rescale" not in calls.ops and "mul" not in calls.ops, calls.calls
    assert not calls.syncs
    r64 = recon.detach().double().requires_grad_()
    (3 * R.elbo(r64, x, mu.detach().double(), logvar.detach().double(), likelihood="categorical", beta=0.5)).backward()
    assert rel_err(recon.grad, r64.grad) < 1e-5


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_image_vae_step_is_one_loss_op(likelihood):
    """One VAE.loss(x).backward() of a conv VAE with an image likelihood: the loss is one op, its
    backward one in-place rescale, and nothing reads a device value back."""
    model = fastvae.build_conv_vae((3, 8, 8), channels=(4,), latent_dim=3, likelihood=likelihood,
                                   num_mixtures=2)
    x = torch.randint(0, 256, (2, 3, 8, 8)).float() / 255
    model.loss(x)  # data_shape remembered outside the trace
    with DispatchCounter() as calls:
        model.loss(x).backward()
    fastvae_ops = [c for c in calls.calls if c.startswith("fastvae::")]
    assert fastvae_ops == ["fastvae::reparameterize_with_kl", "fastvae::image_elbo_loss",
                           "fastvae::elbo_rescale_", "fastvae::reparameterize_backward"], fastvae_ops
    assert not calls.syncs
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("free_bits", [0.0, 0.3])
def test_vae_loss_matches_the_reference_loss(monkeypatch, likelihood, free_bits):
    """VAE.loss through the image ELBO op against impl="reference" (the likelihood references and
    the KL in plain PyTorch), the same z on both paths (the posterior mean): loss and gradients."""
    monkeypatch.setattr(F, "reparameterize_with_kl", lambda mu, logvar, num_samples=None, generator=None:
                        (mu, F.kl_standard_normal(mu, logvar)))
    monkeypatch.setattr(R, "reparameterize", lambda mu, logvar, num_samples=None, eps=None: mu)
    model = fastvae.build_conv_vae((3, 8, 8), channels=(4,), latent_dim=3, likelihood=likelihood,
                                   num_mixtures=2).double()
    x = torch.randint(0, 256, (3, 3, 8, 8)).double() / 255
    for reduction in ("mean", "none"):
        fused = model.loss(x, beta=0.7, free_bits=free_bits, reduction=reduction)
        fused.sum().backward()
        g_fused = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        ref = model.loss(x, beta=0.7, free_bits=free_bits, reduction=reduction, impl="reference")
        ref.sum().backward()
        assert fused.shape == ref.shape and rel_err(fused, ref) < 1e-10
        for a, b in zip(g_fused, (p.grad for p in model.parameters())):
            assert rel_err(a, b) < 1e-8
        model.zero_grad()


def test_elbo_loss_module_takes_image_likelihoods():
    recon, x = _case("dmol", 2, 3, (4, 4), torch.float32, M=2)
    mu, logvar = _latent(2, dtype=torch.float32)
    loss_fn = fastvae.ELBOLoss(likelihood="dmol", num_mixtures=2, beta=0.5, reduction="sum")
    assert "num_mixtures=2" in repr(loss_fn)
    want = F.elbo(recon, x, mu, logvar, likelihood="dmol", num_mixtures=2, beta=0.5, reduction="sum")
    assert torch.equal(loss_fn(recon, x, mu, logvar), want)


# ---------------------------------------------------------------- bad input
_R3 = torch.randn(2, 20, 4, 4)
_X3 = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
_MU = torch.zeros(2, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(likelihood="dmol"), "num_mixtures"),
    (dict(likelihood="dmol", num_mixtures=3), "num_mixtures=3"),
    (dict(likelihood="dmol", num_mixtures=2, bits=0), "bits"),
    (dict(likelihood="dmol", num_mixtures=2, reduction="max"), "reduction"),
    (dict(likelihood="dmol", num_mixtures=2, beta=-1.0), "beta"),
    (dict(likelihood="logistic"), "channels"),
    (dict(likelihood="categorical"), "2\\^bits"),
    (dict(likelihood="continuous_bernoulli"), "x has shape"),
    (dict(likelihood="dmol", num_mixtures=2, kl=torch.zeros(3)), "kl has shape"),
])
def test_bad_input_raises_value_error_naming_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        F.elbo(_R3, _X3, _MU, _MU, **kwargs)
    with pytest.raises(ValueError, match="likelihood"):
        F.elbo(_R3, _X3, _MU, _MU, likelihood="poisson")
    with pytest.raises(ValueError, match="num_mixtures"):
        fastvae.ELBOLoss(likelihood="dmol")
