"""The discretized_logistic family's samplers (sample_discretized_mix_logistic,
sample_discretized_logistic): the empirical frequencies of every level (jointly over the three
channels of the mixture, so that the coupling with the channels drawn first is checked) against
the exact probabilities of the likelihood ops, with positive controls; the Philox stream (the
uniforms of the Gaussian sampler's counters); the emulated CUDA kernels drawing the CPU's levels
for the same generator state; strides, dtypes, reproducibility, argument errors, opcheck and
torch.compile.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastvae import functional as F

from .conftest import cpu_and_cuda
from .frequency_checks import assert_frequencies_differ, assert_frequencies_match, counts_of
from .philox_ref import fastvae_counters, philox4x32_10

ops = torch.ops.fastvae


def _mix_params(C, M, P, dtype=torch.float64):
    """(1, 10 M | 3 M, P) NVAE-layout params: logits N(0, 1.5^2), means U(-1.1, 1.1), log-scales
    U(-2.5, -0.5) (the last pixel's first component under the clamp), coefficients N(0, 1)."""
    blocks = [torch.randn(1, M, P) * 1.5]
    for _ in range(C):
        blocks.append(torch.rand(1, M, P) * 2.2 - 1.1)
        ls = torch.rand(1, M, P) * 2 - 2.5
        ls[0, 0, -1] = -8.0
        blocks.append(ls)
        if C == 3:
            blocks.append(torch.randn(1, M, P))
    return torch.cat(blocks, 1).to(torch.float64).to(dtype)


def _all_levels(C, bits):
    """Every joint level (L^C, C), in the order of the outcome index sum_c v_c L^(C - 1 - c)."""
    levels = torch.arange(2**bits)
    grid = torch.cartesian_prod(*([levels] * C)) if C > 1 else levels.view(-1, 1)
    return grid.view(-1, C)


def _mix_probs(params, M, bits):
    """(P, L^C) exact probabilities of every joint level of each pixel, from the likelihood op."""
    C = 3 if params.shape[1] == 10 * M else 1
    x = _all_levels(C, bits)
    rows = []
    for p in range(params.shape[2]):
        pix = params[:, :, p:p + 1].double().cpu().expand(x.shape[0], -1, -1)
        rows.append(F.discretized_mix_logistic_log_likelihood(pix, x.view(-1, C, 1), M, bits).exp())
    return torch.stack(rows)


def _outcomes(levels, bits):
    """(N, C, P) levels -> (N, P) joint outcome indices."""
    L = 2**bits
    idx = torch.zeros(levels.shape[0], levels.shape[2], dtype=torch.long)
    for c in range(levels.shape[1]):
        idx = idx * L + levels[:, c].long().cpu()
    return idx


# ---------------------------------------------------------------- frequencies against the likelihood
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("C,bits,dtype", [(3, 3, torch.float64), (1, 5, torch.float32), (1, 8, torch.float64)])
@pytest.mark.parametrize("M", [1, 5])
def test_mix_levels_follow_the_likelihood(device, C, bits, dtype, M):
    """N draws of 3 pixels (params expanded over the batch: stride 0) against exp(ll) of every
    joint level: C = 3 at 3 bits is 512 joint outcomes per pixel, whose law holds only when green
    and blue are coupled with the levels drawn for red (and green). Controls: the same counts
    against the law without coupling and with the mixture weights rolled are rejected."""
    P, N = 3, 60000 if C == 3 else 30000
    base = _mix_params(C, M, P, dtype)
    levels = F.sample_discretized_mix_logistic(base.to(device).expand(N, -1, -1), M, bits)
    assert levels.shape == (N, C, P) and levels.dtype == torch.uint8
    counts = counts_of(_outcomes(levels, bits), (2**bits) ** C)
    probs = _mix_probs(base, M, bits)
    assert_frequencies_match(counts, probs)
    if C == 3:
        uncoupled = base.clone()
        for c in range(3):
            uncoupled[:, M + c * 3 * M + 2 * M:M + (c + 1) * 3 * M] = 0
        assert_frequencies_differ(counts, _mix_probs(uncoupled, M, bits))
    if M > 1:
        rolled = base.clone()
        rolled[:, :M] = base[:, :M].roll(1, dims=1)
        assert_frequencies_differ(counts, _mix_probs(rolled, M, bits))


def _continuous_coupling_sample(base, M, bits, N):
    """NVAE's / PixelCNN++'s eager sampler: as the op, but green and blue are coupled with red's and
    green's clipped continuous draws instead of their levels' values (not the likelihood's law)."""
    top, P = 2**bits - 1, base.shape[2]
    p = base.expand(N, -1, -1)
    pick = (p[:, :M] - torch.log(-torch.log(torch.rand(N, M, P, dtype=p.dtype)))).argmax(1, keepdim=True)
    blocks = p[:, M:].reshape(N, 3, 3, M, P)
    take = lambda j: blocks[:, :, j].gather(2, pick.unsqueeze(1).expand(N, 3, 1, P)).squeeze(2)  # noqa: E731
    mean, log_scale, coef = take(0), take(1), torch.tanh(take(2))
    y, levels = [], []
    for c in range(3):
        m = mean[:, c] + (coef[:, 0] * y[0] if c == 1 else 0) + (coef[:, 1] * y[0] + coef[:, 2] * y[1] if c == 2 else 0)
        u = torch.rand(m.shape, dtype=m.dtype)
        y.append((m + log_scale[:, c].clamp(min=-7).exp() * (u.log() - (-u).log1p())).clamp(-1, 1))
        levels.append(torch.round((y[-1] + 1) / 2 * top))
    return torch.stack(levels, 1)


def test_the_frequency_test_rejects_coupling_with_continuous_draws():
    """Positive control for the coupling: the eager sampler that couples with the continuous draws
    (a law close to the likelihood's: only the rounding of red and green differs) is rejected by
    the same test at the same N that the op passes."""
    M, bits, N = 1, 3, 60000
    base = _mix_params(3, M, 3)
    counts = counts_of(_outcomes(_continuous_coupling_sample(base, M, bits, N), bits), 512)
    assert_frequencies_differ(counts, _mix_probs(base, M, bits))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_logistic_levels_follow_the_likelihood(device, dtype):
    """One logistic per subpixel, 2 channels x 4 pixels at 4 bits (a log-scale under the clamp,
    means past both edges), log_scale broadcast over the pixels: each subpixel's frequencies
    against exp(ll) of its 16 levels; control: the law of means shifted by a quarter bin."""
    N, bits = 40000, 4
    mean = (torch.rand(1, 2, 2, 2, dtype=torch.float64) * 2.6 - 1.3).to(dtype)
    log_scale = (torch.rand(1, 2, 1, 1, dtype=torch.float64) * 2 - 3).to(dtype)
    log_scale[0, 1] = -8.0
    levels = F.sample_discretized_logistic(mean.to(device).expand(N, -1, -1, -1), log_scale.to(device), bits)
    assert levels.shape == (N, 2, 2, 2) and levels.dtype == torch.uint8
    counts = counts_of(levels.reshape(N, -1), 16)

    def probs(m):
        x = torch.arange(16).view(16, 1, 1)
        ls = log_scale.double().expand_as(m).reshape(-1)
        return torch.stack([F.discretized_logistic_log_likelihood(mv.view(1, 1, 1).expand(16, 1, 1),
                                                                  lv.view(1, 1, 1).expand(16, 1, 1), x, bits).exp()
                            for mv, lv in zip(m.double().reshape(-1), ls)])

    assert_frequencies_match(counts, probs(mean))
    assert_frequencies_differ(counts, probs(mean.double() + 0.5 / 15))


# ---------------------------------------------------------------- the stream
def _uniforms(seed, offset, count):
    """Uniforms 0 .. count-1 of a call with rng_state (seed, offset), in float64: word i % 4 of
    Philox group i / 4 at the Gaussian sampler's counters, (w + 1/2) 2^-32."""
    groups = np.arange((count + 3) // 4, dtype=np.uint64)
    words = philox4x32_10(seed, *fastvae_counters(offset, groups))  # (4, groups)
    return (words.T.reshape(-1)[:count].astype(np.float64) + 0.5) * 2.0**-32


def _level(y, bits):
    top = 2**bits - 1
    return np.clip(np.floor((np.clip(y, -1, 1) + 1) / 2 * top + 0.5), 0, top).astype(np.int64)


def test_draws_are_the_samplers_philox_uniforms():
    """float64 draws recomputed from the reference Philox words: the logistic's subpixel q takes
    uniform q; the mixture's pixel q (M mixtures, C channels) uniforms q (M + C) + j: j < M the
    Gumbel noise of component j, M + c the logistic of channel c, coupled with the levels drawn."""
    seed, offset, bits = 0x1F2E_3D4C_5B6A_7988, 4 * 977, 6
    mean, ls = torch.randn(2, 3, 7, dtype=torch.float64), torch.rand(2, 3, 7, dtype=torch.float64) * 3 - 4
    state = torch.tensor([seed, offset])
    got = ops.sample_discretized_logistic(mean, ls, bits, None, state)
    u = _uniforms(seed, offset, mean.numel()).reshape(mean.shape)
    want = _level(mean.numpy() + np.exp(np.maximum(ls.numpy(), -7)) * (np.log(u) - np.log1p(-u)), bits)
    assert (got.numpy() == want).all()

    M, C, P = 4, 3, 5
    params = _mix_params(C, M, P).expand(2, -1, -1).contiguous() + torch.randn(2, 10 * M, P) * 0.1
    got = ops.sample_discretized_mix_logistic(params, M, bits, None, state)
    u = _uniforms(seed, offset, 2 * P * (M + C)).reshape(2, P, M + C)
    pr = params.numpy()
    for b in range(2):
        for p in range(P):
            m = int(np.argmax(pr[b, :M, p] - np.log(-np.log(u[b, p, :M]))))
            xs = []
            for c in range(C):
                blk = M + 3 * M * c
                mu = pr[b, blk + m, p]
                coef = [np.tanh(pr[b, M + 3 * M * k + 2 * M + m, p]) for k in range(3)]
                if c == 1:
                    mu += coef[0] * xs[0]
                if c == 2:
                    mu = (mu + coef[1] * xs[0]) + coef[2] * xs[1]
                s = max(pr[b, blk + M + m, p], -7.0)
                v = _level(mu + math.exp(s) * (math.log(u[b, p, M + c]) - math.log1p(-u[b, p, M + c])), bits)
                assert got[b, c, p].item() == v, (b, c, p)
                xs.append(2 * v / (2**bits - 1) - 1)


@pytest.mark.emu
@pytest.mark.parametrize("bits", [8, 10])
def test_emulated_cuda_kernels_draw_the_cpus_levels(bits):
    """The CUDA kernels (emulated) and the CPU kernels give the same levels for the same
    generator state (the emulator's CUDA generator is the CPU one): float32 channels-last params,
    float64 strided ones, bf16 logistics; bits 10 gives int32 levels."""
    from . import emu

    if not emu.AVAILABLE:
        pytest.skip(emu.SKIP_REASON)
    cases = [
        ("sample_discretized_mix_logistic",
         (torch.randn(3, 50, 5, 7).contiguous(memory_format=torch.channels_last).view(3, 50, 35), 5, bits)),
        ("sample_discretized_mix_logistic", (torch.randn(2, 12, 40, dtype=torch.float64)[:, :, ::2], 4, bits)),
        ("sample_discretized_logistic",
         (torch.randn(4, 3, 33).bfloat16(), (torch.rand(4, 3, 33) * 4 - 5).bfloat16(), bits)),
    ]
    for name, args in cases:
        out = []
        for lib in (ops, torch.ops.fastvae_emu):
            out.append(getattr(lib, name)(*args, torch.Generator().manual_seed(1234)))
        assert out[0].dtype == (torch.uint8 if bits <= 8 else torch.int32)
        assert torch.equal(out[0], out[1]), name
        assert out[0].max() > 0 and out[0].unique().numel() > 3  # not a constant


@pytest.mark.needs_cuda
def test_cuda_draws_the_cpus_levels():
    """Real CUDA against the CPU for the same rng_state: the same uniforms; levels may differ only
    where a draw lies within a few ulp of a bin edge (the devices' exp / log / tanh differ)."""
    params = torch.randn(64, 30, 1024)
    state = torch.tensor([987654321, 44])
    cpu = ops.sample_discretized_mix_logistic(params, 3, 8, None, state)
    cuda = ops.sample_discretized_mix_logistic(params.cuda(), 3, 8, None, state.cuda()).cpu()
    assert (cpu != cuda).float().mean().item() < 1e-4


# ---------------------------------------------------------------- layout, reproducibility, errors
def test_strides_and_generators():
    """Levels depend on the logical index only (channels-last and contiguous params draw the same);
    a generator in one state draws the same levels, its next call others; torch.manual_seed
    reproduces the default generator's draws."""
    params = torch.randn(2, 30, 6, 5)
    g = torch.Generator().manual_seed(7)
    a = F.sample_discretized_mix_logistic(params, 3, generator=g)
    b = F.sample_discretized_mix_logistic(params.contiguous(memory_format=torch.channels_last), 3,
                                          generator=torch.Generator().manual_seed(7))
    assert a.shape == (2, 3, 6, 5) and torch.equal(a, b)
    assert not torch.equal(a, F.sample_discretized_mix_logistic(params, 3, generator=g))
    torch.manual_seed(11)
    c = F.sample_discretized_logistic(params[:, :3], params[:, 3:6], bits=5)
    torch.manual_seed(11)
    assert torch.equal(c, F.sample_discretized_logistic(params[:, :3], params[:, 3:6], bits=5))
    assert c.max() <= 31
    leaf = params.clone().requires_grad_()
    out = F.sample_discretized_mix_logistic(leaf, 3)
    assert not out.requires_grad


def test_nan_parameters_raise_on_the_cpu():
    params = torch.randn(1, 30, 4)
    params[0, 12, 2] = float("nan")  # a mean of red's block
    with pytest.raises(ValueError, match="NaN"):
        F.sample_discretized_mix_logistic(params.expand(64, -1, -1), 3)


@pytest.mark.parametrize("call,match", [
    (lambda: F.sample_discretized_mix_logistic(torch.randint(0, 3, (1, 30, 4)), 3), "params"),
    (lambda: F.sample_discretized_mix_logistic(torch.randn(1, 30, 4), 0), "num_mixtures"),
    (lambda: F.sample_discretized_mix_logistic(torch.randn(1, 31, 4), 3), "num_mixtures"),
    (lambda: F.sample_discretized_mix_logistic(torch.randn(30), 3), "params"),
    (lambda: F.sample_discretized_mix_logistic(torch.randn(1, 30, 4), 3, bits=17), "bits"),
    (lambda: F.sample_discretized_mix_logistic(torch.randn(1, 30, 4), 3, generator=3), "generator"),
    (lambda: F.sample_discretized_mix_logistic(torch.randn(0, 30, 4), 3), "params"),
    (lambda: F.sample_discretized_logistic(torch.randn(2, 3, 4), torch.randn(2, 2, 4)), "log_scale"),
    (lambda: F.sample_discretized_logistic(torch.randn(2, 3, 4), torch.randn(2, 3, 4), bits=0), "bits"),
    (lambda: F.sample_discretized_logistic(torch.randn(3), torch.randn(3)), "mean"),
])
def test_argument_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_opcheck():
    state = torch.tensor([123456789, 8])
    params = torch.randn(2, 50, 7, requires_grad=True)
    torch.library.opcheck(ops.sample_discretized_mix_logistic, (params, 5, 8, None, state))
    torch.library.opcheck(ops.sample_discretized_mix_logistic, (params.detach()[:, :15].bfloat16(), 5, 12, None, state))
    mean = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.sample_discretized_logistic, (mean, torch.randn_like(mean), 5, None, state))
    # From the generator each call differs: only the checks that do not compare two calls.
    torch.library.opcheck(ops.sample_discretized_mix_logistic, (params, 5, 8),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_compile_fullgraph_draws_the_eager_levels():
    """torch.compile(fullgraph=True) keeps the op (no graph break) and, from the same default
    generator state, draws the eager levels."""
    torch._dynamo.reset()
    params = torch.randn(2, 30, 4, 5)
    compiled = torch.compile(lambda t: F.sample_discretized_mix_logistic(t, 3, bits=5), fullgraph=True)
    torch.manual_seed(3)
    got = compiled(params)
    torch.manual_seed(3)
    assert torch.equal(got, F.sample_discretized_mix_logistic(params, 3, bits=5))
