"""Named presets of ``fastvae train --recipe NAME``: every setting of a published-number run.

A recipe fills in flags the way a user would type them; flags given on the command line win.
All train on Larochelle's binarised MNIST with tanh units, a Bernoulli likelihood, Adam, a batch
of 100, and a learning rate decayed exponentially to a tenth over a 60-minute budget. The
decoder's output bias starts at the training pixels' marginal logits (as in the IWAE paper's
code), which keeps the first Adam steps from saturating the tanh units.

- ``iwae-mnist``: the lowest validation NLL found for an hour on 2 cores (86.65, 480 epochs;
  docs/iwae.md). Two stochastic layers as wide at the data as the one-layer model
  (784-200-200 -> z1 (50), 50-50 -> z2 (25); docs/hierarchical.md: 1.6-2.1 nats better than one
  layer at equal epochs), the IWAE bound with K = 5 and the DReG gradient, KL warm-up over the
  first 100 epochs.
- ``iwae-mnist-1layer``: the same objective on the IWAE paper's one-layer 784-200-200-50 MLP,
  the model of the published numbers (88.00 on 2 idle cores, 750 epochs; docs/iwae.md).
- ``vae-mnist``: the one-sample ELBO on that one-layer MLP (a plain VAE).

None averages the weights (``--ema-decay``): on an 8-minute one-layer run the average (decay
0.9995) scored 0.09 nats worse than the last weights. The warm-up helped the one-layer MLP by
0.5 nats on the ELBO (benchmarks/quality_hierarchical.py).
"""
from __future__ import annotations

from typing import Any, Dict

__all__ = ["RECIPES", "recipe_settings"]

_MNIST_MLP: Dict[str, Any] = {
    "data": "binarized-mnist", "arch": "mlp", "hidden": "200,200", "activation": "tanh", "latent_dim": 50,
    "likelihood": "bernoulli", "binarize": "none", "batch_size": 100, "lr": 1e-3, "lr_schedule": "exponential",
    "lr_final": 1e-4, "epochs": 100000, "time_budget": 60.0, "eval_samples": 100, "ll_every": 25,
    "checkpoint_every": 10, "output_bias": "marginal",
}

_IWAE: Dict[str, Any] = {**_MNIST_MLP, "objective": "iwae", "num_samples": 5, "gradient": "dreg", "warmup": 100}

#: name -> the flags it sets (as `fastvae train` field names).
RECIPES: Dict[str, Dict[str, Any]] = {
    # IWAE bound with K samples and the DReG gradient, two stochastic layers.
    "iwae-mnist": {**_IWAE, "arch": "hierarchical", "levels": 2, "hidden": "200,200/50,50"},
    # The same on the IWAE paper's one-layer model.
    "iwae-mnist-1layer": dict(_IWAE),
    # The one-sample ELBO (a plain VAE).
    "vae-mnist": {**_MNIST_MLP, "objective": "elbo", "num_samples": 1, "gradient": "reparam"},
}


def recipe_settings(name: str) -> Dict[str, Any]:
    """A copy of recipe ``name``'s settings; ValueError naming the recipes there are."""
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {tuple(RECIPES)}, got {name!r}")
    return dict(RECIPES[name])
