"""The whole negative ELBO in one op: likelihood, KL, beta weighting and reduction.

csrc: ``csrc/{cpu,cuda,autograd}/elbo.*`` and ``csrc/common/elbo_args.h``; ops ``fastvae::elbo``
(the loss), ``fastvae::elbo_loss`` (the loss and the gradients it writes), ``fastvae::elbo_rescale``
and ``fastvae::elbo_rescale_``. The image likelihoods are the op family of
:mod:`fastvae.functional.image_elbo` (``fastvae::image_elbo``), which :func:`elbo` calls for them.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from ..ops import ops
from ._checks import FLOATS, as_rows, broadcast_shape, cast, check_devices, check_float, kl_operands, real
from .image_elbo import IMAGE_LIKELIHOODS, image_elbo

__all__ = ["elbo", "LIKELIHOODS", "REDUCTIONS"]

#: The likelihoods of fastvae::elbo, then the image likelihoods (fastvae::image_elbo).
LIKELIHOODS = ("bernoulli", "gaussian") + IMAGE_LIKELIHOODS
REDUCTIONS = ("mean", "sum", "none")
_ACC = {torch.float32: torch.float32, torch.bfloat16: torch.float32, torch.float16: torch.float32,
        torch.float64: torch.float64}  # the dtype of the row sums (and of kl) per input dtype
_Tensor = torch.Tensor
# fastvae::elbo: the loss of fastvae::elbo_loss alone; its C++ autograd kernel picks the gradients
# the forward pass writes (grad mode, requires_grad), so Python passes no mask.
_elbo_op = ops.elbo.default


def _elbo_obs_logvar(
    obs_logvar: Union[float, torch.Tensor], recon: torch.Tensor, recon2: torch.Tensor
) -> Tuple[Optional[torch.Tensor], float]:
    """The Gaussian observation log-variance as elbo_loss takes it: (tensor rows or None, constant)."""
    if type(obs_logvar) is float:
        return None, obs_logvar
    if not isinstance(obs_logvar, torch.Tensor):
        return None, real("obs_logvar", obs_logvar)
    lv = check_float("obs_logvar", obs_logvar)
    check_devices(recon=recon, obs_logvar=lv)
    shape = recon.shape
    if lv.shape == shape and lv.is_contiguous() and lv.dtype == recon.dtype:  # per element, as the decoder gives it
        return (lv if lv.dim() == 2 else lv.view(recon2.shape)), 0.0
    if broadcast_shape(recon=recon, obs_logvar=lv) != shape:
        raise ValueError(f"obs_logvar of shape {tuple(lv.shape)} does not broadcast to recon's {tuple(shape)}")
    return as_rows(cast(lv, recon.dtype), shape, max(len(shape) - 1, 1)), 0.0


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
    num_mixtures: Optional[int] = None,
    bits: int = 8,
) -> torch.Tensor:
    """Negative ELBO: -log p(x|z) + beta * KL(q(z|x) || N(0, I)), per example then reduced.

    A drop-in for the loss written by hand as summed BCE-with-logits (``likelihood="bernoulli"``,
    ``recon`` = decoder logits) or Gaussian NLL (``"gaussian"``, ``recon`` = decoder mean with
    log-variance ``obs_logvar``: a real number, or a 0-dim, per-dim or per-element tensor) plus
    the analytic KL. The per-example sums run over every dim of ``recon`` after the first;
    ``reduction`` is "mean" (over examples), "sum" or "none". ``beta`` is a real number >= 0.
    ``kl``: the KL term per example when it is already computed (by
    :func:`reparameterize_with_kl`); mu and logvar are then not read (and may be None). This is
    also how the loss takes a KL against another prior than N(0, I): a learned prior, or a
    hierarchical VAE's top-down one, from ``reparameterize_with_kl(mu, logvar,
    prior_mu=..., prior_logvar=...)`` (or :func:`kl_normal`, summed over layers), so a one-level
    VAE with a learned prior is still one sampling op and one loss op.

    Image VAEs: ``likelihood`` "dmol" (discretized mixture of ``num_mixtures`` logistics),
    "logistic", "categorical" (``2^bits`` classes) or "continuous_bernoulli", with ``recon`` in
    that likelihood's layout and ``x`` integer levels (see :func:`image_elbo`, which this calls:
    one op, ``fastvae::image_elbo``). ``bits`` (default 8) and ``num_mixtures`` are read only by
    them.

    ``x`` broadcasts to ``recon``'s shape. Its dtype, whatever its layout: any floating dtype,
    cast to recon's (as every fastvae op casts its data); for the Bernoulli likelihood also bool
    or uint8 (0/1 targets, read as one byte per element). Other dtypes raise ``ValueError``.

    One op (``fastvae::elbo``, the loss of ``fastvae::elbo_loss``) computes the whole loss,
    reduces it over the batch in a fixed order and writes every input gradient in the same pass;
    backward hands them on.
    """
    # The training step's case: 2-D contiguous recon and x alike, the KL from
    # reparameterize_with_kl (or 2-D contiguous mu and logvar of recon's dtype), a Bernoulli
    # likelihood or a fixed variance. The op checks everything else (dtypes, devices, rows, the
    # strings, beta) and raises ValueError naming the argument: no other Python work per call.
    if (type(recon) is _Tensor and type(x) is _Tensor and type(beta) is float and recon.dim() == 2
            and x.shape == recon.shape and recon.is_contiguous() and x.is_contiguous()):
        if likelihood == "bernoulli" and (x.dtype is recon.dtype or x.dtype is torch.uint8 or x.dtype is torch.bool):
            obs_value = 0.0
        elif likelihood == "gaussian" and type(obs_logvar) is float and x.dtype == recon.dtype:
            obs_value = obs_logvar
        else:
            obs_value = None
        if obs_value is not None:
            if type(kl) is _Tensor:
                if kl.dim() == 1 and kl.is_contiguous() and kl.dtype is _ACC.get(recon.dtype):
                    return _elbo_op(recon, x, kl, None, None, None, obs_value, likelihood, beta, reduction)
            elif (kl is None and type(mu) is _Tensor and type(logvar) is _Tensor and mu.dim() == 2
                  and mu.dtype is recon.dtype and logvar.dtype is recon.dtype and mu.is_contiguous()
                  and logvar.is_contiguous()):
                return _elbo_op(recon, x, None, mu, logvar, None, obs_value, likelihood, beta, reduction)
    if likelihood in IMAGE_LIKELIHOODS:
        return image_elbo(recon, x, mu, logvar, likelihood, num_mixtures, bits, beta, reduction, kl)
    return _elbo(recon, x, mu, logvar, likelihood, obs_logvar, beta, reduction, kl)


def _elbo(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: Optional[torch.Tensor],
    logvar: Optional[torch.Tensor],
    likelihood: str,
    obs_logvar: Union[float, torch.Tensor],
    beta: float,
    reduction: str,
    kl: Optional[torch.Tensor],
) -> torch.Tensor:
    """:func:`elbo` for every other case: checks, casts, reshapes."""
    # Only what the op cannot check is checked here (types, layouts); the op checks the rest and
    # raises ValueError naming the argument.
    if likelihood not in ("bernoulli", "gaussian"):
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if type(beta) is not float:
        beta = real("beta", beta)
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
        check_float("recon", recon)
        lead = shape[0] if len(shape) > 1 else 1
        recon2 = recon.reshape(lead, math.prod(shape) // lead if lead else math.prod(shape[1:])).contiguous()
    rows = recon2.shape[0]
    batch = shape[:1] if len(shape) > 1 else shape[:0]  # the shape of the per-example terms

    # x's dtype rule, as in bernoulli_log_likelihood: a float x of another dtype is cast to recon's
    # (whatever its layout); bool / uint8 Bernoulli targets are read as they are.
    if x.shape == shape and x.is_contiguous() and (
        x.dtype == recon.dtype or (likelihood == "bernoulli" and x.dtype in (torch.bool, torch.uint8))
    ):
        x2 = x if len(shape) == 2 else x.view(recon2.shape)
    else:
        check_devices(recon=recon, x=x)
        if x.dtype in FLOATS:
            x = cast(x, recon.dtype)
        elif likelihood == "gaussian" or x.dtype not in (torch.bool, torch.uint8):
            raise ValueError(f"x must be float{', bool or uint8' if likelihood == 'bernoulli' else ''}, got {x.dtype}")
        if broadcast_shape(recon=recon, x=x) != shape:
            raise ValueError(f"x of shape {tuple(x.shape)} does not broadcast to recon's {tuple(shape)}")
        x2 = as_rows(x, shape, max(len(shape) - 1, 1))

    kl2, mu2, lv2 = kl_operands(mu, logvar, kl, recon.dtype, rows, batch)

    obs, obs_value = (None, 0.0) if likelihood == "bernoulli" else _elbo_obs_logvar(obs_logvar, recon, recon2)
    loss = _elbo_op(recon2, x2, kl2, mu2, lv2, obs, obs_value, likelihood, beta, reduction)
    return loss if reduction != "none" or len(shape) > 1 else loss.view(())
