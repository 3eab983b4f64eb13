"""Larochelle & Murray's statically binarised MNIST in its original ``.amat`` text format.

One example a line, 784 values of 0 or 1 separated by spaces; files
``binarized_mnist_{train,valid,test}.amat``, plain or gzipped (``.amat.gz``). The split used by
the IWAE, VAE and normalising-flow papers' "binarised MNIST" tables (50,000 / 10,000 / 10,000).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch

__all__ = ["read_amat", "find_amat", "load_binarized_mnist", "read_bytes", "AMAT_SPLITS"]

PathLike = Union[str, os.PathLike]
AMAT_SPLITS = ("train", "valid", "test")
_PIXELS = 784
_ZERO, _ONE, _SPACE, _NEWLINE, _CR, _TAB = (ord(c) for c in "01 \n\r\t")


def read_bytes(path: Path) -> bytes:
    """The bytes of ``path``, decompressed when its name ends in .gz; a damaged gzip stream is a
    ValueError naming the file (a missing file stays a FileNotFoundError)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        # gzip.BadGzipFile is an OSError; a truncated stream is an EOFError.
        raise ValueError(f"{path}: cannot decompress ({err})") from err


def read_amat(path: PathLike, cols: int = _PIXELS) -> torch.Tensor:
    """The 0/1 values of an .amat file (gzipped when its name ends in .gz) as float32 (N, cols).

    A file of other characters than 0, 1 and white space, or whose lines do not all hold
    ``cols`` values, raises ValueError naming it.
    """
    path = Path(path)
    raw = read_bytes(path)
    data = np.frombuffer(raw, dtype=np.uint8)
    digit = (data == _ZERO) | (data == _ONE)
    space = (data == _SPACE) | (data == _TAB) | (data == _CR)
    newline = data == _NEWLINE
    bad = ~(digit | space | newline)
    if bad.any():
        at = int(np.argmax(bad))
        raise ValueError(f"{path}: not a binarised .amat file (byte {raw[at:at + 1]!r} at offset {at}; "
                         "expected 0, 1 and white space)")
    # Every value is one character: a digit must stand alone between separators.
    if (digit[1:] & digit[:-1]).any():
        raise ValueError(f"{path}: values longer than one digit; a binarised .amat file holds only 0 and 1")
    # Values per line: digits between newlines (a last line may lack its newline; blank lines are skipped).
    starts = np.concatenate(([0], np.flatnonzero(newline) + 1))
    starts = starts[starts < data.size]
    counts = np.add.reduceat(digit.view(np.uint8), starts, dtype=np.int64) if starts.size else starts
    counts = counts[counts > 0]
    if counts.size == 0:
        raise ValueError(f"{path}: holds no examples")
    if (counts != cols).any():
        line = int(np.argmax(counts != cols))
        raise ValueError(f"{path}: example {line} has {int(counts[line])} values, expected {cols}")
    values = (data[digit] - _ZERO).astype(np.float32)
    return torch.from_numpy(values.reshape(-1, cols))


def find_amat(data_dir: PathLike, split: str) -> Optional[Path]:
    """``binarized_mnist_{split}.amat`` or ``.amat.gz`` in data_dir, or None."""
    for name in (f"binarized_mnist_{split}.amat", f"binarized_mnist_{split}.amat.gz"):
        if (Path(data_dir) / name).is_file():
            return Path(data_dir) / name
    return None


def load_binarized_mnist(data_dir: PathLike) -> Dict[str, torch.Tensor]:
    """The splits of ``data_dir``: "train" and "valid" (both required) and "test" when present."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"binarised MNIST directory not found: {data_dir}")
    splits: Dict[str, torch.Tensor] = {}
    for split in AMAT_SPLITS:
        path = find_amat(data_dir, split)
        if path is None:
            if split == "test":
                continue
            raise FileNotFoundError(f"binarised MNIST file not found: {data_dir / f'binarized_mnist_{split}.amat'}"
                                    " (or .amat.gz)")
        splits[split] = read_amat(path)
    return splits
