"""The IWAE training step: one Adam step of the IWAE paper's 784-200-200-50 tanh MLP on the
k-sample bound, fused (`VAE.loss(objective="iwae", gradient="reparam" | "dreg")`) against the IWAE
written the usual way (x repeated K times, binary_cross_entropy_with_logits, torch.distributions
densities, torch.logsumexp) eager and under torch.compile: median step time (interleaved rounds)
and the peak memory of one step.

    python benchmarks/bench_iwae.py [--k 50] [--batch 100] [--steps 15] [--threads N] [--out r.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Callable, Dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402
import torch.nn.functional as TF  # noqa: E402
from torch.distributions import Normal  # noqa: E402

import fastvae  # noqa: E402
from fastvae.bench.report import environment  # noqa: E402
from fastvae.bench.timing import peak_memory_mb, time_interleaved  # noqa: E402

IMPLS = ("fused_reparam", "fused_dreg", "eager", "compile")


def eager_iwae_loss(model: fastvae.VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """The negative IWAE bound as it is usually written: every tensor of K samples materialised."""
    mu, logvar = model.encoder(x).chunk(2, dim=-1)
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = q.rsample((k,))  # (K, B, Z)
    logits = model.decoder(z.reshape(-1, z.shape[-1])).view(k, *x.shape)
    log_px = -TF.binary_cross_entropy_with_logits(logits, x.repeat(k, 1, 1), reduction="none").sum(-1)
    log_w = log_px + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
    return -(torch.logsumexp(log_w, dim=0) - math.log(k)).mean()


def make_step(impl: str, k: int, batch: int, device: torch.device) -> Callable[[], None]:
    """One Adam step of ``impl`` (see IMPLS) on random binary images; same seed, same model."""
    torch.manual_seed(0)
    model = fastvae.build_mlp_vae(784, (200, 200), 50, activation="tanh").to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = (torch.rand(batch, 784, device=device) < 0.13).float()
    if impl.startswith("fused"):
        gradient = impl.split("_")[1]

        def loss() -> torch.Tensor:
            return model.loss(x, objective="iwae", num_samples=k, gradient=gradient)
    else:
        fn = eager_iwae_loss
        if impl == "compile":
            torch._dynamo.reset()
            fn = torch.compile(eager_iwae_loss)

        def loss() -> torch.Tensor:
            return fn(model, x, k)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    return step


def run(k: int, batch: int, steps: int, device: torch.device, compile: bool = True) -> Dict[str, object]:
    impls = [i for i in IMPLS if compile or i != "compile"]
    fns = {impl: make_step(impl, k, batch, device) for impl in impls}
    # One thread on the CPU: the calling thread's CPU time per step too, which other processes on a
    # busy machine do not inflate.
    thread_cpu = device.type == "cpu" and torch.get_num_threads() == 1
    t = time_interleaved(fns, device, warmup=2, repeats=steps, thread_cpu=thread_cpu)
    row: Dict[str, object] = {"k": k, "batch": batch, "steps": steps, "device": str(device),
                              "threads": torch.get_num_threads(), "other_load": t.other_load, "torch": torch.__version__}
    for impl in impls:
        row[f"{impl}_ms"] = t.median[impl]
        if t.thread_cpu:
            row[f"{impl}_cpu_ms"] = t.thread_cpu[impl]
        row[f"{impl}_peak_mb"] = peak_memory_mb(fns[impl], device)
    clock = "cpu_ms" if t.thread_cpu else "ms"
    for impl in ("fused_reparam", "fused_dreg"):
        for base in ("eager", "compile"):
            if f"{base}_ms" in row:
                row[f"{impl}_speedup_vs_{base}"] = row[f"{base}_{clock}"] / row[f"{impl}_{clock}"]
                row[f"{impl}_memory_vs_{base}"] = row[f"{impl}_peak_mb"] / row[f"{base}_peak_mb"]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=50, help="importance samples (default: 50)")
    p.add_argument("--batch", type=int, default=100, help="batch size (default: 100)")
    p.add_argument("--steps", type=int, default=15, help="timed rounds (default: 15)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--out", default=None, help="write the row as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    row = run(args.k, args.batch, args.steps, torch.device(args.device), compile=not args.no_compile)
    if args.out:  # before printing: a long run's numbers are kept whatever happens next
        with open(args.out, "w") as f:
            json.dump({**row, "environment": environment(torch.device(args.device))}, f, indent=1)
    print(f"IWAE k={row['k']} step, 784-200-200-50 tanh MLP, B={row['batch']}, {row['device']}, "
          f"{row['threads']} thread(s), other load {row['other_load']}")
    print(f"{'impl':<14} {'ms/step':>9} {'CPU ms':>9} {'peak MiB':>9}")
    for impl in IMPLS:
        if f"{impl}_ms" in row:
            cpu = row.get(f"{impl}_cpu_ms")
            print(f"{impl:<14} {row[f'{impl}_ms']:>9.2f} {'-' if cpu is None else f'{cpu:.2f}':>9} "
                  f"{row[f'{impl}_peak_mb']:>9.1f}")
    for key, value in row.items():
        if "_vs_" in key:
            print(f"{key}: {value:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
