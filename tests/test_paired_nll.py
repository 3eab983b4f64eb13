"""benchmarks/paired_nll.py: two checkpoints scored on the same images, the paired difference."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from fastvae.training import Trainer, TrainConfig, load_model
from fastvae.vae import build_hierarchical_vae, build_mlp_vae
from tests.scripts import load_script

P = load_script("paired_nll")


def _checkpoint(model, data, out: Path) -> Path:
    Trainer(model, data, None, TrainConfig(epochs=1, batch_size=16, device="cpu", eval_samples=0, progress=False),
            out_dir=out).fit()
    return out / "checkpoint.pt"


def test_paired_difference_of_two_checkpoints(tmp_path, monkeypatch, capsys):
    gen = torch.Generator().manual_seed(3)
    images = (torch.rand(37, 784, generator=gen) < 0.3).float()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "binarized_mnist_valid.amat").write_text(
        "\n".join(" ".join(str(int(v)) for v in row) for row in images.tolist()) + "\n")
    torch.manual_seed(0)
    flat = _checkpoint(build_mlp_vae(784, hidden=(16,), latent_dim=4), images, tmp_path / "flat")
    deep = _checkpoint(build_hierarchical_vae(latent_dims=(4, 2), hidden=((16,), (8,))), images, tmp_path / "deep")
    out = tmp_path / "paired.json"
    monkeypatch.setattr(sys, "argv", ["paired_nll.py", str(flat), str(deep), "--valid", "30", "-k", "7",
                                      "--data-dir", str(data_dir), "--seed", "5", "--out", str(out)])
    P.main()
    result = json.loads(out.read_text())
    first, second = result["models"][str(flat)], result["models"][str(deep)]
    pair = result["better_than_first"][str(deep)]
    assert result["data"].endswith("first 30") and first["epoch"] == second["epoch"] == 1
    # Each model's scores are its own seeded IS estimates on the first 30 images.
    model, _ = load_model(deep)
    expected = P.per_image_nll(model.eval(), images[:30], 7, 6)
    assert second["nll"] == pytest.approx(expected.mean().item(), rel=1e-12)
    torch.manual_seed(6)
    with torch.no_grad():
        direct = -model.log_likelihood(images[:30], num_samples=7).double()
    assert torch.allclose(expected, direct, rtol=1e-6)
    assert pair["mean"] == pytest.approx(first["nll"] - second["nll"], rel=1e-9, abs=1e-9)
    assert 0 < pair["paired_se"] and 0 <= pair["fraction_of_images_better"] <= 1
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == 2 and printed[1]["paired_se"] == pair["paired_se"]


def test_one_checkpoint_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["paired_nll.py", str(tmp_path / "a.pt")])
    with pytest.raises(SystemExit):
        P.main()
