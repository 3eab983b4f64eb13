"""Data-dependent initialisation of a VAE's output layer.

With PyTorch's default initialisation the decoder's last bias starts at about 0, so p(x | z)
starts at p = 1/2 for every binary pixel (543 nats on MNIST). The first Adam steps then pull the
decoder's hidden units into saturation to produce the pixels' marginal logits (about -5 for the
background), which cuts the gradient from the likelihood to z: every model sits on a plateau
near the marginal's cost (about 206 nats on binarised MNIST) with its latents collapsed, and a
two-stochastic-layer model stays there for many epochs and keeps most of its first layer
collapsed afterwards. Starting the last bias at the data's marginal (the logit of each pixel's
mean for a Bernoulli likelihood, the mean for a Gaussian one) skips that phase.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .model import VAE

__all__ = ["init_output_bias"]

_OUTPUT_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def _output_layer(model: VAE) -> nn.Module:
    last: Optional[nn.Module] = None
    for module in model.decoder.modules():
        if isinstance(module, _OUTPUT_LAYERS):
            last = module
    if last is None or last.bias is None:
        raise ValueError("init_output_bias needs a decoder whose last Linear / conv layer has a bias")
    return last


@torch.no_grad()
def init_output_bias(model: VAE, data: torch.Tensor, eps: float = 1e-3) -> VAE:
    """Set the decoder's output bias to the data's marginal, in place; returns ``model``.

    data: training examples (N, *data_shape), N >= 1 (binary or in [0, 1] for a Bernoulli
    likelihood). A Linear output layer gets one value per data element; a conv output layer one
    per channel (the channel's mean). Bernoulli: logit(mean clamped to [eps, 1 - eps]);
    Gaussian: the mean. The decoder's weights are left as they are.
    """
    if not isinstance(model, VAE):
        raise ValueError(f"model must be a fastvae VAE, got {type(model).__name__}")
    if not isinstance(data, torch.Tensor) or data.dim() < 2 or data.shape[0] < 1:
        raise ValueError("data must be a tensor of at least one example, shaped (N, *data_shape)")
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
    if model.likelihood not in ("bernoulli", "gaussian"):
        raise ValueError(f"init_output_bias supports the bernoulli and gaussian likelihoods, not {model.likelihood!r}")
    if model.obs_var == "per_element":
        raise ValueError("init_output_bias does not support obs_var='per_element' (mean and log-variance share the layer)")
    layer = _output_layer(model)
    total: Optional[torch.Tensor] = None
    for chunk in data.split(4096):  # float64 sums without a float64 copy of the whole set
        part = model._input(chunk).reshape(chunk.shape[0], -1).double().sum(0)
        total = part if total is None else total + part
    mean = total / data.shape[0]
    if not isinstance(layer, nn.Linear):
        if len(model.data_shape) != 3:
            raise ValueError(f"a conv output layer needs (C, H, W) data, the model's data_shape is {model.data_shape}")
        mean = mean.reshape(model.data_shape[0], -1).mean(1)
    if mean.numel() != layer.bias.numel():
        raise ValueError(f"the decoder's output bias has {layer.bias.numel()} entries, the data's marginal {mean.numel()}")
    if model.likelihood == "bernoulli":
        p = mean.clamp(eps, 1.0 - eps)
        mean = torch.log(p) - torch.log1p(-p)
    layer.bias.copy_(mean.to(layer.bias.dtype))
    return model
