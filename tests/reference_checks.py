"""Shared by the per-family op tests: fused op against its float64 plain-PyTorch twin.

Forward: relative error ||out - ref|| / ||ref|| against the float64 reference on the same
(rounded) inputs, per dtype (TOL in conftest). Backward: the input gradients for a random
incoming gradient, against autograd of the reference.
"""
from __future__ import annotations

import torch

from .conftest import TOL, rel_err

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
COLS = [1, 7, 1025, 100003]


def rows_for(cols: int) -> int:
    return 3 if cols > 5000 else 5


def inputs(*shapes, dtype, device, scale=1.0):
    """Fresh standard-normal tensors (times scale) of the given shapes, rounded to dtype."""
    return [(torch.randn(s, dtype=torch.float64) * scale).to(device=device, dtype=dtype) for s in shapes]


def check_forward_and_backward(fused, ref, args, dtype, out_tol=None, grad_tol=None):
    """Compares values and input gradients of fused(*args) with ref on float64 copies."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in args]
    leaves64 = [t.detach().double().requires_grad_(t.is_floating_point()) for t in args]
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


def check_compile_fullgraph(ll, logits, *rest, tol=1e-6):
    """-mean(ll(logits, *rest)) and its gradient for logits under torch.compile(fullgraph=True,
    inductor) against eager."""
    torch._dynamo.reset()

    def loss(l, *r):
        return -ll(l, *r).mean()

    eager = loss(logits, *rest)
    (g_eager,) = torch.autograd.grad(eager, logits)
    compiled = torch.compile(loss, fullgraph=True, backend="inductor")(logits, *rest)
    (g_compiled,) = torch.autograd.grad(compiled, logits)
    assert rel_err(compiled, eager) < tol and rel_err(g_compiled, g_eager) < tol


def stream_eps(mu64, logvar64, num_samples, generator, seed):
    """The eps the fused sampler draws for ``seed``, from a float64 draw of the same stream
    (z = mu + e^(logvar/2) eps solved for eps): the float64 reference then samples the same z."""
    from fastvae import functional as F

    z64 = F.reparameterize(mu64.detach(), logvar64.detach(), num_samples=num_samples,
                           generator=generator.manual_seed(seed))
    return (z64 - mu64.detach()) / torch.exp(0.5 * logvar64.detach())
