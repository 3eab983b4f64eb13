"""What the benchmarks report: a result per case, the environment it was measured in, the method,
and the JSON report (schema ``fastvae-bench/2``) that ``fastvae bench --out`` writes and
``benchmarks/tables.py`` turns into tables. Speed-up = median(baseline) / median(fused), so > 1
means fused is faster.

Bandwidth: minimum bytes the op must move (each input read once, each gradient and output written
once, each upstream gradient read once) over the fused median, next to the bandwidth of a plain
``copy_`` of a 256 MiB buffer measured in the same run. It only means something for cases far
larger than the caches.
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import torch

from .. import _extension
from .cases import IMPLS, Case
from .timing import peak_memory_mb, time_interleaved

SCHEMA = "fastvae-bench/2"


@dataclass
class Result:
    op: str
    family: str
    shape: Dict[str, int]
    dtype: str
    elements: int
    min_bytes: int
    median_ms: Dict[str, Optional[float]]
    iqr_ms: Dict[str, Optional[float]]
    min_ms: Dict[str, Optional[float]]
    first_call_ms: Dict[str, Optional[float]]
    peak_mem_mb: Dict[str, Optional[float]]
    speedup_vs_eager: Optional[float]
    speedup_vs_compile: Optional[float]
    fused_gbps: Optional[float]
    fraction_of_copy: Optional[float]
    other_load: Optional[float] = None  # CPU cores other processes used while it was timed
    attempts: int = 1  # timing attempts (re-timed while other processes were busy)


def speedup(baseline_ms: Optional[float], fused_ms: Optional[float]) -> Optional[float]:
    """time(baseline) / time(fused): above 1 the fused op is faster; None when either is missing."""
    if baseline_ms is None or fused_ms is None or fused_ms <= 0:
        return None
    return baseline_ms / fused_ms


def run_case(case: Case, device: torch.device, impls: Sequence[str] = IMPLS, repeats: int = 15,
             warmup: int = 3, min_time_s: float = 0.0, memory: bool = True,
             copy_gbps: Optional[float] = None, retries: int = 0, max_other_load: float = 0.25) -> Result:
    """Times (and measures the memory of) every implementation in ``impls`` on one case."""
    unknown = set(impls) - set(IMPLS)
    if unknown:
        raise ValueError(f"impls must be drawn from {IMPLS}, got {sorted(unknown)}")
    fns = {impl: case.make(impl) for impl in IMPLS if impl in impls}
    t = time_interleaved(fns, device, warmup, repeats, min_time_s, retries=retries, max_other_load=max_other_load)
    mem = {impl: peak_memory_mb(fn, device) if memory else None for impl, fn in fns.items()}
    pick = lambda d: {impl: d.get(impl) for impl in IMPLS}  # noqa: E731  (None for skipped impls)
    fused = t.median.get("fused")
    gbps = case.min_bytes / (fused * 1e-3) / 1e9 if fused else None
    return Result(
        case.op, case.family, case.shape, case.dtype, case.elements, case.min_bytes,
        pick(t.median), pick(t.iqr), pick(t.min), pick(t.first), pick(mem),
        speedup(t.median.get("eager"), fused), speedup(t.median.get("compile"), fused),
        gbps, gbps / copy_gbps if gbps and copy_gbps else None,
        t.other_load, t.attempts,
    )



def _cpu_info() -> Dict[str, object]:
    info: Dict[str, object] = {"model": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name"):
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
            break
    return info


def _git_commit() -> Optional[str]:
    try:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> Dict[str, object]:
    """Where and with what the figures were measured."""
    cpu = _cpu_info()
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu["model"],
        "device_type": device.type,
        "cpu": cpu,
        "cpu_threads": torch.get_num_threads(),
        # The vector ISA of torch's own CPU kernels, the eager baseline's (ATEN_CPU_CAPABILITY
        # lowers it): on some CPUs an op is faster in torch's AVX2 kernel than in its AVX-512 one.
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fastvae_cpu_isa": _extension.CPU_ISA,
        "fastvae_cpu_threads_used": _extension._C.parallel_threads(torch.get_num_threads()),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fastvae_commit": _git_commit(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


METHOD = {
    "timing": "forward + backward of the same inputs; first call timed apart; warm-up; then "
              "round-robin rounds over the implementations; median per implementation "
              "(CUDA: CUDA events; CPU: perf_counter)",
    "speedup": "median(baseline) / median(fused); > 1 means fused is faster",
    "disturbance": "other_load: CPU cores other processes kept busy while a case was timed (/proc/stat "
                   "busy time minus this process's CPU time, over wall time); above max_other_load "
                   "the case is timed again, up to retries times, keeping the least disturbed attempt",
    "compile": "torch.compile(reference), default mode, torch._dynamo.reset() before each case",
    "memory_cuda": "torch.cuda.max_memory_allocated during one forward + backward minus memory_allocated before",
    "memory_cpu": "torch.profiler(profile_memory=True) during one forward + backward: peak of the "
                  "running sum of CPU allocator allocations and frees",
    "bandwidth": "min_bytes (inputs read once, gradients and outputs written once, upstream "
                 "gradients read once) / fused median; copy_gbps: dst.copy_(src) of 256 MiB, read + write",
    "train": "Adam steps/s (median, losses interleaved round-robin) of "
             "fastvae.build_mlp_vae(784, (400,), 20) on random binary data, loss VAE.loss(impl='fused') or "
             "VAE.loss(impl='reference') (the same model's loss written with fastvae.reference); compile and fused_compile run the "
             "whole objective (model + loss) under torch.compile",
}


# ---------------------------------------------------------------- printed lines
def _shape_str(shape: Dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def _fmt(v: Optional[float], spec: str = ".3f", none: str = "–") -> str:
    return format(v, spec) if v is not None else none


def _fmt_mb(v: Optional[float]) -> str:
    """MiB with two decimals below 10 MiB (small cases would all read 0.0), one above."""
    return _fmt(v, ".2f" if v is not None and v < 10 else ".1f")


def format_row(r: Dict[str, object]) -> str:
    """One printed line of a result."""
    ms = " ".join(f"{k} {_fmt(v)}" for k, v in r["median_ms"].items())
    mem = "/".join(_fmt_mb(v) for v in r["peak_mem_mb"].values())
    return (f"{r['op']:28s} {_shape_str(r['shape']):22s} {r['dtype']:8s} ms: {ms} | "
            f"x{_fmt(r['speedup_vs_eager'], '.2f')} vs eager, x{_fmt(r['speedup_vs_compile'], '.2f')} vs compile "
            f"| peak MiB f/e/c {mem}{_disturbed_note(r)}")


def _disturbed_note(r: Dict[str, object], limit: float = 0.25) -> str:
    load = r.get("other_load")
    if load is None or load <= limit:
        return ""
    return f" | DISTURBED: other processes used {load:.2f} cores ({r.get('attempts', 1)} attempts)"


def format_train_row(row: Dict[str, object]) -> str:
    parts = ", ".join(f"{k.replace('_steps_per_s', '')} {v:.1f}" for k, v in row.items() if k.endswith("_steps_per_s"))
    return (f"train 784-400-20 batch {row['batch']}: steps/s {parts}; fused x{_fmt(row.get('speedup_vs_eager'), '.2f')} "
            f"vs eager, x{_fmt(row.get('speedup_vs_compile'), '.2f')} vs compile; compiled fused "
            f"x{_fmt(row.get('fused_compile_vs_compile'), '.2f')} vs compiled reference")


def make_report(env: Dict[str, object], settings: Dict[str, object], results: Sequence[Result],
                train: Sequence[Dict[str, object]], host: Optional[Dict[str, object]],
                copy_gbps: Optional[float]) -> Dict[str, object]:
    """The JSON report of one ``fastvae bench`` run (schema ``SCHEMA``)."""
    return {
        "schema": SCHEMA,
        "environment": env,
        "settings": settings,
        "method": METHOD,
        "copy_gbps": copy_gbps,
        "results": [asdict(r) for r in results],
        "train": list(train),
        "host": host,
    }
