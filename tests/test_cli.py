"""The command line: train (fresh and resumed), sample, eval, bench wiring, help."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvae import cli
from fastvae.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--hidden", "32", "--no-progress", "--device", "cpu"]


def _png(path: Path) -> np.ndarray:
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img[..., :3].std() > 0.05  # a picture, not a blank canvas
    return img


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One short default-data run shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("digits")
    rc = cli.main(["train", "--epochs", "3", "--eval-samples", "10", "--out", str(out), *FAST])
    assert rc == 0
    return out


def test_train_writes_checkpoint_metrics_and_pictures(digits_run, capsys):
    names = ("checkpoint.pt", "metrics.jsonl", "samples.png", "reconstructions.png", "curve.png", "latents.png")
    for name in names:
        assert (digits_run / name).is_file(), name
    for name in names[2:]:
        _png(digits_run / name)
    records = [json.loads(l) for l in (digits_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["epoch"] * 3 + ["final"]
    state = load_checkpoint(digits_run)
    assert state["model_config"]["latent_dim"] == 2  # the digits default: a 2-D latent space
    assert state["train_config"]["binarize"] == "dynamic"  # auto for a Bernoulli likelihood


def test_train_prints_the_paths_it_wrote(tmp_path, capsys):
    rc = cli.main(["train", "--epochs", "1", "--eval-samples", "0", "--latent-dim", "3",
                   "--out", str(tmp_path), *FAST])
    assert rc == 0
    out = capsys.readouterr().out
    for name in ("checkpoint.pt", "metrics.jsonl", "samples.png", "reconstructions.png", "curve.png"):
        assert f"wrote {tmp_path / name}" in out
    assert "latents.png" not in out and not (tmp_path / "latents.png").exists()  # 3-D latent
    assert "test ELBO" in out


def test_resume_continues_to_the_same_weights_as_one_run(tmp_path):
    common = ["--eval-samples", "0", "--no-plots", "--seed", "4", *FAST]
    assert cli.main(["train", "--epochs", "2", "--out", str(tmp_path / "one"), *common]) == 0
    assert cli.main(["train", "--epochs", "1", "--out", str(tmp_path / "two"), *common]) == 0
    assert cli.main(["train", "--resume", str(tmp_path / "two" / "checkpoint.pt"), "--epochs", "2",
                     "--no-progress"]) == 0
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert b["step"] == a["step"] > 0
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_rejects_flags_that_change_the_run(digits_run, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--resume", str(digits_run), "--lr", "0.01"])
    assert exc.value.code == 2
    assert "--lr" in capsys.readouterr().err


def test_sample_writes_a_grid(digits_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert cli.main(["sample", str(digits_run), "--num", "10", "--nrow", "5", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    _png(out)
    assert cli.main(["sample", str(digits_run / "checkpoint.pt"), "--draw", "--out", str(tmp_path / "d.png")]) == 0
    _png(tmp_path / "d.png")


def test_eval_reports_elbo_and_a_tighter_log_likelihood(digits_run, capsys):
    assert cli.main(["eval", str(digits_run), "--num-samples", "50", "--max-examples", "200",
                     "--device", "cpu", "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == 200 and result["num_samples"] == 50
    assert -200 < result["test_elbo"] < 0
    # The K-sample importance estimate tightens the single-sample ELBO.
    assert result["test_elbo"] < result["test_log_likelihood"] < 0
    assert cli.main(["eval", str(digits_run), "-k", "5", "--max-examples", "20", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "test ELBO" in text and "test log p(x) (K=5)" in text
    assert result["weights"] == "last" and "the last weights" in text


def test_eval_of_an_averaging_run_uses_the_average(tmp_path, capsys):
    assert cli.main(["train", "--epochs", "2", "--eval-samples", "0", "--no-plots", "--ema-decay", "0.99",
                     "--out", str(tmp_path), *FAST]) == 0
    assert load_checkpoint(tmp_path)["train_config"]["ema_decay"] == 0.99
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path), "-k", "5", "--max-examples", "50", "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["weights"] == "moving average"
    assert cli.main(["eval", str(tmp_path), "-k", "5", "--max-examples", "50", "--no-progress", "--json",
                     "--last-weights"]) == 0
    last = json.loads(capsys.readouterr().out)
    assert last["weights"] == "last" and last["test_log_likelihood"] != result["test_log_likelihood"]


def test_npz_data_conv_arch_and_gaussian_likelihood(tmp_path):
    rng = np.random.default_rng(3)
    images = (rng.random((120, 12, 12)) * 255).astype(np.uint8)
    np.savez(tmp_path / "toy.npz", x=images, y=rng.integers(0, 3, 120))
    out = tmp_path / "run"
    rc = cli.main(["train", "--data", str(tmp_path / "toy.npz"), "--arch", "conv", "--channels", "4,8",
                   "--likelihood", "gaussian", "--obs-var", "scalar", "--latent-dim", "2", "--epochs", "2",
                   "--batch-size", "32", "--warmup", "1", "--free-bits", "0.1", "--eval-samples", "5",
                   "--log-every", "2", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    state = load_checkpoint(out)
    assert state["model_config"]["arch"] == "conv" and state["model_config"]["image_shape"] == [1, 12, 12]
    assert state["train_config"]["binarize"] is None  # auto: none for a Gaussian likelihood
    assert "obs_logvar" in state["model_state"]
    for name in ("samples.png", "reconstructions.png", "curve.png", "latents.png"):
        _png(out / name)


def test_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--amp", "--device", "cpu", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "CUDA" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--hidden", "0,3", "--out", str(tmp_path), *FAST[2:]])
    assert "--hidden must be comma-separated positive integers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["sample", str(tmp_path / "missing")])
    assert exc.value.code == 2 and "not found" in capsys.readouterr().err


def test_every_flag_has_help():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("train", "sample", "eval"):
        for action in sub.choices[name]._actions:
            assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest}"
    train_help = sub.choices["train"].format_help()
    for flag in ("--data", "--data-dir", "--epochs", "--batch-size", "--lr", "--latent-dim", "--hidden",
                 "--arch", "--likelihood", "--obs-var", "--beta", "--warmup", "--free-bits", "--seed",
                 "--device", "--amp", "--compile", "--out", "--resume", "--eval-samples", "--loss-impl"):
        assert flag in train_help


def test_bench_delegates_to_fastvae_bench(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("fastvae.bench")
    fake.add_arguments = lambda p: p.add_argument("--size", type=int, default=1, help="size")
    fake.command = lambda args: calls.append(args.size) or 0
    monkeypatch.setitem(sys.modules, "fastvae.bench", fake)
    import fastvae

    monkeypatch.setattr(fastvae, "bench", fake, raising=False)
    assert cli.main(["bench", "--size", "7"]) == 0
    assert calls == [7]


def test_bench_command_runs_the_real_harness(tmp_path):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--device", "cpu", "--quick", "--elbo-only", "--dtype", "float32", "--no-compile",
                     "--no-train", "--repeats", "2", "--no-plot", "--out", str(out)]) == 0
    assert out.exists()


def test_python_m_fastvae_help():
    proc = subprocess.run([sys.executable, "-m", "fastvae", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "sample", "eval", "bench"):
        assert command in proc.stdout
