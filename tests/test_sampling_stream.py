"""The sampling ops' Philox stream beside PyTorch's own CUDA random ops (issue 22, item 1).

PyTorch's CUDA random ops (dropout, randn, rand, bernoulli, ...) draw from one generator under
one key: thread t of an op whose generator offset is O uses the counters {O / 4 + k, t} for its
k-th curand4 draw (tests/philox_ref.py), and the generator then moves its offset on by 4 per
step that each thread may use. fastvae's CUDA sampler draws from the same generator and key,
so its counters must lie where the generator reserved them for the call, or its eps are bits
that a dropout mask or a randn already used. No GPU needed: the CPU op draws the CUDA kernels'
stream for a given (seed, offset) (tests/test_emu.py and tests/test_cuda.py check that), and
the ops of PyTorch are modelled from their launch code (ATen's calc_execution_policy and
fused_dropout) for an H200.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import pytest
import torch

from . import emu
from .philox_ref import box_muller, fastvae_counters, fastvae_eps, philox4x32_10

SMS, THREADS_PER_SM, BLOCK = 132, 2048, 256  # an H200, ATen's 256-thread random kernels


@dataclass
class TorchRandomOp:
    """One of PyTorch's CUDA random ops on numel elements, 4 per curand4 draw: ATen's launch
    gives min(SMs * blocks per SM, ceil(numel / 256)) blocks of 256 threads, each thread takes
    ceil(numel / (threads * 4)) draws, and the generator's offset moves on by 4 per draw."""
    name: str
    numel: int

    @property
    def threads(self) -> int:
        return min(SMS * (THREADS_PER_SM // BLOCK), -(-self.numel // BLOCK)) * BLOCK

    @property
    def steps(self) -> int:
        return (self.numel - 1) // (self.threads * 4) + 1

    @property
    def increment(self) -> int:
        return 4 * self.steps

    def counters(self, offset: int) -> Tuple[np.ndarray, np.ndarray]:
        """(low, high) of every counter the op draws at generator offset `offset`."""
        step, thread = np.meshgrid(np.arange(self.steps, dtype=np.uint64),
                                   np.arange(self.threads, dtype=np.uint64), indexing="ij")
        return np.uint64(offset // 4) + step.reshape(-1), thread.reshape(-1)


@dataclass
class FastvaeCall:
    """A fastvae sampling call: num_samples draws for a mu of `shape`; the CUDA op reserves 4
    offset units (csrc/cuda/sampling.cu sampling_philox)."""
    name: str
    shape: Tuple[int, ...]
    num_samples: int = 1
    increment: int = 4


# Early training after torch.manual_seed: dropout in the encoder, the sampler, an eager randn,
# dropout in the decoder, the binarisation's rand, the sampler with K samples, ...
STEP: List[object] = [
    TorchRandomOp("dropout (256, 4096)", 256 * 4096),
    FastvaeCall("reparameterize (256, 20)", (256, 20)),
    TorchRandomOp("randn (256, 20)", 256 * 20),
    TorchRandomOp("dropout (256, 512)", 256 * 512),
    FastvaeCall("reparameterize_with_kl (256, 20) x 3", (256, 20), 3),
    TorchRandomOp("rand (256, 784)", 256 * 784),
    TorchRandomOp("dropout (65536, 1024)", 65536 * 1024),
    FastvaeCall("reparameterize (64, 512) x 2", (64, 512), 2),
    TorchRandomOp("randn (4096, 4096)", 4096 * 4096),
]


def _eps_groups(seed: int, offset: int, call: FastvaeCall) -> np.ndarray:
    """The kernel's eps of the call, (groups, 4) in float64: z of the CPU op for mu 0, logvar 0."""
    mu = torch.zeros(call.shape, dtype=torch.float64)
    state = torch.tensor([seed, offset], dtype=torch.int64)
    z = torch.ops.fastvae.reparameterize(mu, torch.zeros_like(mu), call.num_samples, None, state)[0]
    flat = z.flatten().numpy()
    return np.concatenate([flat, np.zeros(-len(flat) % 4)]).reshape(-1, 4)


def _torch_normals(seed: int, ops: List[Tuple[TorchRandomOp, int]]) -> np.ndarray:
    """The normals (n, 4) fastvae's Box-Muller would make of every counter the ops draw."""
    lows, highs = zip(*(op.counters(offset) for op, offset in ops))
    return box_muller(philox4x32_10(seed, np.concatenate(lows), np.concatenate(highs)))


def _shared_groups(eps: np.ndarray, normals: np.ndarray) -> int:
    """How many rows of eps (groups of the kernel's output) are, to 1e-9, a row of normals."""
    order = np.argsort(normals[:, 0])
    first = normals[order, 0]
    shared = np.zeros(len(eps), dtype=bool)
    start = np.searchsorted(first, eps[:, 0] - 1e-9)
    for k in range(4):  # the few candidates whose first value is that close
        idx = np.minimum(start + k, len(first) - 1)
        close = np.abs(normals[order[idx]] - eps).max(axis=1) < 1e-9
        shared |= close
    return int(shared.sum())


def _run_step(seed: int) -> Tuple[List[Tuple[TorchRandomOp, int]], List[Tuple[FastvaeCall, int]]]:
    """Each op of STEP with the generator offset it draws at, in order."""
    offset, torch_ops, calls = 0, [], []
    for op in STEP:
        (calls if isinstance(op, FastvaeCall) else torch_ops).append((op, offset))
        offset += op.increment
    return torch_ops, calls


def test_eps_is_curands_first_draw_at_the_call_offset():
    """Group g of a call at offset O is curand_init(seed, g, O)'s first curand4 draw: the
    counter {O / 4, g}. Offsets from the generator are multiples of 4; one with its high word
    set and one that is not a multiple of 4 (a hand-written rng_state) follow the same rule."""
    seed = 0x2545_F491_4F6C_DD1D
    for offset in (0, 4, 8 * 1000 + 4, (7 << 34) + 12, 6):
        state = torch.tensor([seed, offset], dtype=torch.int64)
        mu = torch.zeros(3, 37, dtype=torch.float64)
        z = torch.ops.fastvae.reparameterize(mu, torch.zeros_like(mu), 2, None, state)[0]
        want = fastvae_eps(seed, offset, z.numel())
        assert (z.flatten() - want).abs().max().item() < 1e-12, offset
    low, high = fastvae_counters(8 * 1000 + 4, np.arange(3, dtype=np.uint64))
    assert low.tolist() == [2001] * 3 and high.tolist() == [0, 1, 2]


def test_no_sampling_call_draws_bits_of_another_op():
    """A training step's random ops in generator order (PyTorch's at their thread counts and
    offset increments, fastvae's sampling calls): no Philox counter of a fastvae call is one
    another op drew, found on the bits themselves (the kernel's eps against the normals of
    every counter PyTorch's ops use) and on the counters."""
    seed = 0x5DEE_CE66_D1CE_4E5B
    torch_ops, calls = _run_step(seed)
    small = [(op, o) for op, o in torch_ops if op.threads * op.steps <= 1 << 21]
    normals = _torch_normals(seed, small)
    for call, offset in calls:
        eps = _eps_groups(seed, offset, call)
        assert _shared_groups(eps, normals) == 0, call.name
        # All ops, large ones included, on the counters: a call's step is offset / 4, which the
        # generator gave to no other op, and its subsequences are its group indices.
        low, high = fastvae_counters(offset, np.arange(len(eps), dtype=np.uint64))
        for op, o in torch_ops:
            same_step = o // 4 <= int(low[0]) < o // 4 + op.steps
            assert not (same_step and int(high.min()) < op.threads), (call.name, op.name)
    # Positive control: the same detector sees the overlap a call would have at an offset the
    # generator did not reserve for it (here the first dropout's own).
    control = _eps_groups(seed, 0, calls[0][0])
    assert _shared_groups(control, normals) == len(control)


@pytest.mark.emu
@pytest.mark.skipif(not emu.AVAILABLE and not emu.REQUIRE_EMU, reason=emu.SKIP_REASON)
def test_emulated_cuda_kernels_draw_the_same_counters():
    """The CUDA sampling kernels (emulated) give the same eps for the calls of the step."""
    seed = 0x1234_5678_9ABC_DEF
    _, calls = _run_step(seed)
    for call, offset in calls[:2]:
        mu = torch.zeros(call.shape, dtype=torch.float64)
        state = torch.tensor([seed, offset], dtype=torch.int64)
        z = torch.ops.fastvae_emu.reparameterize(mu, torch.zeros_like(mu), call.num_samples, None, state)[0]
        assert (z.flatten() - fastvae_eps(seed, offset, z.numel())).abs().max().item() < 1e-12
