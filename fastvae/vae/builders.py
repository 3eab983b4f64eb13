"""Ready-made VAE architectures, and `build_vae` to rebuild one from `VAE.config`.

`build_mlp_vae` (fully connected) and `build_conv_vae` (stride-2 convolutions) record their
arguments in the model, so that a checkpoint can rebuild the same architecture.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Sequence, Tuple

from torch import nn

from .._args import check_int
from .image_likelihoods import IMAGE_LIKELIHOODS, decoder_channels
from .model import VAE

__all__ = ["build_mlp_vae", "build_conv_vae", "build_vae", "ACTIVATIONS"]

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def _activation(name: str) -> nn.Module:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def _sizes(name: str, values: Any) -> tuple:
    """A sequence of positive integers (hidden widths, channels) as a tuple."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a sequence of positive integers, got {values!r}")
    return tuple(check_int(f"{name} entries", v, 1) for v in values)

def _out_factor(vae_kwargs: Dict[str, Any]) -> int:
    # The decoder predicts mean and log-variance side by side for per-element variance.
    return 2 if vae_kwargs.get("obs_var", "fixed") == "per_element" else 1


def _out_channels(likelihood: str, channels: int, vae_kwargs: Dict[str, Any]) -> int:
    """Decoder output channels per pixel (per data element for flat data)."""
    if likelihood in IMAGE_LIKELIHOODS:
        return decoder_channels(likelihood, channels, check_int("num_mixtures", vae_kwargs.get("num_mixtures", 10), 1),
                                check_int("bits", vae_kwargs.get("bits", 8), 1))
    return _out_factor(vae_kwargs) * channels


def conv_stacks(image_shape: Sequence[int], channels: Sequence[int], activation: str,
                out_channels: int) -> Tuple[list, list, Tuple[int, int, int]]:
    """The convolutional halves of a conv VAE for (C, H, W) images: (encoder layers, stride-2
    4x4 convs to a (C', H', W') map; decoder layers, transposed convs from that map back to
    ``out_channels`` x H x W; (C', H', W')). The linear layers to and from the latent are the
    caller's."""
    c, h, w = image_shape
    # Spatial sizes after each conv (k=4, s=2, p=1 gives floor(n / 2)).
    sizes = [(h, w)]
    for _ in channels:
        ph, pw = sizes[-1]
        sizes.append((ph // 2, pw // 2))
    if min(sizes[-1]) < 1:
        raise ValueError(
            f"image_shape {(c, h, w)} is too small for {len(channels)} stride-2 convs; "
            f"H and W must be >= {2 ** len(channels)}"
        )
    enc: list = []
    prev = c
    for ch in channels:
        enc += [nn.Conv2d(prev, ch, 4, stride=2, padding=1), _activation(activation)]
        prev = ch
    flat = (prev, *sizes[-1])
    dec: list = []
    outs = list(reversed(channels[:-1])) + [out_channels]
    for i, ch in enumerate(outs):
        (ih, iw), (th, tw) = sizes[-1 - i], sizes[-2 - i]
        # A transposed conv gives 2n; output_padding adds the row/column an odd size lost.
        dec.append(nn.ConvTranspose2d(prev, ch, 4, stride=2, padding=1, output_padding=(th - 2 * ih, tw - 2 * iw)))
        if i < len(outs) - 1:
            dec.append(_activation(activation))
        prev = ch
    return enc, dec, flat


def build_mlp_vae(
    input_dim: int = 784,
    hidden: Sequence[int] = (400,),
    latent_dim: int = 20,
    likelihood: str = "bernoulli",
    activation: str = "relu",
    **vae_kwargs: Any,
) -> VAE:
    """Fully connected VAE: input_dim -> hidden... -> 2*latent_dim, and back mirrored.

    Inputs of any shape with ``input_dim`` elements per example are flattened; pass
    ``data_shape=(1, 28, 28)`` to get reconstructions and samples in image shape.
    """
    input_dim = check_int("input_dim", input_dim, 1)
    hidden = _sizes("hidden", hidden)
    latent_dim = check_int("latent_dim", latent_dim, 1)
    _activation(activation)
    data_shape = vae_kwargs.pop("data_shape", None) or (input_dim,)
    data_shape = _sizes("data_shape", data_shape)
    if math.prod(data_shape) != input_dim:
        raise ValueError(f"data_shape {tuple(data_shape)} does not hold input_dim={input_dim} elements")

    enc: list = [nn.Flatten()]
    width = input_dim
    for h in hidden:
        enc += [nn.Linear(width, h), _activation(activation)]
        width = h
    enc.append(nn.Linear(width, 2 * latent_dim))

    dec: list = []
    width = latent_dim
    for h in reversed(hidden):
        dec += [nn.Linear(width, h), _activation(activation)]
        width = h
    # Image likelihoods: per pixel of a (C, H, W) data_shape, their parameters (image_likelihoods).
    pixels = math.prod(data_shape[1:]) if len(data_shape) == 3 else input_dim
    chans = data_shape[0] if len(data_shape) == 3 else 1
    dec.append(nn.Linear(width, _out_channels(likelihood, chans, vae_kwargs) * pixels))

    vae = VAE(nn.Sequential(*enc), nn.Sequential(*dec), latent_dim, likelihood=likelihood,
              data_shape=data_shape, **vae_kwargs)
    vae._arch = {"arch": "mlp", "input_dim": input_dim, "hidden": list(hidden), "activation": activation}
    return vae


def build_conv_vae(
    image_shape: Sequence[int] = (1, 28, 28),
    channels: Sequence[int] = (32, 64),
    latent_dim: int = 20,
    likelihood: str = "bernoulli",
    activation: str = "relu",
    **vae_kwargs: Any,
) -> VAE:
    """Convolutional VAE for (C, H, W) images: stride-2 4x4 convs halving H and W per entry of
    ``channels``, a linear layer to 2*latent_dim, and the mirror image with transposed convs.

    Works for any H, W >= 2 ** len(channels), e.g. (1, 28, 28) MNIST or (1, 8, 8) digits.
    """
    image_shape = _sizes("image_shape", image_shape)
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape}")
    c, h, w = image_shape
    channels = _sizes("channels", channels)
    if not channels:
        raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}")
    latent_dim = check_int("latent_dim", latent_dim, 1)
    _activation(activation)
    if vae_kwargs.get("data_shape") is not None and tuple(vae_kwargs["data_shape"]) != (c, h, w):
        raise ValueError(f"data_shape {vae_kwargs['data_shape']} differs from image_shape {(c, h, w)}")
    vae_kwargs.pop("data_shape", None)
    enc, dec_tail, flat = conv_stacks((c, h, w), channels, activation, _out_channels(likelihood, c, vae_kwargs))
    enc += [nn.Flatten(), nn.Linear(math.prod(flat), 2 * latent_dim)]
    dec: list = [nn.Linear(latent_dim, math.prod(flat)), _activation(activation), nn.Unflatten(1, flat)] + dec_tail

    vae = VAE(nn.Sequential(*enc), nn.Sequential(*dec), latent_dim, likelihood=likelihood,
              data_shape=(c, h, w), **vae_kwargs)
    vae._arch = {"arch": "conv", "image_shape": [c, h, w], "channels": list(channels), "activation": activation}
    return vae


def build_vae(config: Dict[str, Any]) -> VAE:
    """Rebuild a VAE (fresh weights) from `VAE.config`; load a state_dict on top for a checkpoint."""
    cfg = dict(config)
    arch = cfg.pop("arch", None)
    if arch == "mlp":
        return build_mlp_vae(**cfg)
    if arch == "conv":
        cfg.pop("data_shape", None)  # implied by image_shape
        return build_conv_vae(**cfg)
    if arch == "hierarchical":
        from .hierarchical_builders import build_hierarchical_vae  # it imports this module

        return build_hierarchical_vae(**cfg)
    if arch is None:
        raise ValueError("config has no 'arch'': the VAE was built from custom modules, rebuild it by hand")
    raise ValueError(f"config['arch'] must be 'mlp', 'conv' or 'hierarchical', got {arch!r}")
