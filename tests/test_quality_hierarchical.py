"""benchmarks/quality_hierarchical.py without training: the data each ``--data`` gives the two
models (Larochelle's split, or the grey MNIST test images binarised once or per batch)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
Q = load_script("quality_hierarchical")


def _args(**kw) -> argparse.Namespace:
    base = dict(data="mnist-t10k", train_binarization="fixed", data_dir=SHARED / "binarized-mnist",
                mnist_dir=SHARED / "mnist-t10k", valid=10000)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.skipif(not (SHARED / "mnist-t10k").is_dir(), reason="../shared/data/mnist-t10k not present")
def test_grey_mnist_split_fixed_and_dynamic():
    fixed, valid, mode, name = Q.load_data(_args())
    grey, valid2, mode2, name2 = Q.load_data(_args(train_binarization="dynamic", valid=500))
    assert fixed.shape == grey.shape == (8000, 784) and valid.shape == (2000, 784)
    assert mode is None and mode2 == "dynamic" and "fixed" in name and "dynamic" in name2
    # One draw of the valid images for every run; a binary fixed train set whose mean follows the grey levels.
    assert torch.equal(valid[:500], valid2) and set(valid.unique().tolist()) == {0.0, 1.0}
    assert set(fixed.unique().tolist()) == {0.0, 1.0} and grey.unique().numel() > 2
    assert abs(fixed.mean().item() - grey.mean().item()) < 0.01
    assert not torch.equal(fixed, (grey > 0.5).float())  # drawn, not thresholded


@pytest.mark.skipif(not (SHARED / "binarized-mnist").is_dir(), reason="../shared/data/binarized-mnist not present")
def test_larochelle_split_is_read_as_is():
    train, valid, mode, name = Q.load_data(_args(data="binarized-mnist", valid=300))
    assert train.shape == (50000, 784) and valid.shape == (300, 784) and mode is None and "Larochelle" in name


def test_hidden_and_latent_dims_shape_the_hierarchical_model():
    layers = Q.parse_layers("200,200/50,50", "50,25")
    assert layers == {"hidden": [(200, 200), (50, 50)], "latent_dims": (50, 25)}
    model = Q.build("hierarchical", layers)
    assert model.config["hidden"] == [[200, 200], [50, 50]] and model.latent_dims == (50, 25)
    assert Q.parse_layers(None, None) == {} and Q.build("hierarchical").config["hidden"] == [[100, 100], [50, 50]]
