"""benchmarks/gpu_check.sh rehearsed on this CPU machine (GPU_CHECK_DRY_RUN=1), so that the one
command a GPU loan gets cannot rot: it exits 0, leaves at most 8 files, prints a summary line per
stage, its stage caps add up to at most 8 minutes; and benchmarks/gpu_results.py turns what it
left into a report and a table."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
STAGES = ("env", "kit", "tests", "memcheck", "racecheck", "accuracy", "bench")
MAX_FILES = 8  # what the device call brings back
MAX_SECONDS = 480


def _run(out: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "OUT": out, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", SCRIPT], env=full, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("gpu"))
    return out, _run(out)


def test_stage_caps_fit_in_one_device_command():
    caps = dict(line.split() for line in subprocess.run(
        ["bash", SCRIPT, "--caps"], capture_output=True, text=True, check=True).stdout.splitlines())
    assert set(caps) == set(STAGES)
    assert sum(int(v) for v in caps.values()) <= MAX_SECONDS, caps


def test_dry_run_passes_every_stage_within_the_file_limit(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = os.listdir(out)
    assert 0 < len(files) <= MAX_FILES, files
    summary = open(os.path.join(out, "summary.txt")).read()
    for stage in STAGES:
        assert f"stage {stage}: PASS" in summary, summary
    assert "gpu_check: 0 stage(s) failed" in summary
    assert "dry run:" in summary  # the replaced GPU commands say so


def test_dry_run_bench_rows_are_json_lines_with_sizes_and_medians(dry_run):
    out, _ = dry_run
    with open(os.path.join(out, "bench-cpu.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert rows[0]["kind"] == "meta" and rows[0]["torch"]
    measured = [r for r in rows[1:] if "median_ms" in r]
    assert {r["group"] for r in measured} >= {"copy", "host", "ops", "elbo", "elbo_kl", "train"}
    assert all(r["median_ms"] > 0 and r["shape"] for r in measured)
    assert not [r for r in rows if "error" in r]


def test_gpu_results_turns_the_dry_run_into_a_report_and_a_table(dry_run, tmp_path):
    out, _ = dry_run
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_results.py"), out,
                           "--results", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    reports = [p for p in os.listdir(tmp_path) if p.endswith(".json")]
    assert len(reports) == 1, reports
    report = json.load(open(tmp_path / reports[0]))
    assert report["torch"] and report["device"]
    assert len(report["stages"]) == len(STAGES)
    with open(os.path.join(out, "bench-cpu.jsonl")) as f:
        assert len(report["bench"]) == sum(1 for line in f) - 1  # every row but the meta line
    table = (tmp_path / "gpu-TABLE.md").read_text()
    assert "| elbo | elbo |" in table and "| train | mlp_784_400_20_step |" in table
    assert table in proc.stdout


def test_a_failing_stage_does_not_stop_the_others(tmp_path):
    proc = _run(str(tmp_path), PYTHON="false", STEPS="tests accuracy bench")  # env and kit always run
    summary = (tmp_path / "summary.txt").read_text()
    for stage in ("kit", "tests", "accuracy", "bench"):
        assert f"stage {stage}: FAIL" in summary, summary
    assert proc.returncode == 4, summary
    assert "gpu_check: 4 stage(s) failed" in summary


def test_gpu_results_refuses_a_folder_without_results(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_results.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "holds no gpu_check.sh results" in proc.stderr


def test_sanitizer_shards_split_the_tests_and_each_starts_with_every_test_function():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        from gpu_shard import shard
    finally:
        sys.path.pop(0)
    ids = [f"tests/test_{f}.py::t[{i}]" for f, n in (("a", 7), ("b", 2), ("c", 5)) for i in range(n)]
    ids.insert(3, "tests/test_a.py::plain")
    shards = [shard(ids, k, 3) for k in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(len(ids)))  # a partition
    order = [ids[i] for i in shard(ids, 0, 1)]
    assert order[:4] == ["tests/test_a.py::t[0]", "tests/test_a.py::plain", "tests/test_b.py::t[0]",
                         "tests/test_c.py::t[0]"]  # one of each function first
    assert [i for i in order if i.startswith("tests/test_a.py::t")] == [f"tests/test_a.py::t[{i}]" for i in range(7)]
