"""benchmarks/check_goals.py: the goals of past issues, checked from a report's rows (moved out of
the library's report code)."""
from __future__ import annotations

import json

import pytest

from tests.scripts import load_script

check_goals = load_script("check_goals")


def _fake_report(device_type: str, elbo_ratio: float) -> dict:
    res = {"op": "elbo", "family": "mnist", "shape": {"B": 128, "D": 784, "Z": 20}, "dtype": "float32",
           "elements": 128 * 784, "min_bytes": 10**6, "median_ms": {"fused": 1.0, "eager": elbo_ratio, "compile": None},
           "iqr_ms": {}, "first_call_ms": {}, "peak_mem_mb": {"fused": 1.0, "eager": 2.0, "compile": None},
           "speedup_vs_eager": elbo_ratio, "speedup_vs_compile": None, "fused_gbps": 1.0, "fraction_of_copy": 0.5}
    env = {"device": "Some GPU", "device_type": device_type, "cpu": {"model": "Some CPU"}, "cpu_threads": 2,
           "torch": "x", "cuda": "12", "time": "2026-01-01T00:00:00Z"}
    return {"environment": env, "results": [res], "train": [], "copy_gbps": 2.0}


def test_elbo_target_met_and_not_met():
    missed = check_goals.goals(_fake_report("cuda", 1.5))["elbo_vs_eager_float32"]
    assert missed["min"] == 1.5 and missed["target"] == 2.0 and not missed["met"]
    (line,) = check_goals.lines({"g": missed})
    assert "(cuda, float32)" in line and "1.50..1.50 -> NOT met" in line
    assert check_goals.goals(_fake_report("cpu", 2.5))["elbo_vs_eager_float32"]["met"]


def test_kernel_goals_checked_from_their_rows():
    report = _fake_report("cpu", 2.5)
    base = report["results"][0]
    rows = [dict(base, op="reparameterize", speedup_vs_eager=1.7),
            dict(base, op="reparameterize", speedup_vs_eager=1.2),
            dict(base, op="kl_standard_normal", dtype="bfloat16", speedup_vs_eager=1.3, speedup_vs_compile=0.8),
            dict(base, op="gaussian_log_likelihood", family="large", fraction_of_copy=0.75)]
    report["results"] += rows
    goals = check_goals.goals(report)
    assert goals["sampler_vs_eager"]["min"] == 1.2 and not goals["sampler_vs_eager"]["met"]
    assert goals["bf16_gaussian_vs_eager"]["met"] and not goals["bf16_gaussian_vs_compile"]["met"]
    large = goals["large_likelihood_bandwidth"]
    assert (large["min"], large["max"], large["target"], large["met"]) == (0.75, 0.75, 0.7, True)
    text = "\n".join(check_goals.lines(goals))
    assert "reparameterize fwd+bwd >= 1.5x eager" in text and "1.20..1.70 -> NOT met" in text


def test_prior_goals_per_dtype_on_the_cpu_and_a_gpu():
    report = _fake_report("cpu", 2.5)
    base = dict(report["results"][0], op="reparameterize_with_kl_normal", family="latents")
    report["results"] = [dict(base, speedup_vs_eager=3.1, speedup_vs_compile=1.6,
                              peak_mem_mb={"fused": 1.0, "eager": 2.5, "compile": 2.0}),
                         dict(base, speedup_vs_eager=2.4, speedup_vs_compile=1.9,
                              peak_mem_mb={"fused": 1.5, "eager": 2.0, "compile": 2.0}),
                         dict(base, dtype="bfloat16", speedup_vs_eager=2.6, speedup_vs_compile=None,
                              peak_mem_mb={"fused": 1.0, "eager": 4.0, "compile": None})]
    goals = check_goals.goals(report)
    assert not goals["prior_vs_eager_float32"]["met"] and goals["prior_vs_eager_float32"]["min"] == 2.4
    assert goals["prior_vs_compile_float32"]["met"] and goals["prior_vs_eager_bfloat16"]["met"]
    memory = goals["prior_memory_float32"]
    assert (memory["max"], memory["target"], memory["met"]) == (0.75, 0.5, False)
    assert "prior_vs_compile_bfloat16" not in goals and goals["prior_memory_bfloat16"]["met"]
    report["environment"]["device_type"] = "cuda"
    gpu = check_goals.goals(report)
    assert gpu["prior_vs_eager_float32"]["target"] == 3.0 and "prior_memory_float32" not in gpu


def test_no_rows_no_goals():
    report = _fake_report("cpu", 2.5)
    report["results"][0]["op"] = "kl_standard_normal"
    assert check_goals.goals(report) == {}


@pytest.mark.parametrize("ratio, met", [(0.45, True), (0.6, False)])
def test_host_goal_at_b1_from_a_host_report_or_a_bench_report(ratio, met, tmp_path, capsys):
    host = {"rows": [{"batch": 1, "fused_us": 50.0, "eager_us": 50.0 / ratio, "fused_over_eager": ratio,
                      "thread_cpu": {"fused_us": 40.0, "eager_us": 40.0 / ratio, "fused_over_eager": ratio}},
                     {"batch": 128, "fused_us": 900.0, "eager_us": 1000.0, "fused_over_eager": 0.9}],
            "counts": {}, "environment": {"device_type": "cpu"}}
    for report in (host, {**_fake_report("cpu", 2.5), "host": host}):
        for key in ("host_fused_over_eager_b1", "host_fused_over_eager_b1_thread_cpu"):
            goal = check_goals.goals(report)[key]
            assert goal["min"] == goal["max"] == ratio and goal["met"] is met  # B=128 is not the goal's row
    path = tmp_path / "host.json"
    path.write_text(json.dumps(host))
    assert check_goals.main([str(path)]) == 0
    assert check_goals.main([str(path), "--strict"]) == (0 if met else 1)
    assert ("-> met" if met else "-> NOT met") in capsys.readouterr().out
