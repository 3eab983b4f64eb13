"""The benchmark harness itself, on tiny sizes: cases run, ratios, report, table, plot."""
from __future__ import annotations

import argparse
import json

import torch

from fastvae import bench


def test_cases_run_and_ratios_are_consistent():
    device = torch.device("cpu")
    cases = [bench.elbo_case(4, 9, 3, torch.float32, device)] + bench.op_cases(3, 5, torch.float32, device)
    assert {c.op for c in cases} == {
        "elbo", "bernoulli_log_likelihood", "gaussian_log_likelihood", "kl_standard_normal",
        "gaussian_log_density", "standard_normal_log_density", "reparameterize",
    }
    for case in cases:
        res = bench.run_case(case, device, ("fused", "eager"), repeats=2)
        assert res.median_ms["fused"] > 0 and res.median_ms["eager"] > 0
        assert res.median_ms["compile"] is None and res.speedup_vs_compile is None
        assert abs(res.speedup_vs_eager - res.median_ms["eager"] / res.median_ms["fused"]) < 1e-12
        assert res.peak_mem_mb["fused"] is None  # not measured on CPU


def test_run_writes_report_table_and_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "default_sizes", lambda device, quick, large: {"elbo": [(4, 9, 3)], "ops": [(3, 5)]})
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "r.json"
    args = parser.parse_args(["--device", "cpu", "--dtype", "float32", "--no-compile", "--no-train",
                              "--repeats", "2", "--out", str(out)])
    report = bench.run(args)
    saved = json.loads(out.read_text())
    assert saved["environment"]["torch"] == torch.__version__
    assert len(saved["results"]) == len(report["results"]) == 7
    assert (tmp_path / "r.png").stat().st_size > 0
    table = bench.markdown_table(saved)
    assert table.count("\n| ") == 2 + 7 and "elbo" in table  # header, separator, one row per case


def test_train_steps_per_second_is_positive():
    assert bench.train_steps_per_second(8, "fused", torch.device("cpu"), steps=2) > 0
