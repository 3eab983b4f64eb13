"""The dispatcher ops (``torch.ops.fastvae.*``) with their fake-tensor rules.

Their autograd is registered from C++ (csrc/autograd/), so a forward and backward pass cross no
Python per op; a second-order use (a gradient of a gradient) raises a RuntimeError naming the op.

Each op works on 2-D contiguous ``(rows, cols)`` operands; an operand with fewer rows than the
output broadcasts over the leading rows (row ``r`` reads its row ``r % rows``). Row outputs are
float32 for float32/bf16/fp16 inputs and float64 for float64. Argument checking, reshaping and
broadcasting for users live one layer up, in :mod:`fastvae.functional`.
"""
from __future__ import annotations

import torch

from . import _extension  # noqa: F401  (loads the kernels and the op schemas)

ops = torch.ops.fastvae


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_out(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty((t.shape[0],), dtype=_acc_dtype(t.dtype))


def _same_device(**tensors: object) -> None:
    """The kernels' device check (csrc/common/checks.h), with their message, for the fake (meta)
    implementations: a call mixing meta and real tensors dispatches to them, and must be refused
    as the kernels refuse it instead of returning uninitialised memory on one of the devices."""
    first = None
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            continue
        if first is None:
            first = (name, t)
        elif t.device != first[1].device:
            raise RuntimeError(f"fastvae: {name} is on {t.device} but {first[0]} is on {first[1].device}")


# ---------------------------------------------------------------- fake (meta) implementations
def _rng_out(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty((2,), dtype=torch.int64)


def _sample_out(mu: torch.Tensor, num_samples) -> torch.Tensor:
    """z: (num_samples, *mu.shape), or mu's shape for num_samples None."""
    return mu.new_empty(mu.shape if num_samples is None else (num_samples, *mu.shape))


@torch.library.register_fake("fastvae::reparameterize")
def _(mu, logvar, num_samples, generator=None, rng_state=None):
    _same_device(mu=mu, logvar=logvar, rng_state=rng_state)
    return _sample_out(mu, num_samples), _rng_out(mu)


@torch.library.register_fake("fastvae::reparameterize_with_kl")
def _(mu, logvar, num_samples, generator=None, rng_state=None):
    _same_device(mu=mu, logvar=logvar, rng_state=rng_state)
    return _sample_out(mu, num_samples), _rows_out(mu), _rng_out(mu)


@torch.library.register_fake("fastvae::reparameterize_backward")
def _(grad_z, mu, logvar, rng_state, grad_kl=None):
    _same_device(mu=mu, logvar=logvar, grad_z=grad_z, rng_state=rng_state, grad_kl=grad_kl)
    return torch.empty_like(mu), torch.empty_like(logvar)


@torch.library.register_fake("fastvae::kl_standard_normal")
def _(mu, logvar):
    _same_device(mu=mu, logvar=logvar)
    return _rows_out(mu)


@torch.library.register_fake("fastvae::kl_standard_normal_backward")
def _(grad, mu, logvar):
    _same_device(mu=mu, logvar=logvar, grad=grad)
    return torch.empty_like(mu), torch.empty_like(logvar)


@torch.library.register_fake("fastvae::kl_normal")
def _(mu_q, logvar_q, mu_p, logvar_p):
    _same_device(mu_q=mu_q, logvar_q=logvar_q, mu_p=mu_p, logvar_p=logvar_p)
    return _rows_out(mu_q)


@torch.library.register_fake("fastvae::kl_normal_backward")
def _(grad, mu_q, logvar_q, mu_p, logvar_p):
    _same_device(mu_q=mu_q, logvar_q=logvar_q, mu_p=mu_p, logvar_p=logvar_p, grad=grad)
    return tuple(torch.empty_like(t) for t in (mu_q, logvar_q, mu_p, logvar_p))


@torch.library.register_fake("fastvae::reparameterize_with_kl_normal")
def _(mu, logvar, prior_mu, prior_logvar, num_samples, generator=None, rng_state=None):
    _same_device(mu=mu, logvar=logvar, prior_mu=prior_mu, prior_logvar=prior_logvar, rng_state=rng_state)
    return _sample_out(mu, num_samples), _rows_out(mu), _rng_out(mu)


@torch.library.register_fake("fastvae::reparameterize_with_kl_normal_backward")
def _(grad_z, mu, logvar, prior_mu, prior_logvar, rng_state, grad_kl):
    _same_device(mu=mu, logvar=logvar, prior_mu=prior_mu, prior_logvar=prior_logvar, grad_z=grad_z,
                 rng_state=rng_state, grad_kl=grad_kl)
    return tuple(torch.empty_like(t) for t in (mu, logvar, prior_mu, prior_logvar))


@torch.library.register_fake("fastvae::bernoulli_log_likelihood")
def _(logits, x, compute_grad):
    _same_device(logits=logits, x=x)
    grad = torch.empty_like(logits) if compute_grad else logits.new_empty((0,))
    return _rows_out(logits), grad


@torch.library.register_fake("fastvae::bernoulli_log_likelihood_")
def _(logits, x):
    _same_device(logits=logits, x=x)
    return _rows_out(logits)


@torch.library.register_fake("fastvae::linear_bernoulli_log_likelihood")
def _(input, weight, bias, x):
    _same_device(input=input, weight=weight, bias=bias, x=x)
    return _rows_out(input)


@torch.library.register_fake("fastvae::continuous_bernoulli_log_likelihood")
def _(logits, x, compute_grad):
    _same_device(logits=logits, x=x)
    grad = torch.empty_like(logits) if compute_grad else logits.new_empty((0,))
    return _rows_out(logits), grad


@torch.library.register_fake("fastvae::categorical_log_likelihood")
def _(logits, x, compute_grad):
    # Mirrors csrc/common/categorical.h: logits (B, K, C, P), x (B, C * P); the gradient strided like logits.
    _same_device(logits=logits, x=x)
    if logits.dim() != 4 or x.dim() != 2 or x.shape != (logits.shape[0], logits.shape[2] * logits.shape[3]):
        raise ValueError(f"fastvae: x has shape {tuple(x.shape)} but logits has shape {tuple(logits.shape)} "
                         "(x must be (B, C * P) for logits (B, K, C, P))")
    grad = torch.empty_like(logits) if compute_grad else logits.new_empty((0,))
    return _rows_out(logits), grad


@torch.library.register_fake("fastvae::gaussian_log_likelihood")
def _(mean, x, logvar):
    _same_device(mean=mean, x=x, logvar=logvar)
    return _rows_out(mean)


@torch.library.register_fake("fastvae::gaussian_log_likelihood_backward")
def _(grad, mean, x, logvar, logvar_grad):
    _same_device(mean=mean, x=x, logvar=logvar, grad=grad)
    return torch.empty_like(mean), (torch.empty_like(logvar) if logvar_grad else logvar.new_empty((0,)))


def _grad_like(t: torch.Tensor) -> torch.Tensor:
    """csrc/common/discretized_logistic_checks.h's grad_like: t's strides when t is dense with its
    batch dim outermost, else contiguous."""
    from torch._prims_common import is_non_overlapping_and_dense_or_false

    if is_non_overlapping_and_dense_or_false(t) and (t.shape[0] == 1 or t.stride(0) * t.shape[0] == t.numel()):
        return torch.empty_like(t)
    return t.new_empty(t.shape)


@torch.library.register_fake("fastvae::discretized_mix_logistic_log_likelihood_with_grad")
def _(params, x, num_mixtures, bits, compute_grad):
    _same_device(params=params, x=x)
    return _rows_out(params), (_grad_like(params) if compute_grad else params.new_empty((0,)))


@torch.library.register_fake("fastvae::discretized_logistic_log_likelihood_with_grad")
def _(mean, log_scale, x, bits, compute_grad):
    _same_device(mean=mean, log_scale=log_scale, x=x)
    if not compute_grad:
        return _rows_out(mean), mean.new_empty((0,)), mean.new_empty((0,))
    return _rows_out(mean), _grad_like(mean), _grad_like(log_scale)


@torch.library.register_fake("fastvae::discretized_mix_logistic_log_likelihood")
def _(params, x, num_mixtures, bits):
    _same_device(params=params, x=x)
    return _rows_out(params)


@torch.library.register_fake("fastvae::discretized_logistic_log_likelihood")
def _(mean, log_scale, x, bits):
    _same_device(mean=mean, log_scale=log_scale, x=x)
    return _rows_out(mean)


def _levels_out(like: torch.Tensor, shape, levels: int) -> torch.Tensor:
    """The samplers' integer levels (csrc/common/checks.h level_dtype): uint8 up to 256 levels, else int32."""
    return like.new_empty(shape, dtype=torch.uint8 if levels <= 256 else torch.int32)


@torch.library.register_fake("fastvae::sample_discretized_mix_logistic")
def _(params, num_mixtures, bits, generator=None, rng_state=None):
    # Mirrors csrc/common/discretized_logistic_checks.h: params (B, 10 M or 3 M, S) -> (B, 3 or 1, S).
    _same_device(params=params, rng_state=rng_state)
    if params.dim() != 3 or params.shape[1] not in (10 * num_mixtures, 3 * num_mixtures):
        raise RuntimeError(f"fastvae: params must be (B, 10 M or 3 M, S) for M = {num_mixtures}, "
                           f"got shape {tuple(params.shape)}")
    channels = 3 if params.shape[1] == 10 * num_mixtures else 1
    return _levels_out(params, (params.shape[0], channels, params.shape[2]), 2**bits)


@torch.library.register_fake("fastvae::sample_discretized_logistic")
def _(mean, log_scale, bits, generator=None, rng_state=None):
    _same_device(mean=mean, log_scale=log_scale, rng_state=rng_state)
    return _levels_out(mean, mean.shape, 2**bits)


@torch.library.register_fake("fastvae::sample_categorical")
def _(logits, generator=None, rng_state=None):
    # logits (B, K, C, P) -> levels (B, C * P).
    _same_device(logits=logits, rng_state=rng_state)
    if logits.dim() != 4:
        raise ValueError(f"fastvae: logits must be 4-D (B, K, C, P), got {logits.dim()}-D")
    return _levels_out(logits, (logits.shape[0], logits.shape[2] * logits.shape[3]), logits.shape[1])


@torch.library.register_fake("fastvae::gaussian_log_density")
def _(z, mu, logvar):
    _same_device(z=z, mu=mu, logvar=logvar)
    return _rows_out(z)


@torch.library.register_fake("fastvae::gaussian_log_density_backward")
def _(grad, z, mu, logvar):
    _same_device(z=z, mu=mu, logvar=logvar, grad=grad)
    return torch.empty_like(z), torch.empty_like(mu), torch.empty_like(logvar)


@torch.library.register_fake("fastvae::standard_normal_log_density")
def _(z):
    return _rows_out(z)


@torch.library.register_fake("fastvae::standard_normal_log_density_backward")
def _(grad, z):
    _same_device(z=z, grad=grad)
    return torch.empty_like(z)


@torch.library.register_fake("fastvae::elbo_loss")
def _(recon, x, kl, mu, logvar, obs_logvar, obs_logvar_value, likelihood, beta, reduction, grad_mask):
    # Mirrors csrc/common/elbo_args.h: the devices, and which gradients the forward pass writes.
    _same_device(recon=recon, x=x, kl=kl, mu=mu, logvar=logvar, obs_logvar=obs_logvar)
    rows = recon.shape[0]
    loss = recon.new_empty((rows,) if reduction == "none" else (), dtype=_acc_dtype(recon.dtype))

    def empty() -> torch.Tensor:
        return recon.new_empty((0,))

    grad_recon = torch.empty_like(recon) if grad_mask[0] else empty()
    grad_kl = torch.empty_like(kl) if grad_mask[1] and kl is not None else empty()
    grad_mu = torch.empty_like(mu) if grad_mask[1] and kl is None else empty()
    grad_logvar = torch.empty_like(logvar) if grad_mask[1] and kl is None else empty()
    lv = obs_logvar if likelihood == "gaussian" else None
    write_lv = grad_mask[2] and lv is not None and (reduction != "none" or lv.shape[0] == rows)
    grad_lv = torch.empty_like(lv) if write_lv else empty()
    return loss, grad_recon, grad_kl, grad_mu, grad_logvar, grad_lv


@torch.library.register_fake("fastvae::elbo")
def _(recon, x, kl, mu, logvar, obs_logvar, obs_logvar_value, likelihood, beta, reduction):
    # The loss of elbo_loss alone (its gradients stay inside the autograd kernel).
    _same_device(recon=recon, x=x, kl=kl, mu=mu, logvar=logvar, obs_logvar=obs_logvar)
    return recon.new_empty((recon.shape[0],) if reduction == "none" else (), dtype=_acc_dtype(recon.dtype))


@torch.library.register_fake("fastvae::elbo_rescale_")
def _(grad, grads):
    _same_device(grad=grad, **{f"grads[{i}]": t for i, t in enumerate(grads)})
    return None


@torch.library.register_fake("fastvae::elbo_rescale")
def _(grad, grads):
    _same_device(grad=grad, **{f"grads[{i}]": t for i, t in enumerate(grads)})
    return [torch.empty_like(t) for t in grads]


@torch.library.register_fake("fastvae::iwae_bound")
def _(log_w, gate=None):
    # Mirrors csrc/common/iwae_checks.h: log_w (K >= 1, B), a gate token of its shape.
    _same_device(log_w=log_w, gate=gate)
    if log_w.dim() != 2 or log_w.shape[0] < 1:
        raise RuntimeError(f"fastvae: log_w must be a (K >= 1, B) matrix, got shape {tuple(log_w.shape)}")
    if gate is not None and gate.shape != log_w.shape:
        raise RuntimeError(f"fastvae: gate has shape {tuple(gate.shape)} but log_w has shape {tuple(log_w.shape)}")
    acc = _acc_dtype(log_w.dtype)
    return log_w.new_empty((log_w.shape[1],), dtype=acc), log_w.new_empty(log_w.shape, dtype=acc)


@torch.library.register_fake("fastvae::dreg_gate")
def _(z):
    if z.dim() < 1:
        raise RuntimeError("fastvae: z must have a last (latent) dim, got a 0-D tensor")
    return torch.empty_like(z, memory_format=torch.contiguous_format), z.new_empty(z.shape[:-1], dtype=_acc_dtype(z.dtype))


@torch.library.register_fake("fastvae::image_elbo_loss")
def _(recon, x, kl, mu, logvar, likelihood, num_mixtures, bits, beta, reduction, grad_mask):
    # Mirrors csrc/common/image_elbo.h: the loss, and d loss / d recon laid out like grad_like(recon).
    _same_device(recon=recon, x=x, kl=kl, mu=mu, logvar=logvar)
    loss = recon.new_empty((recon.shape[0],) if reduction == "none" else (), dtype=_acc_dtype(recon.dtype))

    def empty() -> torch.Tensor:
        return recon.new_empty((0,))

    grad_recon = _grad_like(recon) if grad_mask[0] else empty()
    grad_kl = torch.empty_like(kl) if grad_mask[1] and kl is not None else empty()
    grad_mu = torch.empty_like(mu) if grad_mask[1] and kl is None else empty()
    grad_logvar = torch.empty_like(logvar) if grad_mask[1] and kl is None else empty()
    return loss, grad_recon, grad_kl, grad_mu, grad_logvar


@torch.library.register_fake("fastvae::image_elbo")
def _(recon, x, kl, mu, logvar, likelihood, num_mixtures, bits, beta, reduction):
    _same_device(recon=recon, x=x, kl=kl, mu=mu, logvar=logvar)
    return recon.new_empty((recon.shape[0],) if reduction == "none" else (), dtype=_acc_dtype(recon.dtype))
