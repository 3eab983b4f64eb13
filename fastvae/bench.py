"""Benchmarks: fused ops vs the eager reference vs the reference under torch.compile.

Each case times forward + backward of the same inputs for the three implementations in one run
(warm-up, then the median of repeats; CUDA timed with events), and reports speed-ups against eager
and compile, the peak memory of forward + backward (CUDA: ``max_memory_allocated``; not measured
on CPU, where torch keeps no allocator statistics) and, on CUDA, the achieved bandwidth over the
minimum bytes the fused op must move next to a device-to-device copy measured in the same run.
``train`` cases time optimiser steps of the classic 784-400-20 MNIST VAE with each loss.

    fastvae bench [--quick] [--large] [--dtype float32 bfloat16] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from . import functional as F
from . import reference as R

IMPLS = ("fused", "eager", "compile")


@dataclass
class Case:
    """One benchmark: ``make(impl)`` returns a closure running forward + backward once."""

    op: str
    shape: Dict[str, int]
    dtype: str
    make: Callable[[str], Callable[[], None]] = field(repr=False)
    min_bytes: int = 0  # bytes the fused forward + backward must read and write at least


@dataclass
class Result:
    op: str
    shape: Dict[str, int]
    dtype: str
    median_ms: Dict[str, Optional[float]]
    peak_mem_mb: Dict[str, Optional[float]]
    speedup_vs_eager: Optional[float]
    speedup_vs_compile: Optional[float]
    fused_gbps: Optional[float] = None


# ---------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], None], device: torch.device, warmup: int = 5, repeats: int = 15) -> float:
    """Median wall time of fn in milliseconds (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_memory_mb(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    """Peak CUDA memory above what was allocated before one call of fn; None on CPU."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def copy_bandwidth_gbps(nbytes: int, device: torch.device) -> Optional[float]:
    """Device-to-device copy bandwidth (read + write) for a buffer of nbytes, on CUDA."""
    if device.type != "cuda":
        return None
    src = torch.empty(max(nbytes // 2, 1), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


# ---------------------------------------------------------------- cases
def _leaf(shape, dtype, device, scale=1.0):
    return (torch.randn(shape, device=device) * scale).to(dtype).requires_grad_()


def _backward(loss_fn: Callable[[], torch.Tensor], leaves: Sequence[torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        loss_fn().backward()
        for t in leaves:
            t.grad = None

    return run


def _impl(impl: str, fused: Callable, eager: Callable) -> Callable:
    if impl == "fused":
        return fused
    if impl == "eager":
        return eager
    return torch.compile(eager)


def elbo_case(b: int, d: int, z: int, dtype: torch.dtype, device: torch.device) -> Case:
    """Sample z, KL and Bernoulli likelihood, forward and backward (decoder output given)."""
    recon, mu, lv = _leaf((b, d), dtype, device, 3.0), _leaf((b, z), dtype, device), _leaf((b, z), dtype, device)
    x = (torch.rand(b, d, device=device) > 0.5).to(dtype)

    def fused():
        zz = F.reparameterize(mu, lv)
        return F.elbo(recon, x, mu, lv) + zz.float().mean() * 1e-3

    def eager():
        zz = R.reparameterize(mu, lv)
        return R.elbo(recon, x, mu, lv) + zz.float().mean() * 1e-3

    esize = torch.finfo(dtype).bits // 8
    min_bytes = esize * (b * d * 4 + b * z * 8)  # fwd: recon, x; bwd: saved grad in, grad out
    return Case("elbo", {"B": b, "D": d, "Z": z}, str(dtype).replace("torch.", ""),
                lambda impl: _backward(_impl(impl, fused, eager), [recon, mu, lv]), min_bytes)


def op_cases(b: int, d: int, dtype: torch.dtype, device: torch.device) -> List[Case]:
    """One case per fused op, forward + backward on (B, D)."""
    a, c, e = (_leaf((b, d), dtype, device) for _ in range(3))
    xb = (torch.rand(b, d, device=device) > 0.5).to(dtype)
    esize = torch.finfo(dtype).bits // 8
    n = b * d * esize
    dname = str(dtype).replace("torch.", "")
    shape = {"B": b, "D": d}
    specs = [
        ("bernoulli_log_likelihood", lambda: F.bernoulli_log_likelihood(a, xb).sum(),
         lambda: R.bernoulli_log_likelihood(a, xb).sum(), [a], 4 * n),
        ("gaussian_log_likelihood", lambda: F.gaussian_log_likelihood(a, c, e).sum(),
         lambda: R.gaussian_log_likelihood(a, c, e).sum(), [a, c, e], 7 * n),
        ("kl_standard_normal", lambda: F.kl_standard_normal(a, e).sum(),
         lambda: R.kl_standard_normal(a, e).sum(), [a, e], 6 * n),
        ("gaussian_log_density", lambda: F.gaussian_log_density(a, c, e).sum(),
         lambda: R.gaussian_log_density(a, c, e).sum(), [a, c, e], 9 * n),
        ("standard_normal_log_density", lambda: F.standard_normal_log_density(a).sum(),
         lambda: R.standard_normal_log_density(a).sum(), [a], 3 * n),
        ("reparameterize", lambda: F.reparameterize(a, e).sum(),
         lambda: R.reparameterize(a, e).sum(), [a, e], 7 * n),
    ]
    return [
        Case(name, shape, dname, (lambda f, r, leaves: lambda impl: _backward(_impl(impl, f, r), leaves))(f, r, leaves), mb)
        for name, f, r, leaves, mb in specs
    ]


def run_case(case: Case, device: torch.device, impls: Sequence[str], repeats: int) -> Result:
    ms: Dict[str, Optional[float]] = {}
    mem: Dict[str, Optional[float]] = {}
    for impl in IMPLS:
        if impl not in impls:
            ms[impl] = mem[impl] = None
            continue
        fn = case.make(impl)
        ms[impl] = time_ms(fn, device, repeats=repeats)
        mem[impl] = peak_memory_mb(fn, device)
    fused = ms["fused"]

    def ratio(other: Optional[float]) -> Optional[float]:
        return other / fused if other and fused else None

    gbps = case.min_bytes / (fused * 1e-3) / 1e9 if device.type == "cuda" and fused else None
    return Result(case.op, case.shape, case.dtype, ms, mem, ratio(ms["eager"]), ratio(ms["compile"]), gbps)


# ---------------------------------------------------------------- end to end
def train_steps_per_second(batch: int, loss_impl: str, device: torch.device, steps: int = 30) -> float:
    """Adam steps per second of the 784-400-20 MLP VAE on random binary data."""
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Linear(784, 400), torch.nn.ReLU(), torch.nn.Linear(400, 40)).to(device)
    dec = torch.nn.Sequential(torch.nn.Linear(20, 400), torch.nn.ReLU(), torch.nn.Linear(400, 784)).to(device)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
    x = (torch.rand(batch, 784, device=device) > 0.5).float()

    def loss_fused():
        mu, lv = enc(x).chunk(2, dim=-1)
        return F.elbo(dec(F.reparameterize(mu, lv)), x, mu, lv)

    def loss_eager():
        mu, lv = enc(x).chunk(2, dim=-1)
        return R.elbo(dec(R.reparameterize(mu, lv)), x, mu, lv)

    loss_fn = {"fused": loss_fused, "eager": loss_eager, "compile": torch.compile(loss_eager)}[loss_impl]

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    ms = time_ms(step, device, warmup=5, repeats=steps)
    return 1e3 / ms


# ---------------------------------------------------------------- driver
def environment(device: torch.device) -> Dict[str, object]:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def default_sizes(device: torch.device, quick: bool, large: bool) -> Dict[str, List]:
    mnist = [(128, 784, 20), (1024, 784, 20), (4096, 784, 64)]
    ops = [(1024, 784), (65536, 64), (256, 3 * 64 * 64)]
    if quick:
        mnist, ops = [(128, 784, 20), (1024, 784, 20)], [(1024, 784)]
    if large:
        mnist = mnist + [(131072, 784, 64)]  # B*D >= 1e8
        ops = ops + [(131072, 784)]
    return {"elbo": mnist, "ops": ops}


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Runs the benchmarks named by args, prints a table, writes JSON and a plot."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    impls = [i for i in IMPLS if not (i == "compile" and args.no_compile)]
    sizes = default_sizes(device, args.quick, args.large)
    results: List[Result] = []
    for dname in args.dtype:
        dtype = getattr(torch, dname)
        cases = [elbo_case(b, d, z, dtype, device) for b, d, z in sizes["elbo"]]
        if not args.elbo_only:
            for b, d in sizes["ops"]:
                cases += op_cases(b, d, dtype, device)
        for case in cases:
            res = run_case(case, device, impls, args.repeats)
            results.append(res)
            print(_row(res), flush=True)
    train = []
    if not args.no_train:
        for batch in (128, 1024):
            row = {"batch": batch}
            for impl in impls:
                row[f"{impl}_steps_per_s"] = train_steps_per_second(batch, impl, device)
            train.append(row)
            print(f"train 784-400-20 batch {batch}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k != "batch"))
    report = {
        "environment": environment(device),
        "copy_gbps": copy_bandwidth_gbps(256 * 2**20, device),
        "method": "median of repeats after warm-up; forward+backward; speedup = time(other)/time(fused)",
        "results": [asdict(r) for r in results],
        "train": train,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
        if args.plot:
            plot(report, args.out.rsplit(".", 1)[0] + ".png")
    return report


def _row(r: Result) -> str:
    shape = "x".join(f"{k}{v}" for k, v in r.shape.items())
    ms = " ".join(f"{k} {v:.3f}ms" if v is not None else f"{k} -" for k, v in r.median_ms.items())
    sp = f"x{r.speedup_vs_eager:.2f} vs eager" if r.speedup_vs_eager else ""
    sc = f", x{r.speedup_vs_compile:.2f} vs compile" if r.speedup_vs_compile else ""
    return f"{r.op:28s} {shape:18s} {r.dtype:9s} {ms}  {sp}{sc}"


def markdown_table(report: Dict[str, object]) -> str:
    """The README's performance table, from a saved report."""
    env = report["environment"]
    lines = [
        f"Measured on {env['device']} ({env['device_type']}, {env['cpu_threads']} threads), torch {env['torch']}, {env['time']}.",
        "",
        "| op | shape | dtype | fused ms | eager ms | compile ms | vs eager | vs compile |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        m = r["median_ms"]
        fmt = lambda v: f"{v:.3f}" if v is not None else "–"  # noqa: E731
        rat = lambda v: f"{v:.2f}×" if v is not None else "–"  # noqa: E731
        shape = " ".join(f"{k}={v}" for k, v in r["shape"].items())
        lines.append(f"| {r['op']} | {shape} | {r['dtype']} | {fmt(m['fused'])} | {fmt(m['eager'])} | "
                     f"{fmt(m['compile'])} | {rat(r['speedup_vs_eager'])} | {rat(r['speedup_vs_compile'])} |")
    for t in report.get("train", []):
        parts = ", ".join(f"{k.replace('_steps_per_s', '')} {v:.1f}" for k, v in t.items() if k != "batch")
        lines.append(f"\nTraining steps/s, 784-400-20 MLP VAE, batch {t['batch']}: {parts}.")
    return "\n".join(lines)


def plot(report: Dict[str, object], path: str) -> None:
    """Speed-up of the fused ops over eager, against problem size, one line per op and dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: Dict[str, List] = {}
    for r in report["results"]:
        if r["speedup_vs_eager"] is None:
            continue
        series.setdefault(f"{r['op']} ({r['dtype']})", []).append((math.prod(r["shape"].values()), r["speedup_vs_eager"]))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("elements (product of the shape)")
    ax.set_ylabel("speed-up vs eager (fwd+bwd)")
    env = report["environment"]
    ax.set_title(f"fastvae vs eager PyTorch on {env['device_type']} ({env['device']})", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16", "float64"],
                        help="input dtypes to benchmark")
    parser.add_argument("--quick", action="store_true", help="a few small sizes only (CI-sized)")
    parser.add_argument("--large", action="store_true", help="add the B*D >= 1e8 cases (minutes on a CPU)")
    parser.add_argument("--elbo-only", action="store_true", help="only the whole-ELBO cases")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--no-train", action="store_true", help="skip the end-to-end training steps")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per case (median reported)")
    parser.add_argument("--out", default=None, help="write the JSON report here (and a .png plot next to it)")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="do not draw the plot")


def command(args: argparse.Namespace) -> int:
    """``fastvae bench``: runs the benchmarks; the exit status."""
    run(args)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
