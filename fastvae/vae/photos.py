"""RGB patches of the two photographs scikit-learn ships (``china.jpg``, ``flower.jpg``, 427x640):
an 8-bit colour data set for the image likelihoods that needs no download.

Patches are cut on a grid of ``stride`` pixels. Train and test come from different regions of
each photograph (never overlapping): the last ``test_fraction`` of its columns is the test
region, the rest the training region, so a test patch shares no pixel with a training patch.
Values are the photographs' 8-bit levels divided by 255, so ``round(x * 255)`` gives the levels
back exactly (what the discretised likelihoods read).
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch

__all__ = ["load_photos", "photo_patches"]


def _check(name: str, value: object, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def photo_patches(image: np.ndarray, patch: int, stride: int, col_start: int, col_stop: int) -> np.ndarray:
    """Every ``patch`` x ``patch`` window of ``image`` (H, W, C) on a ``stride`` grid whose columns
    lie inside [col_start, col_stop), as (N, C, patch, patch) in row-major grid order."""
    h, w = image.shape[:2]
    if not 0 <= col_start < col_stop <= w:
        raise ValueError(f"columns [{col_start}, {col_stop}) do not lie inside the image's width {w}")
    out: List[np.ndarray] = []
    for top in range(0, h - patch + 1, stride):
        for left in range(col_start, col_stop - patch + 1, stride):
            out.append(image[top:top + patch, left:left + patch].transpose(2, 0, 1))
    if not out:
        raise ValueError(f"no {patch}x{patch} patch fits in columns [{col_start}, {col_stop}) of a {h}x{w} image")
    return np.stack(out)


def load_photos(patch: int = 32, stride: int = 16, test_fraction: float = 0.2) -> Tuple[torch.Tensor, torch.Tensor]:
    """(train, test) patches of scikit-learn's two sample photographs, flattened float32 in [0, 1].

    Each row is one patch in (3, patch, patch) channel-first order, flattened. With the defaults:
    1550 training and 350 test patches of 3x32x32. Needs scikit-learn (``pip install
    fastvae[digits]``) and Pillow, which scikit-learn uses to read the JPEGs.
    """
    _check("patch", patch, 1)
    _check("stride", stride, 1)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as err:
        raise ImportError("load_photos needs scikit-learn; install it with `pip install fastvae[digits]`") from err
    train, test = [], []
    for image in load_sample_images().images:
        image = np.asarray(image, dtype=np.uint8)
        w = image.shape[1]
        split = w - int(round(w * test_fraction))
        if split < patch or w - split < patch:
            raise ValueError(f"test_fraction={test_fraction} leaves a region narrower than a {patch}-pixel patch")
        train.append(photo_patches(image, patch, stride, 0, split))
        test.append(photo_patches(image, patch, stride, split, w))

    def flat(parts: List[np.ndarray]) -> torch.Tensor:
        x = np.concatenate(parts)
        return torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255.0)

    return flat(train), flat(test)
