"""The ELBO family: ``elbo`` / ``ELBOLoss``, the fused ops fastvae::elbo (the loss) and
fastvae::elbo_loss (the loss and its gradients) and their backward (elbo_rescale / elbo_rescale_).

Forward and gradients against fastvae.reference on float64 copies of the same (rounded) inputs,
for each likelihood, observation-variance form, reduction, beta and KL source; float64
gradcheck; the backward's scaling rules; event shapes. Bad input: test_elbo_args.py; opcheck and
torch.compile: test_opcheck.py; the dispatcher calls of a fused step (no device-to-host read):
test_autograd.py.
"""
from __future__ import annotations

import pytest
import torch

import fastvae
from fastvae import functional as F
from fastvae import reference as R
from .conftest import TOL, cpu_and_cuda, rel_err
from .reference_checks import check_forward_and_backward, inputs

ops = torch.ops.fastvae
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
FORMS = ["bernoulli", "bernoulli_uint8", "gaussian_fixed", "gaussian_scalar", "gaussian_per_dim", "gaussian_per_element"]


def _case(form, rows, cols, dtype, device, latent=5):
    """(recon, x, mu, logvar, obs_logvar, likelihood, learned leaves) with fresh random values."""
    def r(*shape, scale=1.0):
        return (torch.randn(shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    recon, mu, lv = r(rows, cols, scale=2.0), r(rows, latent), r(rows, latent, scale=0.5)
    likelihood = "bernoulli" if form.startswith("bernoulli") else "gaussian"
    if form == "bernoulli":
        x = torch.rand(rows, cols, device=device).to(dtype)  # soft targets
    elif form == "bernoulli_uint8":
        x = (torch.rand(rows, cols, device=device) > 0.5).to(torch.uint8)
    else:
        x = r(rows, cols)
    obs = {
        "gaussian_fixed": 0.3,
        "gaussian_scalar": r(scale=0.5).reshape(()),
        "gaussian_per_dim": r(cols, scale=0.5),
        "gaussian_per_element": r(rows, cols, scale=0.5),
    }.get(form, 0.0)
    return recon, x, mu, lv, obs, likelihood


def _leaf(t, dtype=None):
    t = t.detach() if dtype is None else t.detach().to(dtype)
    return t.requires_grad_(t.is_floating_point())


def _compare(form, rows, cols, dtype, device, reduction, beta, kl_mode, tol=None, grad_tol=None):
    recon, x, mu, lv, obs, likelihood = _case(form, rows, cols, dtype, device)
    learned = isinstance(obs, torch.Tensor)
    leaves = [_leaf(recon), _leaf(mu), _leaf(lv)] + ([_leaf(obs)] if learned else [])
    leaves64 = [_leaf(t, torch.float64) for t in leaves]
    x64 = x.double()

    def run(rc, m, v, o, xx, fused):
        kw = dict(likelihood=likelihood, obs_logvar=o, beta=beta, reduction=reduction)
        if fused:
            if kl_mode == "kl":
                return F.elbo(rc, xx, None, None, kl=F.kl_standard_normal(m, v), **kw)
            return F.elbo(rc, xx, m, v, **kw)
        return R.elbo(rc, xx, m, v, **kw)

    out = run(*leaves[:3], leaves[3] if learned else obs, x, True)
    ref = run(*leaves64[:3], leaves64[3] if learned else obs, x64, False)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= (tol or TOL[dtype])
    w = torch.rand_like(ref) + 0.5  # not the gradient the forward pass assumed
    out.backward(w.to(out.dtype))
    ref.backward(w)
    for a, b in zip(leaves, leaves64):
        assert a.grad is not None and a.grad.dtype == a.dtype and a.grad.shape == a.shape
        assert rel_err(a.grad, b.grad) <= (grad_tol or TOL[dtype] * 4)


# ---------------------------------------------------------------- against the reference
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kl_mode", ["mu_logvar", "kl"])
def test_matches_reference(device, dtype, form, reduction, kl_mode):
    _compare(form, 7, 33, dtype, device, reduction, 0.7, kl_mode)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("rows, cols", [(1, 1), (1, 7), (7, 1), (7, 1025), (1025, 7), (3, 100003)])
@pytest.mark.parametrize("form", ["bernoulli", "gaussian_per_dim", "gaussian_per_element"])
def test_odd_sizes(device, rows, cols, form):
    for reduction in ("mean", "none"):
        _compare(form, rows, cols, torch.float32, device, reduction, 1.0, "mu_logvar")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("beta", [0.0, 0.25, 1.0, 3.5])
def test_beta(device, beta):
    for form in ("bernoulli", "gaussian_scalar"):
        _compare(form, 9, 20, torch.float64, device, "mean", beta, "kl")
        _compare(form, 9, 20, torch.float64, device, "sum", beta, "mu_logvar")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_k_samples_against_one_batch_of_x(device, reduction):
    """K samples of decoder output against one x: the op reads x row r % B in place (no copy),
    and x's gradient sums over the samples."""
    k, b, d, z = 3, 5, 11, 4
    kw = dict(dtype=torch.float64, device=device)
    recon, mu, lv = torch.randn(k * b, d, **kw), torch.randn(k * b, z, **kw), torch.randn(k * b, z, **kw)
    for likelihood in ("bernoulli", "gaussian"):
        x = (torch.rand(b, d, **kw) if likelihood == "bernoulli" else torch.randn(b, d, **kw)).requires_grad_()
        obs = torch.randn(d, **kw).view(1, d).requires_grad_()
        leaves = [_leaf(recon), _leaf(mu), _leaf(lv)]
        loss = ops.elbo_loss(leaves[0], x, None, leaves[1], leaves[2], obs, 0.0, likelihood, 0.5, reduction,
                             [True, True, True])[0]
        leaves64 = [_leaf(t) for t in leaves]
        x64, obs64 = _leaf(x), _leaf(obs)
        ref = R.elbo(leaves64[0], x64.repeat(k, 1), leaves64[1], leaves64[2], likelihood=likelihood,
                     obs_logvar=obs64, beta=0.5, reduction=reduction)
        assert rel_err(loss, ref) < 1e-12
        w = torch.rand_like(ref) + 0.5
        got = torch.autograd.grad(loss, leaves + [x] + ([obs] if likelihood == "gaussian" else []), w)
        want = torch.autograd.grad(ref, leaves64 + [x64] + ([obs64] if likelihood == "gaussian" else []), w)
        for g, r in zip(got, want):
            assert rel_err(g, r) < 1e-12


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_contiguous_inputs(device):
    kw = dict(dtype=torch.float64, device=device)
    recon = torch.randn(13, 8, **kw).t().requires_grad_()  # (8, 13) transposed
    x = torch.rand(26, 8, **kw)[::2].t()
    base = torch.randn(8, 10, **kw)
    mu, lv = base[:, ::2].requires_grad_(), base[:, 1::2] * 0.5
    obs = torch.randn(13, 2, **kw)[:, 0]
    assert not (recon.is_contiguous() or x.is_contiguous() or mu.is_contiguous() or obs.is_contiguous())
    for likelihood in ("bernoulli", "gaussian"):
        got = F.elbo(recon, x, mu, lv, likelihood=likelihood, obs_logvar=obs)
        r64, m64 = _leaf(recon), _leaf(mu)
        want = R.elbo(r64, x, m64, lv, likelihood=likelihood, obs_logvar=obs)
        assert rel_err(got, want) < 1e-12
        g = torch.autograd.grad(got, [recon, mu])
        gw = torch.autograd.grad(want, [r64, m64])
        assert all(rel_err(a, b) < 1e-12 for a, b in zip(g, gw))


# ---------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(device, reduction):
    kw = dict(dtype=torch.float64, device=device)

    def leaf(*shape):
        return torch.randn(shape, **kw).requires_grad_()

    x = torch.rand(4, 7, **kw).requires_grad_()  # soft targets get a gradient too
    gc = torch.autograd.gradcheck
    assert gc(lambda r, xx, m, v: F.elbo(r, xx, m, v, beta=0.6, reduction=reduction), (leaf(4, 7), x, leaf(4, 3), leaf(4, 3)))
    assert gc(lambda r, xx, k: F.elbo(r, xx, None, None, kl=k, reduction=reduction), (leaf(4, 7), x, leaf(4)))
    for obs in (leaf(), leaf(7), leaf(4, 7)):
        assert gc(lambda r, xx, m, v, o: F.elbo(r, xx, m, v, likelihood="gaussian", obs_logvar=o, reduction=reduction),
                  (leaf(4, 7), x, leaf(4, 3), leaf(4, 3), obs))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_gradcheck_of_views_and_of_a_given_kl(device):
    kw = dict(dtype=torch.float64, device=device)

    def leaf(*shape):
        return torch.randn(shape, **kw).requires_grad_()

    gc = torch.autograd.gradcheck
    x = torch.rand(3, 7, **kw)
    assert gc(lambda a, b: F.elbo(a, x, b, b * 0.5), (leaf(3, 7), leaf(3, 4)))
    assert gc(lambda m, v: F.elbo(m[:, :7], x, m[:, 7:], v, kl=F.kl_standard_normal(m[:, 7:], v)), (leaf(3, 11), leaf(3, 4)))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_elbo_matches_hand_written_loss(device, reduction, likelihood):
    import fastvae

    recon, mu, lv = inputs((17, 1, 7, 7), (17, 6), (17, 6), dtype=torch.float32, device=device)
    x = torch.rand(17, 1, 7, 7, device=device)
    obs = torch.randn(1, 7, 7, device=device)
    kwargs = dict(likelihood=likelihood, obs_logvar=obs, beta=0.7, reduction=reduction)
    fused = lambda a, b, c: fastvae.ELBOLoss(**kwargs)(a, x, b, c)  # noqa: E731
    ref = lambda a, b, c: R.elbo(a, x.double(), b, c, **{**kwargs, "obs_logvar": obs.double()})  # noqa: E731
    check_forward_and_backward(fused, ref, [recon, mu, lv], torch.float32)

@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("form", ["fixed", "per_element", "per_dim"])
def test_gaussian_elbo_gradients_from_the_forward_pass(device, reduction, form):
    """The Gaussian likelihood writes its gradients in the forward pass (fixed or per-element
    variance) or leaves them to the backward op (a learned variance shared by rows): every
    input's gradient equals the reference's, for the loss's own gradient and a scaled second one."""
    recon, mu, lv = inputs((9, 13), (9, 3), (9, 3), dtype=torch.float32, device=device)
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


# ---------------------------------------------------------------- backward scaling
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("form", ["bernoulli", "gaussian_per_dim", "gaussian_per_element"])
def test_scaled_and_retained_backward(device, reduction, form):
    """The forward pass wrote the gradients for an incoming gradient of 1. A retained graph may be
    differentiated again with another gradient; (3 * loss) scales; a gradient already returned
    by autograd.grad is not changed by a later call."""
    recon, x, mu, lv, obs, likelihood = _case(form, 9, 13, torch.float32, device)
    learned = isinstance(obs, torch.Tensor)
    leaves = [_leaf(recon), _leaf(mu), _leaf(lv)] + ([_leaf(obs)] if learned else [])
    loss = F.elbo(leaves[0], x, leaves[1], leaves[2], likelihood=likelihood, obs_logvar=leaves[3] if learned else obs,
                  beta=0.9, reduction=reduction)
    leaves64 = [_leaf(t, torch.float64) for t in leaves]
    ref = R.elbo(leaves64[0], x.double(), leaves64[1], leaves64[2], likelihood=likelihood,
                 obs_logvar=leaves64[3] if learned else obs, beta=0.9, reduction=reduction)
    w = torch.rand_like(ref) + 0.5
    ones = torch.ones_like(ref)
    first = torch.autograd.grad(loss, leaves, ones.float(), retain_graph=True)
    kept = [g.clone() for g in first]
    second = torch.autograd.grad(loss, leaves, w.float(), retain_graph=True)
    (loss * 3.0).backward(ones.float())  # the last call: in place
    want_first = torch.autograd.grad(ref, leaves64, ones, retain_graph=True)
    want_second = torch.autograd.grad(ref, leaves64, w)
    for g, k, s, t, wf, ws in zip(first, kept, second, leaves, want_first, want_second):
        assert torch.equal(g, k)  # untouched by the later calls
        assert rel_err(g, wf) < 1e-5
        assert rel_err(s, ws) < 1e-5
        assert rel_err(t.grad, 3.0 * wf) < 1e-5


def test_plain_backward_hands_the_forward_gradient_on():
    """loss.backward(): the gradient the forward pass wrote becomes recon.grad itself (no copy)."""
    recon = torch.randn(6, 10, requires_grad=True)
    x = torch.rand(6, 10)
    loss, grad_recon, *_ = ops.elbo_loss(recon, x, None, torch.randn(6, 2), torch.randn(6, 2), None, 0.0,
                                         "bernoulli", 1.0, "mean", [True, False, False])
    ptr = grad_recon.data_ptr()
    del grad_recon
    loss.backward()
    assert recon.grad.data_ptr() == ptr


def test_double_backward_raises_naming_the_op():
    recon = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    x = torch.rand(4, 6, dtype=torch.float64)
    loss = F.elbo(recon, x, mu, torch.randn(4, 2, dtype=torch.float64))
    (g,) = torch.autograd.grad(loss, recon, create_graph=True)
    assert rel_err(g, (torch.sigmoid(recon.detach()) - x) / 4) < 1e-14  # first order still right
    with pytest.raises(RuntimeError, match="fastvae::elbo_loss does not support double backward"):
        g.pow(2).sum().backward()


def test_deterministic_bitwise():
    recon, x, mu, lv, obs, likelihood = _case("gaussian_per_dim", 4097, 129, torch.float32, "cpu")
    obs.requires_grad_()
    runs = []
    for _ in range(2):
        o = _leaf(obs)
        loss = F.elbo(recon, x, mu, lv, likelihood=likelihood, obs_logvar=o)
        loss.backward()
        runs.append((loss.detach(), o.grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


# ---------------------------------------------------------------- shapes
@pytest.mark.parametrize("obs_shape", [None, (), (3,), (2, 1), (5, 2, 3)])
def test_event_shapes_and_variance_broadcasts(obs_shape):
    """recon with several event dims, or none (one example); variances broadcast inside them."""
    kw = dict(dtype=torch.float64)
    for shape, latent in (((5, 2, 3), (5, 4)), ((3,), (2,))):
        recon = torch.randn(shape, **kw).requires_grad_()
        x = torch.randn(shape, **kw)
        mu = torch.randn(latent, **kw).requires_grad_()
        full = (5, 2, 3) if len(shape) == 3 else shape
        if obs_shape is not None and len(obs_shape) > len(shape) or obs_shape == (5, 2, 3) and len(shape) == 1:
            continue
        obs = 0.4 if obs_shape is None else (torch.randn(obs_shape, **kw) * 0.5).requires_grad_()
        got = F.elbo(recon, x, mu, mu * 0.3, likelihood="gaussian", obs_logvar=obs, reduction="none")
        leaves = [recon, mu] + ([obs] if obs_shape is not None else [])
        leaves64 = [_leaf(t) for t in leaves]
        o64 = leaves64[2] if obs_shape is not None else obs
        if len(shape) == 1:  # one example: the reference needs its batch dim
            want = R.elbo(leaves64[0].unsqueeze(0), x.unsqueeze(0), leaves64[1], leaves64[1] * 0.3,
                          likelihood="gaussian", obs_logvar=o64, reduction="none").squeeze(0)
        else:
            want = R.elbo(leaves64[0], x, leaves64[1], leaves64[1] * 0.3, likelihood="gaussian", obs_logvar=o64,
                          reduction="none")
        assert got.shape == want.shape and rel_err(got, want) < 1e-12, full
        w = torch.rand_like(want) + 0.5
        for g, r in zip(torch.autograd.grad(got, leaves, w), torch.autograd.grad(want, leaves64, w)):
            assert rel_err(g, r) < 1e-12


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("form", ["bernoulli", "gaussian_per_element"])
def test_the_loss_op_writes_only_the_gradients_autograd_needs(device, form):
    """fastvae::elbo (what elbo() calls) is elbo_loss's loss; without autograd (inference mode, no
    input requiring grad) it writes no gradient, and the value is the same."""
    recon, x, mu, lv, obs, likelihood = _case(form, 7, 13, torch.float32, device)
    o = obs if isinstance(obs, torch.Tensor) else None
    args = (recon, x, None, mu, lv, o, 0.0 if o is not None else float(obs), likelihood, 0.7, "sum")
    full = ops.elbo_loss(*args, [True, True, o is not None])
    with torch.inference_mode():
        assert torch.equal(ops.elbo(*args), full[0])
    with torch.no_grad():
        assert torch.equal(ops.elbo(*(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                                      and a is not x else a for a in args)), full[0])
    loss = ops.elbo(*args)
    assert loss.grad_fn.name() == "fastvae::autograd::ElboLoss"
    got = torch.autograd.grad(loss, [recon, mu, lv])
    want = torch.autograd.grad(ops.elbo_loss(*args, [True, True, o is not None])[0], [recon, mu, lv])
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("cols", [5, 37])  # the scalar path; vectors and the row tail
@pytest.mark.parametrize("term", ["bernoulli", "gaussian", "gaussian_obs_logvar", "kl", "kl_given"])
def test_a_mean_stays_finite_where_one_rows_sum_overflows(device, cols, term):
    """Issue 23 (found on the H200): float32 row sums of ~5e38 (beyond float32's 3.4e38) in a
    batch of 4 whose mean (~1.3e38) is finite: the loss and its gradients are the float64
    reference's, not inf. Row 0 carries terms of about 1e38 / cols * 5, the other rows small."""
    rows, latent = 4, cols
    big = torch.zeros(rows, cols, dtype=torch.float64)
    big[0] = 5e38 / cols * (1 + 0.1 * torch.rand(cols, dtype=torch.float64))
    recon = torch.randn(rows, cols, dtype=torch.float64)
    x = torch.rand(rows, cols, dtype=torch.float64)
    mu = torch.randn(rows, latent, dtype=torch.float64)
    lv = 0.5 * torch.randn(rows, latent, dtype=torch.float64)
    obs: object = 0.0
    likelihood, kl = "bernoulli", None
    if term == "bernoulli":  # -ll ~ |logit| for a logit of the wrong sign
        x[0] = 0.0
        recon[0] = big[0]
    elif term.startswith("gaussian"):  # -ll ~ (x - m)^2 e^88 / 2
        likelihood = "gaussian"
        obs = -88.0 if term == "gaussian" else torch.full((rows, cols), -88.0, dtype=torch.float64)
        recon[0] = x[0] + (2 * big[0] * torch.exp(torch.tensor(-88.0, dtype=torch.float64))).sqrt()
        recon[1:] = x[1:] + 1e-19 * torch.randn(rows - 1, cols, dtype=torch.float64)
    elif term == "kl":  # KL ~ mu^2 / 2
        mu[0] = (2 * big[0]).sqrt()
    else:
        kl = torch.rand(rows, dtype=torch.float64)
        kl[:2] = 3e38 * (1 - 0.1 * torch.rand(2, dtype=torch.float64))  # float32 holds each, not their sum
    args64 = [t.clone().requires_grad_() for t in (recon, mu, lv)]
    want = R.elbo(args64[0], x, args64[1], args64[2], likelihood,
                  obs if isinstance(obs, float) else obs.clone(), kl=kl)
    want.backward()
    assert 1e38 < want.item() < 3e38
    leaves = [t.to(device=device, dtype=torch.float32).requires_grad_() for t in (recon, mu, lv)]
    got = F.elbo(leaves[0], x.to(device=device, dtype=torch.float32), leaves[1], leaves[2], likelihood,
                 obs if isinstance(obs, float) else obs.to(device=device, dtype=torch.float32),
                 kl=None if kl is None else kl.to(device=device, dtype=torch.float32))
    got.backward()
    assert torch.isfinite(got).item(), got
    assert abs(got.item() - want.item()) <= 1e-6 * want.item()
    for leaf, ref in zip(leaves, args64):
        if kl is not None and leaf is not leaves[0]:  # mu and logvar are not read when kl is given
            assert leaf.grad is None and ref.grad is None
            continue
        assert torch.isfinite(leaf.grad).all()
        assert rel_err(leaf.grad.cpu(), ref.grad) < TOL[torch.float32]
