"""Turn the files benchmarks/gpu_check.sh left in $OUT into a committed report and a markdown table.

    python benchmarks/gpu_results.py FOLDER [--results benchmarks/results] [--table PATH]

FOLDER is what the device call returned (env.txt, summary.txt, bench-*.jsonl, accuracy-*.json,
logs). Writes ``<results>/gpu-<date>-<device>.json`` (the stage summary, the environment, the
accuracy table and every benchmark row with its device, torch version, sizes, medians and peak
memory) and ``<results>/gpu-TABLE.md`` (or --table), and prints the table, so that no device
time goes to formatting.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

IMPLS = ("fused", "eager", "compile")


def read_rows(folder: str) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """(meta, rows) of the benchmark's JSON-lines file(s); a line cut by a kill is skipped."""
    meta: Dict[str, Any] = {}
    rows: List[Dict[str, Any]] = []
    for path in sorted(glob.glob(os.path.join(folder, "bench-*.jsonl"))):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("kind") == "meta":
                    meta = row
                elif row.get("kind") == "row":
                    rows.append(row)
    return meta, rows


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def build_report(folder: str) -> Dict[str, Any]:
    """Everything the folder holds, as one JSON-able dict."""
    if not os.path.isdir(folder):
        raise ValueError(f"folder {folder!r} is not a directory")
    meta, rows = read_rows(folder)
    summary = (_read(os.path.join(folder, "summary.txt")) or "").splitlines()
    accuracy = None
    for path in sorted(glob.glob(os.path.join(folder, "accuracy-*.json"))):
        try:
            with open(path) as f:
                accuracy = json.load(f)
        except (OSError, json.JSONDecodeError):
            accuracy = {"error": f"unreadable {os.path.basename(path)}"}
    if not (meta or rows or summary or accuracy):
        raise ValueError(f"folder {folder!r} holds no gpu_check.sh results")
    env = _read(os.path.join(folder, "env.txt")) or ""
    # The kit's COMMIT file heads env.txt's kit section: the commit the measured kernels came from.
    kit = re.search(r"^== kit\n([0-9a-f]{40})$", env, re.M)
    if kit and "fastvae_commit" not in meta:
        meta = {**meta, "fastvae_commit": kit.group(1)[:7]}
    return {
        "kind": "gpu_check",
        "device": meta.get("gpu") or meta.get("device") or (accuracy or {}).get("device"),
        "torch": meta.get("torch") or (accuracy or {}).get("torch"),
        "meta": meta,
        "stages": [line for line in summary if line.startswith("stage ")],
        "summary": summary,
        "env": env[:20000],
        "accuracy": accuracy,
        "bench": rows,
    }


def _key(row: Dict[str, Any]) -> Tuple[str, str, str]:
    shape = ", ".join(f"{k}={v}" for k, v in row.get("shape", {}).items())
    return row["group"], row["op"], shape


def _ms(row: Optional[Dict[str, Any]]) -> str:
    if row is None:
        return ""
    if "error" in row:
        return "error"
    if "skipped" in row:
        return "skipped"
    return f"{row['median_ms']:.4g}"


def _ratio(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> str:
    if not a or not b or "median_ms" not in a or "median_ms" not in b or a["median_ms"] <= 0:
        return ""
    return f"{b['median_ms'] / a['median_ms']:.2f}x"


def _mib(row: Optional[Dict[str, Any]]) -> str:
    return f"{row['peak_mib']:.1f}" if row and "peak_mib" in row else "-"


def markdown(report: Dict[str, Any]) -> str:
    """The stage lines, then one table row per (group, op, shape): fused vs eager vs compile."""
    meta = report["meta"]
    lines = [f"# GPU check: {report['device']}, torch {report['torch']}, "
             f"{meta.get('time', 'time unknown')}{' (tiny dry-run sizes)' if meta.get('tiny') else ''}", ""]
    lines += [f"- {line}" for line in report["stages"]] + [""]
    cases: Dict[Tuple[str, str, str], Dict[str, Dict[str, Any]]] = {}
    other: List[Dict[str, Any]] = []
    for row in report["bench"]:
        impl = row["impl"]
        if row["group"] in ("copy", "host"):
            other.append(row)
            continue
        cases.setdefault(_key(row), {})[impl] = row
    if other:
        lines += ["| measure | impl | shape | median ms | note |", "| --- | --- | --- | --- | --- |"]
        lean = next((r for r in other if r["group"] == "host" and r["impl"] == "eager_lean"), None)
        for row in other:
            note = ""
            if row["group"] == "copy" and "median_ms" in row:
                note = f"{2 * row['shape']['bytes'] / row['median_ms'] / 1e6:.3g} GB/s (read + write)"
            elif row["group"] == "host" and row is not lean and lean and "median_ms" in row and "median_ms" in lean:
                note = f"{row['median_ms'] / lean['median_ms']:.2f}x the leanest eager loss"
            lines.append(f"| {row['group']} {row['op']} | {row['impl']} | {_key(row)[2]} | {_ms(row)} | {note} |")
        lines.append("")
    if cases:
        lines += ["| group | op | shape | fused ms | eager ms | compile ms | eager / fused | compile / fused "
                  "| peak MiB fused / eager |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for (group, op, shape), impls in cases.items():
            fused, eager = impls.get("fused"), impls.get("eager")
            compiled = impls.get("compile")
            extra = {k: v for k, v in impls.items() if k not in IMPLS}
            lines.append(f"| {group} | {op} | {shape} | {_ms(fused)} | {_ms(eager)} | {_ms(compiled)} "
                         f"| {_ratio(fused, eager)} | {_ratio(fused, compiled)} | {_mib(fused)} / {_mib(eager)} |")
            for name, row in extra.items():
                lines.append(f"| {group} | {op} ({name}) | {shape} | {_ms(row)} | | | | {_ratio(row, eager)} "
                             f"| {_mib(row)} |")
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "unknown"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the files gpu_check.sh wrote ($OUT)")
    parser.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                        help="where the JSON report goes (default: benchmarks/results)")
    parser.add_argument("--table", default=None, help="markdown file (default: <results>/gpu-TABLE.md)")
    args = parser.parse_args(argv)
    try:
        report = build_report(args.folder)
    except ValueError as err:
        print(f"gpu_results: {err}", file=sys.stderr)
        return 2
    date = (report["meta"].get("time") or "undated")[:10]
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, f"gpu-{date}-{_slug(str(report['device']))}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    table = markdown(report)
    table_path = args.table or os.path.join(args.results, "gpu-TABLE.md")
    with open(table_path, "w") as f:
        f.write(table)
    print(table)
    print(f"wrote {path} and {table_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
