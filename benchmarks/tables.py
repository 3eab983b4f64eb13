"""Markdown tables from the JSON reports in benchmarks/results/ (`make bench-tables`).

    python benchmarks/tables.py            # rewrite the generated parts of the three files below
    python benchmarks/tables.py --check    # exit 1 when any of them is out of date

From the reports no newer one supersedes (`current`), writes the tables of ``benchmarks/README.md``
and the headline of ``README.md`` (the float32 ELBO rows of the newest report that has them),
each between its ``<!-- bench-tables:NAME -->`` markers, and ``benchmarks/results/INDEX.md``.
Reads what ``fastvae bench``, ``bench_host.py``, ``accuracy.py``, ``tools/check_torch.sh`` and
``gpu_results.py`` write; fields it does not use are ignored, missing figures show as "–". Imports no fastvae code.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # table_format, beside this file
from table_format import IMPLS, NONE, OP_HEAD, SECTIONS, op_row, plural, shape_str, table, torch_capability, where  # noqa: E402


@dataclass
class Report:
    """One file of results/: its parsed JSON and what kind of report it is."""

    path: Path
    data: Dict[str, Any] = field(repr=False)
    kind: str  # "bench", "host", "accuracy", "torch_versions", "gpu_check" or "other"

    @property
    def env(self) -> Dict[str, Any]:
        """Where it ran: the report's ``environment``, or its top level for reports without one
        (with, for ``gpu_results.py``'s, the benchmark's meta row)."""
        if self.kind == "gpu_check":
            meta = self.data.get("meta") or {}
            return {**meta, "device": self.data.get("device") or meta.get("device"), "torch": self.data.get("torch"),
                    "device_type": "cuda" if str(meta.get("device", "cuda")).startswith("cuda") else "cpu"}
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
    if data.get("kind") == "gpu_check":
        return "gpu_check"
    if isinstance(data.get("results"), list) and "environment" in data:
        return "bench"
    if isinstance(data.get("rows"), list) and "environment" in data:
        return "host"
    if isinstance(data.get("errors"), dict):
        return "accuracy"
    if isinstance(data.get("runs"), list):
        return "torch_versions"
    return "other"


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
    if not any(r.kind in ("bench", "gpu_check") and r.env.get("device_type") == "cuda" for r in reports):
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
    if r.kind == "gpu_check":
        tiny = ", tiny dry-run sizes" if r.env.get("tiny") else ""
        return (f"`gpu_check.sh` via `gpu_results.py`: {plural(len(r.data.get('stages') or []), 'stage')}, "
                f"{plural(len(r.data.get('bench') or []), 'benchmark row')}{tiny}")
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
