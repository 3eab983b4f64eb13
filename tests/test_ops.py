"""Every fused op against its plain-PyTorch twin in fastvae.reference.

Forward: relative error ||out - ref|| / ||ref|| against the float64 reference on the same
(rounded) inputs, per dtype (TOL in conftest). Backward: float64 gradcheck, and autograd of the
reference for the other dtypes. Sizes 1, 7, 1025, 100003; non-contiguous and broadcast inputs.
"""
from __future__ import annotations

import pytest
import torch

from fastvae import functional as F
from fastvae import reference as R

from .conftest import TOL, cpu_and_cuda, rel_err

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
COLS = [1, 7, 1025, 100003]


def _rows_for(cols: int) -> int:
    return 3 if cols > 5000 else 5


def _inputs(*shapes, dtype, device, scale=1.0):
    return [(torch.randn(s, dtype=torch.float64) * scale).to(device=device, dtype=dtype) for s in shapes]


def _check_forward_and_backward(fused, ref, inputs, dtype, out_tol=None, grad_tol=None):
    """Compares values and input gradients of fused(*inputs) with ref on float64 copies."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    leaves64 = [t.detach().double().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fused(*leaves)
    expect = ref(*leaves64)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.shape == expect.shape
    assert rel_err(out, expect) <= (out_tol or TOL[dtype])
    w = torch.randn_like(expect)  # a random incoming gradient, not just ones
    out.backward(w.to(out.dtype))
    expect.backward(w)
    for a, b in zip(leaves, leaves64):
        if a.requires_grad:
            assert a.grad is not None and a.grad.dtype == a.dtype and a.grad.shape == a.shape
            assert rel_err(a.grad, b.grad) <= (grad_tol or TOL[dtype] * 4)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", COLS)
class TestAgainstReference:
    def test_kl(self, device, dtype, cols):
        mu, lv = _inputs((_rows_for(cols), cols), (_rows_for(cols), cols), dtype=dtype, device=device)
        _check_forward_and_backward(F.kl_standard_normal, R.kl_standard_normal, [mu, lv], dtype)

    def test_bernoulli(self, device, dtype, cols):
        rows = _rows_for(cols)
        (logits,) = _inputs((rows, cols), dtype=dtype, device=device, scale=4.0)
        x = torch.rand(rows, cols, device=device).to(dtype)  # soft targets, so x gets a gradient too
        _check_forward_and_backward(F.bernoulli_log_likelihood, R.bernoulli_log_likelihood, [logits, x], dtype)

    def test_gaussian_per_element(self, device, dtype, cols):
        shape = (_rows_for(cols), cols)
        mean, x, lv = _inputs(shape, shape, shape, dtype=dtype, device=device)
        _check_forward_and_backward(F.gaussian_log_likelihood, R.gaussian_log_likelihood, [mean, x, lv], dtype)

    def test_gaussian_density(self, device, dtype, cols):
        shape = (_rows_for(cols), cols)
        z, mu, lv = _inputs(shape, shape, shape, dtype=dtype, device=device)
        _check_forward_and_backward(F.gaussian_log_density, R.gaussian_log_density, [z, mu, lv], dtype)

    def test_standard_normal_density(self, device, dtype, cols):
        (z,) = _inputs((_rows_for(cols), cols), dtype=dtype, device=device)
        _check_forward_and_backward(F.standard_normal_log_density, R.standard_normal_log_density, [z], dtype)


# ---------------------------------------------------------------- variances and broadcasting
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", ["float", "scalar", "per_dim", "per_element"])
def test_gaussian_variance_forms(device, dtype, form):
    mean, x = _inputs((9, 7, 13), (9, 7, 13), dtype=dtype, device=device)
    logvar = {
        "float": 0.3,
        "scalar": torch.randn((), device=device).to(dtype),
        "per_dim": torch.randn(7, 13, device=device).to(dtype),
        "per_element": torch.randn(9, 7, 13, device=device).to(dtype),
    }[form]
    if form == "float":
        fused = lambda m, xx: F.gaussian_log_likelihood(m, xx, logvar)  # noqa: E731
        ref = lambda m, xx: R.gaussian_log_likelihood(m, xx, logvar)  # noqa: E731
        _check_forward_and_backward(fused, ref, [mean, x], dtype)
    else:
        _check_forward_and_backward(F.gaussian_log_likelihood, R.gaussian_log_likelihood, [mean, x, logvar], dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_broadcast_targets_over_samples(device):
    """K samples of decoder output against one batch of x: x is read in place, grads sum back."""
    logits, xg = _inputs((4, 6, 33), (6, 33), dtype=torch.float64, device=device)
    xb = torch.rand(6, 33, device=device, dtype=torch.float64)
    f = lambda l, xx: F.bernoulli_log_likelihood(l, xx, event_dims=1)  # noqa: E731
    r = lambda l, xx: R.bernoulli_log_likelihood(l, xx, event_dims=1)  # noqa: E731
    _check_forward_and_backward(f, r, [logits, xb], torch.float64)
    g = lambda m, xx: F.gaussian_log_likelihood(m, xx, 0.5, event_dims=1)  # noqa: E731
    gr = lambda m, xx: R.gaussian_log_likelihood(m, xx, 0.5, event_dims=1)  # noqa: E731
    _check_forward_and_backward(g, gr, [logits, xg], torch.float64)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_density_broadcasts_samples(device):
    z, mu, lv = _inputs((5, 3, 8), (3, 8), (3, 8), dtype=torch.float64, device=device)
    _check_forward_and_backward(F.gaussian_log_density, R.gaussian_log_density, [z, mu, lv], torch.float64)
    # mu broadcast inside the latent dim and logvar with a size-1 batch dim
    z, mu, lv = _inputs((5, 3, 8), (3, 1), (1, 8), dtype=torch.float64, device=device)
    _check_forward_and_backward(F.gaussian_log_density, R.gaussian_log_density, [z, mu, lv], torch.float64)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_contiguous_inputs(device):
    base = torch.randn(40, 26, dtype=torch.float64, device=device)
    mu, lv = base[::2, :13], base[1::2, 13:].t().t()  # strided slices
    assert not mu.is_contiguous() and not lv.is_contiguous()
    _check_forward_and_backward(F.kl_standard_normal, R.kl_standard_normal, [mu, lv], torch.float64)
    logits = torch.randn(13, 20, dtype=torch.float64, device=device).t()  # transposed
    x = torch.rand(13, 20, dtype=torch.float64, device=device).t()
    _check_forward_and_backward(F.bernoulli_log_likelihood, R.bernoulli_log_likelihood, [logits, x], torch.float64)
    _check_forward_and_backward(F.gaussian_log_density, R.gaussian_log_density, [logits, x, logits.flip(0)], torch.float64)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("xdtype", [torch.bool, torch.uint8])
def test_binary_targets_stay_one_byte(device, xdtype):
    logits = torch.randn(7, 1025, device=device, requires_grad=True)
    x = torch.rand(7, 1025, device=device) > 0.5
    out = F.bernoulli_log_likelihood(logits, x.to(xdtype))
    ref = R.bernoulli_log_likelihood(logits.detach().double(), x.double())
    assert rel_err(out, ref) < 1e-6
    out.sum().backward()
    assert rel_err(logits.grad, x.float() - torch.sigmoid(logits.detach())) < 1e-6


# ---------------------------------------------------------------- float64 gradcheck
@pytest.mark.parametrize("device", cpu_and_cuda())
def test_gradcheck_all_ops(device):
    kw = dict(dtype=torch.float64, device=device)

    def leaf(*shape):
        return torch.randn(shape, **kw).requires_grad_()

    gc = torch.autograd.gradcheck
    assert gc(F.kl_standard_normal, (leaf(3, 7), leaf(3, 7)))
    assert gc(F.bernoulli_log_likelihood, (leaf(3, 7), torch.rand(3, 7, **kw).requires_grad_()))
    assert gc(lambda m, x, v: F.gaussian_log_likelihood(m, x, v, event_dims=1), (leaf(2, 3, 7), leaf(3, 7), leaf(7)))
    assert gc(F.gaussian_log_likelihood, (leaf(3, 7), leaf(3, 7), leaf()))
    assert gc(F.gaussian_log_density, (leaf(4, 3, 7), leaf(3, 7), leaf(3, 7)))
    assert gc(F.standard_normal_log_density, (leaf(4, 3, 7),))
    x = torch.rand(3, 7, **kw)
    assert gc(lambda a, b: F.elbo(a, x, b, b * 0.5), (leaf(3, 7), leaf(3, 4)))

    gen = torch.Generator(device=device)

    def sample(mu, lv):
        gen.manual_seed(11)  # the same eps on every call, as gradcheck requires
        return F.reparameterize(mu, lv, num_samples=3, generator=gen)

    assert gc(sample, (leaf(2, 5), leaf(2, 5)))

    def sample_and_kl(mu, lv):
        gen.manual_seed(11)
        z, kl = F.reparameterize_with_kl(mu, lv, num_samples=2, generator=gen)
        return z, kl

    assert gc(sample_and_kl, (leaf(3, 5), leaf(3, 5)))
    assert gc(lambda m, v: F.elbo(m[:, :7], x, m[:, 7:], v, kl=F.kl_standard_normal(m[:, 7:], v)), (leaf(3, 11), leaf(3, 4)))


# ---------------------------------------------------------------- numerics
@pytest.mark.parametrize("device", cpu_and_cuda())
def test_bernoulli_stable_for_huge_logits(device):
    logits = torch.tensor([[-1e4, -50.0, 0.0, 50.0, 1e4]], device=device, requires_grad=True)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]], device=device)
    ll = F.bernoulli_log_likelihood(logits, x)
    # -1e4 (x=1): -1e4; -50 (x=0): ~0; 0: log 0.5; 50 (x=1): ~0; 1e4 (x=0): -1e4.
    expected = -1e4 + torch.log(torch.tensor(0.5)).item() - 1e4
    assert torch.isfinite(ll).all() and abs(ll.item() - expected) < 1e-2
    ll.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_nan_and_inf_propagate(device):
    mu = torch.randn(3, 4, device=device)
    lv = torch.randn(3, 4, device=device)
    mu[1, 2] = float("nan")
    mu[2, 0] = float("inf")
    lv[3 - 1, 3] = -float("inf")  # exp(-inf) - (-inf) = +inf as well
    kl = F.kl_standard_normal(mu, lv)
    assert torch.isfinite(kl[0]) and torch.isnan(kl[1]) and kl[2] == float("inf")
    lv[0, 0] = float("inf")  # exp(inf) - inf: IEEE says NaN, as the reference does
    assert torch.isnan(F.kl_standard_normal(mu, lv)[0]) and torch.isnan(R.kl_standard_normal(mu, lv)[0])
    logits = torch.randn(2, 5, device=device)
    logits[0, 1] = float("nan")
    ll = F.bernoulli_log_likelihood(logits, torch.rand(2, 5, device=device))
    assert torch.isnan(ll[0]) and torch.isfinite(ll[1])


# ---------------------------------------------------------------- sampling
@pytest.mark.parametrize("device", cpu_and_cuda())
def test_reparameterize_moments_and_shape(device):
    mu = torch.randn(4, 16, device=device)
    lv = torch.randn(4, 16, device=device)
    z = F.reparameterize(mu, lv, num_samples=20000)
    assert z.shape == (20000, 4, 16)
    eps = (z - mu) / torch.exp(0.5 * lv)
    # 1.28M draws: mean within ~5 sigma of 0, std and kurtosis of a standard normal.
    assert abs(eps.mean().item()) < 5 / (eps.numel() ** 0.5)
    assert abs(eps.std().item() - 1) < 5e-3
    assert abs((eps**4).mean().item() - 3) < 0.05
    # Different elements are not correlated (lag-1 over the flat stream, across Philox groups).
    flat = eps.flatten()
    assert abs(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()) < 5e-3
    assert F.reparameterize(mu, lv).shape == (4, 16)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_reparameterize_reproducible_under_manual_seed(device):
    mu, lv = torch.randn(3, 9, device=device), torch.randn(3, 9, device=device)
    torch.manual_seed(1234)
    a = F.reparameterize(mu, lv, num_samples=2)
    b = F.reparameterize(mu, lv, num_samples=2)
    torch.manual_seed(1234)
    c = F.reparameterize(mu, lv, num_samples=2)
    assert torch.equal(a, c)
    assert not torch.equal(a, b)  # consecutive calls draw fresh noise
    g1 = torch.Generator(device=device).manual_seed(5)
    g2 = torch.Generator(device=device).manual_seed(5)
    assert torch.equal(F.reparameterize(mu, lv, generator=g1), F.reparameterize(mu, lv, generator=g2))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_sampling_ops_return_the_state_they_drew_from(device):
    """The raw ops draw (seed, offset) from the generator themselves and return it; given back
    as rng_state it reproduces the draw (what the backward pass relies on)."""
    ops = torch.ops.fastvae
    mu, lv = torch.randn(4, 9, device=device), torch.randn(4, 9, device=device)
    gen = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, ())))
    z, state = ops.reparameterize(mu, lv, 3, gen)
    z_kl, kl, state_kl = ops.reparameterize_with_kl(mu, lv, 3, gen)
    assert state.dtype == torch.int64 and state.shape == (2,) and not torch.equal(state, state_kl)
    assert not torch.equal(z, z_kl)  # a fresh stream per call
    assert torch.equal(ops.reparameterize(mu, lv, 3, rng_state=state)[0], z)
    again, kl_again, state_again = ops.reparameterize_with_kl(mu, lv, 3, rng_state=state_kl)
    assert torch.equal(again, z_kl) and torch.equal(kl_again, kl) and torch.equal(state_again, state_kl)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
def test_reparameterize_backward_regenerates_eps(device, dtype):
    mu = torch.randn(5, 1025, device=device).to(dtype).requires_grad_()
    lv = torch.randn(5, 1025, device=device).to(dtype).requires_grad_()
    # The autograd graph holds mu, logvar and the 2-element rng state, never eps or z.
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        z = F.reparameterize(mu, lv, num_samples=3)
    assert sorted(t.numel() for t in saved) == [2, mu.numel(), mu.numel()]
    w = torch.randn_like(z, dtype=torch.float64)
    z.backward(w.to(dtype))
    eps = (z.detach().double() - mu.detach().double()) / torch.exp(0.5 * lv.detach().double())
    grad_mu = w.sum(0)
    grad_lv = (w * eps * 0.5 * torch.exp(0.5 * lv.detach().double())).sum(0)
    tol = 3e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-5
    assert rel_err(mu.grad, grad_mu) < tol
    assert rel_err(lv.grad, grad_lv) < tol


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 1025), (7, 20), (1, 1), (4, 3, 7)])
@pytest.mark.parametrize("used", ["both", "z", "kl"])
def test_reparameterize_with_kl_is_sample_and_kl_in_one(device, dtype, shape, used):
    mu = (torch.randn(shape, dtype=torch.float64) * 0.7).to(device=device, dtype=dtype).requires_grad_()
    lv = (torch.randn(shape, dtype=torch.float64) * 0.7).to(device=device, dtype=dtype).requires_grad_()
    gen = torch.Generator(device=device)
    seed = int(torch.randint(0, 2**62, ()))
    z, kl = F.reparameterize_with_kl(mu, lv, num_samples=3, generator=gen.manual_seed(seed))
    assert z.shape == (3, *shape) and z.dtype == dtype and kl.shape == shape[:-1]
    # The sample is the one reparameterize draws from the same generator state.
    z_alone = F.reparameterize(mu.detach(), lv.detach(), num_samples=3, generator=gen.manual_seed(seed))
    assert rel_err(z, z_alone) <= (0 if device == "cpu" else 1e-6 if dtype != torch.float64 else 1e-14)
    # Reference on float64 copies, with the stream's eps from a float64 draw of the same seed.
    m64, l64 = mu.detach().double().requires_grad_(), lv.detach().double().requires_grad_()
    z64 = F.reparameterize(m64.detach(), l64.detach(), num_samples=3, generator=gen.manual_seed(seed))
    eps = (z64 - m64.detach()) / torch.exp(0.5 * l64.detach())
    z_ref, kl_ref = R.reparameterize(m64, l64, num_samples=3, eps=eps), R.kl_standard_normal(m64, l64)
    assert rel_err(z, z_ref) <= TOL[dtype] and rel_err(kl, kl_ref) <= TOL[dtype]
    w_z, w_kl = torch.randn_like(z_ref), torch.randn_like(kl_ref)
    terms = {"z": [(z, z_ref, w_z)], "kl": [(kl, kl_ref, w_kl)]}
    terms["both"] = terms["z"] + terms["kl"]
    sum(((out * w.to(device=device, dtype=out.dtype)).sum() for out, _, w in terms[used])).backward()
    sum(((ref * w).sum() for _, ref, w in terms[used])).backward()
    for fused, ref in ((mu, m64), (lv, l64)):
        assert fused.grad.dtype == dtype
        assert rel_err(fused.grad, ref.grad) <= TOL[dtype] * 4


# ---------------------------------------------------------------- the ELBO
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_elbo_matches_hand_written_loss(device, reduction, likelihood):
    import fastvae

    recon, mu, lv = _inputs((17, 1, 7, 7), (17, 6), (17, 6), dtype=torch.float32, device=device)
    x = torch.rand(17, 1, 7, 7, device=device)
    obs = torch.randn(1, 7, 7, device=device)
    kwargs = dict(likelihood=likelihood, obs_logvar=obs, beta=0.7, reduction=reduction)
    fused = lambda a, b, c: fastvae.ELBOLoss(**kwargs)(a, x, b, c)  # noqa: E731
    ref = lambda a, b, c: R.elbo(a, x.double(), b, c, **{**kwargs, "obs_logvar": obs.double()})  # noqa: E731
    _check_forward_and_backward(fused, ref, [recon, mu, lv], torch.float32)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: F.kl_standard_normal(torch.randn(3, 4), torch.randn(3, 5)), "broadcast"),
        (lambda: F.kl_standard_normal(torch.arange(12).view(3, 4), torch.randn(3, 4)), "mu must be a floating"),
        (lambda: F.kl_standard_normal(torch.randn(0, 4), torch.randn(0, 4)), "empty"),
        (lambda: F.reparameterize(torch.randn(3), torch.randn(3), num_samples=0), "num_samples"),
        (lambda: F.bernoulli_log_likelihood(torch.randn(3, 4), torch.randint(0, 2, (3, 4))), "x must be"),
        (lambda: F.bernoulli_log_likelihood(torch.randn(3, 4), torch.rand(3, 4), event_dims=3), "event_dims"),
        (lambda: F.gaussian_log_likelihood(torch.randn(3, 4), torch.randn(3, 4), "1"), "logvar"),
        (lambda: F.elbo(torch.randn(3, 4), torch.rand(3, 4), torch.randn(3, 2), torch.randn(3, 2), reduction="avg"), "reduction"),
        (lambda: F.elbo(torch.randn(3, 4), torch.rand(3, 4), torch.randn(3, 2), torch.randn(3, 2), likelihood="poisson"), "likelihood"),
        (lambda: F.elbo(torch.randn(3, 4), torch.rand(3, 4), torch.randn(5, 2), torch.randn(5, 2)), "batch dims"),
        (lambda: F.elbo(torch.randn(3, 4), torch.rand(3, 4), torch.randn(3, 2), torch.randn(3, 2), kl=torch.rand(5)), "batch dims"),
        (lambda: F.elbo(torch.randn(3, 4), torch.rand(3, 4), torch.randn(3, 2), torch.randn(3, 2), kl=[1.0]), "kl must be"),
        (lambda: F.reparameterize_with_kl(torch.randn(()), torch.randn(())), "latent dim"),
        (lambda: F.reparameterize_with_kl(torch.randn(3, 2), torch.randn(3, 2), num_samples=-1), "num_samples"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("sampler", [F.reparameterize, F.reparameterize_with_kl])
def test_huge_num_samples_refused_before_any_allocation(sampler):
    """num_samples=10**12 would ask the allocator for tens of TB: a ValueError naming
    num_samples instead, raised before the generator advances."""
    mu, lv = torch.randn(3, 4), torch.randn(3, 4)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
    before = gen.get_state()
    with pytest.raises(ValueError, match="num_samples=1000000000000 would draw 12000000000000 elements"):
        sampler(mu, lv, num_samples=10**12, generator=gen)
    assert torch.equal(gen.get_state(), before)
    # An ordinary K still works, from the same generator state.
    z = sampler(mu, lv, num_samples=7, generator=gen)
    assert (z[0] if isinstance(z, tuple) else z).shape == (7, 3, 4)


@pytest.mark.needs_cuda
def test_mixed_devices_raise():
    with pytest.raises(ValueError, match="logvar is on"):
        F.kl_standard_normal(torch.randn(3, 4, device="cuda"), torch.randn(3, 4))


def test_raw_ops_reject_bad_layouts():
    ops = torch.ops.fastvae
    with pytest.raises(RuntimeError, match="must be 2-D"):
        ops.kl_standard_normal(torch.randn(3), torch.randn(3))
    with pytest.raises(RuntimeError, match="must divide"):
        ops.bernoulli_log_likelihood(torch.randn(6, 4), torch.rand(4, 4), False)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("form", ["fixed", "per_element", "per_dim"])
def test_gaussian_elbo_gradients_from_the_forward_pass(device, reduction, form):
    """The Gaussian likelihood writes its gradients in the forward pass (fixed or per-element
    variance) or leaves them to the backward op (a learned variance shared by rows): every
    input's gradient equals the reference's, for the loss's own gradient and a scaled second one."""
    recon, mu, lv = _inputs((9, 13), (9, 3), (9, 3), dtype=torch.float32, device=device)
    x = torch.randn(9, 13, device=device, requires_grad=True)
    obs = {"fixed": -0.3, "per_element": torch.randn(9, 13, device=device) * 0.5,
           "per_dim": torch.randn(13, device=device) * 0.5}[form]
    leaves = [recon.requires_grad_(), x] + ([obs.requires_grad_()] if form != "fixed" else [])
    loss = F.elbo(recon, x, mu, lv, likelihood="gaussian", obs_logvar=obs, reduction=reduction)
    w = torch.rand_like(loss) + 0.5  # not the gradient the forward pass was scaled by
    loss.backward(torch.ones_like(loss), retain_graph=True)
    first = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    loss.backward(w)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    obs64 = leaves64[2] if form != "fixed" else obs
    ref = R.elbo(leaves64[0], leaves64[1], mu.double(), lv.double(), likelihood="gaussian", obs_logvar=obs64,
                 reduction=reduction)
    ref_first = torch.autograd.grad(ref, leaves64, torch.ones_like(ref), retain_graph=True)
    ref_scaled = torch.autograd.grad(ref, leaves64, w.double())
    for got, want in zip(first, ref_first):
        assert rel_err(got, want) < 1e-5
    for t, want in zip(leaves, ref_scaled):
        assert rel_err(t.grad, want) < 1e-5


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_elbo_plain_backward_reuses_forward_gradient(device, reduction):
    """loss.backward() sends back exactly the gradient the kernel pre-applied: the saved tensor
    is handed on as is; a second, scaled backward must still be right (retain_graph)."""
    recon = torch.randn(33, 50, device=device, requires_grad=True)
    x = (torch.rand(33, 50, device=device) > 0.5).to(torch.uint8)
    mu, lv = torch.randn(33, 4, device=device), torch.randn(33, 4, device=device)
    loss = F.elbo(recon, x, mu, lv, reduction=reduction)
    loss.backward(retain_graph=True)
    first = recon.grad.clone()
    recon.grad = None
    (loss * 3.0).backward()
    recon64 = recon.detach().double().requires_grad_()
    R.elbo(recon64, x.double(), mu.double(), lv.double(), reduction=reduction).backward()
    assert rel_err(first, recon64.grad) < 1e-6
    assert rel_err(recon.grad, 3.0 * recon64.grad) < 1e-6
