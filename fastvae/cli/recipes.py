"""Named presets of ``fastvae train --recipe NAME``: every setting of a published-number run.

A recipe fills in flags the way a user would type them; flags given on the command line win.
Both recipes train the one-stochastic-layer model of the IWAE paper (Burda et al. 2016) on
Larochelle's binarised MNIST: a 784-200-200-50 MLP with tanh units, Bernoulli likelihood, Adam,
a batch of 100, and a learning rate decayed exponentially to a tenth over a 60-minute budget.
The decoder's output bias starts at the training pixels' marginal logits (as in the IWAE
paper's code), which keeps the first Adam steps from saturating the tanh units. They do not
average the weights (``--ema-decay``): on an 8-minute iwae-mnist run the average (decay 0.9995)
scored 0.09 nats worse than the last weights (the learning-rate decay may already do its job).
iwae-mnist ramps the prior and posterior terms in over its first 100 epochs (KL warm-up, a
seventh of a 60-minute run on 2 cores), which helped the same MLP by 0.5 nats on the ELBO
(benchmarks/quality_hierarchical.py). Its validation NLL: 88.00 with it on 2 idle cores (750
epochs), 88.52 without it on 1 shared core (503 epochs); docs/iwae.md.
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

#: name -> the flags it sets (as `fastvae train` field names).
RECIPES: Dict[str, Dict[str, Any]] = {
    # IWAE bound with K samples and the DReG gradient.
    "iwae-mnist": {**_MNIST_MLP, "objective": "iwae", "num_samples": 5, "gradient": "dreg", "warmup": 100},
    # The one-sample ELBO (a plain VAE).
    "vae-mnist": {**_MNIST_MLP, "objective": "elbo", "num_samples": 1, "gradient": "reparam"},
}


def recipe_settings(name: str) -> Dict[str, Any]:
    """A copy of recipe ``name``'s settings; ValueError naming the recipes there are."""
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {tuple(RECIPES)}, got {name!r}")
    return dict(RECIPES[name])
