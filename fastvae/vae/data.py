"""Small data loaders for VAE experiments: scikit-learn's 8x8 digits, MNIST IDX files, .npz arrays.

Every loader returns images as float32 tensors in [0, 1], one flattened example per row, and
integer labels (or None). `binarize` turns grey levels into {0, 1} for Bernoulli likelihoods,
once ("static") or afresh on every call ("dynamic", meant for each training batch); it is the
only binarisation in fastvae (the trainer uses it too), with one random stream.
"""
from __future__ import annotations

import dataclasses
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from .amat import load_binarized_mnist, read_bytes
from .photos import load_photos

__all__ = [
    "Dataset",
    "load_digits",
    "load_idx",
    "read_idx",
    "load_npz",
    "binarize",
    "load_dataset",
    "default_mnist_dir",
    "default_binarized_mnist_dir",
]

PathLike = Union[str, os.PathLike]
_BINARIZE_MODES = ("static", "dynamic")
# IDX magic numbers: two zero bytes, the element type (0x08 = unsigned byte), the number of dims.
_IDX_UBYTE = 0x08
_MNIST_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
# The project's convention for the 10,000 MNIST test digits when no training split is present.
_MNIST_T10K_TRAIN = 8000


@dataclass
class Dataset:
    """Train/test split of flattened images in [0, 1] with optional integer labels."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    train_labels: Optional[torch.Tensor]
    test_labels: Optional[torch.Tensor]
    image_shape: Tuple[int, ...]
    #: Name of the split in ``test`` ("valid" for binarised MNIST), and every held-out split by name.
    test_split: str = "test"
    splits: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def split(self, name: Optional[str]) -> torch.Tensor:
        """The held-out split ``name`` (None: ``test``); ValueError naming the ones there are."""
        if name is None or name == self.test_split:
            return self.test
        if name not in self.splits:
            have = sorted({self.test_split, *self.splits})
            raise ValueError(f"split must be one of {have} for data set {self.name!r}, got {name!r}")
        return self.splits[name]

    @property
    def input_dim(self) -> int:
        """Number of values per example (product of image_shape)."""
        return math.prod(self.image_shape)


def binarize(
    x: torch.Tensor,
    mode: str = "static",
    generator: Optional[torch.Generator] = None,
    share: Tuple[int, int] = (0, 1),
    check_range: bool = True,
) -> torch.Tensor:
    """Binarise grey levels in [0, 1]: "static" thresholds at 0.5, "dynamic" draws x ~ Bernoulli(x).

    fastvae's one binarisation (data sets, the trainer's batches and its test set all use it).
    A dynamic draw compares x with uniforms drawn on the CPU from ``generator`` (default:
    torch's global CPU generator) and copied to x's device without waiting for it, so one
    generator state gives the same bits on every device.

    share: ``(i, n)`` when x is the i-th of n equal row blocks of a batch (one rank's slice under
    DDP): the uniforms are drawn for the whole batch and block i is used, so the bits do not
    depend on how many ranks share the batch. check_range: check that a dynamic x lies in
    [0, 1]; this reads x on the host, so a training step whose data was checked once skips it.
    """
    if mode not in _BINARIZE_MODES:
        raise ValueError(f"mode must be one of {_BINARIZE_MODES}, got {mode!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating tensor of grey levels in [0, 1], got {what}")
    if mode == "static":
        return (x > 0.5).to(x.dtype)
    if check_range and x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("dynamic binarisation needs x in [0, 1] (the Bernoulli probabilities)")
    index, count = share
    rows = x.shape[0] if x.dim() else 1
    u = torch.rand((rows * count, *x.shape[1:]), generator=generator, pin_memory=x.is_cuda)
    u = u[index * rows:(index + 1) * rows].view(x.shape)
    return (u.to(x.device, non_blocking=True) < x).to(x.dtype)


def _maybe_binarize(x: torch.Tensor, mode: Optional[str]) -> torch.Tensor:
    return x if mode is None else binarize(x, mode)


def _check_binarize_arg(mode: Optional[str]) -> None:
    if mode is not None and mode not in _BINARIZE_MODES:
        raise ValueError(f"binarize must be None or one of {_BINARIZE_MODES}, got {mode!r}")


def load_digits(binarize: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits: images (1797, 64) in [0, 1] and labels (1797,).

    Needs scikit-learn (``pip install fastvae[digits]``). ``binarize``: None, "static" or
    "dynamic" (one draw, fixed from then on).
    """
    _check_binarize_arg(binarize)
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:
        raise ImportError(
            "load_digits needs scikit-learn; install it with `pip install fastvae[digits]`"
        ) from err
    bunch = _sk_load_digits()
    # Grey levels run 0..16 in this data set.
    images = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32) / 16.0)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return _maybe_binarize(images, binarize), labels


def read_idx(path: PathLike, magic: Optional[int] = None) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped when its name ends in .gz) into a numpy array.

    ``magic`` is the expected 32-bit magic number (e.g. 0x803 for MNIST images); a file whose
    header, type or size does not match raises ValueError.
    """
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    if data[2] != _IDX_UBYTE:
        raise ValueError(f"{path}: IDX element type 0x{data[2]:02x} unsupported (only unsigned bytes, 0x08)")
    found = struct.unpack(">I", data[:4])[0]
    if magic is not None and found != magic:
        raise ValueError(f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: IDX header promises {expected} bytes of data for shape {dims}, "
            f"file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(data_dir: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise FileNotFoundError(f"MNIST file not found: {data_dir / stem}.gz (or uncompressed {stem})")


def load_idx(data_dir: PathLike, split: str = "t10k") -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST-format split from ``data_dir``: images (N, H*W) in [0, 1] and labels (N,) int64.

    Reads ``{split}-images-idx3-ubyte[.gz]`` and ``{split}-labels-idx1-ubyte[.gz]``.
    """
    if split not in ("t10k", "train"):
        raise ValueError(f"split must be 't10k' or 'train', got {split!r}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MNIST data directory not found: {data_dir}")
    images_path = _find_idx(data_dir, f"{split}-images-idx3-ubyte")
    images = read_idx(images_path, _MNIST_MAGIC["images"])
    if images.shape[0] == 0 or images.size == 0:
        raise ValueError(f"{images_path}: holds no images (IDX shape {images.shape})")
    labels = read_idx(_find_idx(data_dir, f"{split}-labels-idx1-ubyte"), _MNIST_MAGIC["labels"])
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{data_dir}: {images.shape[0]} images but {labels.shape[0]} labels in split {split!r}"
        )
    x = torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def _read_npz(
    path: PathLike, key: str, label_keys: Tuple[str, ...] = ("y", "labels")
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Images as stored (N, ...) scaled to [0, 1], and the first of ``label_keys`` present or None."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    with np.load(path, allow_pickle=False) as npz:
        if key not in npz.files:
            raise ValueError(f"{path}: no array named {key!r}; it holds {sorted(npz.files)}")
        images = npz[key]
        labels = next((npz[k] for k in label_keys if k in npz.files), None)
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"{path}: {key!r} must be (N, ...) with N >= 1, got shape {images.shape}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    elif np.issubdtype(images.dtype, np.floating) or images.dtype == np.bool_:
        images = images.astype(np.float32)
        if images.min() < 0 or images.max() > 1:
            raise ValueError(f"{path}: float images in {key!r} must lie in [0, 1] (uint8 is scaled by 1/255)")
    else:
        raise ValueError(f"{path}: {key!r} has dtype {images.dtype}; expected uint8, bool or float")
    if labels is not None and labels.shape[0] != images.shape[0]:
        raise ValueError(f"{path}: {images.shape[0]} images in {key!r} but {labels.shape[0]} labels")
    return images, labels


def _as_tensors(
    images: np.ndarray, labels: Optional[np.ndarray]
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    x = torch.from_numpy(images.reshape(images.shape[0], -1))
    return x, (torch.from_numpy(labels.astype(np.int64)) if labels is not None else None)


def load_npz(path: PathLike, key: str = "x") -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Images from array ``key`` of an .npz file, flattened to (N, D) in [0, 1] (uint8 is divided
    by 255), and labels from array "y" or "labels" when present, else None."""
    return _as_tensors(*_read_npz(path, key))


def default_mnist_dir() -> Path:
    """$FASTVAE_MNIST_DIR, else the project's shared copy at <repo>/../shared/data/mnist-t10k."""
    env = os.environ.get("FASTVAE_MNIST_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist-t10k"


def default_binarized_mnist_dir() -> Path:
    """$FASTVAE_BINARIZED_MNIST_DIR, else <repo>/../shared/data/binarized-mnist."""
    env = os.environ.get("FASTVAE_BINARIZED_MNIST_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "binarized-mnist"


def _image_shape(per_example: Tuple[int, ...]) -> Tuple[int, ...]:
    if len(per_example) == 3:
        return per_example
    if len(per_example) == 2:
        return (1, *per_example)
    side = math.isqrt(per_example[0])
    return (1, side, side) if side * side == per_example[0] else per_example


def _split(x: torch.Tensor, y: Optional[torch.Tensor], n_train: int):
    return x[:n_train], x[n_train:], (y[:n_train] if y is not None else None), (y[n_train:] if y is not None else None)


def load_dataset(
    name: str,
    data_dir: Optional[PathLike] = None,
    binarize: Optional[str] = None,
    key: str = "x",
    test_fraction: float = 0.2,
) -> Dataset:
    """Load "digits", "mnist", "binarized-mnist", "photos" or a path to an .npz file as a train/test `Dataset`.

    - "digits": first 80% of scikit-learn's digits for training, the rest for testing.
    - "mnist": from ``data_dir`` (default `default_mnist_dir()`); the train split when its files
      are there and t10k as test, otherwise t10k images 0-7999 train and 8000-9999 test.
    - "binarized-mnist": Larochelle's static binarisation from ``data_dir`` (default
      `default_binarized_mnist_dir()`): train, "valid" as the test split, and "test" in
      ``splits`` when its file is there (already 0/1: ``binarize`` does not apply).
    - "photos": 3x32x32 RGB patches of scikit-learn's two sample photographs
      (`fastvae.vae.photos.load_photos`), train and test from separate regions of each.
    - "*.npz": arrays ``{key}_train``/``{key}_test`` when present, else ``key`` split by
      ``test_fraction`` (last part for testing).
    ``binarize``: None (grey levels), "static" or "dynamic" (one fixed draw).
    """
    _check_binarize_arg(binarize)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if name == "digits":
        x, y = load_digits()
        n_train = int(round(len(x) * (1 - test_fraction)))
        parts, shape = _split(x, y, n_train), (1, 8, 8)
    elif name == "mnist":
        root = Path(data_dir) if data_dir is not None else default_mnist_dir()
        test_x, test_y = load_idx(root, "t10k")
        if any(root.glob("train-*-idx?-ubyte*")):
            # A half-present train split is an error, not a silent fallback to t10k.
            train_x, train_y = load_idx(root, "train")
            parts = (train_x, test_x, train_y, test_y)
        else:
            if len(test_x) <= _MNIST_T10K_TRAIN:
                raise ValueError(f"{root}: the t10k files hold {len(test_x)} images, too few to split into "
                                 f"{_MNIST_T10K_TRAIN} training and some test images (or add train-* files)")
            parts = _split(test_x, test_y, _MNIST_T10K_TRAIN)
        shape = (1, 28, 28)
    elif name == "binarized-mnist":
        splits = load_binarized_mnist(Path(data_dir) if data_dir is not None else default_binarized_mnist_dir())
        return Dataset(name=name, train=splits["train"], test=splits["valid"], train_labels=None, test_labels=None,
                       image_shape=(1, 28, 28), test_split="valid", splits=splits)
    elif name == "photos":
        train, test = load_photos()
        parts, shape = (train, test, None, None), (3, 32, 32)
    elif str(name).endswith(".npz"):
        path = Path(name) if data_dir is None else Path(data_dir) / name
        parts, shape = _npz_parts(path, key, test_fraction)
    else:
        raise ValueError(f"name must be 'digits', 'mnist', 'binarized-mnist', 'photos' or a path to an .npz file, "
                         f"got {name!r}")
    train, test, train_labels, test_labels = parts
    return Dataset(
        name=str(name),
        train=_maybe_binarize(train, binarize),
        test=_maybe_binarize(test, binarize),
        train_labels=train_labels,
        test_labels=test_labels,
        image_shape=tuple(int(s) for s in shape),
    )


def _npz_parts(path: Path, key: str, test_fraction: float):
    """(train, test, train_labels, test_labels), image_shape from an .npz file."""
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    with np.load(path, allow_pickle=False) as npz:
        has_split = f"{key}_train" in npz.files and f"{key}_test" in npz.files
    if has_split:
        train, train_y = _read_npz(path, f"{key}_train", ("y_train", "labels_train"))
        test, test_y = _read_npz(path, f"{key}_test", ("y_test", "labels_test"))
        if train.shape[1:] != test.shape[1:]:
            raise ValueError(f"{path}: train examples {train.shape[1:]} differ from test examples {test.shape[1:]}")
        (tr, tr_y), (te, te_y) = _as_tensors(train, train_y), _as_tensors(test, test_y)
        return (tr, te, tr_y, te_y), _image_shape(train.shape[1:])
    images, labels = _read_npz(path, key)
    n_train = int(round(len(images) * (1 - test_fraction)))
    if not 0 < n_train < len(images):
        raise ValueError(f"{path}: {len(images)} examples are too few to split with test_fraction={test_fraction}")
    x, y = _as_tensors(images, labels)
    return _split(x, y, n_train), _image_shape(images.shape[1:])
