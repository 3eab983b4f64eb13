"""The VAE application: the `VAE` module, ready-made architectures, data loaders and pictures.

``fastvae.vae.model`` and ``fastvae.vae.builders`` need torch only; ``fastvae.vae.data`` needs
numpy (and scikit-learn for the bundled digits) and ``fastvae.vae.plots`` matplotlib: the
``train`` extra (``pip install fastvae[train]``).
"""
from .builders import build_conv_vae, build_mlp_vae, build_vae
from .hierarchical import HierarchicalOutput, HierarchicalVAE
from .hierarchical_builders import build_hierarchical_vae
from .init import init_output_bias
from .model import LIKELIHOODS, LOSS_IMPLS, OBS_VARS, VAE, VAEOutput, free_bits_kl

__all__ = ["VAE", "VAEOutput", "HierarchicalVAE", "HierarchicalOutput", "build_hierarchical_vae", "build_mlp_vae", "build_conv_vae", "build_vae", "free_bits_kl", "init_output_bias",
           "LIKELIHOODS", "OBS_VARS", "LOSS_IMPLS"]
