"""benchmarks/tables.py: which reports the tables show, and that the rows and ratios are the reports'
(parsed back from the generated markdown, never compared as pinned strings)."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
tables = load_script("tables")

SHAPES = {"mnist": [{"B": 128, "D": 784, "Z": 20}, {"B": 1024, "D": 784, "Z": 20}],
          "short_rows": [{"B": 65536, "D": 64, "Z": 16}]}


def _env(time: str, cap: str = "AVX512", device: str = "Some CPU") -> Dict[str, Any]:
    return {"device": device, "device_type": "cpu", "cpu": {"model": device, "simd": ["avx2", "avx512f"]},
            "cpu_threads": 2, "torch_cpu_capability": cap, "fastvae_cpu_isa": "avx512", "torch": "2.99.0",
            "fastvae_commit": f"c{random.randrange(16**6):06x}", "time": time, "an_extra_field": [1, 2]}


def bench_report(time: str, families=("mnist", "short_rows"), dtypes=("float32", "bfloat16"), cap="AVX512",
                 impls=("fused", "eager", "compile"), device="Some CPU") -> Dict[str, Any]:
    """A report in fastvae bench's format with fresh random figures (and fields the tables ignore)."""
    rows = []
    for family in families:
        for shape in SHAPES[family]:
            for dtype in dtypes:
                for op in ("elbo", "kl_standard_normal"):
                    rows.append({"op": op, "family": family, "shape": dict(shape), "dtype": dtype,
                                 "median_ms": {i: random.uniform(0.01, 10) for i in impls},
                                 "peak_mem_mb": {i: random.uniform(0.01, 100) for i in impls},
                                 "fused_gbps": random.uniform(1, 50), "fraction_of_copy": random.uniform(0.01, 0.9),
                                 "other_load": 0.0, "new_metric": {"x": 1}})
    return {"schema": "fastvae-bench/9", "environment": _env(time, cap, device),
            "settings": {"families": list(families), "dtypes": list(dtypes), "impls": list(impls), "threads": 2},
            "copy_gbps": random.uniform(10, 100), "results": rows,
            "train": [{"batch": 128, **{f"{k}_steps_per_s": random.uniform(10, 300)
                                        for k in ("fused", "eager", "compile", "fused_compile")}}],
            "targets": {"lines": ["goal: something -> met"]}}


def host_report(time: str, cap="AVX512") -> Dict[str, Any]:
    rows = [{"batch": b, "threads": 1, "fused_us": random.uniform(50, 200), "eager_us": random.uniform(50, 500),
             "lean_eager_us": random.uniform(50, 500), "compile_us": random.uniform(50, 500),
             "fused_iqr_us": 1.0} for b in (1, 128)]
    return {"rows": rows, "counts": {"calls": ["fastvae::a", "fastvae::b"], "syncs": 0}, "environment": _env(time, cap)}


def write(results: Path, name: str, report: Dict[str, Any]) -> Path:
    path = results / name
    path.write_text(json.dumps(report))
    return path


def parse_tables(markdown: str) -> List[List[Dict[str, str]]]:
    """Every markdown table as a list of {column: cell} rows."""
    found, lines = [], markdown.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            head = [c.strip() for c in lines[i].strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(head, (c.strip() for c in lines[i].strip("|").split("|")))))
                i += 1
            found.append(rows)
        else:
            i += 1
    return found


def x_of(cell: str) -> float:
    return float(cell.rstrip("×"))


@pytest.fixture
def results(tmp_path):
    d = tmp_path / "benchmarks" / "results"
    d.mkdir(parents=True)
    return d


def test_a_newer_report_of_the_same_families_supersedes(results):
    write(results, "old.json", bench_report("2026-01-01T00:00:00Z"))
    write(results, "subset.json", bench_report("2026-01-02T00:00:00Z", families=("mnist",), dtypes=("float32",)))
    write(results, "new.json", bench_report("2026-01-03T00:00:00Z"))
    write(results, "newest-partial.json", bench_report("2026-01-04T00:00:00Z", families=("mnist",)))
    write(results, "other-cap.json", bench_report("2026-01-01T00:00:00Z", cap="AVX2"))
    write(results, "other-machine.json", bench_report("2026-01-01T00:00:00Z", device="Another CPU"))
    write(results, "host-old.json", host_report("2026-01-01T00:00:00Z"))
    write(results, "host-new.json", host_report("2026-01-05T00:00:00Z"))
    write(results, "notes.json", {"free": "form"})
    shown = {r.path.name for r in tables.current(tables.load_reports(results))}
    assert shown == {"new.json", "newest-partial.json", "other-cap.json", "other-machine.json",
                     "host-new.json", "notes.json"}


def test_op_rows_and_ratios_are_the_reports(results):
    report = bench_report("2026-01-01T00:00:00Z")
    write(results, "r.json", report)
    text = tables.full_tables(tables.load_reports(results))
    ops = next(t for t in parse_tables(text) if t and "fused ms" in t[0])
    assert len(ops) == len(report["results"])
    for row, src in zip(ops, report["results"]):
        ms = src["median_ms"]
        assert (row["op"], row["dtype"]) == (src["op"], src["dtype"])
        assert row["shape"] == " ".join(f"{k}={v}" for k, v in src["shape"].items())
        assert float(row["fused ms"]) == pytest.approx(ms["fused"], abs=6e-4)
        assert x_of(row["vs eager"]) == pytest.approx(ms["eager"] / ms["fused"], abs=6e-3)
        assert x_of(row["vs compile"]) == pytest.approx(ms["compile"] / ms["fused"], abs=6e-3)
        mem = [float(v) for v in row["peak MiB fused / eager / compile"].split(" / ")]
        assert mem == pytest.approx([src["peak_mem_mb"][i] for i in ("fused", "eager", "compile")], abs=0.06)
    train = next(t for t in parse_tables(text) if t and "batch" in t[0] and "fused vs eager" in t[0])
    t = report["train"][0]
    assert x_of(train[0]["fused vs eager"]) == pytest.approx(t["fused_steps_per_s"] / t["eager_steps_per_s"], abs=6e-3)
    assert "goal: something" not in text  # goals are benchmarks/check_goals.py's job


def test_missing_implementations_and_fields_show_as_dashes(results):
    report = bench_report("2026-01-01T00:00:00Z", impls=("fused", "eager"))
    del report["results"][0]["fused_gbps"], report["copy_gbps"], report["train"]
    write(results, "r.json", report)
    ops = next(t for t in parse_tables(tables.full_tables(tables.load_reports(results))) if t and "fused ms" in t[0])
    assert {row["compile ms"] for row in ops} == {tables.NONE}
    assert {row["vs compile"] for row in ops} == {tables.NONE}
    assert ops[0]["fused GB/s (% of copy)"].startswith(tables.NONE)


def test_host_table_has_a_column_per_baseline(results):
    report = host_report("2026-01-01T00:00:00Z")
    write(results, "h.json", report)
    host = next(t for t in parse_tables(tables.full_tables(tables.load_reports(results))) if t and "fused µs" in t[0])
    assert [int(r["batch"]) for r in host] == [1, 128]
    for row, src in zip(host, report["rows"]):
        assert "lean_eager µs" in row and "fused_iqr µs" not in row
        assert x_of(row["fused / eager"]) == pytest.approx(src["fused_us"] / src["eager_us"], abs=6e-3)
        assert x_of(row["lean_eager / eager"]) == pytest.approx(src["lean_eager_us"] / src["eager_us"], abs=6e-3)


def test_a_bench_report_with_host_rows_shows_them(results):
    report = bench_report("2026-01-01T00:00:00Z")
    report["host"] = {**host_report("2026-01-01T00:00:00Z"), "baseline": "the lean loss"}
    write(results, "r.json", report)
    text = tables.full_tables(tables.load_reports(results))
    host = next(t for t in parse_tables(text) if t and "fused µs" in t[0])
    assert [float(r["fused µs"]) for r in host] == pytest.approx([r["fused_us"] for r in report["host"]["rows"]], abs=0.06)
    assert "eager: the lean loss." in text


def gpu_check_report(time: str, tiny: bool = False) -> Dict[str, Any]:
    """As benchmarks/gpu_results.py writes it: meta, stage lines and gpu_bench.py's rows."""
    rows = []
    for op, shape in (("elbo", {"B": 128, "D": 784, "Z": 20}), ("kl", {"B": 131072, "D": 784})):
        for impl in ("fused", "eager", "compile"):
            rows.append({"kind": "row", "group": "elbo", "op": op, "impl": impl, "shape": shape, "dtype": "float32",
                         "median_ms": random.uniform(0.01, 5), "peak_mib": random.uniform(1, 500)})
    rows.append({"kind": "row", "group": "elbo", "op": "elbo", "impl": "eager_lean", "shape": rows[0]["shape"],
                 "skipped": "time budget"})
    return {"kind": "gpu_check", "device": "NVIDIA H200", "torch": "2.11.0+cu130", "stages": ["stage tests PASS 40 s"],
            "meta": {"device": "cuda", "gpu": "NVIDIA H200", "time": time, "tiny": tiny, "cuda": "13.0"},
            "bench": rows, "accuracy": None}


def test_a_gpu_check_report_is_tabled_and_lifts_the_no_gpu_note(results):
    write(results, "cpu.json", bench_report("2026-01-01T00:00:00Z"))
    assert "No GPU run" in tables.headline(tables.load_reports(results))
    report = gpu_check_report("2026-01-02T00:00:00Z")
    write(results, "gpu-2026-01-02-h200.json", report)
    reports = tables.load_reports(results)
    assert "No GPU run" not in tables.headline(reports)
    text = tables.full_tables(reports)
    assert "- stage tests PASS 40 s" in text and "NVIDIA H200" in text
    (rows,) = [t for t in parse_tables(text) if t and "eager_lean ms" in t[0]]
    by_case = {(r["op"], r["shape"]): r for r in rows}
    for src in report["bench"][:6]:
        row = by_case[(src["op"], " ".join(f"{k}={v}" for k, v in src["shape"].items()))]
        assert float(row[f"{src['impl']} ms"]) == pytest.approx(src["median_ms"], abs=6e-4)
    fused, eager = report["bench"][0]["median_ms"], report["bench"][1]["median_ms"]
    assert x_of(by_case[("elbo", "B=128 D=784 Z=20")]["eager / fused"]) == pytest.approx(eager / fused, abs=6e-3)
    assert by_case[("elbo", "B=128 D=784 Z=20")]["eager_lean ms"] == "skipped"
    (index_rows,) = parse_tables(tables.index(results, reports))
    assert any("gpu_check.sh" in r["what"] and r["cited"] == "yes" for r in index_rows)


def test_headline_is_the_float32_elbo_rows_of_the_newest_report(results):
    write(results, "old.json", bench_report("2026-01-01T00:00:00Z", cap="AVX2"))
    newest = bench_report("2026-01-02T00:00:00Z")
    write(results, "newest.json", newest)
    text = tables.headline(tables.load_reports(results))
    (rows,) = parse_tables(text)
    elbo = [r for r in newest["results"] if r["op"] == "elbo" and r["dtype"] == "float32"]
    assert len(rows) == len(elbo) and "newest.json" in text
    for row, src in zip(rows, elbo):
        assert x_of(row["vs eager"]) == pytest.approx(src["median_ms"]["eager"] / src["median_ms"]["fused"], abs=6e-3)


def test_index_lists_every_file_and_what_is_cited(results):
    write(results, "old.json", bench_report("2026-01-01T00:00:00Z"))
    write(results, "new.json", bench_report("2026-01-02T00:00:00Z"))
    (results / "new.png").write_bytes(b"png")
    (results / "stray.txt").write_text("?")
    reports = tables.load_reports(results)
    (rows,) = parse_tables(tables.index(results, reports))
    by_file = {r["file"].strip("`"): r for r in rows}
    assert set(by_file) == {"old.json", "new.json", "new.png", "stray.txt"}
    assert by_file["new.json"]["cited"] == "yes" and by_file["old.json"]["cited"] == ""
    assert by_file["new.json"]["commit"] == reports[-1].env["fastvae_commit"]
    assert by_file["new.json"]["date"] == "2026-01-02"


def test_main_rewrites_then_check_passes(results):
    root = results.parent.parent
    (root / "README.md").write_text("intro\n<!-- bench-tables:headline -->\nstale\n<!-- /bench-tables:headline -->\nend\n")
    (root / "benchmarks" / "README.md").write_text("<!-- bench-tables:full -->\n<!-- /bench-tables:full -->\n")
    write(results, "r.json", bench_report("2026-01-01T00:00:00Z"))
    assert tables.main(["--check", "--root", str(root)]) == 1
    assert tables.main(["--root", str(root)]) == 0
    assert tables.main(["--check", "--root", str(root)]) == 0
    readme = (root / "README.md").read_text()
    assert "stale" not in readme and readme.startswith("intro\n") and readme.endswith("end\n")
    assert (results / "INDEX.md").is_file()


def test_missing_markers_are_an_error():
    with pytest.raises(ValueError, match="bench-tables:full"):
        tables.splice("no markers here", "full", "x")


def test_the_committed_tables_are_up_to_date():
    assert tables.main(["--check"]) == 0, "run `make bench-tables` and commit the result"


def test_the_readme_cites_an_existing_report():
    cited = re.findall(r"benchmarks/results/([\w.-]+\.(?:json|png))", (ROOT / "README.md").read_text())
    assert cited, "README.md should name the report its headline comes from"
    for name in cited:
        assert (ROOT / "benchmarks" / "results" / name).is_file(), name
