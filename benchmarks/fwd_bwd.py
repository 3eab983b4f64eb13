"""Shared by the per-family scripts bench_categorical.py and bench_continuous_bernoulli.py: one
forward + backward of a per-image log-likelihood, fused against an eager baseline and that
baseline under torch.compile, interleaved (fastvae.bench.timing), with the peak memory above the
inputs; a JSON report and a text table."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict, List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402

from fastvae.bench.report import environment  # noqa: E402
from fastvae.bench.timing import peak_memory_mb, time_interleaved  # noqa: E402

# name -> ll(logits, x) -> (B,)
Impls = Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
# (label, make(dtype) -> (logits leaf, x))
Cases = Sequence[Tuple[str, Callable[[torch.dtype], Tuple[torch.Tensor, torch.Tensor]]]]


def step(ll: Callable, logits: torch.Tensor, x: torch.Tensor) -> Callable[[], None]:
    """One forward + backward of -mean(ll) into logits.grad (cleared first)."""
    def run() -> None:
        logits.grad = None
        (-ll(logits, x).mean()).backward()
    return run


def run(family: str, impls: Impls, cases: Cases, argv: Sequence[str] = None) -> List[Dict[str, object]]:
    p = argparse.ArgumentParser(description=f"{family}: fused vs eager vs torch.compile, forward + backward")
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=None, help="JSON report path")
    args = p.parse_args(argv)
    device = torch.device("cpu")
    rows = []
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        for label, make in cases:
            logits, x = make(dtype)
            fns = {}
            for name, ll in impls.items():
                torch._dynamo.reset()
                fn = torch.compile(ll) if name == "compile" else ll
                fns[name] = step(fn, logits, x)
            t = time_interleaved(fns, device, warmup=2, repeats=args.repeats)
            mem = {n: peak_memory_mb(f, device) for n, f in fns.items()}
            row = {"case": label, "dtype": dtype_name, "median_ms": t.median, "iqr_ms": t.iqr,
                   "peak_mb": mem, "other_load_cores": t.other_load}
            rows.append(row)
            ms = t.median
            print(f"{label:>22} {dtype_name:>8} | " + " ".join(f"{n} {ms[n]:8.1f} ms {mem[n] or 0:7.1f} MiB"
                  for n in impls) + f" | eager/fused {ms['eager'] / ms['fused']:.2f}x"
                  f" compile/fused {ms['compile'] / ms['fused']:.2f}x | other load {t.other_load or 0:.2f} cores",
                  flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"family": family, "environment": environment(device), "rows": rows}, f, indent=1)
    return rows
