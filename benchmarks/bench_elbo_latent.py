"""The whole negative ELBO with the KL computed from mu and logvar — `F.elbo(recon, x, mu, logvar)`,
the default call, whose KL pass issue 22 (item 2) moved onto the coalesced row kernels — forward +
backward, fused against the eager reference, at latent sizes 20, 512 and 4096 and batches of 256
and 65 536 (D = 784, Bernoulli likelihood).

    python benchmarks/bench_elbo_latent.py [--device cuda] [--dtype float32] [--out r.json]

Runs against whatever fastvae is importable (a checkout of main gives the "before" rows). Each
row: the median of --repeats timed rounds after --warmup calls, CUDA events on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from fastvae import functional as F  # noqa: E402
from fastvae import reference as R  # noqa: E402
from fastvae.bench.timing import _timed_call  # noqa: E402  (CUDA events on a GPU)

BATCHES = (256, 65536)
LATENTS = (20, 512, 4096)
D = 784


def _step(mod, recon, x, mu, lv) -> Callable[[], None]:
    """One forward + backward of mod.elbo (mod: fastvae.functional or fastvae.reference)."""
    leaves = [recon, mu, lv]

    def run() -> None:
        loss = mod.elbo(recon, x, mu, lv)
        torch.autograd.grad(loss, leaves)

    return run


def _median_ms(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """The median of `repeats` timed calls of fn after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(_timed_call(fn, device) for _ in range(repeats))


def run(device: torch.device, dtype: torch.dtype, warmup: int, repeats: int, batches, latents) -> List[Dict]:
    """One row per (B, Z): fused and eager milliseconds for forward + backward."""
    rows = []
    for b in batches:
        for z in latents:
            g = torch.Generator(device="cpu").manual_seed(b * 7 + z)
            recon = (3 * torch.randn(b, D, generator=g)).to(device, dtype).requires_grad_()
            x = (torch.rand(b, D, generator=g) > 0.5).to(device, dtype)
            mu = torch.randn(b, z, generator=g).to(device, dtype).requires_grad_()
            lv = (0.5 * torch.randn(b, z, generator=g)).to(device, dtype).requires_grad_()
            row = {"B": b, "Z": z, "D": D, "dtype": str(dtype).replace("torch.", "")}
            for name, mod in (("fused", F), ("eager", R)):
                row[f"{name}_ms"] = _median_ms(_step(mod, recon, x, mu, lv), device, warmup, repeats)
            row["speedup"] = row["eager_ms"] / row["fused_ms"]
            rows.append(row)
            print(f"B={b:6d} Z={z:5d} {row['dtype']:8s} fused {row['fused_ms']:8.3f} ms   "
                  f"eager {row['eager_ms']:8.3f} ms   {row['speedup']:5.2f}x", flush=True)
            del recon, x, mu, lv
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--latents", type=int, nargs="+", default=list(LATENTS))
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.repeats < 1:
        parser.error("--warmup must be >= 0 and --repeats >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = run(device, getattr(torch, args.dtype), args.warmup, args.repeats, args.batches, args.latents)
    if args.out:
        info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "torch": torch.__version__, "rows": rows}
        with open(args.out, "w") as f:
            json.dump(info, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
