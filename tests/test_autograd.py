"""Autograd registered in C++ (csrc/autograd/): no Python node in the graph, first-order
gradients right under create_graph=True, and a second-order use refused with an error naming the
op (never a silently wrong gradient of a gradient); the dispatcher calls of a fused ELBO step,
and that none of them reads a value back to the host. float64 gradcheck lives in each op family's
test file (tests/test_<family>.py)."""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import pytest
import torch

import fastvae
from fastvae import functional as F
from fastvae import reference as R
from fastvae.bench.dispatch import DispatchCounter, op_base

from .conftest import cpu_and_cuda, rel_err

KW = dict(dtype=torch.float64)


def _leaf(*shape: int, device: str = "cpu") -> torch.Tensor:
    return torch.randn(shape, device=device, **KW).requires_grad_()


def _graph_nodes(t: torch.Tensor) -> List[object]:
    """Every autograd node reachable from t.grad_fn."""
    seen, stack, nodes = set(), [t.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(fn for fn, _ in node.next_functions)
    return nodes


def _sampling_eps(mu: torch.Tensor, lv: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The eps the fused sampler draws for this seed, recovered from a float64 draw."""
    gen = torch.Generator(device=mu.device).manual_seed(seed)
    z = F.reparameterize(mu.detach(), lv.detach(), num_samples=k, generator=gen)
    return (z - mu.detach()) / torch.exp(0.5 * lv.detach())


# One case per differentiable op (and per backward path): (op name, fused fn, reference fn,
# inputs). The fused and reference fns take the same float64 leaves.
def _cases(device: str) -> List[Tuple[str, Callable, Callable, Sequence[torch.Tensor]]]:
    def leaf(*shape):
        return _leaf(*shape, device=device)

    x01 = torch.rand(3, 7, device=device, **KW)
    seed = int(torch.randint(0, 2**62, ()))
    mu, lv = leaf(3, 5), leaf(3, 5)
    eps = _sampling_eps(mu, lv, 2, seed)

    def sample(m, v):
        return F.reparameterize(m, v, num_samples=2, generator=torch.Generator(device=device).manual_seed(seed))

    def sample_kl(m, v, use):
        gen = torch.Generator(device=device).manual_seed(seed)
        z, kl = F.reparameterize_with_kl(m, v, num_samples=2, generator=gen)
        return {"z": z.sum(0), "kl": kl, "both": z.sum(0) * 0.3 + kl.unsqueeze(-1)}[use]

    def ref_sample_kl(m, v, use):
        z, kl = R.reparameterize(m, v, 2, eps), R.kl_standard_normal(m, v)
        return {"z": z.sum(0), "kl": kl, "both": z.sum(0) * 0.3 + kl.unsqueeze(-1)}[use]

    cases = [
        ("fastvae::kl_standard_normal", F.kl_standard_normal, R.kl_standard_normal, (leaf(3, 5), leaf(3, 5))),
        ("fastvae::reparameterize", sample, lambda m, v: R.reparameterize(m, v, 2, eps), (mu, lv)),
        ("fastvae::bernoulli_log_likelihood", F.bernoulli_log_likelihood, R.bernoulli_log_likelihood,
         (leaf(2, 3, 7), x01.clone().requires_grad_())),
        # A learned per-dim variance: gradients from the backward op.
        ("fastvae::gaussian_log_likelihood", F.gaussian_log_likelihood, R.gaussian_log_likelihood,
         (leaf(2, 3, 7), leaf(3, 7), leaf(7))),
        # The fused ELBO with a per-element variance: gradients written in the forward pass.
        ("fastvae::elbo_loss",
         lambda r, v: F.elbo(r, x01, mu.detach(), lv.detach(), likelihood="gaussian", obs_logvar=v),
         lambda r, v: R.elbo(r, x01, mu.detach(), lv.detach(), likelihood="gaussian", obs_logvar=v),
         (leaf(3, 7), leaf(3, 7))),
        ("fastvae::gaussian_log_density", F.gaussian_log_density, R.gaussian_log_density,
         (leaf(4, 3, 5), leaf(3, 5), leaf(3, 5))),
        ("fastvae::standard_normal_log_density", F.standard_normal_log_density, R.standard_normal_log_density,
         (leaf(4, 3, 5),)),
    ]
    for use in ("z", "kl", "both"):
        cases.append(("fastvae::reparameterize_with_kl", lambda m, v, u=use: sample_kl(m, v, u),
                      lambda m, v, u=use: ref_sample_kl(m, v, u), (mu, lv)))
    return cases


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_first_order_gradients_under_create_graph_and_second_order_refused(device):
    for name, fused, ref, inputs in _cases(device):
        out = fused(*inputs)
        refs = [t.detach().clone().requires_grad_() for t in inputs]
        expect = ref(*refs)
        w = torch.randn_like(expect)
        grads = torch.autograd.grad(out, inputs, w, create_graph=True)
        want = torch.autograd.grad(expect, refs, w)
        for g, r in zip(grads, want):
            assert rel_err(g, r) < 1e-10, name
        # A gradient penalty: its backward would need the op's second derivative, whether
        # asked for by backward() or by autograd.grad for the inputs only (no silent None).
        penalty = sum((g * g).sum() for g in grads)
        with pytest.raises(RuntimeError, match=f"{name} does not support double backward"):
            torch.autograd.grad(penalty, inputs, retain_graph=True, allow_unused=True)
        with pytest.raises(RuntimeError, match=f"{name} does not support double backward"):
            penalty.backward()


def test_gradient_penalty_on_kl_raises_instead_of_wrong_grad():
    """The issue's case: a penalty on d KL / d logvar plus the loss itself. The incoming gradient
    does not require grad, so a plain once_differentiable would drop the penalty silently."""
    mu, lv = _leaf(6, 4), _leaf(6, 4)
    kl = F.kl_standard_normal(mu, lv).sum()
    (g_lv,) = torch.autograd.grad(kl, lv, create_graph=True)
    assert rel_err(g_lv, (lv.detach().exp() - 1) / 2) < 1e-14
    with pytest.raises(RuntimeError, match="fastvae::kl_standard_normal"):
        (kl + g_lv.pow(2).sum()).backward()


def test_gradgradcheck_refuses_with_the_op_name():
    mu, lv = _leaf(3, 4), _leaf(3, 4)
    assert torch.autograd.gradcheck(F.kl_standard_normal, (mu, lv))
    with pytest.raises(RuntimeError, match="fastvae::kl_standard_normal does not support double backward"):
        torch.autograd.gradgradcheck(F.kl_standard_normal, (mu, lv))


def test_gradient_with_respect_to_the_incoming_gradient_refused():
    """gradgradcheck also differentiates w.r.t. the incoming gradient: that path raises too."""
    mu, lv = _leaf(3, 4), _leaf(3, 4)
    w = torch.rand(3, **KW).requires_grad_()
    g_mu, _ = torch.autograd.grad(F.kl_standard_normal(mu, lv), (mu, lv), w, create_graph=True)
    with pytest.raises(RuntimeError, match="fastvae::kl_standard_normal does not support double backward"):
        torch.autograd.grad(g_mu.sum(), w, allow_unused=True)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_create_graph_gradients_accumulate_like_plain_ones():
    """backward(create_graph=True) fills .grad with the right values too."""
    mu, lv = _leaf(5, 3), _leaf(5, 3)
    F.kl_standard_normal(mu, lv).sum().backward(create_graph=True)
    assert rel_err(mu.grad, mu.detach()) < 1e-14
    assert rel_err(lv.grad, (lv.detach().exp() - 1) / 2) < 1e-14
    with pytest.raises(RuntimeError, match="fastvae::kl_standard_normal"):
        lv.grad.sum().backward()


# C++ autograd nodes: torch::autograd::Function's, and the hand-written ones of the sampler and the ELBO.
_CPP_NODE_PREFIXES = ("torch::autograd::CppNode<fastvae::autograd::", "fastvae::autograd::")


def test_no_python_autograd_node_in_a_vae_loss():
    torch.manual_seed(0)
    model = fastvae.build_mlp_vae(input_dim=12, hidden=(8,), latent_dim=3)
    x = torch.rand(5, 12)
    names = [node.name() for node in _graph_nodes(model.loss(x))]
    python_nodes = [n for n in _graph_nodes(model.loss(x)) if isinstance(n, torch.autograd.function.BackwardCFunction)]
    assert not python_nodes, [type(n).__name__ for n in python_nodes]
    fused = sorted({n for n in names if "fastvae" in n})
    # The fused sampling and loss ops, as hand-written C++ nodes (the training step's hot path).
    assert "fastvae::autograd::ReparameterizeWithKl" in fused, names
    assert "fastvae::autograd::ElboLoss" in fused, names
    assert all(n.startswith(_CPP_NODE_PREFIXES) for n in fused), fused


@pytest.mark.parametrize(
    "call, node",
    [
        (lambda a, b: F.kl_standard_normal(a, b), "KlStandardNormal"),
        (lambda a, b: F.reparameterize(a, b), "Reparameterize"),
        (lambda a, b: F.bernoulli_log_likelihood(a, torch.rand_like(b)), "BernoulliLogLikelihood"),
        (lambda a, b: F.gaussian_log_likelihood(a, b), "GaussianLogLikelihood"),
        (lambda a, b: F.continuous_bernoulli_log_likelihood(a, torch.rand_like(b)), "ContinuousBernoulliLogLikelihood"),
        (lambda a, b: F.categorical_log_likelihood(a.unsqueeze(2), torch.zeros(3, 1, dtype=torch.int64)),
         "CategoricalLogLikelihood"),
        (lambda a, b: F.gaussian_log_density(a, a.detach(), b), "GaussianLogDensity"),
        (lambda a, b: F.standard_normal_log_density(a), "StandardNormalLogDensity"),
    ],
)
def test_every_op_has_a_cpp_autograd_node(call, node):
    out = call(_leaf(3, 4), _leaf(3, 4))
    names = [n.name() for n in _graph_nodes(out)]
    assert f"torch::autograd::CppNode<fastvae::autograd::{node}>" in names or f"fastvae::autograd::{node}" in names, names
    assert not any(isinstance(n, torch.autograd.function.BackwardCFunction) for n in _graph_nodes(out))




@pytest.mark.parametrize("grad_scale_kind", ["elbo_mean", "standalone"])
def test_likelihood_backward_rescales_without_a_sync(grad_scale_kind):
    """The forward-pass gradient is rescaled by the incoming one without asking the device
    whether it equals the scale (no .item()/equal/all), in a couple of kernels."""
    logits = torch.randn(9, 31, requires_grad=True)
    x = (torch.rand(9, 31) > 0.5).float()
    if grad_scale_kind == "elbo_mean":
        out = F.elbo(logits, x, torch.randn(9, 2), torch.randn(9, 2))
        w = torch.ones(())
    else:
        out = F.bernoulli_log_likelihood(logits, x)
        w = torch.rand(9) + 0.5
    with DispatchCounter() as log:
        (g,) = torch.autograd.grad(out, logits, w)
    assert not log.syncs, log.calls
    l64 = logits.detach().double().requires_grad_()
    ref = (R.elbo(l64, x.double(), torch.zeros(9, 2), torch.zeros(9, 2)) if grad_scale_kind == "elbo_mean"
           else R.bernoulli_log_likelihood(l64, x.double()))
    (want,) = torch.autograd.grad(ref, l64, w.double())
    assert rel_err(g, want) < 1e-6
    # The Bernoulli node itself: at most a (rows,) division and one (rows, D) multiply.
    heavy = [n for n in log.ops if n in ("mul", "div", "eq", "all", "copy_", "_to_copy")]
    assert heavy.count("mul") <= (2 if grad_scale_kind == "elbo_mean" else 1), log.calls


@pytest.mark.parametrize("likelihood, obs_var", [("bernoulli", "fixed")] + [
    ("gaussian", mode) for mode in ("fixed", "scalar", "per_dim", "per_element")])
def test_vae_loss_backward_makes_no_device_sync(likelihood, obs_var):
    """One VAE.loss(x).backward(), traced op by op: nothing that would read a device value on
    the host (the old pre-scaled-gradient check did)."""
    model = fastvae.build_mlp_vae(input_dim=10, hidden=(7,), latent_dim=3, likelihood=likelihood,
                                  obs_var=obs_var, obs_logvar=-0.5)
    x = torch.rand(5, 10)
    x = x.bernoulli() if likelihood == "bernoulli" else x
    with DispatchCounter() as log:
        model.loss(x).backward()
    assert not log.syncs, log.calls
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------- dispatcher calls of a fused step
def _launching(calls):
    """Dispatcher calls that can launch a kernel: not views, not the ones_like of .backward()."""
    return [c for c in calls.calls if c not in calls.views and op_base(c) not in ("ones_like", "detach")]


def test_fused_elbo_forward_backward_dispatcher_calls():
    mu = torch.randn(5, 16, requires_grad=True)
    lv = torch.randn(5, 16, requires_grad=True)
    x = (torch.rand(5, 16) > 0.5).float()
    with DispatchCounter() as calls:
        z, kl = F.reparameterize_with_kl(mu, lv)
        loss = F.elbo(z, x, mu, lv, kl=kl)  # z itself as the decoder output: every grad path runs
        loss.backward()
    launching = _launching(calls)
    assert launching == ["fastvae::reparameterize_with_kl", "fastvae::elbo_loss",
                         "fastvae::elbo_rescale_", "fastvae::reparameterize_backward"], launching
    assert len(launching) <= 6
    assert mu.grad is not None and lv.grad is not None


@pytest.mark.parametrize("likelihood, obs_var", [("bernoulli", "fixed"), ("gaussian", "scalar"),
                                                 ("gaussian", "per_element")])
def test_vae_loss_backward_reads_nothing_back(likelihood, obs_var):
    model = fastvae.build_mlp_vae(input_dim=12, hidden=(8,), latent_dim=3, likelihood=likelihood, obs_var=obs_var)
    x = torch.rand(5, 12)
    model.loss(x)  # data_shape inferred outside the trace
    with DispatchCounter() as calls:
        model.loss(x).backward()
    assert not calls.syncs, calls.calls
    assert calls.counts["elbo_loss"] == 1 and calls.counts["elbo_rescale_"] == 1
