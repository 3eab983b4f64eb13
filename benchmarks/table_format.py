"""Markdown pieces for benchmarks/tables.py: number formats, the one-line "where it ran", and one
section renderer per kind of report (``fastvae bench``, ``bench_host.py``, ``accuracy.py``,
``tools/check_torch.sh``, ``gpu_results.py``). A report is anything with ``path``, ``data``,
``env`` and ``time`` (tables.Report). Missing figures show as "–"; unknown fields are ignored.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

IMPLS = ("fused", "eager", "compile")
NONE = "–"


def torch_capability(env: Dict[str, Any]) -> str:
    """"default" when torch ran its kernels at the CPU's best ISA (or the report does not say),
    else the lowered capability (``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 CPU gives "AVX2")."""
    cap = env.get("torch_cpu_capability")
    if not cap:
        return "default"
    simd = (env.get("cpu") or {}).get("simd") or []
    best = "AVX512" if "avx512f" in simd else "AVX2" if "avx2" in simd else "DEFAULT"
    return "default" if str(cap).upper() == best else str(cap)


def num(v: Any, spec: str = ".3f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else NONE


def mib(v: Any) -> str:
    """Two decimals below 10 MiB (small cases would all read 0.0), one above."""
    return num(v, ".2f" if isinstance(v, (int, float)) and v < 10 else ".1f")


def ratio(base: Any, fused: Any) -> Optional[float]:
    """base / fused (> 1: fused is faster); None when either is missing."""
    ok = all(isinstance(v, (int, float)) and v > 0 for v in (base, fused))
    return base / fused if ok else None


def plural(n: Any, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def times(v: Optional[float]) -> str:
    return NONE if v is None else f"{v:.2f}×"


def table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def shape_str(shape: Any) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items()) if isinstance(shape, dict) else str(shape)


def where(report: Any) -> str:
    """Machine, threads, ISAs, versions, commit and time of a report, in one line."""
    env = report.env
    parts = [str(env.get("device") or "unknown device")]
    if env.get("device_type") == "cpu":
        rows = report.data.get("rows") or report.data.get("results") or [{}]
        threads = ((report.data.get("settings") or {}).get("threads") or rows[0].get("threads")
                   or env.get("cpu_threads") or env.get("threads"))
        parts.append(plural(threads, "thread") if threads else "threads not recorded")
        if env.get("fastvae_cpu_isa"):
            parts.append(f"fastvae kernels {env['fastvae_cpu_isa']}")
        cap = torch_capability(env)
        parts.append("torch kernels " + ("default ISA" if cap == "default" else cap))
    elif env.get("cuda"):
        parts.append(f"CUDA {env['cuda']}")
    parts.append(f"torch {env.get('torch', '?')}")
    parts.append(f"fastvae {env.get('fastvae_commit') or '?'}")
    parts.append(report.time or "time not recorded")
    return ", ".join(parts)


def _mark(row: Dict[str, Any], limit: float) -> str:
    load = row.get("other_load")
    return " †" if isinstance(load, (int, float)) and load > limit else ""


def op_row(row: Dict[str, Any], limit: float = 0.25) -> List[str]:
    """One result: times, ratios computed from the medians, peak memory, bandwidth."""
    ms, mem = row.get("median_ms") or {}, row.get("peak_mem_mb") or {}
    frac = row.get("fraction_of_copy")
    return [f"{row.get('op', '?')}{_mark(row, limit)}", shape_str(row.get("shape")), str(row.get("dtype")),
            *(num(ms.get(i)) for i in IMPLS),
            times(ratio(ms.get("eager"), ms.get("fused"))), times(ratio(ms.get("compile"), ms.get("fused"))),
            " / ".join(mib(mem.get(i)) for i in IMPLS),
            f"{num(row.get('fused_gbps'), '.1f')} ({num(frac * 100 if frac else None, '.0f')}%)"]


OP_HEAD = ("op", "shape", "dtype", "fused ms", "eager ms", "compile ms", "vs eager", "vs compile",
           "peak MiB fused / eager / compile", "fused GB/s (% of copy)")


def bench_section(report: Any) -> List[str]:
    lines = [f"#### `{report.path.name}`", "", f"{where(report)}.", ""]
    limit = (report.data.get("settings") or {}).get("max_other_load", 0.25)
    lines += table(OP_HEAD, [op_row(r, limit) for r in report.data.get("results") or []])
    if any(_mark(r, limit) for r in report.data.get("results") or []):
        lines += ["", "† other processes kept the machine busy while this row was timed, on every attempt."]
    if isinstance(report.data.get("copy_gbps"), (int, float)):
        lines += ["", f"Copy bandwidth in the same run (256 MiB `copy_`): {report.data['copy_gbps']:.1f} GB/s."]
    train = report.data.get("train") or []
    if train:
        lines += ["", "Training, Adam steps/s of the 784-400-20 MLP VAE (*compiled*: model + loss under "
                      "`torch.compile`):", ""]
        lines += table(("batch", "fused", "eager", "compiled, eager loss", "compiled, fused loss", "fused vs eager",
                        "compiled: fused vs eager loss"),
                       [[str(t.get("batch")), *(num(t.get(f"{k}_steps_per_s"), ".1f")
                                                for k in ("fused", "eager", "compile", "fused_compile")),
                         times(ratio(t.get("fused_steps_per_s"), t.get("eager_steps_per_s"))),
                         times(ratio(t.get("fused_compile_steps_per_s"), t.get("compile_steps_per_s")))]
                        for t in train])
    host = report.data.get("host") or {}
    if host.get("rows"):
        lines += ["", "Host cost of one whole-ELBO step, µs (one thread):", ""] + host_table(host)
    return lines


def host_table(host: Dict[str, Any]) -> List[str]:
    """Every ``*_us`` column the rows carry (the set of baselines may grow), interquartile ranges aside."""
    rows = host.get("rows") or []
    impls = [k[:-3] for k in (rows[0] if rows else {}) if k.endswith("_us") and not k.endswith("_iqr_us")]
    base = "eager" if "eager" in impls else (impls[1] if len(impls) > 1 else None)
    lines = table(["batch", *(f"{i} µs" for i in impls), *(f"{i} / {base}" for i in impls if i != base)],
                  [[str(r.get("batch")), *(num(r.get(f"{i}_us"), ".1f") for i in impls),
                    *(times(ratio(r.get(f"{i}_us"), r.get(f"{base}_us"))) for i in impls if i != base)]
                   for r in rows] if base else [])
    # Reports from before the lean baseline time fastvae.reference.elbo as "eager".
    baseline = host.get("baseline") or "fastvae.reference.elbo (reduction none, then sums and mean)"
    lines += ["", f"{baseline if baseline.startswith('eager:') else 'eager: ' + baseline}."]
    calls = (host.get("counts") or {}).get("calls")
    if calls:
        lines[-1] += (f" Fused step: {len(calls)} dispatcher calls ({', '.join(f'`{c}`' for c in calls)}), "
                      f"{host['counts'].get('syncs', NONE)} device-to-host syncs.")
    return lines


def host_section(report: Any) -> List[str]:
    return [f"#### `{report.path.name}`", "", f"{where(report)}.", ""] + host_table(report.data)


def accuracy_section(report: Any) -> List[str]:
    return [f"#### `{report.path.name}`", ""] + accuracy_table(report.data)


def accuracy_table(data: Dict[str, Any]) -> List[str]:
    """``accuracy.py``'s report: the largest error per op and dtype, and the long float32 rows."""
    lines = [f"{data.get('device', '?')}, torch {data.get('torch', '?')}. "
             f"{data.get('metric', '')}; largest error over forward and gradients.", ""]
    order = ("float32", "bfloat16", "float16", "float64")
    dtypes = sorted({d for per in data["errors"].values() for d in per},
                    key=lambda d: (order.index(d) if d in order else len(order), d))
    lines += table(["op", *dtypes],
                   [[op, *(num(max((v for v in (per.get(d) or {}).values() if isinstance(v, (int, float))),
                                   default=None), ".1e") for d in dtypes)]
                    for op, per in data["errors"].items()])
    long_rows = data.get("long_rows") or {}
    if long_rows:
        cols = sorted({c for per in long_rows.values() for c in per}, key=int)
        lines += ["", f"Long float32 rows, fastvae / torch ({data.get('long_rows_metric', '')}):", ""]
        lines += table(["op", *(f"{int(c):,} columns" for c in cols)],
                       [[op, *(f"{num((per.get(c) or {}).get('fastvae'), '.1e')} / "
                               f"{num((per.get(c) or {}).get('torch'), '.1e')}" for c in cols)]
                        for op, per in long_rows.items()])
    return lines


def torch_versions_section(report: Any) -> List[str]:
    lines = [f"#### `{report.path.name}`", "", f"{report.data.get('what', '')}. {report.data.get('machine', '')}.", ""]
    rows = []
    for run in report.data["runs"]:
        tests = run.get("tests") or {}
        rows.append([str(run.get("torch")), str(run.get("nvcc")), "yes" if run.get("cuda_built") else "no",
                     "ok" if run.get("build_ok") else "FAILED",
                     f"{tests.get('passed', NONE)} passed, {tests.get('failed', NONE)} failed, "
                     f"{tests.get('skipped', NONE)} skipped"])
    return lines + table(("torch", "nvcc", "CUDA kernels built", "build", "tests"), rows)


def _gpu_ms(row: Optional[Dict[str, Any]]) -> Optional[float]:
    return row.get("median_ms") if row else None


def _gpu_cell(row: Optional[Dict[str, Any]]) -> str:
    """A gpu_bench row's median, or why it has none."""
    if row is None:
        return NONE
    return "error" if row.get("error") else "skipped" if row.get("skipped") else num(_gpu_ms(row))


def gpu_check_section(report: Any) -> List[str]:
    """``gpu_results.py``'s report of a ``gpu_check.sh`` run: its stages, then per group of
    benchmark rows one table of (op, shape) against every implementation timed."""
    data = report.data
    tiny = " Tiny dry-run sizes: not a measurement." if (data.get("meta") or {}).get("tiny") else ""
    lines = [f"#### `{report.path.name}`", "", f"{where(report)}.{tiny}", ""]
    lines += [f"- {stage}" for stage in data.get("stages") or []]
    groups: Dict[str, Dict[tuple, Dict[str, Dict[str, Any]]]] = {}
    for row in data.get("bench") or []:
        case = (row.get("op", "?"), shape_str(row.get("shape")))
        groups.setdefault(str(row.get("group")), {}).setdefault(case, {})[str(row.get("impl"))] = row
    for group, cases in groups.items():
        impls = sorted({i for per in cases.values() for i in per},
                       key=lambda i: (IMPLS.index(i) if i in IMPLS else len(IMPLS), i))
        base = "fused" if "fused" in impls else impls[0]
        lines += ["", f"`{group}` rows, median ms, peak MiB; ratio = time / {base}'s:", ""]
        lines += table(["op", "shape", *(f"{i} ms" for i in impls), *(f"{i} / {base}" for i in impls if i != base),
                        "peak MiB " + " / ".join(impls)],
                       [[op, shape, *(_gpu_cell(per.get(i)) for i in impls),
                         *(times(ratio(_gpu_ms(per.get(i)), _gpu_ms(per.get(base)))) for i in impls if i != base),
                         " / ".join(mib((per.get(i) or {}).get("peak_mib")) for i in impls)]
                        for (op, shape), per in cases.items()])
    if isinstance(data.get("accuracy"), dict) and isinstance(data["accuracy"].get("errors"), dict):
        lines += ["", "Accuracy on this device:", ""] + accuracy_table(data["accuracy"])
    return lines


SECTIONS = (("bench", "Forward + backward of every op", bench_section),
            ("host", "Host cost of one whole-ELBO step (one thread)", host_section),
            ("accuracy", "Accuracy against float64", accuracy_section),
            ("torch_versions", "Torch versions", torch_versions_section),
            ("gpu_check", "GPU runs (benchmarks/gpu_check.sh)", gpu_check_section))
