"""The benchmark harness itself, on tiny sizes: cases, ratios, memory, the report's content, plot.

No timing is asserted; only that the harness measures what it says and writes what it promises.
"""
from __future__ import annotations

import argparse
import json
import time

import pytest
import torch

from fastvae.bench import cases, cli, report, timing, train

CPU = torch.device("cpu")
TINY = {"B": 4, "D": 9, "Z": 3}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("family", ["mnist", "images"])
def test_every_op_has_a_case_and_fused_agrees_with_eager(family):
    for op in cases.OPS:
        case = cases.build_case(op, TINY, torch.float32, CPU, family)
        if op == "elbo":
            assert case.op == ("elbo_gaussian" if family == "images" else "elbo")
        latent = op in cases.LATENT_OPS and family == "mnist"
        assert case.shape["D"] == (TINY["Z"] if latent else TINY["D"]) and case.elements == 4 * case.shape["D"]
        if op != "reparameterize":
            fused, eager = case.forward("fused")()[-1], case.forward("eager")()[-1]
            torch.testing.assert_close(fused, eager.to(fused.dtype), rtol=1e-5, atol=1e-5)
        for impl in ("fused", "eager"):
            case.make(impl)()
            assert all(t.grad is None for t in case.leaves)  # each call drops its gradients
        assert case.min_bytes >= sum(t.numel() * t.element_size() for t in case.leaves)


def test_op_families_cover_every_op_once():
    grouped = [op for ops in cases.OP_FAMILIES.values() for op in ops]
    assert sorted(grouped) == sorted(cases.OPS) and len(grouped) == len(set(grouped))
    assert set(cases.OP_FAMILIES) == {"sampling", "kl", "likelihood", "density", "elbo", "kl_normal"}
    assert set(cases.OP_FAMILY_SIZES) <= set(cases.OP_FAMILIES)
    assert all(f in cases.FAMILIES for sizes in cases.OP_FAMILY_SIZES.values() for f in sizes)


def test_run_case_ratios_and_cpu_memory():
    case = cases.build_case("gaussian_log_likelihood", TINY, torch.float32, CPU)
    res = report.run_case(case, CPU, ("fused", "eager"), repeats=3, warmup=1, copy_gbps=10.0)
    assert set(res.median_ms) == set(cases.IMPLS)
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
        report.run_case(case, CPU, ("fused", "slow"))


def test_compile_baseline_runs():
    case = cases.build_case("kl_standard_normal", TINY, torch.float32, CPU, "short_rows")
    res = report.run_case(case, CPU, ("fused", "compile"), repeats=1, warmup=0, memory=False)
    assert res.median_ms["compile"] > 0 and res.median_ms["eager"] is None
    assert res.speedup_vs_compile == pytest.approx(res.median_ms["compile"] / res.median_ms["fused"])
    assert res.first_call_ms["compile"] > 0  # includes the compilation


def test_speedup_and_running_peak():
    assert report.speedup(3.0, 1.5) == 2.0
    assert report.speedup(None, 1.0) is None and report.speedup(1.0, None) is None and report.speedup(1.0, 0.0) is None
    assert timing._running_peak([10, 5, -10, 20, -25]) == 25
    assert timing._running_peak([-4, 3]) == 0
    assert timing._running_peak([]) == 0


def test_retries_while_other_processes_are_busy(monkeypatch):
    def fake_busy(values):
        it = iter(values)  # machine busy seconds read at each timing window's start and end
        monkeypatch.setattr(timing, "_busy_cpu_s", lambda: next(it))

    calls = []
    # The windows last milliseconds: 1 s of foreign busy time in one is a heavy disturbance.
    fake_busy([0.0, 1.0, 5.0, 5.0])
    t = timing.time_interleaved({"f": lambda: calls.append(1)}, CPU, warmup=0, repeats=2, retries=5)
    assert t.attempts == 2 and t.other_load == 0.0 and len(calls) == 1 + 2 * 2  # stops once quiet
    fake_busy([0.0, 1.0, 5.0, 5.5, 9.0, 10.0])
    t = timing.time_interleaved({"f": lambda: None}, CPU, warmup=0, repeats=2, retries=2)
    assert t.attempts == 3 and t.other_load > 0.25  # always busy: the least disturbed attempt is kept
    fake_busy([0.0, 1.0])
    assert timing.time_interleaved({"f": lambda: None}, CPU, repeats=1).attempts == 1  # no retries by default
    with pytest.raises(ValueError, match="retries"):
        timing.time_interleaved({"f": lambda: None}, CPU, retries=-1)


def test_thread_cpu_time_of_a_busy_and_of_a_sleeping_call():
    """The calling thread's CPU time: at most a computation's wall time, almost none of a sleep's."""
    def busy() -> None:
        sum(range(50_000))

    t = timing.time_interleaved({"busy": busy, "sleep": lambda: time.sleep(2e-3)}, CPU, warmup=0, repeats=5,
                                thread_cpu=True)
    assert 0 < t.thread_cpu["busy"] <= t.median["busy"] * 1.01 + 0.05
    assert t.thread_cpu["sleep"] < 0.5 * t.median["sleep"]
    assert timing.time_interleaved({"busy": busy}, CPU, repeats=1).thread_cpu is None  # only when asked


def test_peak_memory_sees_a_known_allocation():
    n = 1 << 20

    def alloc_twice() -> None:
        a = torch.empty(n, dtype=torch.uint8)
        b = torch.empty(n, dtype=torch.uint8)
        del a, b

    assert timing.peak_memory_mb(alloc_twice, CPU) == pytest.approx(2.0, abs=0.01)


def _tiny_run(monkeypatch, tmp_path, *argv):
    monkeypatch.setattr(cases, "family_shapes", lambda family, quick=False: [dict(TINY)])
    out = tmp_path / "sub" / "r.json"
    rep = cli.run(_args("--device", "cpu", "--dtype", "float32", "--families", "mnist", "--no-compile",
                        "--repeats", "2", "--warmup", "0", "--min-time", "0", "--out", str(out), *argv))
    return rep, json.loads(out.read_text()), out


def test_run_writes_report_and_plot(tmp_path, monkeypatch):
    rep, saved, out = _tiny_run(monkeypatch, tmp_path, "--no-train")
    assert saved["schema"] == report.SCHEMA
    env = saved["environment"]
    for key in ("device", "device_type", "cpu", "cpu_threads", "torch", "cuda", "python", "time"):
        assert key in env
    assert env["torch"] == torch.__version__ and env["device_type"] == "cpu"
    assert saved["settings"]["impls"] == ["fused", "eager"] and saved["settings"]["dtypes"] == ["float32"]
    assert saved["copy_gbps"] > 0
    assert len(saved["results"]) == len(rep["results"]) == len(cases.OPS)
    for r in saved["results"]:
        assert set(r) >= {"op", "family", "shape", "dtype", "median_ms", "peak_mem_mb", "speedup_vs_eager",
                          "speedup_vs_compile", "fused_gbps", "min_bytes", "elements"}
    assert (out.parent / "r.png").stat().st_size > 0


def test_report_rows_ratios_and_fields(tmp_path, monkeypatch):
    """What replaces the markdown table's tests: the report holds one row per case, in the order
    of the ops, with its ratios computed from its own medians and the fields the tables read."""
    _, saved, _ = _tiny_run(monkeypatch, tmp_path, "--no-train", "--ops", "kl_standard_normal", "elbo", "--no-plot")
    assert [r["op"] for r in saved["results"]] == ["kl_standard_normal", "elbo"]
    assert saved["settings"]["ops"] == ["kl_standard_normal", "elbo"] and saved["settings"]["families"] == ["mnist"]
    for r in saved["results"]:
        med = r["median_ms"]
        assert set(med) == set(cases.IMPLS) and med["compile"] is None
        assert r["speedup_vs_eager"] == pytest.approx(med["eager"] / med["fused"])
        assert r["speedup_vs_compile"] is None and r["dtype"] == "float32" and r["family"] == "mnist"
        assert r["fused_gbps"] == pytest.approx(r["min_bytes"] / (med["fused"] * 1e-3) / 1e9)
        assert r["fraction_of_copy"] == pytest.approx(r["fused_gbps"] / saved["copy_gbps"])
        assert r["peak_mem_mb"]["fused"] > 0 and r["attempts"] >= 1
    elbo = saved["results"][1]
    assert elbo["shape"] == TINY and elbo["elements"] == TINY["B"] * TINY["D"]
    assert "targets" not in saved and set(saved["method"]) >= {"timing", "speedup", "memory_cpu", "train"}
    assert saved["train"] == [] and saved["host"] is None


def test_printed_lines_carry_ratios_and_mark_disturbed_rows():
    case = cases.build_case("kl_standard_normal", TINY, torch.float32, CPU)
    res = report.run_case(case, CPU, ("fused", "eager"), repeats=2, warmup=0, memory=False)
    row = {**res.__dict__}
    line = report.format_row(row)
    assert line.startswith("kl_standard_normal") and f"x{res.speedup_vs_eager:.2f} vs eager" in line
    assert "DISTURBED" not in report.format_row({**row, "other_load": 0.1})
    assert "DISTURBED: other processes used 0.90 cores (3 attempts)" in report.format_row(
        {**row, "other_load": 0.9, "attempts": 3})


def test_run_training_rows(tmp_path, monkeypatch):
    rep, _, _ = _tiny_run(monkeypatch, tmp_path, "--ops", "kl_standard_normal", "--no-memory", "--train-batches", "8",
                          "--train-steps", "2", "--no-plot")
    (row,) = rep["train"]
    assert row["batch"] == 8 and "compile_steps_per_s" not in row and row["fused_steps_per_s"] > 0
    assert row["speedup_vs_eager"] == pytest.approx(row["fused_steps_per_s"] / row["eager_steps_per_s"])
    assert row["speedup_vs_compile"] is None and rep["results"][0]["peak_mem_mb"]["fused"] is None
    assert f"fused x{row['speedup_vs_eager']:.2f} vs eager" in report.format_train_row(row)


def test_train_rows_use_the_models_own_losses(monkeypatch):
    """The training rows call VAE.loss with impl="fused" or "reference", nothing private."""
    import fastvae

    seen = []
    original = fastvae.VAE.loss

    def spy(self, x, *args, **kwargs):
        seen.append(kwargs.get("impl"))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(fastvae.VAE, "loss", spy)
    for impl in ("fused", "eager"):
        train.make_train_step(4, impl, CPU)()
    assert seen == ["fused", "reference"]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="op"):
        cases.build_case("softmax", TINY, torch.float32, CPU)
    with pytest.raises(ValueError, match="family"):
        cases.family_shapes("huge")
    with pytest.raises(ValueError, match="--repeats"):
        cli.command(_args("--repeats", "0"))
    with pytest.raises(ValueError, match="loss_impl"):
        train.train_steps_per_second(8, "jax", CPU)
    with pytest.raises(ValueError, match="family"):
        cli.main([], family="softmax")


def test_default_families():
    assert cases.default_families(CPU, quick=False, large=False) == ["mnist", "short_rows", "images"]
    assert "large" in cases.default_families(CPU, quick=False, large=True)
    assert cases.default_families(torch.device("cuda"), quick=False, large=False) == list(cases.FAMILIES)
    assert cases.default_families(CPU, quick=True, large=False) == ["mnist"]
    big = cases.family_shapes("large")[0]
    assert big["B"] * big["D"] >= 1e8


@pytest.mark.parametrize("loss_impl", ["fused", "eager"])
def test_train_steps_per_second_is_positive(loss_impl):
    assert train.train_steps_per_second(8, loss_impl, CPU, steps=2, warmup=0) > 0
