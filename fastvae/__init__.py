"""fastvae: fused C++/CUDA kernels for variational autoencoder losses.

``fastvae.functional`` holds the fused ops, ``fastvae.reference`` their plain-PyTorch twins,
``fastvae.ELBOLoss`` the drop-in loss module, ``fastvae.VAE`` / ``build_mlp_vae`` /
``build_conv_vae`` the models and ``fastvae.Trainer`` the training loop.
"""
from typing import Any

from . import functional, reference
from ._extension import CUDA_BUILT, cuda_available
from .loss import ELBOLoss
from .models import VAE, build_conv_vae, build_mlp_vae

__version__ = "0.1.0"

__all__ = [
    "functional", "reference", "ELBOLoss", "VAE", "build_mlp_vae", "build_conv_vae", "Trainer",
    "TrainConfig", "CUDA_BUILT", "cuda_available", "__version__",
]

# The training loop pulls in numpy and torch.distributed: loaded on first use only.
_LAZY = {"Trainer": "training", "TrainConfig": "training"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'fastvae' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
