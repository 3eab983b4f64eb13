"""The K-sample objectives in training: TrainConfig's objective flags, the learning-rate schedule
and time budget, the recipes, ``fastvae eval``'s bound and standard error, and Larochelle's
binarised MNIST (.amat, plain and gzipped; the shared copy when present)."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from fastvae import cli
from fastvae.cli.recipes import RECIPES
from fastvae.training import Trainer, TrainConfig, load_checkpoint
from fastvae.training.schedule import lr_at, out_of_time, progress
from fastvae.vae import build_mlp_vae
from fastvae.vae.amat import read_amat
from fastvae.vae.data import default_binarized_mnist_dir, load_dataset

# ../shared/data/binarized-mnist next to the repository (or $FASTVAE_BINARIZED_MNIST_DIR).
SHARED = default_binarized_mnist_dir()
FAST = ["--hidden", "16", "--no-progress", "--device", "cpu", "--no-plots"]


# ---------------------------------------------------------------------- config and schedule
@pytest.mark.parametrize("kwargs, match", [
    (dict(objective="iwae", gradient="stl"), "not supported"),
    (dict(objective="elbo", gradient="dreg"), "not supported"),
    (dict(objective="iwae", num_samples=5, free_bits=0.5), "free_bits"),
    (dict(num_samples=0), "num_samples"),
    (dict(time_budget=0), "time_budget"),
    (dict(lr_schedule="step"), "lr_schedule"),
])
def test_train_config_refuses_bad_objectives(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("schedule", ["cosine", "exponential"])
def test_lr_schedules_run_from_lr_to_lr_final(schedule):
    cfg = TrainConfig(lr=1e-3, lr_final=1e-5, lr_schedule=schedule)
    lrs = [lr_at(cfg, f / 10) for f in range(11)]
    assert math.isclose(lrs[0], 1e-3) and math.isclose(lrs[-1], 1e-5)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(TrainConfig(lr=2e-3), 0.7) == 2e-3  # constant


def test_progress_is_the_larger_of_steps_and_time():
    cfg = TrainConfig(epochs=10, time_budget=2.0)
    assert progress(cfg, 50, 10, 0.0) == 0.5
    assert progress(cfg, 10, 10, 90.0) == 0.75  # 1.5 of 2 minutes
    assert progress(cfg, 1000, 10, 0.0) == 1.0
    assert not out_of_time(cfg, 119.0) and out_of_time(cfg, 120.0)
    assert not out_of_time(TrainConfig(), 1e9)


def _digits():
    return torch.rand(64, 12)


def test_trainer_runs_each_objective_and_stops_at_its_time_budget(tmp_path):
    data = _digits()
    for objective, k, gradient in (("iwae", 3, "dreg"), ("iwae", 2, "reparam"), ("elbo", 2, "stl")):
        torch.manual_seed(0)
        cfg = TrainConfig(epochs=2, batch_size=16, objective=objective, num_samples=k, gradient=gradient,
                          lr_schedule="cosine", device="cpu", progress=False, eval_samples=0)
        trainer = Trainer(build_mlp_vae(12, (8,), 2), data, data[:16], cfg)
        summary = trainer.fit()
        assert summary["step"] == 8 and math.isfinite(summary["train_loss"])
        # The cosine schedule has moved the learning rate most of the way down.
        assert trainer.optimizer.param_groups[0]["lr"] < 0.2 * cfg.lr
    # A budget of a millisecond ends the run after its first step, with a partial epoch saved.
    cfg = TrainConfig(epochs=50, batch_size=16, time_budget=1e-3 / 60, device="cpu", progress=False)
    trainer = Trainer(build_mlp_vae(12, (8,), 2), data, data[:16], cfg, out_dir=tmp_path)
    summary = trainer.fit()
    assert 1 <= summary["step"] < 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "partial_epoch"


# ---------------------------------------------------------------------- CLI
def test_iwae_recipe_builds_the_two_layer_model_of_its_doc(tmp_path):
    out = tmp_path / "run"
    rc = cli.main(["train", "--recipe", "iwae-mnist", "--data", "digits", "--max-steps", "2", "--batch-size", "20",
                   "--eval-samples", "2", "--out", str(out), "--no-progress", "--device", "cpu", "--no-plots"])
    assert rc == 0
    mcfg = load_checkpoint(out)["model_config"]
    assert mcfg["arch"] == "hierarchical" and mcfg["latent_dims"] == [50, 25]
    assert mcfg["hidden"] == [[200, 200], [50, 50]] and mcfg["activation"] == "tanh"


def test_recipe_sets_every_setting_and_flags_override_it(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--recipe", "iwae-mnist-1layer", "--data", "digits", "--max-steps", "3",
                   "--batch-size", "20", "--eval-samples", "4", "--ll-every", "1", "--out", str(out), *FAST])
    assert rc == 0
    state = load_checkpoint(out)
    tcfg, recipe = state["train_config"], RECIPES["iwae-mnist-1layer"]
    for name in ("objective", "num_samples", "gradient", "lr", "lr_schedule", "time_budget", "warmup"):
        assert tcfg[name] == recipe[name]
    assert tcfg["batch_size"] == 20 and tcfg["max_steps"] == 3  # given flags win
    assert state["model_config"]["arch"] == "mlp" and state["model_config"]["latent_dim"] == recipe["latent_dim"]
    assert state["model_config"]["hidden"] == [16] and state["model_config"]["activation"] == "tanh"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "test_log_likelihood" in records[0] and math.isfinite(records[0]["test_log_likelihood"])

    capsys.readouterr()
    rc = cli.main(["eval", str(out), "--num-samples", "6", "--json", "--device", "cpu", "--no-progress"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bound_objective"] == "iwae" and result["bound_num_samples"] == 5
    assert result["num_samples"] == 6 and result["test_log_likelihood_se"] > 0
    assert result["nll"] == -result["test_log_likelihood"]
    # The trained bound (K=5) lies below the K=6 estimate only up to noise; both are finite numbers of nats.
    assert math.isfinite(result["test_bound"]) and result["test_bound"] <= result["test_elbo"] + 50


def test_recipe_with_resume_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["train", "--recipe", "vae-mnist", "--resume", str(tmp_path), *FAST])


def test_objective_flags_are_checked(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["train", "--objective", "iwae", "--gradient", "stl", "--out", str(tmp_path), *FAST])


# ---------------------------------------------------------------------- binarised MNIST
def _write_amat(path: Path, rows: torch.Tensor) -> None:
    text = "\n".join(" ".join(str(int(v)) for v in row) for row in rows) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def test_read_amat_plain_and_gzipped(tmp_path):
    rows = (torch.rand(5, 784) > 0.7).float()
    for name in ("a.amat", "a.amat.gz"):
        _write_amat(tmp_path / name, rows)
        assert torch.equal(read_amat(tmp_path / name), rows)


def test_read_amat_refuses_other_files(tmp_path):
    (tmp_path / "grey.amat").write_text("0.5 1 0\n")
    with pytest.raises(ValueError, match="grey.amat"):
        read_amat(tmp_path / "grey.amat", cols=3)
    (tmp_path / "short.amat").write_text("0 1 0\n1 1\n")
    with pytest.raises(ValueError, match="example 1 has 2 values"):
        read_amat(tmp_path / "short.amat", cols=3)
    (tmp_path / "wide.amat").write_text("0 10 0\n")
    with pytest.raises(ValueError, match="one digit"):
        read_amat(tmp_path / "wide.amat", cols=3)


def test_load_dataset_reads_the_splits(tmp_path):
    train, valid, test = ((torch.rand(n, 784) > 0.8).float() for n in (6, 3, 2))
    _write_amat(tmp_path / "binarized_mnist_train.amat.gz", train)
    with pytest.raises(FileNotFoundError, match="valid"):
        load_dataset("binarized-mnist", data_dir=tmp_path)
    _write_amat(tmp_path / "binarized_mnist_valid.amat", valid)
    data = load_dataset("binarized-mnist", data_dir=tmp_path)
    assert torch.equal(data.train, train) and torch.equal(data.test, valid) and data.test_split == "valid"
    with pytest.raises(ValueError, match="split must be one of"):
        data.split("test")
    _write_amat(tmp_path / "binarized_mnist_test.amat", test)
    data = load_dataset("binarized-mnist", data_dir=tmp_path)
    assert torch.equal(data.split("test"), test) and torch.equal(data.split("valid"), valid)
    assert data.image_shape == (1, 28, 28)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared binarised MNIST is not at {SHARED}")
def test_shared_binarized_mnist():
    data = load_dataset("binarized-mnist", data_dir=SHARED)
    assert data.train.shape == (50000, 784) and data.test.shape == (10000, 784)
    for x in (data.train, data.test):
        assert set(x.unique().tolist()) == {0.0, 1.0}
        assert 0.1 < x.mean().item() < 0.16  # about 13% of MNIST's pixels are on
