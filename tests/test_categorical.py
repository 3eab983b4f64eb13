"""The categorical family: ``categorical_log_likelihood`` against ``-F.cross_entropy`` summed per
image in float64 (values and gradients per dtype, 1 to 100003 subpixels, 256 and 16 classes),
channels-last and non-contiguous logits read in place, the probabilities of all levels summing to
1, edge logits and levels, out-of-range levels, float64 gradcheck, torch.compile, bad input; the
emulated CUDA kernels through ``emu``. The sampler: frequencies of every class against the
softmax (bounds in tests/frequency_checks.py), its Philox stream, the emulated CUDA kernel's
levels equal to the CPU's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastvae import functional as F
from fastvae import reference as R

from .conftest import TOL, cpu_and_cuda, rel_err
from .frequency_checks import assert_frequencies_differ, assert_frequencies_match, counts_of
from .philox_ref import fastvae_counters, philox4x32_10
from .reference_checks import DTYPES, check_compile_fullgraph, check_forward_and_backward

# (B, K, C, *spatial): 1, 7, 1035 and 100003 subpixels.
SHAPES = [(1, 256, 1), (1, 256, 7), (3, 256, 3, 5, 23), (1, 16, 100003)]


def _levels(logits_shape, device, dtype=torch.uint8):
    b, k, *rest = logits_shape
    return torch.randint(0, k, (b, *rest), device=device).to(dtype)


def _check(logits, x, dtype, **kw):
    check_forward_and_backward(F.categorical_log_likelihood, R.categorical_log_likelihood, [logits, x], dtype, **kw)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_against_reference(device, dtype, shape):
    logits = (torch.randn(shape, dtype=torch.float64) * 3).to(device=device, dtype=dtype)
    _check(logits, _levels(shape, device, torch.uint8 if shape[1] == 256 else torch.int64), dtype)


def _layouts(b, k, c, h, w, dtype, device):
    """Logits (b, k, c, h, w) in the layouts decoders produce: a conv's channels-last output
    (b, k * c, h, w) viewed as (b, k, c, h, w) (channels innermost, classes next) and as
    (b, c, k, h, w) transposed (classes innermost), a spatial slice, a transposed image."""
    def r(*shape):
        return (torch.randn(*shape, device=device) * 2).to(dtype)
    return {
        "conv_channels_last": r(b, h, w, k * c).permute(0, 3, 1, 2).unflatten(1, (k, c)),
        "classes_innermost": r(b, c, h, w, k).permute(0, 4, 1, 2, 3),
        "sliced": r(b, k, c, h, 2 * w)[..., ::2],
        "transposed": r(b, k, c, w, h).transpose(3, 4),
    }


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["conv_channels_last", "classes_innermost", "sliced", "transposed"])
def test_strided_logits_read_in_place(device, dtype, layout):
    """Values and gradients; where the spatial dims merge (every layout but the transposed image,
    which is reshaped once) the kernel gets a view of the logits and writes the gradient strided
    like them."""
    logits = _layouts(2, 256, 3, 5, 9, dtype, device)[layout]
    x = _levels(logits.shape, device)
    _check(logits, x, dtype)
    if layout == "transposed":
        return
    view = logits.reshape(2, 256, 3, -1)
    assert view.data_ptr() == logits.data_ptr() and view._base is not None  # a view, not a copy
    _, grad = torch.ops.fastvae.categorical_log_likelihood(view, x.flatten(1), True)
    if layout != "sliced":  # a dense layout is kept; a sliced one gets a dense gradient
        assert grad.stride() == view.stride()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_probabilities_of_all_levels_sum_to_one(device, dtype, tol):
    """One subpixel's logits against each of the K levels: exp(log p) over the levels sums to 1."""
    for k in (256, 32, 1):
        one = torch.randn(1, k, 1, 1, dtype=torch.float64) * 4
        logits = one.expand(k, k, 1, 1).to(device=device, dtype=dtype).contiguous()
        x = torch.arange(k, device=device).reshape(k, 1, 1)
        total = F.categorical_log_likelihood(logits, x).double().exp().sum().item()
        assert abs(total - 1.0) < tol * k


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_edge_logits_and_levels(device, dtype):
    """Logits at +-80 (in the target class and in others), levels 0 and 255 only."""
    logits = torch.randn(3, 256, 3, 7, dtype=torch.float64)
    logits[:, 0] = 80.0
    logits[0, 255] = -80.0
    logits[1, 17, 1] = 80.0
    logits[2, :, 2] = -80.0
    x = torch.randint(0, 2, (3, 3, 7)) * 255
    _check(logits.to(device=device, dtype=dtype), x.to(device=device, dtype=torch.uint8), dtype)
    _check(logits.to(device=device, dtype=dtype), x.to(device=device), dtype)


@pytest.mark.parametrize("bad", [-1, 16])
def test_levels_out_of_range_raise_on_cpu(bad):
    logits = torch.randn(2, 16, 3, 4)
    x = torch.randint(0, 16, (2, 3, 4))
    x[1, 2, 3] = bad
    with pytest.raises(ValueError, match="x holds level"):
        F.categorical_log_likelihood(logits, x)


@pytest.mark.emu
def test_levels_out_of_range_are_nan_on_the_cuda_kernels():
    """The CUDA kernels (emulated) cannot raise without a sync: that image's term is NaN, its
    gradient too, the other images untouched."""
    from . import emu

    if not emu.AVAILABLE:
        pytest.skip(emu.SKIP_REASON)
    logits = torch.randn(3, 16, 2, 6)
    x = torch.randint(0, 16, (3, 12))
    x[1, 5] = 16
    ll, grad = torch.ops.fastvae_emu.categorical_log_likelihood(logits, x, True)
    ref = R.categorical_log_likelihood(logits.double(), x.clamp_max(15).view(3, 2, 6))
    assert ll[1].isnan() and grad[1, :, 0, 5].isnan().all() and not grad[1, :, 1].isnan().any()
    assert rel_err(ll[[0, 2]], ref[[0, 2]]) < TOL[torch.float32]


def test_gradcheck_float64():
    logits = torch.randn(2, 5, 3, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randint(0, 5, (2, 3, 2))
    assert torch.autograd.gradcheck(lambda l: F.categorical_log_likelihood(l, x), (logits,))


def test_compile_fullgraph():
    logits = torch.randn(4, 256, 3, 4, 4).to(memory_format=torch.channels_last_3d).requires_grad_(True)
    x = torch.randint(0, 256, (4, 3, 4, 4), dtype=torch.uint8)
    check_compile_fullgraph(F.categorical_log_likelihood, logits, x)


@pytest.mark.parametrize("logits, x, name", [
    (torch.randn(2, 8, 3), torch.rand(2, 3), "x"),
    (torch.randn(2, 8, 3), torch.zeros(2, 4, dtype=torch.int64), "x"),
    (torch.randn(2, 8, 3, 5), torch.zeros(2, 15, dtype=torch.int64), "x"),
    (torch.randn(2, 8), torch.zeros(2, dtype=torch.int64), "logits"),
    (torch.randn(2, 8, 3).long(), torch.zeros(2, 3, dtype=torch.int64), "logits"),
    (torch.randn(2, 8, 3), torch.zeros(2, 3, dtype=torch.int64, device="meta"), "x"),
    (torch.randn(2, 8, 3), [[0, 1, 2]] * 2, "x"),
])
def test_bad_input_names_the_argument(logits, x, name):
    with pytest.raises(ValueError, match=name):
        F.categorical_log_likelihood(logits, x)


# ---------------------------------------------------------------- the sampler
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_sampled_levels_follow_the_softmax(device, dtype):
    """N draws of 6 subpixels of 12 classes (a class at -inf, one subpixel nearly certain, logits
    class-innermost: channels-last, read in place, expanded over the batch) against the softmax of
    the logits (the likelihood's exp(ll) of every class); control: the softmax at temperature 1.1."""
    N = 40000
    base = torch.randn(1, 2, 3, 12, dtype=torch.float64) * 1.5
    base[0, 0, 1, 4] = -float("inf")
    base[0, 1, 2, 7] = 9.0
    logits = base.to(dtype).permute(0, 3, 1, 2)  # (1, 12, 2, 3), classes innermost
    levels = F.sample_categorical(logits.to(device).expand(N, -1, -1, -1))
    assert levels.shape == (N, 2, 3) and levels.dtype == torch.uint8
    counts = counts_of(levels.reshape(N, 6), 12)
    lg = logits.double().expand(12, -1, -1, -1)
    x = torch.arange(12).view(12, 1, 1).expand(12, 2, 3)
    probs = torch.stack([F.categorical_log_likelihood(lg[:, :, c:c + 1, p:p + 1], x[:, c:c + 1, p:p + 1]).exp()
                         for c in range(2) for p in range(3)])
    assert torch.allclose(probs, logits.double().softmax(1)[0].permute(1, 2, 0).reshape(6, 12), atol=1e-12)
    assert counts[1, 4] == 0
    assert_frequencies_match(counts, probs)
    assert_frequencies_differ(counts, (logits.double() / 1.1).softmax(1)[0].permute(1, 2, 0).reshape(6, 12))


def test_sampler_stream_generators_and_dtypes():
    """Subpixel q draws at uniform q of the Gaussian sampler's Philox counters (float64: the
    inverse CDF recomputed from the reference words); one generator state, one draw; more than 256
    classes give int32 levels; no gradient."""
    seed, offset = 0x0BAD_5EED_1234_5678, 4 * 31
    logits = torch.randn(2, 9, 3, 5, dtype=torch.float64)
    got = torch.ops.fastvae.sample_categorical(logits, None, torch.tensor([seed, offset]))
    words = philox4x32_10(seed, *fastvae_counters(offset, np.arange(8, dtype=np.uint64))).T.reshape(-1)
    u = (words[:30].astype(np.float64) + 0.5) * 2.0**-32
    cdf = logits.softmax(1).cumsum(1).permute(0, 2, 3, 1).reshape(30, 9).numpy()
    want = (cdf <= u.reshape(30, 1)).sum(1)
    assert (got.reshape(-1).numpy() == want).all()
    wide = torch.randn(3, 300, 2, 4, requires_grad=True)
    a = F.sample_categorical(wide, torch.Generator().manual_seed(5))
    assert a.dtype == torch.int32 and a.shape == (3, 2, 4) and not a.requires_grad and a.max() < 300
    assert torch.equal(a, F.sample_categorical(wide, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="logits"):
        F.sample_categorical(torch.randn(3, 4))
    with pytest.raises(ValueError, match="generator"):
        F.sample_categorical(torch.randn(3, 4, 2), generator="seed")
    bad = torch.randn(2, 5, 3)
    bad[1, :, 2] = -float("inf")
    with pytest.raises(ValueError, match="not a distribution"):
        F.sample_categorical(bad)
    state = torch.tensor([seed, 8])
    torch.library.opcheck(torch.ops.fastvae.sample_categorical, (logits.requires_grad_(), None, state))
    torch.library.opcheck(torch.ops.fastvae.sample_categorical, (wide.detach().bfloat16(), None, state))


@pytest.mark.emu
def test_sampler_on_the_emulated_cuda_kernels_draws_the_cpus_levels():
    """Same generator state, same levels: the CUDA kernel (emulated) against the CPU's, for
    strided float32 logits and bf16 ones of 300 classes."""
    from . import emu

    if not emu.AVAILABLE:
        pytest.skip(emu.SKIP_REASON)
    for logits in (torch.randn(3, 2, 7, 20).permute(0, 3, 1, 2), torch.randn(2, 300, 3, 4).bfloat16()):
        out = [lib.sample_categorical(logits, torch.Generator().manual_seed(99))
               for lib in (torch.ops.fastvae, torch.ops.fastvae_emu)]
        assert torch.equal(out[0], out[1]) and out[0].unique().numel() > 3
