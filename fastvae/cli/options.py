"""``fastvae train``'s own settings, declared like `TrainConfig`'s: the data, the model, the outputs.

Together with `TrainConfig` these fields are every flag of ``fastvae train``. The data and model
fields are fixed by a checkpoint (``--resume`` refuses them); the output fields may change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from ..training.options import choice, integer, option, real, text

__all__ = ["DataOptions", "ModelOptions", "OutputOptions", "csv_ints", "DATA_HELP", "HIERARCHICAL_ARCHS"]

_ARCHS = ("mlp", "conv", "hierarchical", "hierarchical-conv")
#: The architectures with several stochastic layers (`fastvae.vae.HierarchicalVAE`).
HIERARCHICAL_ARCHS = ("hierarchical", "hierarchical-conv")
# Kept here (not imported from fastvae.vae) so that building the parser loads no model code.
_ACTIVATIONS = ("relu", "elu", "silu", "tanh")
_LIKELIHOODS = ("bernoulli", "gaussian", "dmol", "logistic", "categorical", "continuous_bernoulli")
#: The likelihoods over 8-bit levels (fastvae.vae.image_likelihoods), reported in bits/dim too.
DISCRETE_LIKELIHOODS = ("dmol", "logistic", "categorical")
_OBS_VARS = ("fixed", "scalar", "per_dim", "per_element")
DATA_HELP = ("'digits' (scikit-learn's 8x8 digits, bundled), 'mnist' (IDX files in --data-dir), "
             "'binarized-mnist' (Larochelle's binarized_mnist_{train,valid,test}.amat[.gz] in --data-dir; "
             "evaluated on valid), 'photos' (3x32x32 RGB patches of scikit-learn's two sample photographs, "
             "bundled) or a path to an .npz file")
_NAMED_DATA = ("digits", "mnist", "binarized-mnist", "photos")


def csv_ints(text_value: Any, flag: str) -> List[int]:
    """``"512,256"`` as [512, 256]; anything else that is not positive integers is an error."""
    try:
        values = [int(v) for v in str(text_value).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{flag} must be comma-separated positive integers, got {text_value!r}")
    return values


def _widths(name: str, value: Any) -> str:
    csv_ints(value, name)
    return value


def level_widths(text_value: Any, flag: str) -> List[List[int]]:
    """``"200,200/50,50"`` as [[200, 200], [50, 50]]: one group of widths per stochastic layer,
    bottom first (no ``/``: one group)."""
    return [csv_ints(group, flag) for group in str(text_value).split("/")]


def _level_widths(name: str, value: Any) -> str:
    level_widths(value, name)
    return value


def data_name(name: str, value: Any) -> str:
    """'digits', 'mnist', 'binarized-mnist', 'photos' or a path ending in .npz."""
    if not isinstance(value, str) or (value not in _NAMED_DATA and not value.endswith(".npz")):
        raise ValueError(f"{name} must be one of {', '.join(repr(n) for n in _NAMED_DATA)} or a path to an .npz "
                         f"file, got {value!r}")
    return value


@dataclass
class DataOptions:
    """Which data set a run trains on (fixed by a checkpoint)."""

    data: str = option("digits", DATA_HELP, data_name)
    data_dir: Optional[str] = option(
        None, "directory of the MNIST IDX or binarised-MNIST .amat files, or base for a relative .npz path",
        text(optional=True), default_help="$FASTVAE_MNIST_DIR, else ../shared/data/mnist-t10k next to the "
                                          "repository; ../shared/data/binarized-mnist for binarized-mnist")
    npz_key: str = option("x", "array name in the .npz file (also looks for KEY_train/KEY_test and y/labels)",
                          text())


@dataclass
class ModelOptions:
    """The architecture of a run's VAE (fixed by a checkpoint)."""

    arch: str = option("mlp", "fully connected or convolutional encoder/decoder, or a top-down hierarchical "
                              "VAE (--levels stochastic layers; its data end fully connected or convolutional)",
                       choice(*_ARCHS), choices=_ARCHS)
    levels: Optional[int] = option(
        2, "stochastic layers of a hierarchical VAE: layer l has --latent-dim and --hidden (unless given per "
           "layer) halved l times "
           "(--hidden 100,100 --latent-dim 100 --levels 2 is the IWAE paper's two-layer model)",
        integer(1, optional=True), cli_default="auto", default_help="2 with --arch hierarchical*")
    hidden: str = option("400", "MLP hidden widths, comma-separated, e.g. 512,256; a hierarchical VAE takes one "
                                "group per layer, bottom first, separated by '/' (e.g. 200,200/50,50), instead "
                                "of halving", _level_widths)
    channels: str = option("32,64", "conv channels per stride-2 layer, comma-separated", _widths)
    activation: str = option("relu", "hidden activation", choice(*_ACTIVATIONS), choices=_ACTIVATIONS)
    latent_dim: int = option(20, "latent dimensions", integer(1), cli_default="auto",
                             default_help="2 for the digits, so latents.png shows the latent space; 20 otherwise")
    likelihood: str = option("bernoulli", "p(x|z): Bernoulli on logits, Gaussian on a mean, or for 8-bit images "
                                          "a discretised logistic mixture (dmol), one discretised logistic, a "
                                          "2^bits-way categorical, or the continuous Bernoulli (grey levels)",
                             choice(*_LIKELIHOODS), choices=_LIKELIHOODS)
    num_mixtures: int = option(10, "logistic mixture components per pixel (--likelihood dmol)", integer(1))
    bits: int = option(8, "bits per subpixel of the discrete image likelihoods", integer(1, 8))
    obs_var: str = option("fixed", "Gaussian observation variance: fixed at --obs-logvar, one learned "
                                   "scalar, one learned per pixel, or predicted by the decoder",
                          choice(*_OBS_VARS), choices=_OBS_VARS)
    obs_logvar: float = option(0.0, "Gaussian observation log-variance (fixed value or initial value)", real())


@dataclass
class OutputOptions:
    """Where a run writes and what it draws (a resumed run may change them)."""

    out: Optional[str] = option(None, "output directory", text(optional=True), resume=True,
                                default_help="runs/<data set name>; with --resume, the checkpoint's directory")
    plots: bool = option(True, "draw samples.png, reconstructions.png, curve.png and latents.png "
                               "(with --resume, draws them for a run saved with --no-plots)",
                         choice(True, False), resume=True)
    num_images: int = option(64, "images in samples.png", integer(1), resume=True)
