"""torch.library.opcheck for every op (the ELBO ops with their gradient masks and rescale ops at the
end), and torch.compile(fullgraph=True) over the fused loss."""
from __future__ import annotations

import pytest
import torch

import fastvae
from fastvae import functional as F
from fastvae import reference as R

from .conftest import cpu_and_cuda, rel_err
from .test_elbo import _case, _leaf

ops = torch.ops.fastvae


def _samples(device):
    """(op, args) pairs covering each op with gradients, broadcast rows and reduced dtypes."""
    def t(*shape, dtype=torch.float32, grad=True):
        return torch.randn(shape, device=device, dtype=dtype).requires_grad_(grad)

    mu, lv = t(4, 6), t(4, 6)
    # With a given rng_state the sampling ops are deterministic, so every check applies.
    rng = torch.tensor([int(torch.randint(0, 2**62, ())), 3], device=device)
    yield ops.reparameterize, (mu, lv, 3, None, rng)
    yield ops.reparameterize_backward, (t(3, 4, 6, grad=False), mu.detach(), lv.detach(), rng)
    yield ops.reparameterize_with_kl, (mu, lv, 2, None, rng)
    # num_samples None: one draw shaped like mu, its backward through the same op.
    yield ops.reparameterize, (mu, lv, None, None, rng)
    yield ops.reparameterize_with_kl, (mu, lv, None, None, rng)
    yield ops.reparameterize_backward, (t(2, 4, 6, grad=False), mu.detach(), lv.detach(), rng, t(4, grad=False))
    yield ops.kl_standard_normal, (mu, lv)
    yield ops.kl_standard_normal, (t(4, 6, dtype=torch.bfloat16), t(4, 6, dtype=torch.bfloat16))
    yield ops.kl_standard_normal_backward, (t(4, grad=False), mu.detach(), lv.detach())
    x = torch.rand(3, 9, device=device)
    yield ops.bernoulli_log_likelihood, (t(6, 9), x, True)
    yield ops.bernoulli_log_likelihood, (t(6, 9, grad=False), (x > 0.5).to(torch.uint8), False)
    yield ops.gaussian_log_likelihood, (t(6, 9), t(3, 9), t(1, 9))
    yield ops.gaussian_log_likelihood, (t(6, 9, dtype=torch.float64), t(6, 9, dtype=torch.float64), t(6, 9, dtype=torch.float64))
    yield ops.gaussian_log_likelihood, (t(6, 9), t(3, 9), t(6, 9))
    yield ops.gaussian_log_likelihood, (t(6, 9, dtype=torch.bfloat16), t(3, 9, dtype=torch.bfloat16), t(1, 9, dtype=torch.bfloat16))
    yield ops.gaussian_log_likelihood_backward, (t(6, grad=False), t(6, 9, grad=False), t(3, 9, grad=False), t(1, 9, grad=False), True)
    yield ops.gaussian_log_density, (t(8, 6), mu, lv)
    yield ops.gaussian_log_density_backward, (t(8, grad=False), t(8, 6, grad=False), mu.detach(), lv.detach())
    yield ops.standard_normal_log_density, (t(8, 6),)
    yield ops.standard_normal_log_density_backward, (t(8, grad=False), t(8, 6, grad=False))
    yield ops.continuous_bernoulli_log_likelihood, (t(6, 9), x, True)
    yield ops.continuous_bernoulli_log_likelihood, (t(6, 9, dtype=torch.bfloat16), x.bfloat16(), True)
    yield ops.continuous_bernoulli_log_likelihood, (t(6, 9, grad=False), (x > 0.5).to(torch.uint8), False)
    levels = torch.randint(0, 16, (3, 10), device=device)
    yield ops.categorical_log_likelihood, (t(3, 16, 2, 5), levels, True)
    # Class-innermost (channels-last) logits in bf16, uint8 levels: the gradient strided alike.
    cl = t(3, 2, 5, 16, dtype=torch.bfloat16, grad=False).permute(0, 3, 1, 2).requires_grad_(True)
    yield ops.categorical_log_likelihood, (cl, levels.to(torch.uint8), True)
    yield ops.categorical_log_likelihood, (t(3, 16, 1, 10, grad=False), levels, False)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck_every_op(device):
    checked = set()
    for op, args in _samples(device):
        torch.library.opcheck(op, args)
        checked.add(op._qualname if hasattr(op, "_qualname") else str(op))
    # Drawing from the generator, each call differs, so only the checks that do not compare
    # two calls apply.
    for op in (ops.reparameterize, ops.reparameterize_with_kl):
        torch.library.opcheck(
            op, (torch.randn(3, 2, device=device, requires_grad=True), torch.randn(3, 2, device=device), 2),
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
        )
    assert len(checked) == 14  # every op


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("kl_with_sample", [False, True])
def test_compiled_fused_elbo_has_no_graph_break(device, kl_with_sample):
    torch._dynamo.reset()
    enc = torch.nn.Linear(20, 8).to(device)
    dec = torch.nn.Linear(4, 20).to(device)
    loss_fn = fastvae.ELBOLoss()

    # One random draw per step: the compiled graph may order independent draws differently.
    def step(x):
        mu, lv = enc(x).chunk(2, dim=-1)
        if kl_with_sample:
            z, kl = F.reparameterize_with_kl(mu, lv)
            return loss_fn(dec(z), x, mu, lv, kl=kl)
        z = F.reparameterize(mu, lv)
        return loss_fn(dec(z), x, mu, lv)

    x = torch.rand(16, 20, device=device)
    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    torch.manual_seed(0)
    eager = step(x)
    eager.backward()
    g_eager = dec.weight.grad.clone()
    dec.weight.grad = None
    enc.weight.grad = None
    torch.manual_seed(0)
    out = compiled(x)
    out.backward()
    assert rel_err(out, eager) < 1e-5
    assert rel_err(dec.weight.grad, g_eager) < 1e-4


def test_compiled_reference_and_fused_agree():
    """The fused ELBO equals the eager hand-written loss on the same inputs (no sampling)."""
    recon = torch.randn(32, 784)
    x = (torch.rand(32, 784) > 0.5).float()
    mu, lv = torch.randn(32, 20), torch.randn(32, 20)
    fused = torch.compile(F.elbo, fullgraph=True)(recon, x, mu, lv)
    assert rel_err(fused, R.elbo(recon.double(), x.double(), mu.double(), lv.double())) < 1e-6


# ---------------------------------------------------------------- the ELBO ops
def _elbo_samples(device):
    def t(*shape, dtype=torch.float32, grad=True):
        return torch.randn(shape, device=device, dtype=dtype).requires_grad_(grad)

    x = torch.rand(3, 9, device=device)
    yield ops.elbo_loss, (t(6, 9), x, None, t(6, 4), t(6, 4), None, 0.0, "bernoulli", 0.5, "mean", [True, True, False])
    yield ops.elbo_loss, (t(6, 9), (x > 0.5).to(torch.uint8), t(6), None, None, None, 0.0, "bernoulli", 1.0, "sum",
                          [True, True, False])
    yield ops.elbo_loss, (t(6, 9), t(3, 9), t(6), None, None, t(1, 9), 0.0, "gaussian", 1.0, "mean", [True, True, True])
    yield ops.elbo_loss, (t(6, 9), t(6, 9), None, t(6, 2), t(6, 2), t(6, 9), 0.0, "gaussian", 2.0, "none",
                          [True, True, True])
    yield ops.elbo_loss, (t(6, 9, dtype=torch.bfloat16), t(6, 9, dtype=torch.bfloat16), None, t(6, 2, dtype=torch.bfloat16, grad=False),
                          t(6, 2, dtype=torch.bfloat16, grad=False), None, -0.3, "gaussian", 1.0, "mean", [True, False, False])
    # fastvae::elbo, the loss alone: its autograd kernel picks the gradients to write.
    yield ops.elbo, (t(6, 9), x, None, t(6, 4), t(6, 4), None, 0.0, "bernoulli", 0.5, "mean")
    yield ops.elbo, (t(6, 9), t(3, 9), t(6), None, None, t(1, 9), 0.0, "gaussian", 1.0, "none")
    yield ops.elbo, (t(6, 9, grad=False), t(6, 9, grad=False), None, t(6, 2), t(6, 2, grad=False), None, -0.3,
                     "gaussian", 2.0, "sum")
    yield ops.elbo_rescale, (t(grad=False), [t(6, 9, grad=False), t(6, grad=False)])
    yield ops.elbo_rescale, (t(6, grad=False), [t(6, 9, grad=False, dtype=torch.float16), t(6, 2, grad=False)])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck_elbo_ops(device):
    for op, args in _elbo_samples(device):
        torch.library.opcheck(op, args)
    # In place: the arguments change on every call, so only the checks that do not repeat a call.
    grads = [torch.randn(6, 9, device=device), torch.randn(6, device=device)]
    torch.library.opcheck(ops.elbo_rescale_, (torch.rand((), device=device) + 0.5, grads),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("form", ["bernoulli", "gaussian_per_element"])
def test_compile_fullgraph_elbo(device, form):
    torch._dynamo.reset()
    recon, x, mu, lv, obs, likelihood = _case(form, 16, 20, torch.float32, device)

    def loss_fn(r, m, v, o):
        z, kl = F.reparameterize_with_kl(m, v)
        return F.elbo(r + z.sum(-1, keepdim=True), x, m, v, likelihood=likelihood, obs_logvar=o, beta=0.8, kl=kl)

    def run(fn):
        leaves = [_leaf(recon), _leaf(mu), _leaf(lv), _leaf(obs) if isinstance(obs, torch.Tensor) else obs]
        torch.manual_seed(3)
        out = fn(*leaves)
        out.backward()
        return out, [t.grad for t in leaves if isinstance(t, torch.Tensor)]

    eager, g_eager = run(loss_fn)
    compiled, g_compiled = run(torch.compile(loss_fn, fullgraph=True, backend="inductor"))
    assert rel_err(compiled, eager) < 1e-5
    for a, b in zip(g_compiled, g_eager):
        assert rel_err(a, b) < 1e-5
