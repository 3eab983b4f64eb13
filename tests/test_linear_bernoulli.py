"""The linear_bernoulli family: ``linear_bernoulli_log_likelihood`` (a decoder's last linear layer
and the Bernoulli likelihood, the logits' buffer turned into their gradient) against the float64
plain-PyTorch twin (values, the three gradients, targets broadcast over K samples, one-byte
targets, non-contiguous input, no bias), gradcheck, opcheck of it and of the in-place kernel op,
torch.compile, the retained-graph path, bad input; and the VAE's K-sample losses through it
equal to the unfused decoder + likelihood."""
from __future__ import annotations

import pytest
import torch

import fastvae
from fastvae import functional as F
from fastvae import reference as R

from .conftest import cpu_and_cuda, rel_err
from .reference_checks import DTYPES, TOL

ops = torch.ops.fastvae


def _case(k, b, h, d, dtype, device, bias=True, x_kind="float"):
    """input (K, B, H), weight (D, H), bias (D,) or None, x (B, D): fresh draws, rounded to dtype."""
    g = torch.Generator().manual_seed(k * 7919 + b * 31 + h * 7 + d)
    def draw(*shape, scale=1.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    inp = draw(k, b, h)
    weight = draw(d, h, scale=2.0 / h ** 0.5)
    bias_t = draw(d) if bias else None
    x = (torch.rand(b, d, generator=g) < 0.3).to(device)
    x = {"float": x.to(dtype), "uint8": x.to(torch.uint8), "bool": x}[x_kind]
    return inp, weight, bias_t, x


def _check(inp, weight, bias, x, dtype):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (inp, weight, bias)]
    leaves64 = [t.detach().double().requires_grad_(True) if t is not None else None for t in (inp, weight, bias)]
    out = F.linear_bernoulli_log_likelihood(*leaves, x)
    expect = R.linear_bernoulli_log_likelihood(*leaves64, x.double() if x.is_floating_point() else x.double())
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.shape == expect.shape == inp.shape[:-1]
    assert rel_err(out, expect) <= TOL[dtype]
    w = torch.randn_like(expect)  # a random incoming gradient per row
    out.backward(w.to(out.dtype))
    expect.backward(w)
    for a, b in zip(leaves, leaves64):
        if a is not None:
            assert a.grad is not None and a.grad.dtype == a.dtype and a.grad.shape == a.shape
            assert rel_err(a.grad, b.grad) <= TOL[dtype] * 4, (a.shape, rel_err(a.grad, b.grad))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,b,h,d", [(1, 1, 1, 1), (3, 7, 5, 7), (2, 5, 33, 1025), (1, 3, 4, 100003)])
def test_against_reference(device, dtype, k, b, h, d):
    _check(*_case(k, b, h, d, dtype, device), dtype)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("x_kind", ["uint8", "bool"])
def test_one_byte_targets_and_no_bias(device, x_kind):
    _check(*_case(4, 6, 9, 13, torch.float32, device, bias=False, x_kind=x_kind), torch.float32)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_contiguous_input_and_2d_rows(device):
    inp, weight, bias, x = _case(2, 5, 12, 11, torch.float32, device)
    wide = torch.randn(2, 5, 24, device=device)[..., ::2]  # every other column: strided rows
    wide.copy_(inp)
    assert not wide.is_contiguous()
    _check(wide, weight, bias, x, torch.float32)
    _check(inp.reshape(10, 12), weight, bias, torch.cat([x, x]), torch.float32)  # no broadcast


def test_gradcheck_float64():
    inp, weight, bias, x = _case(3, 4, 5, 6, torch.float64, "cpu", x_kind="float")
    args = [t.requires_grad_(True) for t in (inp, weight, bias)]
    assert torch.autograd.gradcheck(lambda i, w, c: F.linear_bernoulli_log_likelihood(i, w, c, x), args)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_retained_graph_gives_the_same_gradients_twice(device):
    # With retain_graph the saved buffer must survive: the first backward scales a copy of it.
    inp, weight, bias, x = _case(3, 4, 6, 9, torch.float32, device)
    inp.requires_grad_(True)
    out = F.linear_bernoulli_log_likelihood(inp, weight, bias, x)
    w = torch.randn_like(out)
    (g1,) = torch.autograd.grad(out, inp, w, retain_graph=True)
    (g2,) = torch.autograd.grad(out, inp, w)
    assert torch.equal(g1, g2)
    with pytest.raises(RuntimeError, match="double backward"):
        (g,) = torch.autograd.grad(F.linear_bernoulli_log_likelihood(inp, weight, bias, x).sum(), inp,
                                   create_graph=True)
        g.sum().backward()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [7, 17, 1025, 100003])
def test_in_place_op_writes_the_gradient_over_the_logits(device, dtype, cols):
    # Row lengths that are no multiple of the vector width: the CPU kernel's tail vector overlaps
    # the last full one, whose lanes it must not read again once they hold gradients.
    logits = (torch.randn(6, cols, device=device) * 3).to(dtype)
    x = (torch.rand(3, cols, device=device) < 0.5).to(dtype)
    ll, grad = ops.bernoulli_log_likelihood(logits, x, True)
    buf = logits.clone()
    ll_ = ops.bernoulli_log_likelihood_(buf, x)
    assert torch.equal(ll_, ll) and torch.equal(buf, grad)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    inp, weight, bias, x = _case(2, 3, 5, 7, torch.float32, device)
    for args in ((inp.reshape(6, 5).requires_grad_(True), weight.requires_grad_(True), bias, x),
                 (inp.reshape(6, 5).bfloat16(), weight.bfloat16(), None, x.to(torch.uint8))):
        torch.library.opcheck(ops.linear_bernoulli_log_likelihood, args)
    # In place: each call overwrites its argument, so only the checks that do not repeat a call.
    torch.library.opcheck(ops.bernoulli_log_likelihood_, (torch.randn(6, 7, device=device), x),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_compile_fullgraph(device):
    torch._dynamo.reset()
    inp, weight, bias, x = _case(3, 4, 6, 9, torch.float32, device)
    leaves = [t.requires_grad_(True) for t in (inp, weight, bias)]

    def loss(i, w, c):
        return -F.linear_bernoulli_log_likelihood(torch.tanh(i), w, c, x).mean()

    eager = loss(*leaves)
    g_eager = torch.autograd.grad(eager, leaves)
    compiled = torch.compile(loss, fullgraph=True, backend="inductor")(*leaves)
    g_compiled = torch.autograd.grad(compiled, leaves)
    assert rel_err(compiled, eager) < 1e-6
    for a, b in zip(g_compiled, g_eager):
        assert rel_err(a, b) < 1e-6


def test_bad_input():
    inp, weight, bias, x = _case(2, 3, 5, 7, torch.float32, "cpu")
    cases = [
        ((inp, weight, bias, x.requires_grad_(True)), "x must not require grad"),
        ((inp, weight, bias, x.detach()[:, :4]), "x must be"),
        ((inp, weight, bias, torch.cat([x.detach()] * 2)), "suffix"),
        ((inp, weight.double(), bias, x.detach()), "weight must have input's dtype"),
        ((inp, weight, bias[:3], x.detach()), "bias must be"),
        ((inp, weight.t(), bias, x.detach()), "do not fit"),
        ((inp, weight, bias, x.detach().long()), "x must be float, bool or uint8"),
        ((inp.long(), weight, bias, x.detach()), "input"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            F.linear_bernoulli_log_likelihood(*args)


@pytest.mark.parametrize("objective,gradient", [("iwae", "reparam"), ("iwae", "dreg"), ("elbo", "stl")])
def test_vae_k_sample_loss_through_the_fused_head_equals_the_unfused_one(objective, gradient):
    torch.manual_seed(0)
    model = fastvae.build_mlp_vae(784, (40, 30), 8, activation="tanh")
    x = (torch.rand(6, 784) < 0.2).float()
    assert model._fused_head() is model.decoder[-1]

    def run():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        loss = model.loss(x, objective=objective, num_samples=5, gradient=gradient)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    fused, g_fused = run()
    hook = model.decoder.register_forward_hook(lambda m, i, o: o)  # a hook turns the fused head off
    assert model._fused_head() is None
    unfused, g_unfused = run()
    hook.remove()
    assert rel_err(fused, unfused) < 1e-6
    for a, b in zip(g_fused, g_unfused):
        assert rel_err(a, b) < 1e-5
