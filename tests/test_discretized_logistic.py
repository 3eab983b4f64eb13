"""The discretized_logistic family: the NVAE / PixelCNN++ mixture of logistics and one logistic
per subpixel, against the float64 reference (fastvae.reference), itself checked against the plain
difference of two sigmoids where that is accurate and against the bins' total probability; C = 1
and 3, M in {1, 5, 10}, bits in {5, 8}, every level, log-scales under the clamp, tails below
1e-12, odd spatial sizes, non-contiguous and channels-last params, bf16, gradcheck, opcheck,
torch.compile; the emulated CUDA kernels through ``emu``.
"""
from __future__ import annotations

import pytest
import torch

from fastvae import functional as F
from fastvae import reference as R

from .conftest import TOL, cpu_and_cuda, rel_err

ops = torch.ops.fastvae
REDUCED = (torch.bfloat16, torch.float16)


def _params(B, C, M, spatial, dtype=torch.float64, device="cpu", ls_range=(-8.0, 0.5)):
    """Fresh NVAE-layout params: logits N(0, 1), means U(-1.1, 1.1), log-scales U(ls_range) (some
    under the clamp at -7), coefficients N(0, 1)."""
    blocks = []
    blocks.append(torch.randn(B, M, *spatial, dtype=torch.float64))
    for _ in range(C):
        blocks.append(torch.rand(B, M, *spatial, dtype=torch.float64) * 2.2 - 1.1)
        lo, hi = ls_range
        blocks.append(torch.rand(B, M, *spatial, dtype=torch.float64) * (hi - lo) + lo)
        if C == 3:
            blocks.append(torch.randn(B, M, *spatial, dtype=torch.float64))
    return torch.cat(blocks, 1).to(device=device, dtype=dtype)


def _levels(B, C, spatial, bits, device="cpu", dtype=torch.uint8):
    """Random levels, with level 0 and the top level forced in at the first two positions."""
    top = 2**bits - 1
    x = torch.randint(0, top + 1, (B, C, *spatial))
    flat = x.view(B, -1)
    flat[:, 0] = 0
    if flat.shape[1] > 1:
        flat[:, 1] = top
    return x.to(device=device, dtype=dtype if bits <= 8 or dtype != torch.uint8 else torch.int32)


def _check_mix(params, x, M, bits, dtype, tol=None):
    """Values and params' gradient against the float64 reference on the same (rounded) params."""
    leaf = params.detach().clone().requires_grad_()
    leaf64 = params.detach().cpu().double().requires_grad_()
    out = F.discretized_mix_logistic_log_likelihood(leaf, x, M, bits)
    ref = R.discretized_mix_logistic_log_likelihood(leaf64, x.cpu(), M, bits)
    assert out.shape == ref.shape and out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = tol or TOL[dtype]
    assert rel_err(out.cpu(), ref) <= tol
    w = torch.randn_like(ref)
    out.backward(w.to(out.device, out.dtype))
    ref.backward(w)
    assert leaf.grad.dtype == dtype and leaf.grad.shape == leaf.shape
    assert rel_err(leaf.grad.cpu(), leaf64.grad) <= 4 * tol


# ---------------------------------------------------------------- the reference itself
@pytest.mark.parametrize("bits", [5, 8])
def test_reference_is_the_difference_of_sigmoids_where_that_is_accurate(bits):
    mean = torch.rand(4, 3, 50, dtype=torch.float64) * 2 - 1
    ls = torch.rand(4, 3, 50, dtype=torch.float64) * 3 - 4
    x = _levels(4, 3, (50,), bits)
    ref = R.discretized_logistic_log_likelihood(mean, ls, x, bits)
    top = 2**bits - 1
    xv = 2 * x.double() / top - 1
    inv = torch.exp(-ls.clamp(min=-7))
    cdf_plus = torch.where(x == top, 1.0, torch.sigmoid((xv + 1 / top - mean) * inv))
    cdf_min = torch.where(x == 0, 0.0, torch.sigmoid((xv - 1 / top - mean) * inv))
    mass = cdf_plus - cdf_min
    terms = R._bin_log_mass(xv, mean, ls, bits, x < top, x > 0)
    assert torch.allclose(ref, terms.flatten(1).sum(1), rtol=1e-14, atol=0)
    ok = mass > 1e-6  # where the plain difference keeps its precision (float64: ~1e-10 relative)
    assert ok.float().mean() > 0.5
    assert torch.allclose(terms[ok], mass[ok].log(), rtol=1e-9, atol=0)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("C, bits", [(1, 8), (3, 5)])
def test_probabilities_of_all_levels_sum_to_one(device, C, bits):
    """One pixel, every level (every colour for C = 3 at 5 bits: 32^3): the bins' probabilities sum to 1."""
    M, top = 5, 2**bits - 1
    levels = torch.arange(top + 1)
    if C == 3:
        levels = torch.cartesian_prod(levels, levels, levels)
    x = levels.view(-1, C, 1).to(device)
    params = _params(1, C, M, (1,), ls_range=(-3.0, -1.0)).to(device).expand(x.shape[0], -1, -1)
    ll = F.discretized_mix_logistic_log_likelihood(params, x, M, bits)
    assert abs(ll.exp().sum().item() - 1) < 1e-12
    mean, ls = params[:, M:M + 1], params[:, 2 * M:2 * M + 1]
    if C == 1:
        ll1 = F.discretized_logistic_log_likelihood(mean, ls, x, bits)
        assert abs(ll1.exp().sum().item() - 1) < 1e-12


# ---------------------------------------------------------------- against the reference
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("M", [1, 5, 10])
@pytest.mark.parametrize("bits", [5, 8])
def test_mixture_against_reference(device, dtype, C, M, bits):
    spatial = (7, 5) if M != 5 else (1, 1)
    params = _params(3, C, M, spatial, dtype, device)
    _check_mix(params, _levels(3, C, spatial, bits, device), M, bits, dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("spatial", [(1,), (7,), (3, 11), (33, 17), (2, 3, 5)])
def test_odd_spatial_sizes(device, spatial):
    params = _params(2, 3, 4, spatial, torch.float32, device)
    _check_mix(params, _levels(2, 3, spatial, 8, device), 4, 8, torch.float32)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_every_level(device):
    for C, bits in [(1, 8), (3, 8), (3, 5)]:
        n = 2**bits
        x = torch.arange(n).view(1, 1, n).expand(2, C, n).to(device)
        x = x.to(torch.uint8) if bits == 8 else x
        _check_mix(_params(2, C, 3, (n,), torch.float32, device), x, 3, bits, torch.float32)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_tails_where_a_bin_has_under_1e_minus_12(device):
    """Means far from the data with small scales: bins of probability 1e-12 .. 1e-300, both tails,
    exact (the density-at-centre approximation would be off by ~1 nat here)."""
    M, bits = 2, 8
    params = _params(2, 3, M, (40,), ls_range=(-7.5, -5.5))
    x = _levels(2, 3, (40,), bits)
    xv = 2 * x.double() / 255 - 1
    for c in range(3):  # every mean 0.3 .. 0.6 away from its data, on either side; no coupling
        blk = M + 3 * M * c
        sign = torch.where(xv[:, c] > 0, -1.0, 1.0).unsqueeze(1)
        params[:, blk:blk + M] = xv[:, c:c + 1] + sign * (0.3 + 0.3 * torch.rand(2, M, 40))
        params[:, blk + 2 * M:blk + 3 * M] = 0.0
        ref_terms = R._bin_log_mass(xv[:, c:c + 1], params[:, blk:blk + M], params[:, blk + M:blk + 2 * M], bits,
                                    x[:, c:c + 1] < 255, x[:, c:c + 1] > 0)
        assert ref_terms.max() < -27.6 and ref_terms.isfinite().all()  # every bin below 1e-12
    for dtype in (torch.float64, torch.float32):
        _check_mix(params.to(device=device, dtype=dtype), x.to(device), M, bits, dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_log_scales_under_the_clamp_get_no_gradient(device):
    M = 2
    params = _params(2, 1, M, (9,), device=device)
    params[:, 2 * M:] = -7.0 - torch.rand(2, M, 9, dtype=torch.float64, device=device)
    params[0, 2 * M, 0] = -7.0  # exactly at the clamp: no gradient either, as torch.clamp's
    params[1, 2 * M, 0] = -6.99  # just above it: the gradient (pixel 0 is level 0, the means near it)
    params[1, M:2 * M, 0] = -0.995
    leaf = params.clone().requires_grad_()
    x = _levels(2, 1, (9,), 8, device)
    F.discretized_mix_logistic_log_likelihood(leaf, x, M).sum().backward()
    g = leaf.grad[:, 2 * M:]
    assert g[1, 0, 0] != 0
    g[1, 0, 0] = 0
    assert (g == 0).all()
    _check_mix(params, x, M, 8, torch.float64)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_and_non_contiguous_params(device, dtype):
    M = 3
    base = _params(2, 3, M, (6, 10), dtype, device)
    cl = base.contiguous(memory_format=torch.channels_last)
    x = _levels(2, 3, (6, 5), 8, device)
    _check_mix(cl[..., ::2], x, M, 8, dtype)  # sliced: a copy into (B, K, S)
    x_full = _levels(2, 3, (6, 10), 8, device)
    _check_mix(cl, x_full, M, 8, dtype)
    leaf = cl.detach().clone().requires_grad_()
    F.discretized_mix_logistic_log_likelihood(leaf, x_full, M).sum().backward()
    assert leaf.grad.is_contiguous(memory_format=torch.channels_last)  # written in params' own layout
    strided = torch.stack([base, torch.randn_like(base)], dim=2).flatten(1, 2)[:, ::2]  # channel stride 2
    assert torch.equal(strided, base) and not strided.is_contiguous()
    _check_mix(strided, x_full.transpose(2, 3).contiguous().transpose(2, 3), M, 8, dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_float_data_in_minus_one_one_reads_as_levels(device):
    M, bits = 3, 8
    params = _params(2, 3, M, (5, 3), torch.float32, device)
    x = _levels(2, 3, (5, 3), bits, device)
    xf = (2 * x.double() / 255 - 1).float()
    for xs in (x, x.long(), x.int(), xf, xf.double(), xf.half()):
        out = F.discretized_mix_logistic_log_likelihood(params, xs, M, bits)
        assert torch.equal(out, F.discretized_mix_logistic_log_likelihood(params, x, M, bits))


def test_result_does_not_depend_on_the_thread_count():
    params = _params(3, 3, 10, (40, 40), torch.float32).requires_grad_()
    x = _levels(3, 3, (40, 40), 8)
    threads = torch.get_num_threads()
    outs = []
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        params.grad = None
        out = F.discretized_mix_logistic_log_likelihood(params, x, 10)
        out.sum().backward()
        outs.append((out, params.grad.clone()))
    torch.set_num_threads(threads)
    for out, g in outs[1:]:
        assert torch.equal(out, outs[0][0]) and torch.equal(g, outs[0][1])


# ---------------------------------------------------------------- one logistic
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("ls_shape", ["full", "channel", "scalar"])
def test_one_logistic_against_reference(device, dtype, ls_shape):
    B, C, spatial, bits = 3, 2, (7, 9), 5
    mean = (torch.rand(B, C, *spatial, dtype=torch.float64) * 2.2 - 1.1).to(device, dtype)
    shape = {"full": (B, C, *spatial), "channel": (C, 1, 1), "scalar": ()}[ls_shape]
    ls = (torch.rand(shape, dtype=torch.float64) * 8.5 - 8).to(device, dtype)
    x = _levels(B, C, spatial, bits, device)
    leaves = [t.detach().clone().requires_grad_() for t in (mean, ls)]
    leaves64 = [t.detach().cpu().double().requires_grad_() for t in (mean, ls)]
    out = F.discretized_logistic_log_likelihood(*leaves, x, bits)
    ref = R.discretized_logistic_log_likelihood(leaves64[0], leaves64[1], x.cpu(), bits)
    assert rel_err(out.cpu(), ref) <= TOL[dtype]
    w = torch.randn_like(ref)
    out.backward(w.to(out.device, out.dtype))
    ref.backward(w)
    for a, b in zip(leaves, leaves64):
        assert a.grad.shape == a.shape and rel_err(a.grad.cpu(), b.grad) <= 4 * TOL[dtype]


# ---------------------------------------------------------------- autograd, opcheck, compile
@pytest.mark.parametrize("device", cpu_and_cuda())
def test_gradcheck(device):
    for C, M in [(1, 2), (3, 2)]:
        params = _params(2, C, M, (3,), device=device, ls_range=(-3.0, 0.5)).requires_grad_()
        x = _levels(2, C, (3,), 5, device)
        assert torch.autograd.gradcheck(lambda p: F.discretized_mix_logistic_log_likelihood(p, x, M, 5), (params,))
    mean = torch.randn(2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    ls = (torch.rand(3, 4, dtype=torch.float64, device=device) - 2).requires_grad_()
    x = _levels(2, 3, (4,), 5, device)
    assert torch.autograd.gradcheck(lambda m, s: F.discretized_logistic_log_likelihood(m, s, x, 5), (mean, ls))


def test_double_backward_raises_naming_the_op():
    params = _params(2, 1, 2, (3,)).requires_grad_()
    x = _levels(2, 1, (3,), 8)
    (g,) = torch.autograd.grad(F.discretized_mix_logistic_log_likelihood(params, x, 2).sum(), params,
                               create_graph=True)
    with pytest.raises(RuntimeError, match="discretized_mix_logistic_log_likelihood does not support double"):
        g.sum().backward()


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    p3 = _params(2, 3, 2, (5,), torch.float32, device).requires_grad_()
    p1 = _params(2, 1, 3, (4,), torch.bfloat16, device).requires_grad_()
    cl = _params(2, 3, 2, (3, 4), torch.float32, device).contiguous(memory_format=torch.channels_last)
    cl = cl.view(2, 20, 12).requires_grad_()
    x3, x1 = _levels(2, 3, (5,), 8, device), _levels(2, 1, (4,), 5, device, torch.int64)
    mean = torch.randn(2, 3, 5, device=device, requires_grad=True)
    ls = torch.randn(1, 3, 1, device=device).expand(2, 3, 5).detach().requires_grad_()
    mix, one = ops.discretized_mix_logistic_log_likelihood_with_grad, ops.discretized_logistic_log_likelihood_with_grad
    cases = [
        (mix, (p3, x3, 2, 8, True)),
        (mix, (p3.detach(), x3, 2, 8, False)),
        (mix, (p1, x1, 3, 5, True)),
        (mix, (cl, _levels(2, 3, (12,), 8, device), 2, 8, True)),
        (one, (mean, ls, x3, 8, True)),
        (one, (mean.detach(), ls.detach(), x3.float() / 128 - 1, 8, False)),
        (ops.discretized_mix_logistic_log_likelihood, (p3, x3, 2, 8)),
        (ops.discretized_mix_logistic_log_likelihood, (cl, _levels(2, 3, (12,), 8, device), 2, 8)),
        (ops.discretized_mix_logistic_log_likelihood, (p1.detach(), x1, 3, 5)),
        (ops.discretized_logistic_log_likelihood, (mean, ls, x3, 8)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_gradient_buffers_are_scaled_in_place_and_the_with_grad_outputs_are_not():
    """The log-likelihood ops scale their own gradient buffers in backward; the _with_grad ops'
    gradient outputs, which callers may hold, stay the gradients for an incoming gradient of 1."""
    params = _params(3, 3, 2, (4, 5), torch.float32).requires_grad_()
    x = _levels(3, 3, (4, 5), 8)
    w = torch.rand(3) + 0.5
    op = ops.discretized_mix_logistic_log_likelihood_with_grad
    ll, g1 = op(params.view(3, 20, 20), x.view(3, 3, 20), 2, 8, True)
    kept = g1.clone()
    ll.backward(w)
    assert torch.equal(g1, kept)
    assert torch.allclose(params.grad.view(3, 20, 20), kept * w.view(3, 1, 1), rtol=1e-6, atol=0)
    fused = params.detach().clone().requires_grad_()
    F.discretized_mix_logistic_log_likelihood(fused, x, 2).backward(w)
    assert torch.equal(fused.grad, params.grad)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_compile_fullgraph(device):
    torch._dynamo.reset()
    dec = torch.nn.Conv2d(4, 10 * 3, 1).to(device)
    head = torch.nn.Conv2d(4, 2 * 3, 1).to(device)
    z = torch.randn(2, 4, 5, 7, device=device)
    x = _levels(2, 3, (5, 7), 8, device)

    def step(z):
        m, s = head(z).chunk(2, dim=1)
        return (F.discretized_mix_logistic_log_likelihood(dec(z), x, 3).sum()
                + F.discretized_logistic_log_likelihood(m, s, x).sum())

    got = torch.compile(step, fullgraph=True, backend="inductor")(z)
    got.backward()
    grads = [p.grad.clone() for p in (*dec.parameters(), *head.parameters())]
    for p in (*dec.parameters(), *head.parameters()):
        p.grad = None
    want = step(z)
    want.backward()
    assert rel_err(got, want) < 1e-6
    for g, p in zip(grads, (*dec.parameters(), *head.parameters())):
        assert rel_err(g, p.grad) < 1e-5


# ---------------------------------------------------------------- bad input
def _p(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


_X3 = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 20, 4, 4).int(), _X3, 2), "params must be"),
        (lambda: F.discretized_mix_logistic_log_likelihood([0.0], _X3, 2), "params must be"),
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 30, 4, 4), _X3, 2), "num_mixtures=2"),
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 20, 4, 4), _X3, 0), "num_mixtures must"),
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 20, 4, 4), _X3, 2.0), "num_mixtures must"),
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 20, 4, 4), _X3, 2, bits=0), "bits must"),
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 20, 4, 4), _X3, 2, bits=17), "bits must"),
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 20, 4, 4), _X3.bool(), 2), "x must be"),
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 20, 4, 4), _X3.tolist(), 2), "x must be"),
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 20, 4, 4), _X3[:, :, :3], 2), "x has shape"),
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 20, 4, 4), _X3[:, :2], 2), "1 or 3 channels"),
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(0, 20, 4, 4), _X3[:0], 2), "params is empty"),
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 20, 4, 4), _X3.to("meta"), 2), "x is on"),
        # levels out of range: checked by the CPU kernel in the same pass
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 20, 4, 4), _X3 + 32, 2, bits=5), "levels outside"),
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 20, 4, 4), _X3.int() - 1, 2), "levels outside"),
        (lambda: F.discretized_mix_logistic_log_likelihood(_p(2, 20, 4, 4), _X3.float() + 1.1, 2), "levels outside"),
        (lambda: F.discretized_logistic_log_likelihood(_p(2, 3, 4, 4), _p(2, 3, 4, 4), _X3.int() + 256), "levels outside"),
        (lambda: F.discretized_logistic_log_likelihood(_p(2, 3, 4, 4).int(), _p(2, 3, 4, 4), _X3), "mean must be"),
        (lambda: F.discretized_logistic_log_likelihood(_p(2, 3, 4, 4), _p(2, 3, 4, 4).int(), _X3), "log_scale must"),
        (lambda: F.discretized_logistic_log_likelihood(_p(2, 3, 4, 4), _p(2, 3, 4, 5), _X3), "log_scale of shape"),
        (lambda: F.discretized_logistic_log_likelihood(_p(2, 3, 4, 4), _p(2, 1, 4, 4, 1), _X3), "log_scale of shape"),
        (lambda: F.discretized_logistic_log_likelihood(_p(2, 3, 4, 4), _p(2, 3, 4, 4), _X3[:1]), "x has shape"),
        (lambda: F.discretized_logistic_log_likelihood(_p(2, 3, 4, 4), _p(2, 3, 4, 4).to("meta"), _X3), "log_scale is on"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_raw_ops_reject_bad_layouts():
    x = torch.zeros(2, 3, 16, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="params must be 3-D"):
        ops.discretized_mix_logistic_log_likelihood_with_grad(_p(2, 20, 4, 4), x, 2, 8, False)
    with pytest.raises(RuntimeError, match="params must have 20 channels"):
        ops.discretized_mix_logistic_log_likelihood_with_grad(_p(2, 21, 16), x, 2, 8, False)
    with pytest.raises(RuntimeError, match="x must be uint8"):
        ops.discretized_mix_logistic_log_likelihood_with_grad(_p(2, 20, 16), x.short(), 2, 8, False)
    with pytest.raises(RuntimeError, match="batch and pixels must match"):
        ops.discretized_mix_logistic_log_likelihood_with_grad(_p(2, 20, 15), x, 2, 8, False)
    with pytest.raises(RuntimeError, match="must share a dtype"):
        ops.discretized_logistic_log_likelihood_with_grad(_p(2, 3, 16), _p(2, 3, 16).double(), x, 8, False)
