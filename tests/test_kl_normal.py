"""The kl_normal family: ``kl_normal`` (KL between two diagonal Gaussians) and the sample with its
KL against a given prior (``reparameterize_with_kl(..., prior_mu=, prior_logvar=)``), against
float64 ``torch.distributions`` (values and the gradients of all four inputs) at 1 to 100003 rows,
broadcast priors (per row, per dim, scalar), non-contiguous inputs, reduced precision, gradcheck,
opcheck, torch.compile, large log-variances, bad input; the emulated CUDA kernels through ``emu``.
"""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from fastvae import functional as F
from fastvae import reference as R
from fastvae.bench.dispatch import DispatchCounter, op_base

from .conftest import TOL, cpu_and_cuda, rel_err
from .reference_checks import DTYPES, check_forward_and_backward, stream_eps

ops = torch.ops.fastvae
# (rows, cols): 1, 7, 1025 and 100003 rows; a row longer than the CPU's row chunk (65536).
SHAPES = [(1, 37), (7, 5), (1025, 33), (100003, 3), (2, 70001)]


def _gaussians(q_shape, p_shape=None, dtype=torch.float64, device="cpu", lv_p_shape=None):
    """Fresh (mu_q, logvar_q, mu_p, logvar_p) rounded to dtype: locations N(0, 1), log-variances
    N(0, 0.5^2); the prior's mean of p_shape, its log-variance of lv_p_shape (default p_shape)."""
    p_shape = q_shape if p_shape is None else p_shape
    lv_p_shape = p_shape if lv_p_shape is None else lv_p_shape

    def draw(shape, scale):
        return (torch.randn(shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    return [draw(q_shape, 1.0), draw(q_shape, 0.5), draw(p_shape, 1.0), draw(lv_p_shape, 0.5)]


def _distributions_kl(mq, lq, mp, lp):
    """The oracle: torch.distributions in float64."""
    return kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp())).sum(-1)


def test_reference_is_torch_distributions():
    args = _gaussians((6, 9), (9,))
    assert torch.allclose(R.kl_normal(*args), _distributions_kl(*args), rtol=1e-13, atol=0)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_kl_normal_against_torch_distributions(device, dtype, shape):
    args = _gaussians(shape, dtype=dtype, device=device)
    check_forward_and_backward(F.kl_normal, _distributions_kl, args, dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_float32_is_far_under_the_tolerance(device):
    args = _gaussians((257, 37), dtype=torch.float32, device=device)
    out = F.kl_normal(*args)
    assert rel_err(out, _distributions_kl(*(a.double() for a in args))) < 1e-6


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "q_shape, p_shape, lv_p_shape",
    [
        ((9, 20), (9, 20), None),  # per row: a hierarchical VAE's top-down prior
        ((9, 20), (20,), None),  # per dim: a learned prior
        ((9, 20), (), None),  # scalar
        ((9, 20), (20,), ()),  # a per-dim mean with a scalar log-variance
        ((3, 9, 20), (9, 20), (1, 20)),  # a sample dim over a per-row prior
        ((9, 20), (9, 1), (9, 20)),  # a per-row scalar (broadcast inside the latent dim)
        ((20,), (9, 20), None),  # q broadcast over the prior's rows
    ],
)
def test_broadcast_priors_and_their_summed_gradients(device, dtype, q_shape, p_shape, lv_p_shape):
    args = _gaussians(q_shape, p_shape, dtype, device, lv_p_shape)
    check_forward_and_backward(F.kl_normal, _distributions_kl, args, dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_contiguous_inputs(device):
    base = torch.randn(40, 52, dtype=torch.float64, device=device)
    args = [base[::2, :13], base[1::2, 13:26].t().t(), base[::2, 26:39], (base[1:2, 39:] * 0.5).expand(20, 13)]
    assert not any(a.is_contiguous() for a in args)
    check_forward_and_backward(F.kl_normal, _distributions_kl, args, torch.float64)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_gradcheck(device):
    leaves = [t.requires_grad_() for t in _gaussians((3, 7), device=device)]
    assert torch.autograd.gradcheck(F.kl_normal, leaves)
    per_dim = [t.requires_grad_() for t in _gaussians((4, 5), (5,), device=device)]
    assert torch.autograd.gradcheck(F.kl_normal, per_dim)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_large_log_variances_do_not_overflow(device):
    """Both variances e^-100 (e^100 overflows float32) and means 1e-20 apart: every term finite."""
    mq, lq, mp, lp = _gaussians((4, 37), dtype=torch.float64, device=device)
    lq, lp = lq - 100, lp - 100
    mp = mq + mp * 1e-20
    args = [t.float() for t in (mq, lq, mp, lp)]
    leaves = [t.clone().requires_grad_() for t in args]
    out = F.kl_normal(*leaves)
    ref_leaves = [t.double().requires_grad_() for t in args]
    ref = _distributions_kl(*ref_leaves)
    assert torch.isfinite(ref).all() and rel_err(out, ref) < 1e-5
    w = torch.rand_like(ref) + 0.5
    out.backward(w.float())
    ref.backward(w)
    for a, b in zip(leaves, ref_leaves):
        assert torch.isfinite(a.grad).all() and rel_err(a.grad, b.grad) < 1e-5


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_nan_in_gives_nan_out(device):
    args = _gaussians((3, 37), dtype=torch.float32, device=device)
    for k in range(4):
        a = [t.clone() for t in args]
        a[k][1, 3] = float("nan")
        leaves = [t.requires_grad_() for t in a]
        out = F.kl_normal(*leaves)
        assert torch.isfinite(out[0]) and torch.isnan(out[1]) and torch.isfinite(out[2])
        out.sum().backward()
        assert torch.isnan(leaves[k].grad[1, 3]) and torch.isfinite(leaves[k].grad[0]).all()


# ---------------------------------------------------------------- the sample with the prior's KL
def _draw(mu, lv, gen, seed, num_samples, **prior):
    return F.reparameterize_with_kl(mu, lv, num_samples=num_samples, generator=gen.manual_seed(seed), **prior)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, p_shape", [((5, 1025), (5, 1025)), ((7, 20), (20,)), ((1, 1), ()),
                                            ((4, 3, 7), (3, 7)), ((1025, 3), (1025, 3))])
@pytest.mark.parametrize("num_samples", [None, 3])
@pytest.mark.parametrize("used", ["both", "z", "kl"])
def test_sample_with_prior_is_sample_and_kl_in_one(device, dtype, shape, p_shape, num_samples, used):
    mu, lv, pm, plv = [t.requires_grad_() for t in _gaussians(shape, p_shape, dtype, device)]
    gen = torch.Generator(device=device)
    seed = int(torch.randint(0, 2**62, ()))
    z, kl = _draw(mu, lv, gen, seed, num_samples, prior_mu=pm, prior_logvar=plv)
    lead = () if num_samples is None else (num_samples,)
    assert z.shape == (*lead, *shape) and z.dtype == dtype and kl.shape == shape[:-1]
    # The sample is the one reparameterize draws from the same generator state.
    z_alone = F.reparameterize(mu.detach(), lv.detach(), num_samples=num_samples, generator=gen.manual_seed(seed))
    assert rel_err(z, z_alone) <= (0 if device == "cpu" else 1e-6 if dtype != torch.float64 else 1e-14)
    # Reference on float64 copies, with the stream's eps from a float64 draw of the same seed.
    leaves64 = [t.detach().double().requires_grad_() for t in (mu, lv, pm, plv)]
    m64, l64 = leaves64[:2]
    eps = stream_eps(m64, l64, num_samples, gen, seed)
    z_ref, kl_ref = R.reparameterize_with_kl(m64, l64, num_samples, eps, prior_mu=leaves64[2],
                                             prior_logvar=leaves64[3])
    assert torch.allclose(kl_ref, _distributions_kl(*leaves64), rtol=1e-12, atol=0)
    assert rel_err(z, z_ref) <= TOL[dtype] and rel_err(kl, kl_ref) <= TOL[dtype]
    w_z, w_kl = torch.randn_like(z_ref), torch.randn_like(kl_ref)
    terms = {"z": [(z, z_ref, w_z)], "kl": [(kl, kl_ref, w_kl)]}
    terms["both"] = terms["z"] + terms["kl"]
    sum(((out * w.to(device=device, dtype=out.dtype)).sum() for out, _, w in terms[used])).backward()
    sum(((ref * w).sum() for _, ref, w in terms[used])).backward()
    for fused, ref in zip((mu, lv, pm, plv), leaves64):
        if used == "z" and fused is pm or used == "z" and fused is plv:
            assert fused.grad is None  # the sample does not read the prior
            continue
        assert fused.grad.dtype == dtype and fused.grad.shape == fused.shape
        assert rel_err(fused.grad, ref.grad) <= TOL[dtype] * 4


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_sample_with_prior_gradcheck(device):
    gen = torch.Generator(device=device)

    def sample_and_kl(mu, lv, pm, plv):
        gen.manual_seed(11)  # the same eps on every call, as gradcheck requires
        return F.reparameterize_with_kl(mu, lv, num_samples=2, generator=gen, prior_mu=pm, prior_logvar=plv)

    leaves = [t.requires_grad_() for t in _gaussians((3, 5), device=device)]
    assert torch.autograd.gradcheck(sample_and_kl, leaves)
    per_dim = [t.requires_grad_() for t in _gaussians((3, 5), (5,), device=device)]
    assert torch.autograd.gradcheck(sample_and_kl, per_dim)


def test_learned_prior_vae_step_is_one_sampling_op_and_one_loss_op():
    """A one-level VAE with a learned (per-dim) prior: forward and backward through the fused
    sampler and the fused loss, and nothing else that launches a kernel."""
    mu = torch.randn(5, 16, requires_grad=True)
    lv = torch.randn(5, 16, requires_grad=True)
    prior_mu = torch.randn(16, requires_grad=True)
    prior_lv = torch.randn(16, requires_grad=True)
    x = (torch.rand(5, 16) > 0.5).float()
    with DispatchCounter() as calls:
        z, kl = F.reparameterize_with_kl(mu, lv, prior_mu=prior_mu, prior_logvar=prior_lv)
        loss = F.elbo(z, x, None, None, kl=kl)  # z itself as the decoder output: every grad path runs
        loss.backward()
    launching = [c for c in calls.calls if c not in calls.views and op_base(c) not in ("ones_like", "detach")]
    assert launching == ["fastvae::reparameterize_with_kl_normal", "fastvae::elbo_loss", "fastvae::elbo_rescale_",
                         "fastvae::reparameterize_with_kl_normal_backward"], launching
    assert not calls.syncs
    assert all(t.grad is not None for t in (mu, lv, prior_mu, prior_lv))


@pytest.mark.parametrize("fn, name", [
    (F.kl_normal, "fastvae::kl_normal"),
    (lambda *a: F.reparameterize_with_kl(a[0], a[1], prior_mu=a[2], prior_logvar=a[3])[1],
     "fastvae::reparameterize_with_kl_normal"),
])
def test_double_backward_raises_naming_the_op(fn, name):
    leaves = [t.requires_grad_() for t in _gaussians((3, 5))]
    (g,) = torch.autograd.grad(fn(*leaves).sum(), leaves[2], create_graph=True)
    with pytest.raises(RuntimeError, match=f"{name} does not support double backward"):
        g.sum().backward()


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    mq, lq, mp, lp = [t.float().requires_grad_() for t in _gaussians((4, 6), device=device)]
    rng = torch.tensor([int(torch.randint(0, 2**62, ())), 3], device=device)
    g4 = torch.randn(4, device=device)
    cases = [
        (ops.kl_normal, (mq, lq, mp, lp)),
        (ops.kl_normal, (mq, lq, mp[:1], lp[:2])),
        (ops.kl_normal, tuple(t.detach().to(torch.bfloat16).requires_grad_() for t in (mq, lq, mp, lp))),
        (ops.kl_normal_backward, (g4, mq.detach(), lq.detach(), mp.detach()[:2], lp.detach())),
        (ops.reparameterize_with_kl_normal, (mq, lq, mp, lp, 3, None, rng)),
        (ops.reparameterize_with_kl_normal, (mq, lq, mp[:1], lp[:1], None, None, rng)),
        (ops.reparameterize_with_kl_normal_backward,
         (torch.randn(2, 4, 6, device=device), mq.detach(), lq.detach(), mp.detach(), lp.detach()[:1], rng, g4)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
    torch.library.opcheck(ops.reparameterize_with_kl_normal, (mq, lq, mp, lp, 2),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_compile_fullgraph(device):
    torch._dynamo.reset()
    enc = torch.nn.Linear(12, 8).to(device)
    prior = torch.nn.Linear(12, 8).to(device)

    def step(x, seed_state):
        mu, lv = enc(x).chunk(2, dim=-1)
        pm, plv = prior(x).chunk(2, dim=-1)
        z, kl = F.reparameterize_with_kl(mu, lv, prior_mu=pm, prior_logvar=plv)
        return z.square().sum() + kl.sum() + F.kl_normal(mu, lv, pm, plv).sum()

    x = torch.randn(6, 12, device=device)
    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    torch.manual_seed(3)
    got = compiled(x, None)
    got.backward()
    grads = [p.grad.clone() for p in (*enc.parameters(), *prior.parameters())]
    for p in (*enc.parameters(), *prior.parameters()):
        p.grad = None
    torch.manual_seed(3)
    want = step(x, None)
    want.backward()
    assert rel_err(got, want) < 1e-6
    for g, p in zip(grads, (*enc.parameters(), *prior.parameters())):
        assert rel_err(g, p.grad) < 1e-5


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: F.kl_normal(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 4)), "broadcast"),
        (lambda: F.kl_normal(torch.randn(3, 4), torch.randn(3, 4), torch.arange(4), torch.randn(4)), "mu_p must be"),
        (lambda: F.kl_normal(torch.randn(3, 4), [0.0] * 4, torch.randn(4), torch.randn(4)), "logvar_q must be"),
        (lambda: F.kl_normal(torch.randn(0, 4), torch.randn(0, 4), torch.randn(4), torch.randn(4)), "mu_q is empty"),
        (lambda: F.kl_normal(torch.randn(()), torch.randn(()), torch.randn(()), torch.randn(())), "latent dim"),
        (lambda: F.reparameterize_with_kl(torch.randn(3, 4), torch.randn(3, 4), prior_mu=torch.randn(4)),
         "prior_logvar"),
        (lambda: F.reparameterize_with_kl(torch.randn(3, 4), torch.randn(3, 4), prior_logvar=torch.randn(4)),
         "prior_mu"),
        (lambda: F.reparameterize_with_kl(torch.randn(3, 4), torch.randn(3, 4), prior_mu=torch.randn(5),
                                          prior_logvar=torch.randn(4)), "broadcast"),
        (lambda: F.reparameterize_with_kl(torch.randn(3, 4), torch.randn(3, 4), num_samples=0,
                                          prior_mu=torch.randn(4), prior_logvar=torch.randn(4)), "num_samples"),
        (lambda: F.reparameterize_with_kl(torch.randn(3, 4), torch.randn(3, 4), prior_mu=torch.randn(4).int(),
                                          prior_logvar=torch.randn(4)), "prior_mu must be"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.needs_cuda
def test_mixed_devices_raise():
    with pytest.raises(ValueError, match="mu_p is on"):
        F.kl_normal(torch.randn(3, 4, device="cuda"), torch.randn(3, 4, device="cuda"), torch.randn(4),
                    torch.randn(4, device="cuda"))


def test_raw_ops_reject_bad_layouts():
    q = torch.randn(6, 4)
    with pytest.raises(RuntimeError, match="rows of mu_p"):
        ops.kl_normal(q, q, torch.randn(4, 4), torch.randn(6, 4))
    with pytest.raises(RuntimeError, match="must share a dtype"):
        ops.kl_normal(q, q, q.double(), q)
    with pytest.raises(RuntimeError, match="prior_logvar must be 2-D"):
        ops.reparameterize_with_kl_normal(q, q, q, torch.randn(4), None)
