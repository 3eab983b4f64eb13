"""fastvae::iwae_bound (the bound and normalised weights of (K, B) log-weights) and fastvae::dreg_gate:
values against float64, gradients (gradcheck), non-finite inputs, bad inputs, the emulated CUDA
kernel, opcheck, the exact DReG routing for given noise, and torch.compile(fullgraph=True)."""
from __future__ import annotations

import math

import pytest
import torch

import fastvae
from fastvae import functional as F
from fastvae import reference as R

from .conftest import cpu_and_cuda, rel_err

ops = torch.ops.fastvae


def _ref(log_w: torch.Tensor):
    lw = log_w.double()
    return torch.logsumexp(lw, 0) - math.log(lw.shape[0]), torch.softmax(lw, 0)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", [(1, 7), (5, 1), (50, 33), (257, 3), (3, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bound_and_weights_match_float64(device, shape, dtype):
    # Log-weights of VAE scale (around -100, spread of tens of nats) and a column shifted far up.
    log_w = (torch.randn(shape, dtype=torch.float64) * 20 - 100).to(device)
    log_w[:, 0] += 500.0
    bound, weights = F.iwae_bound(log_w.to(dtype))
    want_b, want_w = _ref(log_w.to(dtype))
    assert bound.dtype == dtype and weights.dtype == dtype and bound.shape == (shape[1],)
    assert rel_err(bound, want_b) < (1e-7 if dtype == torch.float32 else 1e-14)
    assert rel_err(weights, want_w) < (2e-6 if dtype == torch.float32 else 1e-13)
    # The weights of each example sum to one.
    assert (weights.double().sum(0) - 1).abs().max() < 1e-5


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_inputs_accumulate_in_float32(device, dtype):
    log_w = (torch.randn(9, 17) * 3 - 5).to(device, dtype)
    bound, weights = F.iwae_bound(log_w)
    want_b, want_w = _ref(log_w)
    assert bound.dtype == torch.float32 and weights.dtype == torch.float32
    assert rel_err(bound, want_b) < 1e-6 and rel_err(weights, want_w) < 1e-6


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_contiguous_log_weights(device):
    base = torch.randn(12, 9, device=device, dtype=torch.float64) * 4
    log_w = base.t()[:, ::2]  # (9, 6), strided
    bound, weights = F.iwae_bound(log_w)
    want_b, want_w = _ref(log_w)
    assert rel_err(bound, want_b) < 1e-14 and rel_err(weights, want_w) < 1e-13


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_gradcheck_of_the_bound(device):
    log_w = (torch.randn(6, 5, dtype=torch.float64, device=device) * 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: F.iwae_bound(t)[0], (log_w,))
    # The gradient of the bound is the weights times the incoming gradient.
    g = torch.randn(5, dtype=torch.float64, device=device)
    bound, weights = F.iwae_bound(log_w)
    (grad,) = torch.autograd.grad(bound, log_w, g)
    assert rel_err(grad, weights * g) < 1e-15
    assert not weights.requires_grad


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_finite_log_weights_follow_torch(device):
    log_w = torch.randn(4, 5, device=device)
    log_w[1, 0] = float("nan")
    log_w[:, 1] = -float("inf")
    log_w[2, 2] = float("inf")
    log_w[0, 3] = -float("inf")  # one -inf sample among finite ones: weight 0
    bound, weights = F.iwae_bound(log_w)
    want_b = torch.logsumexp(log_w, 0) - math.log(4)
    lw = log_w.clone().requires_grad_()
    (want_w,) = torch.autograd.grad(torch.logsumexp(lw, 0).sum(), lw)
    assert torch.equal(bound.isnan(), want_b.isnan()) and bound[0].isnan()
    assert bound[1] == -float("inf") and bound[2] == float("inf")
    finite = want_b.isfinite()
    assert rel_err(bound[finite], want_b[finite]) < 1e-6
    assert torch.equal(weights.isnan(), want_w.isnan()) and weights[:, 0].isnan().all()
    ok = want_w.isfinite()
    assert rel_err(weights[ok], want_w[ok]) < 1e-6 and weights[0, 3] == 0


def test_bad_inputs_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="log_w"):
        F.iwae_bound(torch.randn(5))
    with pytest.raises(ValueError, match="log_w"):
        F.iwae_bound(torch.randn(0, 3))
    with pytest.raises(ValueError, match="log_w"):
        F.iwae_bound(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="gate"):
        F.iwae_bound(torch.randn(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="z"):
        F.dreg_gate(torch.tensor(1.0))
    # The raw ops check what they read.
    with pytest.raises(RuntimeError, match="log_w"):
        ops.iwae_bound(torch.randn(0, 3))
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.iwae_bound(torch.randn(3, 4).t())
    with pytest.raises(RuntimeError, match="gate"):
        ops.iwae_bound(torch.randn(2, 3), torch.zeros(2, 4))


@pytest.mark.emu
def test_emulated_cuda_kernel_matches_the_cpu_kernel():
    from . import emu

    if not emu.AVAILABLE:
        if emu.REQUIRE_EMU:
            pytest.fail(emu.SKIP_REASON)
        pytest.skip(emu.SKIP_REASON)
    for shape in [(1, 1), (7, 300), (64, 5), (2, 513)]:
        for dtype in (torch.float32, torch.float64, torch.float16):
            log_w = (torch.randn(shape, dtype=torch.float64) * 10 - 50).to(dtype)
            log_w[0, 0] = float("nan")
            b_emu, w_emu = torch.ops.fastvae_emu.iwae_bound(log_w)
            b_cpu, w_cpu = ops.iwae_bound(log_w)
            # The same per-column formula, the same order of operations: the same values.
            assert torch.allclose(b_emu, b_cpu, rtol=1e-6, atol=0, equal_nan=True)
            assert torch.allclose(w_emu, w_cpu, rtol=1e-6, atol=1e-30, equal_nan=True)
    z = torch.randn(3, 4, 5)
    z_emu, token = torch.ops.fastvae_emu.dreg_gate(z)
    assert torch.equal(z_emu, z) and torch.equal(token, torch.zeros(3, 4))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    lw = torch.randn(5, 7, device=device, requires_grad=True)
    torch.library.opcheck(ops.iwae_bound, (lw,))
    torch.library.opcheck(ops.iwae_bound, (lw, torch.zeros(5, 7, device=device, requires_grad=True)))
    torch.library.opcheck(ops.iwae_bound, (torch.randn(3, 4, device=device, dtype=torch.float64),))
    torch.library.opcheck(ops.iwae_bound, (torch.randn(3, 4, device=device, dtype=torch.bfloat16),))
    torch.library.opcheck(ops.dreg_gate, (torch.randn(5, 7, 3, device=device, requires_grad=True),))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_dreg_gate_scales_the_gradient_of_z_by_the_weights(device):
    z = torch.randn(4, 3, 2, device=device, dtype=torch.float64, requires_grad=True)
    zg, token = F.dreg_gate(z)
    assert torch.equal(zg, z) and torch.equal(token, torch.zeros(4, 3, device=device, dtype=torch.float64))
    log_w = (zg ** 2).sum(-1)  # any function of z
    bound, weights = F.iwae_bound(log_w, token)
    (g,) = torch.autograd.grad(bound.sum(), z)
    assert rel_err(g, (weights ** 2).unsqueeze(-1) * 2 * z) < 1e-14
    # Without a bound behind the token the gate is the identity for gradients.
    zg, _ = F.dreg_gate(z)
    (g,) = torch.autograd.grad((3 * zg).sum(), z)
    assert torch.equal(g, torch.full_like(z, 3.0))


def _dreg_case(k=6, b=3, d=5, zdim=2):
    torch.manual_seed(0)
    enc = torch.nn.Linear(d, 2 * zdim).double()
    dec = torch.nn.Linear(zdim, d).double()
    x = (torch.rand(b, d) > 0.5).double()
    eps = torch.randn(k, b, zdim, dtype=torch.float64)
    return enc, dec, x, eps


def test_dreg_routing_equals_the_two_surrogates_for_given_noise():
    """For one fixed draw, the fused DReG gradient equals Tucker et al.'s estimator written with
    two surrogate losses: encoder sum_k w~_k^2 d log w_k (q's parameters stopped), decoder sum_k w~_k d log w_k."""
    enc, dec, x, eps = _dreg_case()
    params_enc, params_dec = list(enc.parameters()), list(dec.parameters())

    def log_w(mu, lv, z, stop_q):
        q_mu, q_lv = (mu.detach(), lv.detach()) if stop_q else (mu, lv)
        return (R.bernoulli_log_likelihood(dec(z), x, event_dims=1) + R.standard_normal_log_density(z)
                - R.gaussian_log_density(z, q_mu, q_lv))

    mu, lv = enc(x).chunk(2, -1)
    z = mu + (0.5 * lv).exp() * eps
    lw = log_w(mu, lv, z, True)
    w = torch.softmax(lw.detach(), 0)
    want_enc = torch.autograd.grad((w ** 2 * lw).sum(), params_enc, retain_graph=True)
    want_dec = torch.autograd.grad((w * lw).sum(), params_dec)

    mu, lv = enc(x).chunk(2, -1)
    zg, token = F.dreg_gate(mu + (0.5 * lv).exp() * eps)
    lw = (F.bernoulli_log_likelihood(dec(zg), x, event_dims=1) + F.standard_normal_log_density(zg)
          - F.gaussian_log_density(zg, mu.detach(), lv.detach()))
    bound = F.iwae_bound(lw, token)[0]
    got = torch.autograd.grad(bound.sum(), params_enc + params_dec)
    for a, b in zip(got, list(want_enc) + list(want_dec)):
        assert rel_err(a, b) < 1e-12


def test_double_backward_is_refused():
    log_w = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(F.iwae_bound(log_w)[0].sum(), log_w, create_graph=True)
    with pytest.raises(RuntimeError, match="fastvae::iwae_bound does not support double backward"):
        g.sum().backward()


@pytest.mark.parametrize("gradient", ["reparam", "dreg"])
def test_compiled_iwae_loss_has_no_graph_break(gradient):
    torch._dynamo.reset()
    model = fastvae.build_mlp_vae(12, (16,), 3, activation="tanh")
    x = (torch.rand(8, 12) > 0.5).float()

    def loss_fn(inputs):
        return model.loss(inputs, objective="iwae", num_samples=4, gradient=gradient)

    def run(fn):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        out = fn(x)
        out.backward()
        return out, [p.grad.clone() for p in model.parameters()]

    eager, g_eager = run(loss_fn)
    compiled, g_compiled = run(torch.compile(loss_fn, fullgraph=True, backend="inductor"))
    assert rel_err(compiled, eager) < 1e-5
    for a, b in zip(g_compiled, g_eager):
        assert rel_err(a, b) < 1e-4
