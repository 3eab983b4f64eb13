"""Ready-made `HierarchicalVAE` architectures: fully connected, or convolutional at the data.

`build_hierarchical_vae` records its arguments in the model, so that `build_vae` (and so a
checkpoint) rebuilds the same architecture. Its defaults are the two-stochastic-layer MLP of the
IWAE paper (Burda et al. 2016, binarised MNIST): 784-100-100 -> z_1 (100) -> 50-50 -> z_2 (50),
tanh, with the generative path z_2 -> 50-50 -> p(z_1 | z_2) and z_1 -> 100-100 -> p(x | z_1).
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .._args import check_int
from .builders import _activation, _out_factor, _sizes, conv_stacks
from .hierarchical import HierarchicalVAE

__all__ = ["build_hierarchical_vae", "halved_levels"]


class _ToImage(nn.Module):
    """Reshape (N, ...) inputs of C*H*W elements to (N, C, H, W)."""

    def __init__(self, image_shape: Tuple[int, int, int]) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.image_shape)


def _mlp(width: int, hidden: Sequence[int], activation: str) -> List[nn.Module]:
    layers: List[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), _activation(activation)]
        width = h
    return layers


def halved_levels(levels: int, hidden: Sequence[int], latent_dim: int) -> Tuple[List[int], List[List[int]]]:
    """(latent_dims, hidden) of ``levels`` layers from the first layer's sizes, each layer above
    half the one under it (at least 1): ``halved_levels(2, (100, 100), 100)`` is the IWAE
    paper's two-layer model. The command line's ``--levels`` uses this rule."""
    levels = check_int("levels", levels, 1)
    hidden = _sizes("hidden", hidden)
    latent_dim = check_int("latent_dim", latent_dim, 1)
    return ([max(1, latent_dim >> l) for l in range(levels)],
            [[max(1, w >> l) for w in hidden] for l in range(levels)])


def build_hierarchical_vae(
    input_dim: int = 784,
    latent_dims: Sequence[int] = (100, 50),
    hidden: Sequence[Sequence[int]] = ((100, 100), (50, 50)),
    likelihood: str = "bernoulli",
    activation: str = "tanh",
    image_shape: Optional[Sequence[int]] = None,
    channels: Optional[Sequence[int]] = None,
    **vae_kwargs: Any,
) -> HierarchicalVAE:
    """A top-down hierarchical VAE with ``len(latent_dims)`` stochastic layers.

    Layer l (0 = bottom) has ``latent_dims[l]`` latent dims and the hidden widths ``hidden[l]``,
    used by the bottom-up network into that layer (x -> h_1 for l = 0, h_l -> h_{l+1} above) and,
    mirrored, by the generative network out of it (z_1 -> p(x | z_1) for l = 0, z_{l+1} ->
    p(z_l | z_{l+1}) above). ``channels`` (with ``image_shape`` (C, H, W)) makes the data end
    convolutional: stride-2 4x4 convs before the first MLP and transposed convs after the last,
    as `build_conv_vae`; inputs of C*H*W elements in any shape are reshaped to images.
    """
    input_dim = check_int("input_dim", input_dim, 1)
    latent_dims = _sizes("latent_dims", latent_dims)
    if not latent_dims:
        raise ValueError("latent_dims must name at least one layer, got an empty sequence")
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or len(hidden) != len(latent_dims):
        raise ValueError(f"hidden must hold one sequence of widths per layer ({len(latent_dims)}), got {hidden!r}")
    hidden = [_sizes(f"hidden[{l}]", h) for l, h in enumerate(hidden)]
    if not all(hidden):
        raise ValueError(f"every layer needs at least one hidden width, got hidden={hidden}")
    _activation(activation)
    out = _out_factor(vae_kwargs)
    data_shape = vae_kwargs.pop("data_shape", None)

    if channels is None:
        if image_shape is not None:
            raise ValueError("image_shape is for the convolutional variant; pass channels too, or data_shape")
        data_shape = _sizes("data_shape", data_shape or (input_dim,))
        if math.prod(data_shape) != input_dim:
            raise ValueError(f"data_shape {tuple(data_shape)} does not hold input_dim={input_dim} elements")
        first_up: List[nn.Module] = [nn.Flatten()] + _mlp(input_dim, hidden[0], activation)
        decoder: List[nn.Module] = _mlp(latent_dims[0], hidden[0][::-1], activation)
        decoder.append(nn.Linear(hidden[0][0], out * input_dim))
    else:
        image_shape = _sizes("image_shape", image_shape if image_shape is not None else ())
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape}")
        channels = _sizes("channels", channels)
        if not channels:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}")
        if data_shape is not None and tuple(data_shape) != tuple(image_shape):
            raise ValueError(f"data_shape {tuple(data_shape)} differs from image_shape {tuple(image_shape)}")
        data_shape = image_shape
        input_dim = math.prod(image_shape)
        enc, dec_tail, flat = conv_stacks(image_shape, channels, activation, out * image_shape[0])
        first_up = [_ToImage(image_shape)] + enc + [nn.Flatten()] + _mlp(math.prod(flat), hidden[0], activation)
        decoder = _mlp(latent_dims[0], hidden[0][::-1], activation)
        decoder += [nn.Linear(hidden[0][0], math.prod(flat)), _activation(activation), nn.Unflatten(1, flat)]
        decoder += dec_tail

    levels = len(latent_dims)
    up = [nn.Sequential(*first_up)]
    up += [nn.Sequential(*_mlp(hidden[l - 1][-1], hidden[l], activation)) for l in range(1, levels)]
    down = [nn.Sequential(*_mlp(latent_dims[l + 1], hidden[l + 1][::-1], activation)) for l in range(levels - 1)]
    vae = HierarchicalVAE(up, down, nn.Sequential(*decoder), latent_dims,
                          up_dims=[h[-1] for h in hidden], down_dims=[hidden[l + 1][0] for l in range(levels - 1)],
                          likelihood=likelihood, data_shape=data_shape, **vae_kwargs)
    vae._arch = {"arch": "hierarchical", "input_dim": input_dim, "latent_dims": list(latent_dims),
                 "hidden": [list(h) for h in hidden], "activation": activation,
                 "image_shape": list(image_shape) if channels is not None else None,
                 "channels": list(channels) if channels is not None else None}
    return vae
