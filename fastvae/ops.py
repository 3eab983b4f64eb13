"""The dispatcher ops (``torch.ops.fastvae.*``) with their fake-tensor and autograd rules.

Each op works on 2-D contiguous ``(rows, cols)`` operands; an operand with fewer rows than the
output broadcasts over the leading rows (row ``r`` reads its row ``r % rows``). Row outputs are
float32 for float32/bf16/fp16 inputs and float64 for float64. Argument checking, reshaping and
broadcasting for users live one layer up, in :mod:`fastvae.functional`.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch._subclasses.fake_tensor import is_fake

from . import _extension  # noqa: F401  (loads the kernels and the op schemas)

ops = torch.ops.fastvae


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_out(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty((t.shape[0],), dtype=_acc_dtype(t.dtype))


def _sum_repeats(grad: torch.Tensor, rows: int) -> torch.Tensor:
    """Sums a (R, D) gradient down to an operand that broadcast with ``rows`` rows."""
    if grad.shape[0] == rows:
        return grad
    return grad.view(grad.shape[0] // rows, rows, grad.shape[1]).sum(0)


# ---------------------------------------------------------------- fake (meta) implementations
@torch.library.register_fake("fastvae::philox_state")
def _(like, generator=None):
    return like.new_empty((2,), dtype=torch.int64)


@torch.library.register_fake("fastvae::reparameterize")
def _(mu, logvar, rng_state, num_samples):
    return mu.new_empty((num_samples, *mu.shape))


@torch.library.register_fake("fastvae::reparameterize_with_kl")
def _(mu, logvar, rng_state, num_samples):
    return mu.new_empty((num_samples, *mu.shape)), _rows_out(mu)


@torch.library.register_fake("fastvae::reparameterize_backward")
def _(grad_z, mu, logvar, rng_state, grad_kl=None):
    return torch.empty_like(mu), torch.empty_like(logvar)


@torch.library.register_fake("fastvae::kl_standard_normal")
def _(mu, logvar):
    return _rows_out(mu)


@torch.library.register_fake("fastvae::kl_standard_normal_backward")
def _(grad, mu, logvar):
    return torch.empty_like(mu), torch.empty_like(logvar)


@torch.library.register_fake("fastvae::bernoulli_log_likelihood")
def _(logits, x, compute_grad, grad_scale=1.0):
    grad = torch.empty_like(logits) if compute_grad else logits.new_empty((0,))
    return _rows_out(logits), grad


@torch.library.register_fake("fastvae::gaussian_log_likelihood")
def _(mean, x, logvar, compute_grad=False, grad_scale=1.0):
    grad_mean = torch.empty_like(mean) if compute_grad else mean.new_empty((0,))
    per_element = compute_grad and logvar.shape[0] == mean.shape[0]
    grad_logvar = torch.empty_like(logvar) if per_element else logvar.new_empty((0,))
    return _rows_out(mean), grad_mean, grad_logvar


@torch.library.register_fake("fastvae::gaussian_log_likelihood_backward")
def _(grad, mean, x, logvar, logvar_grad):
    return torch.empty_like(mean), (torch.empty_like(logvar) if logvar_grad else logvar.new_empty((0,)))


@torch.library.register_fake("fastvae::gaussian_log_density")
def _(z, mu, logvar):
    return _rows_out(z)


@torch.library.register_fake("fastvae::gaussian_log_density_backward")
def _(grad, z, mu, logvar):
    return torch.empty_like(z), torch.empty_like(mu), torch.empty_like(logvar)


@torch.library.register_fake("fastvae::standard_normal_log_density")
def _(z):
    return _rows_out(z)


@torch.library.register_fake("fastvae::standard_normal_log_density_backward")
def _(grad, z):
    return torch.empty_like(z)


# ---------------------------------------------------------------- autograd
def _reparameterize_setup(ctx, inputs, output):
    mu, logvar, rng_state, _ = inputs
    ctx.save_for_backward(mu, logvar, rng_state)


def _reparameterize_backward(ctx, grad_z):
    mu, logvar, rng_state = ctx.saved_tensors
    # eps is drawn again from rng_state rather than kept from the forward pass.
    grad_mu, grad_logvar = ops.reparameterize_backward(grad_z.contiguous(), mu, logvar, rng_state)
    return grad_mu, grad_logvar, None, None


torch.library.register_autograd(
    "fastvae::reparameterize", _reparameterize_backward, setup_context=_reparameterize_setup
)


def _reparameterize_with_kl_setup(ctx, inputs, output):
    _reparameterize_setup(ctx, inputs, output)
    # A term nobody used sends no gradient: no zero tensor of z's size is made for it.
    ctx.set_materialize_grads(False)


def _reparameterize_with_kl_backward(ctx, grad_z, grad_kl):
    mu, logvar, rng_state = ctx.saved_tensors
    if grad_z is None and grad_kl is None:
        return None, None, None, None
    if grad_z is None:
        grad_mu, grad_logvar = ops.kl_standard_normal_backward(grad_kl.contiguous(), mu, logvar)
    else:
        # Both terms' gradients in one pass over mu and logvar.
        grad_mu, grad_logvar = ops.reparameterize_backward(
            grad_z.contiguous(), mu, logvar, rng_state, None if grad_kl is None else grad_kl.contiguous()
        )
    return grad_mu, grad_logvar, None, None


torch.library.register_autograd(
    "fastvae::reparameterize_with_kl", _reparameterize_with_kl_backward, setup_context=_reparameterize_with_kl_setup
)


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _kl_backward(ctx, grad):
    mu, logvar = ctx.saved_tensors
    return ops.kl_standard_normal_backward(grad.contiguous(), mu, logvar)


torch.library.register_autograd("fastvae::kl_standard_normal", _kl_backward, setup_context=_save_inputs)


def _bernoulli_setup(ctx, inputs, output):
    logits, x, _, grad_scale = inputs
    # The forward pass already wrote d ll / d logits; the logits are kept only if x needs a
    # gradient (d ll / d x = logits), which soft targets rarely do.
    ctx.save_for_backward(output[1], logits if x.requires_grad else None)
    ctx.x_rows = x.shape[0]
    ctx.grad_scale = grad_scale
    # The second output is the saved gradient itself: no gradient flows into it, and autograd
    # must not fill a zero tensor of the data's size for it on every backward pass.
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _is_exactly(grad: torch.Tensor, value: float) -> bool:
    """True when every entry of grad equals value; False whenever checking would need a sync
    that is not allowed (CUDA graph capture) or a data-dependent branch (torch.compile)."""
    if torch.compiler.is_compiling() or is_fake(grad):  # traced: no data to look at
        return False
    if grad.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    return bool((grad == value).all())


def _rescale(grad: torch.Tensor, scale: float, *saved: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Gradients the forward pass wrote pre-multiplied by ``scale`` (the loss's own -1/B or -1),
    for the per-row gradient ``grad`` that arrived: the saved tensors themselves when grad is
    exactly that scale (a pass over B x D saved each), else rescaled copies (empty ones as they are)."""
    if _is_exactly(grad, scale):
        return saved
    ratio = (grad / scale).unsqueeze(1)
    return tuple(t * ratio.to(t.dtype) if t.numel() else t for t in saved)


def _bernoulli_backward(ctx, grad_ll, _grad_of_grad):
    dlogits, logits = ctx.saved_tensors
    grad_logits = grad_x = None
    if grad_ll is None:  # grads are not materialised: nothing flowed into the log-likelihood
        return None, None, None, None
    if ctx.needs_input_grad[0]:
        if dlogits.numel() == 0:
            raise RuntimeError(
                "fastvae::bernoulli_log_likelihood was called with compute_grad=False, "
                "so it has no gradient for logits"
            )
        (grad_logits,) = _rescale(grad_ll, ctx.grad_scale, dlogits)
    if ctx.needs_input_grad[1]:
        grad_x = _sum_repeats(logits * grad_ll.unsqueeze(1).to(logits.dtype), ctx.x_rows)
    return grad_logits, grad_x, None, None


torch.library.register_autograd(
    "fastvae::bernoulli_log_likelihood", _bernoulli_backward, setup_context=_bernoulli_setup
)


def _gaussian_ll_setup(ctx, inputs, output):
    mean, x, logvar, compute_grad, grad_scale = inputs
    _, grad_mean, grad_logvar = output
    # With compute_grad the forward pass wrote the gradients times grad_scale (the mean's, and a
    # per-element variance's); the inputs are kept only for what those do not cover.
    ctx.precomputed = compute_grad
    ctx.needs_inputs = not compute_grad or (logvar.requires_grad and grad_logvar.numel() == 0)
    ctx.save_for_backward(grad_mean, grad_logvar, *((mean, x, logvar) if ctx.needs_inputs else ()))
    ctx.x_rows = x.shape[0]
    ctx.grad_scale = grad_scale
    ctx.mark_non_differentiable(grad_mean, grad_logvar)
    ctx.set_materialize_grads(False)


def _gaussian_ll_backward(ctx, grad, _grad_of_grad_mean, _grad_of_grad_logvar):
    if grad is None:  # nothing flowed into the log-likelihood
        return None, None, None, None, None
    needs_mean, needs_x, needs_logvar = ctx.needs_input_grad[:3]
    grad_mean, grad_logvar, *inputs = ctx.saved_tensors
    if ctx.precomputed:
        grad_mean, grad_logvar = _rescale(grad, ctx.grad_scale, grad_mean, grad_logvar)
    if inputs:  # no precomputed gradients, or a broadcast variance's still to be summed
        mean, x, logvar = inputs
        recomputed_mean, grad_logvar = ops.gaussian_log_likelihood_backward(
            grad.contiguous(), mean, x, logvar, needs_logvar
        )
        if not ctx.precomputed:
            grad_mean = recomputed_mean
    return (
        grad_mean if needs_mean else None,
        _sum_repeats(-grad_mean, ctx.x_rows) if needs_x else None,
        grad_logvar if needs_logvar else None,
        None,
        None,
    )


torch.library.register_autograd(
    "fastvae::gaussian_log_likelihood", _gaussian_ll_backward, setup_context=_gaussian_ll_setup
)


def _gaussian_density_backward(ctx, grad):
    z, mu, logvar = ctx.saved_tensors
    return ops.gaussian_log_density_backward(grad.contiguous(), z, mu, logvar)


torch.library.register_autograd(
    "fastvae::gaussian_log_density", _gaussian_density_backward, setup_context=_save_inputs
)


def _standard_normal_backward(ctx, grad):
    (z,) = ctx.saved_tensors
    return ops.standard_normal_log_density_backward(grad.contiguous(), z)


torch.library.register_autograd(
    "fastvae::standard_normal_log_density", _standard_normal_backward, setup_context=_save_inputs
)
