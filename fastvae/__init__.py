"""fastvae: fused C++/CUDA kernels for variational autoencoder losses.

The core: ``fastvae.functional`` holds the fused ops, ``fastvae.reference`` their plain-PyTorch
twins and ``fastvae.ELBOLoss`` the drop-in loss module; it needs torch only. The application
on top: ``fastvae.vae`` (the `VAE` module, `build_mlp_vae` / `build_conv_vae`, the hierarchical VAE, data loaders,
pictures), ``fastvae.training`` (`Trainer`, `TrainConfig`, checkpoints) and ``fastvae.cli``
(the ``fastvae`` command). Their names are importable from here and loaded on first use.
"""
from typing import Any

from . import functional, reference
from ._extension import CUDA_BUILT, cuda_available
from .loss import ELBOLoss

__version__ = "0.1.0"

# The application's names, loaded on first use so that `import fastvae` stays the core.
_LAZY = {
    "VAE": "vae", "VAEOutput": "vae", "build_mlp_vae": "vae", "build_conv_vae": "vae", "build_vae": "vae",
    "HierarchicalVAE": "vae", "build_hierarchical_vae": "vae",
    "Trainer": "training", "TrainConfig": "training", "load_model": "training", "fit": "training",
}

__all__ = ["functional", "reference", "ELBOLoss", "CUDA_BUILT", "cuda_available", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'fastvae' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
