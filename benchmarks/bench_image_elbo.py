"""The image_elbo family: the whole negative ELBO of an image VAE (likelihood + KL, beta, mean over
the batch) forward + backward, fused (`fastvae.functional.elbo(likelihood="dmol" | "categorical")`,
one op) against the loss as users write it eagerly (the PixelCNN++ / NVAE DMoL formula of
benchmarks/dmol_eager.py, or `F.cross_entropy(reduction="none")` summed per image, plus the KL)
and that loss under torch.compile: time (interleaved medians) and peak memory above the inputs.
Decoder outputs channels-last, as a conv decoder gives them; M = 10 mixtures, 256 classes.

    python benchmarks/bench_image_elbo.py [--likelihood dmol categorical] [--dtype float32 bfloat16]
        [--sizes 64x32 8x128] [--repeats 7] [--device cpu] [--out r.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout
sys.path.insert(0, HERE)

import torch  # noqa: E402

from dmol_eager import eager_dmol_log_likelihood  # noqa: E402
from fastvae import functional as F  # noqa: E402
from fastvae import reference as R  # noqa: E402
from bench_discretized_logistic import measure  # noqa: E402

M = 10
Z = 64
BETA = 0.5


def _eager(likelihood: str, recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor,
           logvar: torch.Tensor) -> torch.Tensor:
    """The eager negative ELBO: -log p(x|z) + beta KL, mean over the batch."""
    if likelihood == "dmol":
        ll = eager_dmol_log_likelihood(recon, x.float() / 127.5 - 1, M)
    else:
        ll = R.categorical_log_likelihood(recon, x)
    return (BETA * R.kl_standard_normal(mu, logvar) - ll).mean()


def _case(likelihood: str, batch: int, side: int, dtype: torch.dtype,
          device: torch.device) -> Dict[str, Callable[[], None]]:
    """forward + backward of each implementation on the same decoder output, latents and data."""
    x = torch.randint(0, 256, (batch, 3, side, side), device=device, dtype=torch.uint8)
    if likelihood == "dmol":
        recon = torch.randn(batch, side, side, 10 * M, device=device).permute(0, 3, 1, 2)
        recon[:, M:].mul_(0.5)
    else:  # (B, 256 * 3, H, W) channels-last viewed as (B, 256, 3, H, W)
        recon = torch.randn(batch, side, side, 3 * 256, device=device).mul(2).permute(0, 3, 1, 2).unflatten(1, (256, 3))
    recon = recon.to(dtype).detach().requires_grad_()
    mu = torch.randn(batch, Z, device=device, dtype=dtype, requires_grad=True)
    logvar = torch.randn(batch, Z, device=device, dtype=dtype).mul(0.3).requires_grad_()
    compiled = torch.compile(_eager)

    def run(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            fn().backward()
            recon.grad = mu.grad = logvar.grad = None
        return step

    return {
        "fused": run(lambda: F.elbo(recon, x, mu, logvar, likelihood=likelihood, num_mixtures=M, beta=BETA)),
        "eager": run(lambda: _eager(likelihood, recon, x, mu, logvar)),
        "compile": run(lambda: compiled(likelihood, recon, x, mu, logvar)),
    }


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--likelihood", nargs="+", default=["dmol", "categorical"])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--sizes", nargs="+", default=["64x32", "8x128"], help="BATCHxSIDE")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="a JSON report")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for likelihood in args.likelihood:
        for dname in args.dtype:
            for size in args.sizes:
                batch, side = (int(v) for v in size.split("x"))
                torch._dynamo.reset()
                fns = _case(likelihood, batch, side, getattr(torch, dname), device)
                rows.append(measure(fns, device, args.repeats,
                                    f"{likelihood:11s} {dname:9s} B={batch:3d} 3x{side}x{side}",
                                    likelihood=likelihood, dtype=dname, B=batch, side=side))
    if args.out:
        report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "device": str(device), "num_mixtures": M, "beta": BETA,
                  "latent_dim": Z, "rows": rows}
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
