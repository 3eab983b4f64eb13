"""The discretized_logistic family: the discretized mixture of logistics (M = 10, RGB, 8 bits),
forward + backward, fused (`fastvae.functional.discretized_mix_logistic_log_likelihood`) against
the PixelCNN++ / NVAE formula as users run it eagerly (benchmarks/dmol_eager.py) and that formula
under torch.compile: time (interleaved medians) and peak memory above the inputs, at B=64 3x32x32,
B=8 3x128x128 and B=2 3x256x256, float32 and bf16 params.

    python benchmarks/bench_discretized_logistic.py [--dtype float32 bfloat16] [--sizes 64x32 8x128 2x256]
        [--repeats 7] [--device cpu] [--out benchmarks/results/dmol-cpu.json]

The goals on the CPU (issue 19): >= 4x eager and >= 2x compile in time, peak memory <= 0.25x
eager's. The machine's other load is reported with each case (a busy machine slows every
implementation, not their ratios alone).
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
from fastvae.bench.timing import peak_memory_mb, time_interleaved  # noqa: E402

M = 10


def _case(batch: int, side: int, dtype: torch.dtype, device: torch.device) -> Dict[str, Callable[[], None]]:
    """forward + backward of each implementation on the same params and data."""
    levels = torch.randint(0, 256, (batch, 3, side, side), device=device, dtype=torch.uint8)
    x = levels.float() / 127.5 - 1
    params = torch.randn(batch, 10 * M, side, side, device=device)
    params[:, M:].mul_(0.5)
    params = params.to(dtype).requires_grad_()
    up = torch.randn(batch, device=device)
    compiled = torch.compile(eager_dmol_log_likelihood)

    def run(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            out = fn()
            out.backward(up.to(out.dtype))
            params.grad = None
        return step

    return {
        "fused": run(lambda: F.discretized_mix_logistic_log_likelihood(params, levels, M)),
        "eager": run(lambda: eager_dmol_log_likelihood(params, x, M)),
        "compile": run(lambda: compiled(params, x, M)),
    }


def measure(fns: Dict[str, Callable[[], None]], device: torch.device, repeats: int, label: str,
            **fields: object) -> Dict[str, object]:
    """One report row: ``fns`` timed interleaved and their peak memory, the fused one's speed-up
    and memory ratio against each baseline present; printed as one line after ``label``."""
    t = time_interleaved(fns, device, warmup=1, repeats=repeats, retries=1)
    mem = {k: peak_memory_mb(fn, device) for k, fn in fns.items()}
    row: Dict[str, object] = {**fields, "ms": t.median, "iqr_ms": t.iqr, "peak_mib": mem,
                              "other_load_cores": t.other_load}
    for ref in ("eager", "compile"):
        if ref in fns and "fused" in fns:
            row[f"speedup_vs_{ref}"] = t.median[ref] / t.median["fused"]
            if mem.get(ref):
                row[f"memory_vs_{ref}"] = mem["fused"] / mem[ref]
    print(f"{label}: "
          + "  ".join(f"{k} {t.median[k]:8.1f} ms {mem[k] or 0:8.1f} MiB" for k in fns)
          + "".join(f"  x{row[k]:.2f} {k}" for k in row if k.startswith(("speedup", "memory")))
          + f"  (other load {t.other_load if t.other_load is None else round(t.other_load, 2)} cores)",
          flush=True)
    return row


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--sizes", nargs="+", default=["64x32", "8x128", "2x256"], help="BATCHxSIDE")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--impls", nargs="+", default=["fused", "eager", "compile"])
    parser.add_argument("--out", default=None, help="a JSON report")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for dname in args.dtype:
        dtype = getattr(torch, dname)
        for size in args.sizes:
            batch, side = (int(v) for v in size.split("x"))
            torch._dynamo.reset()
            fns = {k: v for k, v in _case(batch, side, dtype, device).items() if k in args.impls}
            rows.append(measure(fns, device, args.repeats, f"{dname:9s} B={batch:3d} 3x{side}x{side}",
                                dtype=dname, B=batch, side=side))
    if args.out:
        report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "device": str(device), "num_mixtures": M, "rows": rows}
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
