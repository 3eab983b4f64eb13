"""An independent Philox4x32-10 (numpy, from the algorithm's definition) and the two counter
layouts the sampling tests need: curand's, which PyTorch's CUDA random ops use, and fastvae's.

curand_init(seed, subsequence, offset) starts a thread at the 128-bit counter
{offset / 4 (low 64 bits), subsequence (high 64 bits)} under the key {seed lo, seed hi}; each
curand4 draw (curand_uniform4, curand_normal4) uses the counter and then adds one to its low 64
bits. PyTorch passes the thread's index as the subsequence and the generator's offset, which it
moves on by 4 per counter step that each thread may use.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

MASK32 = np.uint64(0xFFFFFFFF)
TWO_POW_M32 = 2.3283064365386963e-10


def philox4x32_10(seed: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The four 32-bit output words (shape (4, n), in uint64) of the counters {low lo, low hi,
    high lo, high hi} (low and high: uint64 arrays of one shape) under the key {seed lo, seed hi}."""
    low, high = np.broadcast_arrays(np.asarray(low, np.uint64), np.asarray(high, np.uint64))
    c = [low & MASK32, low >> np.uint64(32), high & MASK32, high >> np.uint64(32)]
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & MASK32,
             (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1), p0 & MASK32]
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return np.stack(c)


def fastvae_counters(offset: int, groups: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(low, high) counter of each Philox group of a fastvae sampling call whose rng_state holds
    `offset` (csrc/common/philox.h): group g is the first curand4 draw of
    curand_init(seed, g, offset); an offset that is not a multiple of 4 (never the generator's)
    moves the subsequence to (offset % 4) * 2^62 and up."""
    groups = np.asarray(groups, np.uint64)
    low = np.full_like(groups, offset >> 2)
    return low, groups | np.uint64((offset & 3) << 62)


def box_muller(bits: np.ndarray, dtype: torch.dtype = torch.float64) -> np.ndarray:
    """The four normals (shape (n, 4), float64) the sampling kernels make of each group's words:
    (w0, w1) -> lanes 0 (cos) and 1 (sin), (w2, w3) -> lanes 2 and 3. u1, u2 and the angle are
    rounded as the kernels round them (float32 for float32 and narrower), the transcendental
    functions are float64."""
    fdt = np.float64 if dtype == torch.float64 else np.float32
    scale = fdt(TWO_POW_M32)
    eps = np.empty((bits.shape[1], 4))
    for pair in range(2):
        u1 = (bits[2 * pair].astype(fdt) + fdt(1)) * scale
        angle = fdt(6.2831853071795864) * (bits[2 * pair + 1].astype(fdt) * scale)
        radius = np.sqrt(-2.0 * np.log(u1.astype(np.float64)))
        eps[:, 2 * pair] = radius * np.cos(angle.astype(np.float64))
        eps[:, 2 * pair + 1] = radius * np.sin(angle.astype(np.float64))
    return eps


def fastvae_eps(seed: int, offset: int, count: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """eps 0 .. count-1 of a fastvae sampling call with rng_state (seed, offset)."""
    groups = np.arange((count + 3) // 4, dtype=np.uint64)
    bits = philox4x32_10(seed, *fastvae_counters(offset, groups))
    return torch.from_numpy(box_muller(bits, dtype).reshape(-1)[:count])
