"""Fused VAE loss terms: the public, user-facing functions, one module per op family.

=======================  ===============================================================
``sampling``       :func:`reparameterize`, :func:`reparameterize_with_kl`
``kl``             :func:`kl_standard_normal`
``kl_normal``      :func:`kl_normal` (and ``reparameterize_with_kl``'s prior)
``likelihood``     :func:`bernoulli_log_likelihood`, :func:`gaussian_log_likelihood`
``linear_bernoulli``  :func:`linear_bernoulli_log_likelihood` (a decoder's last linear layer + Bernoulli)
``continuous_bernoulli``  :func:`continuous_bernoulli_log_likelihood`
``categorical``    :func:`categorical_log_likelihood` (integer levels, K-way softmax), :func:`sample_categorical`
``discretized_logistic``  :func:`discretized_mix_logistic_log_likelihood`, :func:`discretized_logistic_log_likelihood`,
                   :func:`sample_discretized_mix_logistic`, :func:`sample_discretized_logistic`
``density``        :func:`gaussian_log_density`, :func:`standard_normal_log_density`
``elbo``           :func:`elbo`
``image_elbo``     :func:`image_elbo` (:func:`elbo` of the image likelihoods)
``iwae``           :func:`iwae_bound`, :func:`dreg_gate`
=======================  ===============================================================

Each function checks its arguments (raising ``ValueError`` that names the bad one), broadcasts,
flattens to the ``(rows, cols)`` layout the kernels use and reshapes the result back. Operands
that broadcast only over leading dims (targets ``x`` shared by K samples of the decoder output, a
per-dim variance) are read in place by the kernels, not copied.

Results are float32 for float32/bf16/fp16 inputs (accumulated in float32) and float64 for
float64 inputs. Every floating input that requires grad gets its gradient.
"""
from __future__ import annotations

from .categorical import categorical_log_likelihood, sample_categorical
from .continuous_bernoulli import continuous_bernoulli_log_likelihood
from .discretized_logistic import (
    discretized_logistic_log_likelihood, discretized_mix_logistic_log_likelihood, sample_discretized_logistic,
    sample_discretized_mix_logistic,
)
from .density import gaussian_log_density, standard_normal_log_density
from .elbo import elbo
from .image_elbo import image_elbo
from .iwae import dreg_gate, iwae_bound
from .kl import kl_standard_normal
from .kl_normal import kl_normal
from .likelihood import bernoulli_log_likelihood, gaussian_log_likelihood
from .linear_bernoulli import linear_bernoulli_log_likelihood
from .sampling import reparameterize, reparameterize_with_kl

__all__ = [
    "reparameterize",
    "reparameterize_with_kl",
    "kl_standard_normal",
    "kl_normal",
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "linear_bernoulli_log_likelihood",
    "continuous_bernoulli_log_likelihood",
    "categorical_log_likelihood",
    "discretized_mix_logistic_log_likelihood",
    "discretized_logistic_log_likelihood",
    "sample_discretized_mix_logistic",
    "sample_discretized_logistic",
    "sample_categorical",
    "gaussian_log_density",
    "standard_normal_log_density",
    "elbo",
    "image_elbo",
    "iwae_bound",
    "dreg_gate",
]
