"""The chunked evaluation `Trainer` and ``fastvae eval`` share: test ELBO and log-likelihood.

The data goes through the model ``batch_size`` examples at a time (the log-likelihood holds
K decoder passes per example), with noise from its own seed inside a forked RNG, so that an
evaluation neither varies between calls nor disturbs the training stream. Sums stay on the
device and are read once at the end.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch

from ..vae import VAE

__all__ = ["evaluate"]


def evaluate(
    model: VAE,
    data: torch.Tensor,
    batch_size: int,
    device: torch.device,
    seed: int,
    elbo: bool = True,
    num_samples: int = 0,
    loss_impl: str = "fused",
    amp: bool = False,
    progress: bool = False,
    desc: Optional[str] = None,
    bound: Optional[Dict[str, Any]] = None,
) -> Dict[str, float]:
    """Mean single-sample ELBO ("elbo", nats, beta = 1, no free bits; when ``elbo``) and mean
    importance-sampled log p(x) with K = ``num_samples`` ("log_likelihood"; when K > 0) over
    the examples of ``data``. Per chunk the ELBO is drawn first, then the K samples. The model
    is evaluated in eval mode and left in the mode it was in. ``amp``: the ELBO under bf16
    autocast (CUDA). ``progress``: a tqdm bar over the chunks. With K > 0 also
    "log_likelihood_se", the standard error of that mean over the examples. ``bound``: keyword
    arguments of `VAE.loss` (objective, num_samples) for "bound", the mean bound they train."""
    chunks = data.split(batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=desc or "eval", unit="chunk")
    wanted = (("elbo", elbo), ("log_likelihood", num_samples > 0), ("log_likelihood_sq", num_samples > 0),
              ("bound", bound is not None))
    totals = {name: torch.zeros((), dtype=torch.float64, device=device) for name, on in wanted if on}
    forked = [device] if device.type == "cuda" else []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=forked, device_type=device.type):
            torch.manual_seed(seed)
            for chunk in chunks:
                chunk = chunk.to(device)
                if elbo:
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                        loss = model.loss(chunk, beta=1.0, reduction="sum", impl=loss_impl)
                    totals["elbo"] -= loss.double()
                if num_samples:
                    ll = model.log_likelihood(chunk, num_samples=num_samples).double()
                    totals["log_likelihood"] += ll.sum()
                    totals["log_likelihood_sq"] += ll.square().sum()
                if bound is not None:
                    totals["bound"] -= model.loss(chunk, beta=1.0, reduction="sum", **bound).double()
    finally:
        model.train(was_training)
    n = data.shape[0]
    means = {name: total.item() / n for name, total in totals.items()}
    if num_samples:
        # The sample standard deviation of the per-example estimates over sqrt(n).
        var = max(means.pop("log_likelihood_sq") - means["log_likelihood"] ** 2, 0.0) * n / max(n - 1, 1)
        means["log_likelihood_se"] = math.sqrt(var / n)
    return means
