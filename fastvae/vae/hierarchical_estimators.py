"""STL and DReG for `HierarchicalVAE`: log q with every parameter stopped, its samples live.

Both estimators drop (STL) or re-route (DReG) the score term of log q, the gradient log q has
through q's parameters with the samples held fixed. In a top-down hierarchy q(z_l | z_{l+1}, x)
reads the sample above through the prior's top-down network, so stopping q's parameters is not
the same as detaching its means and log-variances, which would also cut log q's path through
z_{l+1}. That path is zero in mean, but without it STL loses its point (at q = p(z | x) the
path gradient of log w is zero for every draw, and only with every term of log q kept), and
DReG, which weighs it by w~_k, turns biased (tests/test_hierarchical_estimators.py). So the
samples are drawn in one top-down pass with live parameters, then scored in a second: log p(x |
z_1) and every prior with live parameters, every log q with all parameters detached (the
top-down and posterior networks run again through `torch.func.functional_call`) and the samples
as inputs. The top layer's q reads x alone, so its detached parameters are its detached outputs.

DReG (Tucker et al. 2018) needs each sample's gradient from its log-weight, sum_k w~_k
d log w_k / d z_k, multiplied by w~_k once more before it flows into the parameters along the
sampling pass. Every sample enters the scoring pass through `fastvae.functional.dreg_gate`; the
gates' tokens, summed, are the bound's gate, so each receives the weights; the sampling pass,
which carries the gradient from z_l to z_{l+1}, is not gated again. The decoder and the priors
keep sum_k w~_k d log w_k. Unfused (``fused=False``), hooks on the scored samples do the same.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Tuple

import torch
from torch import nn
from torch.func import functional_call

from .. import functional as _F
from .. import reference as _R
from .objectives import Objective

if TYPE_CHECKING:  # the model module imports this one
    from .hierarchical import HierarchicalVAE

__all__ = ["stopped_q_bound"]


def _detached(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """module as a function of its input, with its parameters detached."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return lambda t: functional_call(module, params, (t,))


def _draw(model: "HierarchicalVAE", hs: List[torch.Tensor], top: Tuple[torch.Tensor, torch.Tensor], k: int,
          fused: bool) -> List[torch.Tensor]:
    """K draws of the whole hierarchy from q with live parameters, bottom to top, (K, B, Z_l);
    top: q(z_L | x)'s (mu, logvar)."""
    ops = _F if fused else _R
    b = hs[0].shape[0]
    z = ops.reparameterize(*top, num_samples=k)
    zs = [z]
    for level in reversed(range(model.levels - 1)):
        h = hs[level].expand(k, *hs[level].shape).reshape(k * b, -1)
        mu, logvar = model._posterior(level, h, model.down[level](z.reshape(k * b, -1)))
        z = ops.reparameterize(mu, logvar).view(k, b, -1)
        zs.insert(0, z)
    return zs


def _log_weights(model: "HierarchicalVAE", x_flat: torch.Tensor, hs: List[torch.Tensor],
                 top: Tuple[torch.Tensor, torch.Tensor], zs: List[torch.Tensor], beta: float,
                 fused: bool) -> torch.Tensor:
    """log p(x | z_1) + beta * (log p(z) - log q(z | x)), (K, B), q's parameters all detached."""
    ops = _F if fused else _R
    k, b = zs[0].shape[:2]
    mu, logvar = (t.detach() for t in top)
    log_ratio = ops.standard_normal_log_density(zs[-1]) - ops.gaussian_log_density(zs[-1], mu, logvar)
    for level in reversed(range(model.levels - 1)):
        z_above, z = zs[level + 1].reshape(k * b, -1), zs[level].reshape(k * b, -1)
        mu_p, logvar_p = model._prior(level, model.down[level](z_above))
        h = hs[level].detach().expand(k, *hs[level].shape).reshape(k * b, -1)
        mu, logvar = model._posterior(level, h, _detached(model.down[level])(z_above),
                                      head=_detached(model.post_heads[level]))
        log_ratio = log_ratio + (ops.gaussian_log_density(z, mu_p, logvar_p)
                                 - ops.gaussian_log_density(z, mu, logvar)).view(k, b)
    recon, obs_logvar = model._observation(model.decode(zs[0].reshape(k * b, -1)), (k, b))
    log_px = model._log_px(recon, x_flat, obs_logvar, fused)
    return log_px + (log_ratio if beta == 1.0 else beta * log_ratio)


def stopped_q_bound(model: "HierarchicalVAE", x: torch.Tensor, objective: Objective, beta: float,
                    fused: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """(bound (B,), log-weights (K, B)) of ``objective`` ("elbo" + "stl" or "iwae" + "dreg") on
    x (the model's input form), with the estimator's gradient routing."""
    hs = model._bottom_up(x)
    top = model._top(hs)
    zs = _draw(model, hs, top, objective.num_samples, fused)
    dreg = objective.gradient == "dreg"
    tokens = []
    if dreg and fused:
        gated = [_F.dreg_gate(z) for z in zs]
        zs, tokens = [z for z, _ in gated], [t for _, t in gated]
    elif dreg:
        zs = [z.view_as(z) for z in zs]  # the scoring pass's own edges, for the hooks below
    log_w = _log_weights(model, model._flat(x), hs, top, zs, beta, fused)
    if not dreg:
        return log_w.mean(0), log_w
    if fused:
        return _F.iwae_bound(log_w, sum(tokens))[0], log_w
    value, weights = _R.iwae_bound(log_w)
    for z in zs:
        if z.requires_grad:
            z.register_hook(lambda g: g * weights.unsqueeze(-1).to(g.dtype))
    return value, log_w
