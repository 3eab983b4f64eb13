"""Markdown tables from the JSON reports in benchmarks/results/ (`make bench-tables`).

    python benchmarks/tables.py            # rewrite the generated parts of the three files below
    python benchmarks/tables.py --check    # exit 1 when any of them is out of date

From the reports no newer one supersedes (`current`), writes the tables of ``benchmarks/README.md``
and the headline of ``README.md`` (the float32 ELBO rows of the newest report that has them),
each between its ``<!-- bench-tables:NAME -->`` markers, and ``benchmarks/results/INDEX.md``.
Reads what ``fastvae bench``, ``bench_host.py``, ``accuracy.py`` and ``tools/check_torch.sh``
write; fields it does not use are ignored, missing figures show as "–". Imports no fastvae code.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
IMPLS = ("fused", "eager", "compile")
NONE = "–"


@dataclass
class Report:
    """One file of results/: its parsed JSON and what kind of report it is."""

    path: Path
    data: Dict[str, Any] = field(repr=False)
    kind: str  # "bench", "host", "accuracy", "torch_versions" or "other"

    @property
    def env(self) -> Dict[str, Any]:
        """Where it ran: the report's ``environment``, or its top level for reports without one."""
        return self.data.get("environment") or self.data

    @property
    def time(self) -> str:
        """ISO time of the run: the report's own, else a date in the file name, else ""."""
        stamp = self.env.get("time")
        if stamp:
            return str(stamp)
        m = re.search(r"\d{4}-\d{2}-\d{2}", self.path.name)
        return m.group(0) if m else ""

    def variant(self) -> Tuple[str, str, str]:
        """Reports of one variant measure the same thing on the same machine: device type, device
        and, on CPU, the ISA of torch's own kernels (the eager baseline's)."""
        env = self.env
        kind = str(env.get("device_type") or "")
        cap = torch_capability(env) if kind == "cpu" else ""
        return kind, str(env.get("device") or ""), cap


def kind_of(data: Any) -> str:
    if not isinstance(data, dict):
        return "other"
    if isinstance(data.get("results"), list) and "environment" in data:
        return "bench"
    if isinstance(data.get("rows"), list) and "environment" in data:
        return "host"
    if isinstance(data.get("errors"), dict):
        return "accuracy"
    if isinstance(data.get("runs"), list):
        return "torch_versions"
    return "other"


def torch_capability(env: Dict[str, Any]) -> str:
    """"default" when torch ran its kernels at the CPU's best ISA (or the report does not say),
    else the lowered capability (``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 CPU gives "AVX2")."""
    cap = env.get("torch_cpu_capability")
    if not cap:
        return "default"
    simd = (env.get("cpu") or {}).get("simd") or []
    best = "AVX512" if "avx512f" in simd else "AVX2" if "avx2" in simd else "DEFAULT"
    return "default" if str(cap).upper() == best else str(cap)


def load_reports(results: Path) -> List[Report]:
    """Every ``*.json`` in ``results`` (unreadable ones as kind "other"), oldest first."""
    reports = []
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        reports.append(Report(path, data, kind_of(data)))
    return sorted(reports, key=lambda r: (r.time, r.path.name))


def _settings_set(report: Report, key: str) -> set:
    given = (report.data.get("settings") or {}).get(key)
    if given:
        return set(given)
    column = {"families": "family", "dtypes": "dtype"}[key]
    return {r.get(column) for r in report.data.get("results") or []}


def supersedes(newer: Report, old: Report) -> bool:
    """A newer report of the same kind and variant; for bench reports, one whose size families
    and dtypes include all of the old one's. Files of kind "other" are never superseded."""
    if newer is old or old.kind == "other" or newer.kind != old.kind:
        return False
    if newer.variant() != old.variant() or newer.time <= old.time:
        return False
    return old.kind != "bench" or all(_settings_set(old, k) <= _settings_set(newer, k) for k in ("families", "dtypes"))


def current(reports: Sequence[Report]) -> List[Report]:
    """The reports the tables show: those no other report supersedes."""
    return [r for r in reports if not any(supersedes(o, r) for o in reports)]


# ---------------------------------------------------------------- formatting
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


def where(report: Report) -> str:
    """Machine, threads, ISAs, versions, commit and time of a report, in one line."""
    env = report.env
    parts = [str(env.get("device") or "unknown device")]
    if env.get("device_type") == "cpu":
        rows = report.data.get("rows") or report.data.get("results") or [{}]
        threads = ((report.data.get("settings") or {}).get("threads") or rows[0].get("threads")
                   or env.get("cpu_threads"))
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


def bench_section(report: Report) -> List[str]:
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
    lines += ["", f"eager: {host.get('baseline') or 'fastvae.reference.elbo (reduction none, then sums and mean)'}."]
    calls = (host.get("counts") or {}).get("calls")
    if calls:
        lines[-1] += (f" Fused step: {len(calls)} dispatcher calls ({', '.join(f'`{c}`' for c in calls)}), "
                      f"{host['counts'].get('syncs', NONE)} device-to-host syncs.")
    return lines


def host_section(report: Report) -> List[str]:
    return [f"#### `{report.path.name}`", "", f"{where(report)}.", ""] + host_table(report.data)


def accuracy_section(report: Report) -> List[str]:
    data = report.data
    lines = [f"#### `{report.path.name}`", "", f"{data.get('device', '?')}, torch {data.get('torch', '?')}. "
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


def torch_versions_section(report: Report) -> List[str]:
    lines = [f"#### `{report.path.name}`", "", f"{report.data.get('what', '')}. {report.data.get('machine', '')}.", ""]
    rows = []
    for run in report.data["runs"]:
        tests = run.get("tests") or {}
        rows.append([str(run.get("torch")), str(run.get("nvcc")), "yes" if run.get("cuda_built") else "no",
                     "ok" if run.get("build_ok") else "FAILED",
                     f"{tests.get('passed', NONE)} passed, {tests.get('failed', NONE)} failed, "
                     f"{tests.get('skipped', NONE)} skipped"])
    return lines + table(("torch", "nvcc", "CUDA kernels built", "build", "tests"), rows)


SECTIONS = (("bench", "Forward + backward of every op", bench_section),
            ("host", "Host cost of one whole-ELBO step (one thread)", host_section),
            ("accuracy", "Accuracy against float64", accuracy_section),
            ("torch_versions", "Torch versions", torch_versions_section))


def full_tables(reports: Sequence[Report]) -> str:
    """Every current report's tables, newest first within a kind."""
    shown = current(reports)
    lines = [f"Generated by `make bench-tables` from {len(shown)} report(s) in `benchmarks/results/` "
             "(newest first; superseded reports are left out). Median ms of forward + backward; "
             "vs X = X's time / fused time (> 1: fused faster); peak = extra memory of one forward + backward."]
    for kind, title, render in SECTIONS:
        mine = [r for r in reversed(shown) if r.kind == kind]
        if mine:
            lines += ["", f"### {title}"]
            for r in mine:
                lines += [""] + render(r)
    return "\n".join(lines)


def headline_source(reports: Sequence[Report]) -> Optional[Report]:
    """The newest current bench report with float32 ELBO rows timed fused, eager and compiled."""
    def usable(r: Report) -> bool:
        return any(row.get("op", "").startswith("elbo") and row.get("dtype") == "float32"
                   and all((row.get("median_ms") or {}).get(i) for i in IMPLS) for row in r.data["results"])
    found = [r for r in current(reports) if r.kind == "bench" and usable(r)]
    return found[-1] if found else None


def headline(reports: Sequence[Report]) -> str:
    report = headline_source(reports)
    if report is None:
        return "No report with float32 ELBO rows yet."
    rows = [[f"{r.get('family', '')} {shape_str(r.get('shape'))}" + ("" if r["op"] == "elbo" else f" ({r['op']})"),
             *op_row(r)[3:9]] for r in report.data["results"]
            if r.get("op", "").startswith("elbo") and r.get("dtype") == "float32"]
    lines = table(("whole negative ELBO, float32", *OP_HEAD[3:9]), rows)
    note = f"{where(report)}; `benchmarks/results/{report.path.name}`."
    cap = torch_capability(report.env) if report.env.get("device_type") == "cpu" else "default"
    if cap != "default":
        note += (f" torch's own CPU kernels ran at {cap} (`ATEN_CPU_CAPABILITY`), its faster eager baseline "
                 "on this CPU ([why](benchmarks/README.md#method)).")
    if not any(r.kind == "bench" and r.env.get("device_type") == "cuda" for r in reports):
        note += " No GPU run has been made yet, so no CUDA speed is claimed."
    lines += ["", note]
    plot = report.path.with_suffix(".png")
    if plot.is_file():  # the speed-up plot fastvae bench draws beside its report
        lines += ["", f"![Speed-up of every fused op over eager and over torch.compile, against problem size]"
                      f"(benchmarks/results/{plot.name})"]
    return "\n".join(lines)


def index(results: Path, reports: Sequence[Report]) -> str:
    """INDEX.md: every file of results/, what it is and where and when it was measured."""
    shown = {r.path.name for r in current(reports)}
    by_name = {r.path.name: r for r in reports}
    lines = ["# benchmarks/results", "",
             "Generated by `make bench-tables` (`benchmarks/tables.py`). *cited*: shown in the tables of "
             "`benchmarks/README.md`; a `.png` is the speed-up plot `fastvae bench` draws beside its report.", ""]
    rows = []
    for path in sorted(p for p in results.iterdir() if p.is_file() and p.name != "INDEX.md"):
        r = by_name.get(path.name) or by_name.get(path.with_suffix(".json").name)
        if r is None:
            rows.append([f"`{path.name}`", "not a report", NONE, NONE, NONE, NONE, ""])
            continue
        what, env = (describe(r) if path.suffix == ".json" else f"plot of `{r.path.name}`"), r.env
        machine = env.get("device") or ", ".join(p.strip() for p in str(env.get("machine", "")).split(",")[:2])
        rows.append([f"`{path.name}`", what, str(machine or NONE), str(env.get("torch") or NONE),
                     str(env.get("fastvae_commit") or NONE), r.time[:10] or NONE,
                     "yes" if r.path.name in shown else ""])
    return "\n".join(lines + table(("file", "what", "machine", "torch", "commit", "date", "cited"), rows)) + "\n"


def describe(r: Report) -> str:
    if r.kind == "bench":
        s = r.data.get("settings") or {}
        cap = torch_capability(r.env)
        parts = [", ".join(sorted(_settings_set(r, "families"))), "/".join(s.get("dtypes") or []),
                 plural(len(r.data["results"]), "row"), "impls " + "/".join(s.get("impls") or IMPLS),
                 s.get("threads") and plural(s["threads"], "thread"), cap != "default" and f"torch kernels {cap}",
                 bool(r.data.get("train")) and "training", bool((r.data.get("host") or {}).get("rows")) and "host cost"]
        return "`fastvae bench`: " + ", ".join(p for p in parts if p)
    return {"host": "`bench_host.py`: host cost of the whole-ELBO step",
            "accuracy": "`accuracy.py`: error against float64, every op and dtype, long rows",
            "torch_versions": "`tools/check_torch.sh`: build and tests per torch release"}.get(r.kind, "not a known report")


# ---------------------------------------------------------------- files
def splice(text: str, name: str, body: str) -> str:
    """``text`` with the part between ``<!-- bench-tables:NAME -->`` and ``<!-- /bench-tables:NAME -->`` replaced."""
    begin, end = f"<!-- bench-tables:{name} -->", f"<!-- /bench-tables:{name} -->"
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"markers {begin} ... {end} not found")
    return text[: i + len(begin)] + "\n" + body.strip("\n") + "\n" + text[j:]


def outputs(root: Path) -> Dict[Path, str]:
    """Each generated file's new content."""
    results = root / "benchmarks" / "results"
    reports = load_reports(results)
    readme, bench_readme = root / "README.md", root / "benchmarks" / "README.md"
    return {readme: splice(readme.read_text(), "headline", headline(reports)),
            bench_readme: splice(bench_readme.read_text(), "full", full_tables(reports)),
            results / "INDEX.md": index(results, reports)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report files that are out of date (exit 1)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this script's)")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs(args.root).items():
        old = path.read_text() if path.exists() else None
        if old != text:
            stale.append(os.path.relpath(path, args.root))
            if not args.check:
                path.write_text(text)
    verb = "out of date" if args.check else "rewrote"
    print(f"tables.py: {verb}: {', '.join(stale)}" if stale else "tables.py: up to date")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
