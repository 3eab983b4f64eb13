"""The benchmark harness itself, on tiny sizes: cases, ratios, memory, report schema, table, plot.

No timing is asserted; only that the harness measures what it says and writes what it promises.
"""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from fastvae import bench

CPU = torch.device("cpu")
TINY = {"B": 4, "D": 9, "Z": 3}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("family", ["mnist", "images"])
def test_every_op_has_a_case_and_fused_agrees_with_eager(family):
    for op in bench.OPS:
        case = bench.build_case(op, TINY, torch.float32, CPU, family)
        if op == "elbo":
            assert case.op == ("elbo_gaussian" if family == "images" else "elbo")
        latent = op in bench.LATENT_OPS and family == "mnist"
        assert case.shape["D"] == (TINY["Z"] if latent else TINY["D"]) and case.elements == 4 * case.shape["D"]
        if op != "reparameterize":
            fused, eager = case.forward("fused")()[-1], case.forward("eager")()[-1]
            torch.testing.assert_close(fused, eager.to(fused.dtype), rtol=1e-5, atol=1e-5)
        for impl in ("fused", "eager"):
            case.make(impl)()
            assert all(t.grad is None for t in case.leaves)  # each call drops its gradients
        assert case.min_bytes >= sum(t.numel() * t.element_size() for t in case.leaves)


def test_run_case_ratios_and_cpu_memory():
    case = bench.build_case("gaussian_log_likelihood", TINY, torch.float32, CPU)
    res = bench.run_case(case, CPU, ("fused", "eager"), repeats=3, warmup=1, copy_gbps=10.0)
    assert set(res.median_ms) == set(bench.IMPLS)
    assert res.median_ms["compile"] is None and res.speedup_vs_compile is None
    assert res.speedup_vs_eager == pytest.approx(res.median_ms["eager"] / res.median_ms["fused"], rel=1e-12)
    assert res.fused_gbps == pytest.approx(case.min_bytes / (res.median_ms["fused"] * 1e-3) / 1e9)
    assert res.fraction_of_copy == pytest.approx(res.fused_gbps / 10.0)
    for impl in ("fused", "eager"):
        assert 0 < res.min_ms[impl] <= res.median_ms[impl] and res.iqr_ms[impl] >= 0
    # The eager twin materialises (B, D) float32 temporaries: at least one is seen.
    assert res.peak_mem_mb["eager"] * 2**20 >= 4 * 9 * 4
    assert res.peak_mem_mb["fused"] > 0
    with pytest.raises(ValueError, match="impls"):
        bench.run_case(case, CPU, ("fused", "slow"))


def test_compile_baseline_runs():
    case = bench.build_case("kl_standard_normal", TINY, torch.float32, CPU, "short_rows")
    res = bench.run_case(case, CPU, ("fused", "compile"), repeats=1, warmup=0, memory=False)
    assert res.median_ms["compile"] > 0 and res.median_ms["eager"] is None
    assert res.speedup_vs_compile == pytest.approx(res.median_ms["compile"] / res.median_ms["fused"])
    assert res.first_call_ms["compile"] > 0  # includes the compilation


def test_speedup_and_running_peak():
    assert bench.speedup(3.0, 1.5) == 2.0
    assert bench.speedup(None, 1.0) is None and bench.speedup(1.0, None) is None and bench.speedup(1.0, 0.0) is None
    assert bench._running_peak([10, 5, -10, 20, -25]) == 25
    assert bench._running_peak([-4, 3]) == 0
    assert bench._running_peak([]) == 0


def test_retries_while_other_processes_are_busy(monkeypatch):
    def fake_busy(values):
        it = iter(values)  # machine busy seconds read at each timing window's start and end
        monkeypatch.setattr(bench, "_busy_cpu_s", lambda: next(it))

    calls = []
    # The windows last milliseconds: 1 s of foreign busy time in one is a heavy disturbance.
    fake_busy([0.0, 1.0, 5.0, 5.0])
    t = bench.time_interleaved({"f": lambda: calls.append(1)}, CPU, warmup=0, repeats=2, retries=5)
    assert t.attempts == 2 and t.other_load == 0.0 and len(calls) == 1 + 2 * 2  # stops once quiet
    fake_busy([0.0, 1.0, 5.0, 5.5, 9.0, 10.0])
    t = bench.time_interleaved({"f": lambda: None}, CPU, warmup=0, repeats=2, retries=2)
    assert t.attempts == 3 and t.other_load > 0.25  # always busy: the least disturbed attempt is kept
    fake_busy([0.0, 1.0])
    assert bench.time_interleaved({"f": lambda: None}, CPU, repeats=1).attempts == 1  # no retries by default
    with pytest.raises(ValueError, match="retries"):
        bench.time_interleaved({"f": lambda: None}, CPU, retries=-1)


def test_peak_memory_sees_a_known_allocation():
    n = 1 << 20

    def alloc_twice() -> None:
        a = torch.empty(n, dtype=torch.uint8)
        b = torch.empty(n, dtype=torch.uint8)
        del a, b

    assert bench.peak_memory_mb(alloc_twice, CPU) == pytest.approx(2.0, abs=0.01)


def test_run_writes_report_table_and_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "family_shapes", lambda family, quick=False: [dict(TINY)])
    out = tmp_path / "sub" / "r.json"
    report = bench.run(_args("--device", "cpu", "--dtype", "float32", "--families", "mnist", "--no-compile",
                             "--no-train", "--repeats", "2", "--warmup", "0", "--min-time", "0", "--out", str(out)))
    saved = json.loads(out.read_text())
    assert saved["schema"] == bench.SCHEMA
    env = saved["environment"]
    for key in ("device", "device_type", "cpu", "cpu_threads", "torch", "cuda", "python", "time"):
        assert key in env
    assert env["torch"] == torch.__version__ and env["device_type"] == "cpu"
    assert saved["settings"]["impls"] == ["fused", "eager"] and saved["settings"]["dtypes"] == ["float32"]
    assert saved["copy_gbps"] > 0
    assert len(saved["results"]) == len(report["results"]) == len(bench.OPS)
    for r in saved["results"]:
        assert set(r) >= {"op", "family", "shape", "dtype", "median_ms", "peak_mem_mb", "speedup_vs_eager",
                          "speedup_vs_compile", "fused_gbps", "min_bytes", "elements"}
    elbo = [r for r in saved["results"] if r["op"] == "elbo"][0]
    assert saved["targets"]["float32"]["min"] == elbo["speedup_vs_eager"]
    assert (tmp_path / "sub" / "r.png").stat().st_size > 0
    table = bench.markdown_table(saved)
    assert table.count("\n| ") == 2 + len(bench.OPS)  # header, separator, one row per case
    assert "Measured on" in table and "GB/s (% of copy)" in table  # bandwidth column on every device


def test_run_training_rows(monkeypatch):
    monkeypatch.setattr(bench, "family_shapes", lambda family, quick=False: [dict(TINY)])
    report = bench.run(_args("--device", "cpu", "--dtype", "float32", "--families", "mnist", "--ops", "kl_standard_normal",
                             "--no-compile", "--no-memory", "--repeats", "1", "--min-time", "0", "--train-batches", "8",
                             "--train-steps", "2"))
    (row,) = report["train"]
    assert row["batch"] == 8 and "compile_steps_per_s" not in row and row["fused_steps_per_s"] > 0
    assert row["speedup_vs_eager"] == pytest.approx(row["fused_steps_per_s"] / row["eager_steps_per_s"])
    assert row["speedup_vs_compile"] is None and report["results"][0]["peak_mem_mb"]["fused"] is None
    assert report["targets"]["lines"] == []  # no ELBO case, nothing to check the target against


def _fake_report(device_type: str, elbo_ratio: float) -> dict:
    res = {"op": "elbo", "family": "mnist", "shape": {"B": 128, "D": 784, "Z": 20}, "dtype": "float32",
           "elements": 128 * 784, "min_bytes": 10**6, "median_ms": {"fused": 1.0, "eager": elbo_ratio, "compile": None},
           "iqr_ms": {}, "first_call_ms": {}, "peak_mem_mb": {"fused": 1.0, "eager": 2.0, "compile": None},
           "speedup_vs_eager": elbo_ratio, "speedup_vs_compile": None, "fused_gbps": 1.0, "fraction_of_copy": 0.5}
    env = {"device": "Some GPU", "device_type": device_type, "cpu": {"model": "Some CPU"}, "cpu_threads": 2,
           "torch": "x", "cuda": "12", "time": "2026-01-01T00:00:00Z"}
    train = [{"batch": 128, "fused_steps_per_s": 20.0, "eager_steps_per_s": 10.0, "speedup_vs_eager": 2.0}]
    return {"environment": env, "results": [res], "train": train, "copy_gbps": 2.0}


def test_markdown_table_cuda_columns_targets_and_training():
    table = bench.markdown_table(_fake_report("cuda", 1.5))
    assert "Some GPU" in table and "GB/s" in table and "1.0 (50%)" in table
    assert "NOT met" in table and "1.50" in table and "†" not in table
    assert "| 128 | 20.0 | 10.0 | – | – | 2.00× |" in table
    assert "met" in bench.markdown_table(_fake_report("cpu", 2.5)) and "NOT met" not in bench.markdown_table(
        _fake_report("cpu", 2.5))


def test_markdown_table_marks_disturbed_rows():
    report = _fake_report("cpu", 2.5)
    report["results"][0]["other_load"] = 0.9
    assert "| elbo † |" in bench.markdown_table(report) and "† Other processes" in bench.markdown_table(report)


def test_table_flag_prints_a_saved_report(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_fake_report("cpu", 2.5)))
    assert bench.command(_args("--table", str(path))) == 0
    out = capsys.readouterr().out
    assert "| elbo | B=128 D=784 Z=20 | float32 |" in out and f"Source: `{path}`" in out
    assert bench.command(_args("--table", str(path), "--ops", "kl_standard_normal")) == 0
    assert "| elbo |" not in capsys.readouterr().out  # the filter drops the only row
    assert bench.command(_args("--table", str(path), "--dtype", "float32", "--families", "mnist", "--ops", "elbo")) == 0
    assert "| elbo |" in capsys.readouterr().out


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="op"):
        bench.build_case("softmax", TINY, torch.float32, CPU)
    with pytest.raises(ValueError, match="family"):
        bench.family_shapes("huge")
    with pytest.raises(ValueError, match="--repeats"):
        bench.command(_args("--repeats", "0"))
    with pytest.raises(ValueError, match="loss_impl"):
        bench.train_steps_per_second(8, "jax", CPU)


def test_default_families():
    assert bench.default_families(CPU, quick=False, large=False) == ["mnist", "short_rows", "images"]
    assert "large" in bench.default_families(CPU, quick=False, large=True)
    assert bench.default_families(torch.device("cuda"), quick=False, large=False) == list(bench.FAMILIES)
    assert bench.default_families(CPU, quick=True, large=False) == ["mnist"]
    big = bench.family_shapes("large")[0]
    assert big["B"] * big["D"] >= 1e8


@pytest.mark.parametrize("loss_impl", ["fused", "eager"])
def test_train_steps_per_second_is_positive(loss_impl):
    assert bench.train_steps_per_second(8, loss_impl, CPU, steps=2, warmup=0) > 0


def test_kernel_goals_checked_from_their_rows():
    report = _fake_report("cpu", 2.5)
    base = report["results"][0]
    rows = [dict(base, op="reparameterize", speedup_vs_eager=1.7),
            dict(base, op="reparameterize", speedup_vs_eager=1.2),
            dict(base, op="kl_standard_normal", dtype="bfloat16", speedup_vs_eager=1.3, speedup_vs_compile=0.8),
            dict(base, op="gaussian_log_likelihood", family="large", fraction_of_copy=0.75)]
    report["results"] += rows
    goals = bench.targets(report)["goals"]
    assert goals["sampler_vs_eager"]["min"] == 1.2 and not goals["sampler_vs_eager"]["met"]
    assert goals["bf16_gaussian_vs_eager"]["met"] and not goals["bf16_gaussian_vs_compile"]["met"]
    assert goals["large_likelihood_bandwidth"] == {"min": 0.75, "max": 0.75, "target": 0.7, "met": True}
    table = bench.markdown_table(report)
    assert "Goal: reparameterize fwd+bwd >= 1.5x eager" in table and "1.20..1.70 -> NOT met" in table
