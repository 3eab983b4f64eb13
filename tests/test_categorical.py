"""The categorical family: ``categorical_log_likelihood`` against ``-F.cross_entropy`` summed per
image in float64 (values and gradients per dtype, 1 to 100003 subpixels, 256 and 16 classes),
channels-last and non-contiguous logits read in place, the probabilities of all levels summing to
1, edge logits and levels, out-of-range levels, float64 gradcheck, torch.compile, bad input; the
emulated CUDA kernels through ``emu``."""
from __future__ import annotations

import pytest
import torch

from fastvae import functional as F
from fastvae import reference as R

from .conftest import TOL, cpu_and_cuda, rel_err
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
