"""fastvae: fused C++/CUDA kernels for variational autoencoder losses.

``fastvae.functional`` holds the fused ops, ``fastvae.reference`` their plain-PyTorch twins,
``fastvae.ELBOLoss`` the drop-in loss module.
"""
from . import functional, reference
from ._extension import CUDA_BUILT, cuda_available
from .loss import ELBOLoss

__version__ = "0.1.0"

__all__ = ["functional", "reference", "ELBOLoss", "CUDA_BUILT", "cuda_available", "__version__"]
