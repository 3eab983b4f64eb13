"""CPU kernel internals shared by the op families: float32 row sums on long rows against float64,
bf16/fp16 conversions against torch's casts, results that do not depend on the thread count, huge
pages for large outputs. (The sampler's eps stream against a Philox reference: test_sampling.py.)
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from fastvae import functional as F
from fastvae import reference as R

from .conftest import rel_err

ops = torch.ops.fastvae


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_vector_narrowing_matches_torch_casts(dtype):
    # -g * z written by the vectorised store: every lane, specials included, is torch's cast.
    z = torch.randn(5, 1003) * 300
    z[0, :6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e-40, 7e4, -0.0])
    z = z.to(dtype)
    g = torch.randn(5)
    out = ops.standard_normal_log_density_backward(g, z)
    expect = (-g[:, None] * z.float()).to(dtype)
    assert torch.equal(out.isnan(), expect.isnan())
    ok = ~expect.isnan()
    assert torch.equal(out[ok].view(torch.int16), expect[ok].view(torch.int16))


def _torch_fp32_error(op, inputs64):
    """Relative error of the eager reference in float32 (torch's own sums) against float64."""
    ref = op(*inputs64)
    return rel_err(op(*(t.float() for t in inputs64)), ref), ref


@pytest.mark.parametrize("cols", [196608, 1_000_000])
@pytest.mark.parametrize("name", ["standard_normal_log_density", "kl_standard_normal", "gaussian_log_likelihood"])
def test_long_rows_sum_as_accurately_as_torch(name, cols):
    rows = 4 if cols < 500_000 else 2
    n_in = {"standard_normal_log_density": 1, "kl_standard_normal": 2, "gaussian_log_likelihood": 3}[name]
    inputs64 = [torch.randn(rows, cols, dtype=torch.float64).float().double() for _ in range(n_in)]
    torch_err, ref = _torch_fp32_error(getattr(R, name), inputs64)
    ours = rel_err(getattr(F, name)(*(t.float() for t in inputs64)), ref)
    # The rows' float32 result can be no better than its own rounding (~3e-8 relative).
    assert ours <= 2 * max(torch_err, 2 ** -25), (ours, torch_err)


def _thread_count_cases():
    """Every CPU op family on inputs its kernel splits across threads (> 32768 elements)."""
    torch.manual_seed(7)
    z = torch.randn(3, 300_001)  # long rows: cut into chunks, partial sums added in a fixed order
    mu, lv = torch.randn(4, 20_000), torch.randn(4, 20_000)
    g = torch.randn(3, 4, 20_000)
    state = torch.tensor([42, 0], dtype=torch.int64)
    logits, x = torch.randn(97, 1025), torch.rand(97, 1025)
    obs_lv, grad_rows = torch.randn(97, 1025) * 0.3, torch.randn(97)
    zq, g4 = torch.randn(4, 20_000), torch.randn(4)
    mu_e, lv_e = torch.randn(97, 20), torch.randn(97, 20) * 0.5  # the ELBO's latent rows
    x_bin = torch.rand(97, 1025).bernoulli()
    bf = [t.bfloat16() for t in (logits, x, obs_lv)]
    return lambda: [
        ops.standard_normal_log_density(z), ops.kl_standard_normal(mu, lv),
        *ops.kl_standard_normal_backward(g4, mu, lv),
        ops.reparameterize(mu, lv, 3, None, state)[0],
        *ops.reparameterize_backward(g, mu, lv, state, None),
        *ops.bernoulli_log_likelihood(logits, x, True),
        ops.gaussian_log_likelihood(logits, x, obs_lv),
        *ops.gaussian_log_likelihood_backward(grad_rows, logits, x, obs_lv, True),
        ops.gaussian_log_likelihood(*bf),
        *ops.gaussian_log_likelihood_backward(grad_rows, *bf, True),
        ops.gaussian_log_density(zq, mu, lv), *ops.gaussian_log_density_backward(torch.ones(4), zq, mu, lv),
        *ops.elbo_loss(logits, x, None, mu_e, lv_e, obs_lv, 0.0, "gaussian", 0.7, "mean", [True, True, True]),
        *ops.elbo_loss(logits, x_bin, None, mu_e, lv_e, None, 0.0, "bernoulli", 1.0, "sum", [True, True, False]),
    ]


def test_the_kernels_really_run_on_several_threads():
    # at::parallel_for is compiled into the extension: without -fopenmp (torch's OpenMP backend)
    # it silently runs every task on the caller, and the thread-count test below proves nothing.
    from fastvae._extension import _C

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert _C.parallel_threads(64) == 2
        torch.set_num_threads(1)
        assert _C.parallel_threads(64) == 1
    finally:
        torch.set_num_threads(threads)


def test_results_do_not_depend_on_thread_count():
    threads = torch.get_num_threads()
    run = _thread_count_cases()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(run())
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert len(other) == len(results[0])
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_long_row_sum_of_constants_does_not_drift():
    # 2^24 + 8 equal terms: a float32 running sum (even one per vector lane) drifts once its
    # ulp nears the term size; the cascade stays within torch's own float32 sum's error.
    cols = (1 << 24) + 8
    z = torch.ones(1, cols)
    terms = R.standard_normal_log_density(z[:, :1]).double().item()  # the float32 term, as the kernel
    expect = terms * cols
    torch_err = abs(-0.5 * (math.log(2 * math.pi) + z * z)).sum().double().item()
    torch_err = abs(torch_err - abs(expect)) / abs(expect)
    err = abs(ops.standard_normal_log_density(z).double().item() - expect) / abs(expect)
    assert err <= 2 * max(torch_err, 2 ** -24), (err, torch_err)


def _huge_page_kib(start: int, end: int) -> int:
    """AnonHugePages (KiB) of this process's mappings that overlap [start, end)."""
    total, overlaps = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                overlaps = lo < end and hi > start
            elif overlaps and head == "AnonHugePages:":
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_large_outputs_ask_for_huge_pages():
    # The first touch of a fresh output of hundreds of MB costs more in 4 KiB page faults than
    # the kernel's work; the kernels ask for 2 MiB pages on outputs of 32 MiB and more.
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        if "[never]" in f.read():
            pytest.skip("transparent huge pages are disabled on this machine")
    logits = torch.randn(40, 262_144)  # 40 MiB
    _, grad = ops.bernoulli_log_likelihood(logits, torch.rand_like(logits), True)
    start = grad.data_ptr()
    assert _huge_page_kib(start, start + grad.numel() * grad.element_size()) >= 2048
