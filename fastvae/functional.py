"""Fused VAE loss terms: the public, user-facing functions.

Each function checks its arguments (raising ``ValueError`` that names the bad one), broadcasts,
flattens to the ``(rows, cols)`` layout the kernels use and reshapes the result back. Operands
that broadcast only over leading dims (targets ``x`` shared by K samples of the decoder output, a
per-dim variance) are read in place by the kernels, not copied.

Results are float32 for float32/bf16/fp16 inputs (accumulated in float32) and float64 for
float64 inputs. Every floating input that requires grad gets its gradient.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Dict, Optional, Sequence, Tuple, Union

import torch

from .ops import ops

__all__ = [
    "reparameterize",
    "reparameterize_with_kl",
    "kl_standard_normal",
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "gaussian_log_density",
    "standard_normal_log_density",
    "elbo",
]

_FLOATS = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
_LIKELIHOODS = ("bernoulli", "gaussian")
_REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------- argument checks
def _check_float(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise ValueError(
            f"{name} must be a floating-point tensor (float64, float32, bfloat16 or float16), "
            f"got {t.dtype}"
        )
    return t


def _check_devices(**tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def _broadcast_shape(**tensors: torch.Tensor) -> torch.Size:
    shapes = [t.shape for t in tensors.values()]
    if all(s == shapes[0] for s in shapes[1:]):  # the common case, without torch's slow path
        return shapes[0]
    try:
        return torch.broadcast_shapes(*(t.shape for t in tensors.values()))
    except RuntimeError:
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in tensors.items())
        raise ValueError(f"shapes do not broadcast: {shapes}") from None


def _check_nonempty(shape: Sequence[int], what: str) -> None:
    if math.prod(shape) == 0:
        raise ValueError(f"{what} is empty (shape {tuple(shape)}); fastvae ops need at least one element")


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t.dtype != dtype:  # torch.promote_types is a dispatcher call: only when needed
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _event_dims(event_dims: Optional[int], ndim: int, name: str) -> int:
    if event_dims is None:
        return max(ndim - 1, 1)
    if not isinstance(event_dims, int) or isinstance(event_dims, bool) or not 1 <= event_dims <= ndim:
        raise ValueError(f"event_dims must be an int in [1, {ndim}] for a {ndim}-D {name}, got {event_dims!r}")
    return event_dims


_DEVICE_MEMORY: Dict[str, int] = {}


@torch.compiler.assume_constant_result
def _device_memory(device: torch.device) -> int:
    """Total memory of ``device`` in bytes (physical RAM for the CPU): no allocation can exceed
    it. Looked up once per device; no device call, no sync."""
    key = str(device)
    if key not in _DEVICE_MEMORY:
        if device.type == "cuda":
            _DEVICE_MEMORY[key] = torch.cuda.get_device_properties(device).total_memory
        elif device.type == "cpu" and hasattr(os, "sysconf"):
            _DEVICE_MEMORY[key] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        else:  # meta and other devices: only overflow matters
            _DEVICE_MEMORY[key] = 2**63 - 1
    return _DEVICE_MEMORY[key]


def _check_samples_fit(k: int, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> None:
    """Refuses a draw of k samples of ``shape`` whose output could never be allocated (before
    asking the allocator for, say, 48 TB, and before the generator advances)."""
    elements = k * math.prod(shape)
    nbytes = elements * dtype.itemsize
    memory = _device_memory(device)
    if nbytes > memory:
        raise ValueError(
            f"num_samples={k} would draw {elements} elements of shape {tuple(shape)} "
            f"({nbytes / 2**30:.1f} GiB of {dtype}), more than {device} has ({memory / 2**30:.1f} GiB): "
            "draw fewer samples per call"
        )


# ---------------------------------------------------------------- layout
def _as_rows(t: torch.Tensor, shape: torch.Size, event_ndim: int, full: bool = False) -> torch.Tensor:
    """``t`` (broadcastable to ``shape``) as a contiguous (rows, D) matrix for the kernels.

    D is the product of the last ``event_ndim`` dims of ``shape``. If ``t`` lacks only leading
    dims of ``shape`` it keeps its own, fewer rows, which the kernels broadcast without a copy;
    any other broadcast (or ``full=True``) expands it to every row.
    """
    lead, event = shape[: len(shape) - event_ndim], shape[len(shape) - event_ndim:]
    if t.shape == shape and t.is_contiguous():  # the common case: a free view
        return t if t.dim() == 2 and event_ndim == 1 else t.view(-1, math.prod(event))
    while t.dim() > event_ndim and t.shape[0] == 1:
        t = t.squeeze(0)
    if t.shape[max(t.dim() - event_ndim, 0):] != event:
        # Broadcast inside the event (a 0-dim or per-channel variance): widening costs D elements
        # when t has no leading dims, a full copy otherwise.
        t = t.expand(event) if t.dim() <= event_ndim else t.expand(shape)
    own_lead = t.shape[: t.dim() - event_ndim]
    if full or own_lead != lead[len(lead) - len(own_lead):]:
        t = t.expand(shape)
    return t.reshape(-1, math.prod(event)).contiguous()


def _split_event(shape: torch.Size, event_ndim: int) -> Tuple[int, ...]:
    return tuple(shape[: len(shape) - event_ndim])


# ---------------------------------------------------------------- sampling
def _sampling_inputs(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: Optional[int],
    generator: Optional[torch.Generator],
    need_latent_dim: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Checked mu and logvar of one dtype, broadcast and contiguous; K."""
    _check_float("mu", mu)
    _check_float("logvar", logvar)
    _check_devices(mu=mu, logvar=logvar)
    if num_samples is not None and (
        not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1
    ):
        raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != mu.device.type:
            raise ValueError(f"generator is on {generator.device} but mu is on {mu.device}")
    shape = _broadcast_shape(mu=mu, logvar=logvar)
    if need_latent_dim and len(shape) == 0:
        raise ValueError("mu and logvar need a latent dim (at least 1-D)")
    _check_nonempty(shape, "mu")
    dtype = _common_dtype(mu, logvar)
    k = 1 if num_samples is None else num_samples
    _check_samples_fit(k, shape, dtype, mu.device)
    mu_c = _cast(mu, dtype).expand(shape).contiguous()
    logvar_c = _cast(logvar, dtype).expand(shape).contiguous()
    return mu_c, logvar_c, k


def _plain_pair(mu: object, logvar: object, num_samples: Optional[int], generator: object) -> bool:
    """True for the training step's case, one sample of an encoder's contiguous (B, Z) output:
    nothing to check or reshape in Python (the kernels check the rest), so the checks that cost
    as much as the kernel at small batches are skipped."""
    return (
        num_samples is None and generator is None and type(mu) is torch.Tensor and type(logvar) is torch.Tensor
        and mu.dim() == 2 and mu.shape == logvar.shape and mu.dtype == logvar.dtype and mu.dtype in _FLOATS
        and mu.device == logvar.device and mu.is_contiguous() and logvar.is_contiguous() and mu.numel() > 0
    )


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Draw z = mu + exp(logvar / 2) * eps, eps ~ N(0, I), by the reparameterisation trick.

    eps comes from a counter-based Philox stream inside the kernel, seeded from ``generator``
    (default: torch's default generator for mu's device, so ``torch.manual_seed`` reproduces a
    run). It is not stored: the backward pass draws it again.

    Args:
        mu, logvar: mean and log-variance of q(z|x), broadcastable to each other.
        num_samples: K; when given the result has shape (K, *shape), otherwise ``shape``.
        generator: a ``torch.Generator`` on mu's device.
    """
    if _plain_pair(mu, logvar, num_samples, generator):
        return ops.reparameterize(mu, logvar, 1, None)[0].squeeze(0)
    mu_c, logvar_c, k = _sampling_inputs(mu, logvar, num_samples, generator)
    z, _ = ops.reparameterize(mu_c, logvar_c, k, generator)
    return z.squeeze(0) if num_samples is None else z


def reparameterize_with_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    num_samples: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(reparameterize(mu, logvar, ...), kl_standard_normal(mu, logvar))`` from one pass.

    The sample and the KL term read the same mu and logvar, so the CUDA kernel computes both while
    it has them in registers, and the backward pass takes both terms' gradients in one pass too.
    z is exactly what :func:`reparameterize` draws from the same generator state; the KL has
    shape ``shape[:-1]`` (summed over the last, latent dim). Pass it to :func:`elbo` as ``kl=``.
    """
    if _plain_pair(mu, logvar, num_samples, generator):
        z, kl, _ = ops.reparameterize_with_kl(mu, logvar, 1, None)
        return z.squeeze(0), kl
    mu_c, logvar_c, k = _sampling_inputs(mu, logvar, num_samples, generator, need_latent_dim=True)
    shape = mu_c.shape
    z, kl, _ = ops.reparameterize_with_kl(mu_c.view(-1, shape[-1]), logvar_c.view(-1, shape[-1]), k, generator)
    z = z.view(k, *shape)
    return (z.squeeze(0) if num_samples is None else z), kl.view(shape[:-1])


# ---------------------------------------------------------------- KL
def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)), summed over the last dim."""
    _check_float("mu", mu)
    _check_float("logvar", logvar)
    _check_devices(mu=mu, logvar=logvar)
    shape = _broadcast_shape(mu=mu, logvar=logvar)
    if len(shape) == 0:
        raise ValueError("mu and logvar need a latent dim (at least 1-D)")
    _check_nonempty(shape, "mu")
    dtype = _common_dtype(mu, logvar)
    kl = ops.kl_standard_normal(
        _as_rows(_cast(mu, dtype), shape, 1, full=True), _as_rows(_cast(logvar, dtype), shape, 1, full=True)
    )
    return kl.view(_split_event(shape, 1))


# ---------------------------------------------------------------- likelihoods
def bernoulli_log_likelihood(
    logits: torch.Tensor, x: torch.Tensor, event_dims: Optional[int] = None
) -> torch.Tensor:
    """sum x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)), stable for |l| up to 1e4.

    Summed over the last ``event_dims`` dims (default: every dim after the first). ``x`` may be
    float (cast to the logits' dtype), bool or uint8 (read as one byte per element) and may
    broadcast over leading dims of ``logits`` (e.g. K samples of logits against one batch).
    The gradient for ``logits`` is computed in the forward pass, when logits require grad.
    """
    return _bernoulli_log_likelihood(logits, x, event_dims, grad_scale=1.0)


def _bernoulli_log_likelihood(
    logits: torch.Tensor, x: torch.Tensor, event_dims: Optional[int], grad_scale: float
) -> torch.Tensor:
    """bernoulli_log_likelihood whose saved logits-gradient is pre-multiplied by grad_scale,
    the gradient the caller's loss will send back for each row (see fastvae/ops.py)."""
    _check_float("logits", logits)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not (x.dtype in _FLOATS or x.dtype in (torch.bool, torch.uint8)):
        raise ValueError(f"x must be float, bool or uint8, got {x.dtype}")
    _check_devices(logits=logits, x=x)
    shape = _broadcast_shape(logits=logits, x=x)
    if len(shape) == 0:
        raise ValueError("logits must be at least 1-D")
    e = _event_dims(event_dims, len(shape), "logits")
    _check_nonempty(shape, "logits")
    if x.dtype in _FLOATS:
        x = _cast(x, logits.dtype)
    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    ll, _ = ops.bernoulli_log_likelihood(
        _as_rows(logits, shape, e, full=True), _as_rows(x, shape, e), compute_grad, grad_scale
    )
    return ll.view(_split_event(shape, e))


def gaussian_log_likelihood(
    mean: torch.Tensor,
    x: torch.Tensor,
    logvar: Union[float, torch.Tensor] = 0.0,
    event_dims: Optional[int] = None,
) -> torch.Tensor:
    """log N(x | mean, exp(logvar)), summed over the last ``event_dims`` dims (default: all but the first).

    ``logvar`` is a Python float (fixed variance), a 0-dim tensor (one learned variance), a
    per-dim tensor shaped like the trailing dims, or a tensor shaped like ``mean`` (decoder
    output). ``x`` and ``logvar`` are cast to mean's dtype.
    """
    return _gaussian_log_likelihood(mean, x, logvar, event_dims, grad_scale=None)


def _gaussian_log_likelihood(
    mean: torch.Tensor,
    x: torch.Tensor,
    logvar: Union[float, torch.Tensor],
    event_dims: Optional[int],
    grad_scale: Optional[float],
) -> torch.Tensor:
    """gaussian_log_likelihood that, given grad_scale (the gradient the caller's loss will send
    back for every row), writes its gradients times grad_scale in the forward pass (see
    fastvae/ops.py). Without it, or for a learned variance shared by rows (its gradient is a sum
    over rows), the backward op computes them: rescaling two saved gradients for an arbitrary
    incoming gradient would cost more than that one pass."""
    _check_float("mean", mean)
    _check_float("x", x)
    if isinstance(logvar, (int, float)) and not isinstance(logvar, bool):
        logvar_t = torch.full((), float(logvar), dtype=mean.dtype, device=mean.device)
    else:
        logvar_t = _check_float("logvar", logvar)
    _check_devices(mean=mean, x=x, logvar=logvar_t)
    shape = _broadcast_shape(mean=mean, x=x, logvar=logvar_t)
    if len(shape) == 0:
        raise ValueError("mean must be at least 1-D")
    e = _event_dims(event_dims, len(shape), "mean")
    _check_nonempty(shape, "mean")
    mean_rows = _as_rows(mean, shape, e, full=True)
    logvar_rows = _as_rows(_cast(logvar_t, mean.dtype), shape, e)
    per_element = logvar_rows.shape[0] == mean_rows.shape[0]
    compute_grad = (
        grad_scale is not None
        and torch.is_grad_enabled()
        and (mean.requires_grad or logvar_t.requires_grad or x.requires_grad)
        and (per_element or not logvar_t.requires_grad)
    )
    ll, _, _ = ops.gaussian_log_likelihood(
        mean_rows, _as_rows(_cast(x, mean.dtype), shape, e), logvar_rows, compute_grad,
        1.0 if grad_scale is None else grad_scale,
    )
    return ll.view(_split_event(shape, e))


# ---------------------------------------------------------------- densities
def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z | mu, diag exp(logvar)) summed over the last dim: log q(z|x).

    ``z`` may carry leading sample dims, e.g. (K, B, Z) against mu/logvar (B, Z); mu and logvar
    are then read once per sample without being copied.
    """
    for name, t in (("z", z), ("mu", mu), ("logvar", logvar)):
        _check_float(name, t)
    _check_devices(z=z, mu=mu, logvar=logvar)
    params = _broadcast_shape(mu=mu, logvar=logvar)
    shape = _broadcast_shape(z=z, mu=mu, logvar=logvar)
    if len(shape) == 0:
        raise ValueError("z needs a latent dim (at least 1-D)")
    _check_nonempty(shape, "z")
    dtype = _common_dtype(z, mu, logvar)
    mu_rows = _as_rows(_cast(mu, dtype).expand(params), shape, 1)
    logvar_rows = _as_rows(_cast(logvar, dtype).expand(params), shape, 1)
    out = ops.gaussian_log_density(_as_rows(_cast(z, dtype), shape, 1, full=True), mu_rows, logvar_rows)
    return out.view(_split_event(shape, 1))


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z | 0, I) summed over the last dim: log p(z)."""
    _check_float("z", z)
    if z.dim() == 0:
        raise ValueError("z needs a latent dim (at least 1-D)")
    _check_nonempty(z.shape, "z")
    return ops.standard_normal_log_density(_as_rows(z, z.shape, 1, full=True)).view(z.shape[:-1])


# ---------------------------------------------------------------- ELBO
def _real(name: str, value: object) -> float:
    """A real Python/NumPy scalar as a float (np.float32 included, bool refused)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{name} must be a real number, got {type(value).__name__}")


def _elbo_obs_logvar(
    obs_logvar: Union[float, torch.Tensor], recon: torch.Tensor, recon2: torch.Tensor
) -> Tuple[Optional[torch.Tensor], float]:
    """The Gaussian observation log-variance as elbo_loss takes it: (tensor rows or None, constant)."""
    if type(obs_logvar) is float:
        return None, obs_logvar
    if not isinstance(obs_logvar, torch.Tensor):
        return None, _real("obs_logvar", obs_logvar)
    lv = _check_float("obs_logvar", obs_logvar)
    _check_devices(recon=recon, obs_logvar=lv)
    shape = recon.shape
    if lv.shape == shape and lv.is_contiguous() and lv.dtype == recon.dtype:  # per element, as the decoder gives it
        return (lv if lv.dim() == 2 else lv.view(recon2.shape)), 0.0
    if _broadcast_shape(recon=recon, obs_logvar=lv) != shape:
        raise ValueError(f"obs_logvar of shape {tuple(lv.shape)} does not broadcast to recon's {tuple(shape)}")
    return _as_rows(_cast(lv, recon.dtype), shape, max(len(shape) - 1, 1)), 0.0


def elbo(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: Optional[torch.Tensor],
    logvar: Optional[torch.Tensor],
    likelihood: str = "bernoulli",
    obs_logvar: Union[float, torch.Tensor] = 0.0,
    beta: float = 1.0,
    reduction: str = "mean",
    kl: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Negative ELBO: -log p(x|z) + beta * KL(q(z|x) || N(0, I)), per example then reduced.

    A drop-in for the loss written by hand as summed BCE-with-logits (``likelihood="bernoulli"``,
    ``recon`` = decoder logits) or Gaussian NLL (``"gaussian"``, ``recon`` = decoder mean with
    log-variance ``obs_logvar``: a real number, or a 0-dim, per-dim or per-element tensor) plus
    the analytic KL. The per-example sums run over every dim of ``recon`` after the first;
    ``reduction`` is "mean" (over examples), "sum" or "none". ``beta`` is a real number >= 0.
    ``kl``: the KL term per example when it is already computed (by
    :func:`reparameterize_with_kl`); mu and logvar are then not read (and may be None).

    One op (``fastvae::elbo_loss``) computes the whole loss, reduces it over the batch in a
    fixed order and writes every input gradient in the same pass; backward hands them on.
    """
    # Only what the op cannot check is checked here (types, layouts); the op checks the rest and
    # raises ValueError naming the argument. The common case (2-D contiguous operands of one
    # dtype) takes no reshaping at all.
    if likelihood not in _LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {_LIKELIHOODS}, got {likelihood!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if type(beta) is not float:
        beta = _real("beta", beta)
    if not isinstance(recon, torch.Tensor):
        raise ValueError(f"recon must be a torch.Tensor, got {type(recon).__name__}")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    shape = recon.shape
    if len(shape) < 1:
        raise ValueError("recon must have a batch dim")
    if len(shape) == 2 and recon.is_contiguous():
        recon2 = recon
    else:
        _check_float("recon", recon)
        lead = shape[0] if len(shape) > 1 else 1
        recon2 = recon.reshape(lead, math.prod(shape) // lead if lead else math.prod(shape[1:])).contiguous()
    rows = recon2.shape[0]
    batch = shape[:1] if len(shape) > 1 else shape[:0]  # the shape of the per-example terms

    if x.shape == shape and x.is_contiguous() and (x.dtype == recon.dtype or likelihood == "bernoulli"):
        x2 = x if len(shape) == 2 else x.view(recon2.shape)
    else:
        _check_devices(recon=recon, x=x)
        if x.dtype in _FLOATS:
            x = _cast(x, recon.dtype)
        elif likelihood == "gaussian" or x.dtype not in (torch.bool, torch.uint8):
            raise ValueError(f"x must be float{', bool or uint8' if likelihood == 'bernoulli' else ''}, got {x.dtype}")
        if _broadcast_shape(recon=recon, x=x) != shape:
            raise ValueError(f"x of shape {tuple(x.shape)} does not broadcast to recon's {tuple(shape)}")
        x2 = _as_rows(x, shape, max(len(shape) - 1, 1))

    acc = torch.float64 if recon.dtype == torch.float64 else torch.float32
    grad = torch.is_grad_enabled()
    if kl is not None:
        if not isinstance(kl, torch.Tensor):
            raise ValueError(f"kl must be a torch.Tensor, got {type(kl).__name__}")
        if kl.shape != batch:
            raise ValueError(
                f"recon gives per-example terms of shape {tuple(batch)} but kl has shape {tuple(kl.shape)}: "
                f"the batch dims must agree"
            )
        kl2 = kl if kl.dtype == acc and kl.dim() == 1 and kl.is_contiguous() else _cast(kl, acc).reshape(rows).contiguous()
        mu2 = lv2 = None
        kl_grad = grad and kl.requires_grad
    else:
        kl2 = None
        if not isinstance(mu, torch.Tensor) or not isinstance(logvar, torch.Tensor):
            raise ValueError("mu and logvar must be torch.Tensors when kl is not given")
        if mu.shape == logvar.shape and mu.dim() == 2 and mu.dtype == recon.dtype == logvar.dtype and (
            mu.is_contiguous() and logvar.is_contiguous()
        ):
            mu2, lv2 = mu, logvar
        else:
            _check_float("mu", mu)
            _check_float("logvar", logvar)
            latent = _broadcast_shape(mu=mu, logvar=logvar)
            if len(latent) == 0:
                raise ValueError("mu and logvar need a latent dim (at least 1-D)")
            mu2 = _cast(mu, recon.dtype).expand(latent).contiguous()
            lv2 = _cast(logvar, recon.dtype).expand(latent).contiguous()
        if mu2.shape[:-1] != batch:
            raise ValueError(
                f"recon gives per-example terms of shape {tuple(batch)} but mu/logvar give "
                f"{tuple(mu2.shape[:-1])}: the batch dims must agree"
            )
        if mu2.dim() != 2:
            mu2, lv2 = mu2.reshape(rows, -1), lv2.reshape(rows, -1)
        kl_grad = grad and (mu.requires_grad or logvar.requires_grad)

    obs, obs_value = (None, 0.0) if likelihood == "bernoulli" else _elbo_obs_logvar(obs_logvar, recon, recon2)
    mask = [grad and (recon.requires_grad or x.requires_grad), kl_grad, grad and obs is not None and obs.requires_grad]
    loss = ops.elbo_loss(recon2, x2, kl2, mu2, lv2, obs, obs_value, likelihood, beta, reduction, mask)[0]
    return loss if reduction != "none" or len(shape) > 1 else loss.view(())
