"""The goals past issues set, checked against saved reports (``fastvae bench --out`` or
``benchmarks/bench_host.py --out``). Prints one line per goal that the report has rows for.

    python benchmarks/check_goals.py benchmarks/results/cpu-*.json [--strict]

Goals (each applies only to the rows that exist in a report):
- whole ELBO forward + backward >= 2x eager at the MNIST-like sizes, per dtype;
- reparameterize forward + backward >= 1.5x eager at every size (float32);
- the bf16 Gaussian ops (log-likelihood, KL, log q, log p) >= 1x eager and >= 1x torch.compile;
- the large Bernoulli / Gaussian likelihood cases >= 70 % of the copy bandwidth (float32);
- host cost: the fused ELBO step with its sample <= 0.5x the leanest eager loss at B=1, in wall
  clock and (reports that have it) in the calling thread's CPU time;
- the sample with its KL against a per-row prior (``reparameterize_with_kl_normal``, issue 20),
  forward + backward, per dtype: on the CPU >= 2.5x eager, >= 1.5x torch.compile and peak memory
  <= 0.5x eager's; on a GPU >= 3x eager.

``--strict``: exit status 1 when a goal is not met. Reads JSON only (no torch, no fastvae).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional, Sequence

ELBO_GOAL = 2.0  # whole ELBO fwd+bwd vs eager, MNIST-like sizes
SAMPLER_GOAL = 1.5  # reparameterize fwd+bwd (float32) vs eager, at every benchmarked size
BF16_GAUSSIAN_OPS = ("gaussian_log_likelihood", "kl_standard_normal", "gaussian_log_density",
                     "standard_normal_log_density")
BANDWIDTH_GOAL = 0.7  # fraction of copy bandwidth, large Bernoulli and Gaussian likelihood cases
HOST_GOAL = 0.5  # fused host time over the leanest eager loss at B=1 (at most)
# The sample + KL against a prior: (vs eager, vs compile, peak memory over eager's at most) per device.
PRIOR_GOALS = {"cpu": (2.5, 1.5, 0.5), "cuda": (3.0, None, None)}


def _goal(out: Dict[str, Dict[str, object]], key: str, text: str, values: List[float], target: float,
          at_most: bool = False) -> None:
    met = max(values) <= target if at_most else min(values) >= target
    out[key] = {"text": text, "min": min(values), "max": max(values), "target": target, "met": met}


def goals(report: Dict[str, object]) -> Dict[str, Dict[str, object]]:
    """Each goal the report has rows for: measured min and max, the target, and whether it is met."""
    out: Dict[str, Dict[str, object]] = {}
    results: Sequence[Dict[str, object]] = report.get("results") or []
    device = (report.get("environment") or {}).get("device_type", "?")
    elbo = [r for r in results if r["op"] == "elbo" and r.get("family") == "mnist" and r["speedup_vs_eager"] is not None]
    for dtype in sorted({r["dtype"] for r in elbo}):
        _goal(out, f"elbo_vs_eager_{dtype}", f"whole ELBO fwd+bwd >= {ELBO_GOAL}x eager at MNIST-like sizes "
              f"({device}, {dtype}), x", [r["speedup_vs_eager"] for r in elbo if r["dtype"] == dtype], ELBO_GOAL)
    sampler = [r["speedup_vs_eager"] for r in results
               if r["op"] == "reparameterize" and r["dtype"] == "float32" and r["speedup_vs_eager"] is not None]
    if sampler:
        _goal(out, "sampler_vs_eager", f"reparameterize fwd+bwd >= {SAMPLER_GOAL}x eager at every size (float32), x",
              sampler, SAMPLER_GOAL)
    bf16 = [r for r in results if r["op"] in BF16_GAUSSIAN_OPS and r["dtype"] == "bfloat16"]
    for key, base in (("speedup_vs_eager", "eager"), ("speedup_vs_compile", "compile")):
        vals = [r[key] for r in bf16 if r[key] is not None]
        if vals:
            _goal(out, f"bf16_gaussian_vs_{base}", f"bf16 Gaussian ops (log-lik, KL, log q, log p) >= 1x {base}, x",
                  vals, 1.0)
    bw = [r["fraction_of_copy"] for r in results if r.get("family") == "large" and r["dtype"] == "float32"
          and r["op"] in ("bernoulli_log_likelihood", "gaussian_log_likelihood") and r.get("fraction_of_copy")]
    if bw:
        _goal(out, "large_likelihood_bandwidth", f"large Bernoulli / Gaussian likelihood >= {BANDWIDTH_GOAL:.0%} "
              "of copy bandwidth, fraction", bw, BANDWIDTH_GOAL)
    _prior_goals(out, results, device)
    host = report.get("host") or (report if isinstance(report.get("rows"), list) else None)
    b1 = [r["fused_over_eager"] for r in (host or {}).get("rows", [])
          if r.get("batch") == 1 and r.get("fused_over_eager") is not None]
    if b1:
        _goal(out, "host_fused_over_eager_b1", f"fused ELBO step host time <= {HOST_GOAL}x the leanest eager "
              "loss at B=1 (wall clock), x", b1, HOST_GOAL, at_most=True)
    b1_cpu = [r["thread_cpu"]["fused_over_eager"] for r in (host or {}).get("rows", [])
              if r.get("batch") == 1 and (r.get("thread_cpu") or {}).get("fused_over_eager") is not None]
    if b1_cpu:
        _goal(out, "host_fused_over_eager_b1_thread_cpu", f"fused ELBO step host time <= {HOST_GOAL}x the leanest "
              "eager loss at B=1 (the thread's CPU time), x", b1_cpu, HOST_GOAL, at_most=True)
    return out


def _prior_goals(out: Dict[str, Dict[str, object]], results: Sequence[Dict[str, object]], device: str) -> None:
    """The goals of the sample with its KL against a prior (PRIOR_GOALS), per dtype."""
    if device not in PRIOR_GOALS:
        return
    eager_goal, compile_goal, memory_goal = PRIOR_GOALS[device]
    rows = [r for r in results if r["op"] == "reparameterize_with_kl_normal"]
    for dtype in sorted({r["dtype"] for r in rows}):
        mine = [r for r in rows if r["dtype"] == dtype]
        name = f"sample + KL vs a prior fwd+bwd ({device}, {dtype})"
        vals = [r["speedup_vs_eager"] for r in mine if r["speedup_vs_eager"] is not None]
        if vals:
            _goal(out, f"prior_vs_eager_{dtype}", f"{name} >= {eager_goal}x eager, x", vals, eager_goal)
        vals = [r["speedup_vs_compile"] for r in mine if r["speedup_vs_compile"] is not None]
        if vals and compile_goal is not None:
            _goal(out, f"prior_vs_compile_{dtype}", f"{name} >= {compile_goal}x torch.compile, x", vals, compile_goal)
        mem = [r["peak_mem_mb"]["fused"] / r["peak_mem_mb"]["eager"] for r in mine
               if (r.get("peak_mem_mb") or {}).get("fused") is not None and (r["peak_mem_mb"].get("eager") or 0) > 0]
        if mem and memory_goal is not None:
            _goal(out, f"prior_memory_{dtype}", f"{name} peak memory <= {memory_goal}x eager's, ratio", mem,
                  memory_goal, at_most=True)


def lines(checked: Dict[str, Dict[str, object]]) -> List[str]:
    return [f"{g['text']}: measured {g['min']:.2f}..{g['max']:.2f} -> {'met' if g['met'] else 'NOT met'}"
            for g in checked.values()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="JSON reports to check")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is not met")
    args = parser.parse_args(argv)
    missed = 0
    for path in args.reports:
        with open(path) as f:
            checked = goals(json.load(f))
        print(f"{path}:" + ("" if checked else " no rows any goal speaks of"))
        for line in lines(checked):
            print(f"  {line}")
        missed += sum(not g["met"] for g in checked.values())
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
