"""The CUDA kernels of csrc/cuda/, executed on the CPU by the SIMT emulator (fastvae._C_emu).

Every CUDA entry point, forward and backward, against the CPU kernels and a float64 reference,
at shapes that reach every launch path of csrc/cuda/launch.cuh (the emulated device's SM count
and grid-y limit set small so that small shapes get there), in every dtype the kernels take,
with aligned and misaligned operands, once in thread order and once reversed. Run them all with
``pytest -m emu``; they need ``FASTVAE_EMU=1 python setup.py build_ext --inplace``.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Callable, Dict, List, Tuple

import pytest
import torch

from fastvae import reference as R

from . import emu
from .conftest import TOL, rel_err

pytestmark = [pytest.mark.emu,
              pytest.mark.skipif(not emu.AVAILABLE and not emu.REQUIRE_EMU, reason=emu.SKIP_REASON)]

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
K = 2  # samples in the sampling tests

# name: ((rows, cols), emulated device settings). Which path each reaches, per launch.cuh's
# heuristics, which look at the row length alone (8 packs or fewer a row: groups of 8 lanes; up
# to 512 packs: groups of 32 lanes; else a block per row, over 8192 columns split into chunks;
# rows in launches of at most max_grid_y).
PATHS: Dict[str, Tuple[Tuple[int, int], dict]] = {
    "lanes8": ((130, 7), dict(sm_count=1)),              # 7 packs of 1
    "lanes8_packed": ((130, 16), dict(sm_count=1)),      # 2 to 8 packs of 16 bytes (32 lanes unaligned)
    "lanes32": ((40, 100), dict(sm_count=1)),
    "block": ((5, 1025), dict(sm_count=1)),
    "width1_lanes": ((300, 1), dict(sm_count=1)),
    "width1_few_rows": ((3, 1), dict(sm_count=1)),       # lanes too: the tree follows the row length alone
    "split": ((3, 2 * 8192 + 5), dict(sm_count=1)),      # three chunks, the last of 5 columns
    "split_packed": ((2, 8192 + 64), dict(sm_count=1)),  # two chunks of whole packs
    "grid_y": ((7, 1025), dict(sm_count=1, max_grid_y=3)),  # three launches of up to 3 rows
    "grid_y_split": ((5, 8200), dict(sm_count=1, max_grid_y=2)),
}

@pytest.fixture(params=["forward", "reverse"])
def order(request):
    """Runs the test's kernels with threads (and blocks) in order, then in reverse order."""
    with emu.configure(reverse=request.param == "reverse"):
        yield request.param


def _unaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t that starts one element into its storage: no 8- or 16-byte packs."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _divisor(rows: int) -> int:
    """The smallest factor > 1 of rows: the sample count of a broadcast operand with rows / it rows."""
    return next(k for k in range(2, rows + 1) if rows % k == 0)


def _tol(dtype: torch.dtype) -> float:
    return max(TOL[dtype], 1e-6)


def _check(name: str, got: List[torch.Tensor], cpu: List[torch.Tensor], ref: List[torch.Tensor], dtype) -> None:
    """got (emulated CUDA) against the CPU kernels and the float64 reference; row sums first."""
    assert len(got) == len(cpu) == len(ref), name
    for i, (g, c, r) in enumerate(zip(got, cpu, ref)):
        assert g.shape == c.shape == r.shape and g.dtype == c.dtype, (name, i, g.shape, c.shape, r.shape)
        # By the output's own dtype: row sums are float32 (float64) whatever the inputs were.
        tol = _tol(g.dtype) * (1 if g.dim() == 1 else 4)
        assert torch.isfinite(g).all(), (name, i)
        assert rel_err(g, c) < tol, (name, i, "vs CPU", rel_err(g, c))
        assert rel_err(g, r) < tol, (name, i, "vs float64 reference", rel_err(g, r))


def _grads(y: torch.Tensor, inputs: List[torch.Tensor], g: torch.Tensor) -> List[torch.Tensor]:
    return list(torch.autograd.grad(y, inputs, g, retain_graph=True))


# ---------------------------------------------------------------- the entry points, one table
# Each family: make(shape, dtype) -> inputs (dict of tensors), run(ops, inputs) -> outputs (the
# forward and backward entry points), ref(inputs in float64) -> the same outputs.
def _kl_make(shape, dtype):
    return dict(mu=torch.randn(shape).to(dtype), lv=torch.randn(shape).to(dtype),
                g=torch.randn(shape[0], dtype=_acc(dtype)))


def _kl_run(ops, a):
    return [ops.kl_standard_normal(a["mu"], a["lv"]), *ops.kl_standard_normal_backward(a["g"], a["mu"], a["lv"])]


def _kl_ref(a):
    mu, lv = a["mu"].requires_grad_(), a["lv"].requires_grad_()
    y = R.kl_standard_normal(mu, lv)
    return [y.detach(), *_grads(y, [mu, lv], a["g"])]


def _bernoulli_make(shape, dtype):
    b = shape[0] // _divisor(shape[0])
    return dict(logits=(torch.randn(shape) * 3).to(dtype), x_soft=torch.rand(b, shape[1]).to(dtype),
                x_u8=(torch.rand(b, shape[1]) > 0.5).to(torch.uint8), x_bool=torch.rand(b, shape[1]) > 0.5)


def _bernoulli_run(ops, a):
    out = []
    for x in ("x_soft", "x_u8", "x_bool"):
        ll, grad = ops.bernoulli_log_likelihood(a["logits"], a[x], True)
        alone, empty = ops.bernoulli_log_likelihood(a["logits"], a[x], False)
        assert empty.numel() == 0 and torch.equal(alone, ll)  # the gradient's pass leaves the sum alone
        out += [ll, grad]
    return out


def _bernoulli_ref(a):
    logits, out = a["logits"].requires_grad_(), []
    for x in ("x_soft", "x_u8", "x_bool"):
        xr = a[x].repeat(logits.shape[0] // a[x].shape[0], 1)
        y = R.bernoulli_log_likelihood(logits, xr)
        out += [y.detach(), *_grads(y, [logits], torch.ones_like(y))]
    return out


def _gaussian_make(shape, dtype):
    b = shape[0] // _divisor(shape[0])
    return dict(mean=torch.randn(shape).to(dtype), x=torch.randn(b, shape[1]).to(dtype),
                lv=torch.randn(shape).to(dtype), lv_dim=torch.randn(1, shape[1]).to(dtype),
                g=torch.randn(shape[0], dtype=_acc(dtype)))


def _gaussian_run(ops, a):
    out = []
    for lv in ("lv", "lv_dim"):  # a per-element variance (one pass) and a per-dim one (summed)
        out += [ops.gaussian_log_likelihood(a["mean"], a["x"], a[lv])]
        out += list(ops.gaussian_log_likelihood_backward(a["g"], a["mean"], a["x"], a[lv], True))
    return out


def _gaussian_ref(a):
    mean, out = a["mean"].requires_grad_(), []
    x = a["x"].repeat(mean.shape[0] // a["x"].shape[0], 1)
    for lv_name in ("lv", "lv_dim"):
        lv = a[lv_name].requires_grad_()
        y = R.gaussian_log_likelihood(mean, x, lv)
        out += [y.detach(), *_grads(y, [mean, lv], a["g"])]
    return out


def _density_make(shape, dtype):
    b = shape[0] // _divisor(shape[0])
    return dict(z=torch.randn(shape).to(dtype), mu=torch.randn(shape).to(dtype), lv=torch.randn(shape).to(dtype),
                mu_b=torch.randn(b, shape[1]).to(dtype), lv_b=torch.randn(b, shape[1]).to(dtype),
                g=torch.randn(shape[0], dtype=_acc(dtype)))


def _density_run(ops, a):
    out = []
    for mu, lv in (("mu", "lv"), ("mu_b", "lv_b")):  # one row per z row (fused), K samples (summed)
        out += [ops.gaussian_log_density(a["z"], a[mu], a[lv]),
                *ops.gaussian_log_density_backward(a["g"], a["z"], a[mu], a[lv])]
    return out


def _density_ref(a):
    z, out = a["z"].requires_grad_(), []
    for mu_name, lv_name in (("mu", "lv"), ("mu_b", "lv_b")):
        mu, lv = a[mu_name].requires_grad_(), a[lv_name].requires_grad_()
        k = z.shape[0] // mu.shape[0]
        y = R.gaussian_log_density(z, mu.repeat(k, 1), lv.repeat(k, 1))
        out += [y.detach(), *_grads(y, [z, mu, lv], a["g"])]
    return out


def _std_normal_make(shape, dtype):
    return dict(z=torch.randn(shape).to(dtype), g=torch.randn(shape[0], dtype=_acc(dtype)))


def _std_normal_run(ops, a):
    return [ops.standard_normal_log_density(a["z"]), ops.standard_normal_log_density_backward(a["g"], a["z"])]


def _std_normal_ref(a):
    z = a["z"].requires_grad_()
    y = R.standard_normal_log_density(z)
    return [y.detach(), *_grads(y, [z], a["g"])]


def _sample_make(shape, dtype):
    return dict(mu=torch.randn(shape).to(dtype), lv=torch.randn(shape).to(dtype),
                state=torch.tensor([torch.randint(1 << 62, ()).item(), torch.randint(1 << 20, ()).item()]),
                gz=torch.randn(K, *shape).to(dtype), gkl=torch.randn(shape[0], dtype=_acc(dtype)))


def _sample_run(ops, a):
    z, kl, _ = ops.reparameterize_with_kl(a["mu"], a["lv"], K, None, a["state"])
    return [z, kl, *ops.reparameterize_backward(a["gz"], a["mu"], a["lv"], a["state"], a["gkl"]),
            *ops.reparameterize_backward(a["gz"], a["mu"], a["lv"], a["state"], None)]


def _sample_ref(a):
    mu, lv = a["mu"].requires_grad_(), a["lv"].requires_grad_()
    # eps of this (seed, offset) from the CPU kernel in float64 (mu 0, logvar 0: z is eps).
    zeros = torch.zeros_like(mu)
    eps = torch.ops.fastvae.reparameterize(zeros, zeros, K, None, a["state"])[0]
    z, kl = R.reparameterize_with_kl(mu, lv, K, eps=eps)
    gz_only = list(torch.autograd.grad(z, [mu, lv], a["gz"], retain_graph=True))
    with_kl = list(torch.autograd.grad([z, kl], [mu, lv], [a["gz"], a["gkl"]]))
    return [z.detach(), kl.detach(), *with_kl, *gz_only]


def _kl_normal_make(shape, dtype, shared=False):
    b = shape[0] // _divisor(shape[0])  # the prior's log-variance (and, shared, its mean) broadcast over the rows
    return dict(mq=torch.randn(shape).to(dtype), lq=torch.randn(shape).to(dtype),
                mp=torch.randn(b if shared else shape[0], shape[1]).to(dtype),
                lp=torch.randn(b, shape[1]).to(dtype), g=torch.randn(shape[0], dtype=_acc(dtype)),
                state=torch.tensor([torch.randint(1 << 62, ()).item(), 8]), gz=torch.randn(K, *shape).to(dtype))


def _kl_normal_run(ops, a):
    q_p = [a["mq"], a["lq"], a["mp"], a["lp"]]
    z, kl, _ = ops.reparameterize_with_kl_normal(*q_p, K, None, a["state"])
    return [ops.kl_normal(*q_p), *ops.kl_normal_backward(a["g"], *q_p), z, kl,
            *ops.reparameterize_with_kl_normal_backward(a["gz"], *q_p, a["state"], a["g"])]


def _kl_normal_ref(a):
    q_p = [a[k].requires_grad_() for k in ("mq", "lq", "mp", "lp")]
    full = q_p[:2] + [t.repeat(q_p[0].shape[0] // t.shape[0], 1) for t in q_p[2:]]
    y = R.kl_normal(*full)
    zeros = torch.zeros_like(q_p[0])
    eps = torch.ops.fastvae.reparameterize(zeros, zeros, K, None, a["state"])[0]
    z, kl = R.reparameterize_with_kl(full[0], full[1], K, eps=eps, prior_mu=full[2], prior_logvar=full[3])
    return [y.detach(), *_grads(y, q_p, a["g"]), z.detach(), kl.detach(),
            *torch.autograd.grad([z, kl], q_p, [a["gz"], a["g"]])]


def _elbo_make(shape, dtype):
    rows, b = shape[0], shape[0] // _divisor(shape[0])
    return dict(recon=(torch.randn(shape) * 2).to(dtype), x_bin=(torch.rand(b, shape[1]) > 0.5).to(dtype),
                x=torch.randn(b, shape[1]).to(dtype), obs=(0.5 * torch.randn(shape)).to(dtype),
                mu=torch.randn(rows, 3).to(dtype), lv=torch.randn(rows, 3).to(dtype),
                kl=torch.rand(rows, dtype=_acc(dtype)) * 4, g=torch.tensor(2.5, dtype=_acc(dtype)))


def _elbo_run(ops, a):
    # Bernoulli with the KL computed from mu/logvar, mean over rows; Gaussian with the KL given and
    # a per-element variance, summed. Gradients are written by the forward pass; then rescaled.
    bern = ops.elbo_loss(a["recon"], a["x_bin"], None, a["mu"], a["lv"], None, 0.0, "bernoulli", 0.7, "mean",
                         [True, True, False])
    gauss = ops.elbo_loss(a["recon"], a["x"], a["kl"], None, None, a["obs"], 0.0, "gaussian", 1.3, "sum",
                          [True, True, True])
    return [bern[0], bern[1], bern[3], bern[4], gauss[0], gauss[1], gauss[2], gauss[5],
            *ops.elbo_rescale(a["g"], [bern[1], gauss[5]])]


def _elbo_ref(a):
    recon, mu, lv = a["recon"].requires_grad_(), a["mu"].requires_grad_(), a["lv"].requires_grad_()
    kl, obs = a["kl"].requires_grad_(), a["obs"].requires_grad_()
    reps = recon.shape[0] // a["x"].shape[0]
    bern = R.elbo(recon, a["x_bin"].repeat(reps, 1), mu, lv, "bernoulli", beta=0.7, reduction="mean")
    gauss = R.elbo(recon, a["x"].repeat(reps, 1), None, None, "gaussian", obs_logvar=obs, beta=1.3,
                   reduction="sum", kl=kl)
    g_bern = torch.autograd.grad(bern, [recon, mu, lv])
    g_gauss = torch.autograd.grad(gauss, [recon, kl, obs])
    return [bern.detach(), *g_bern, gauss.detach(), *g_gauss, 2.5 * g_bern[0], 2.5 * g_gauss[2]]


FAMILIES: Dict[str, Tuple[Callable, Callable, Callable]] = {
    "kl": (_kl_make, _kl_run, _kl_ref),
    "bernoulli": (_bernoulli_make, _bernoulli_run, _bernoulli_ref),
    "gaussian_likelihood": (_gaussian_make, _gaussian_run, _gaussian_ref),
    "gaussian_density": (_density_make, _density_run, _density_ref),
    "standard_normal_density": (_std_normal_make, _std_normal_run, _std_normal_ref),
    "sample_and_kl": (_sample_make, _sample_run, _sample_ref),
    "kl_normal": (_kl_normal_make, _kl_normal_run, _kl_normal_ref),
    # A learned prior shared by the rows: both its gradients summed over the repeats in one walk.
    "kl_normal_shared_prior": (partial(_kl_normal_make, shared=True), _kl_normal_run, _kl_normal_ref),
    "elbo": (_elbo_make, _elbo_run, _elbo_ref),
}


def _run_layouts(family: str, shape, dtype) -> Tuple[List[List[torch.Tensor]], List[torch.Tensor], List[torch.Tensor]]:
    """(emulated outputs for aligned and misaligned operands, CPU outputs, float64 reference)."""
    make, run, ref = FAMILIES[family]
    inputs = make(shape, dtype)
    cpu = run(torch.ops.fastvae, inputs)
    want = ref(_to_double(inputs))
    got = [run(torch.ops.fastvae_emu, inputs),
           run(torch.ops.fastvae_emu, {k: _unaligned(v) for k, v in inputs.items()})]
    return got, cpu, want


def _to_double(inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Floating inputs in float64 for the reference (binary targets stay as they are)."""
    return {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_entry_points_match_cpu_and_reference(family, path, dtype, order):
    shape, settings = PATHS[path]
    with emu.configure(**settings):
        got, cpu, want = _run_layouts(family, shape, dtype)
    for layout, outputs in zip(("aligned", "misaligned"), got):
        _check(f"{family}/{layout}", outputs, cpu, want, dtype)


# ---------------------------------------------------------------- sampling streams
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 2500), (1031,)], ids=["grid_stride", "flat"])
def test_eps_is_the_cpu_stream_for_the_same_seed_and_offset(shape, dtype, order):
    """The plain sampling kernel (grid-stride over Philox groups: one SM gives 8192 threads for
    8750 groups) draws the CPU's eps, up to the last bits of log, sin and cos; its backward
    draws them again."""
    mu, lv = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    state = torch.tensor([0x5DEECE66D, 12 + len(shape)], dtype=torch.int64)
    gz = torch.randn(K, *shape).to(dtype)
    with emu.configure(sm_count=1):
        got = [torch.ops.fastvae_emu.reparameterize(mu, lv, K, None, state)[0],
               *torch.ops.fastvae_emu.reparameterize_backward(gz, mu, lv, state, None)]
    cpu = [torch.ops.fastvae.reparameterize(mu, lv, K, None, state)[0],
           *torch.ops.fastvae.reparameterize_backward(gz, mu, lv, state, None)]
    tol = {torch.float32: 1e-6, torch.float64: 1e-13}.get(dtype, TOL[dtype])
    for g, c in zip(got, cpu):
        assert g.dtype == c.dtype and g.shape == c.shape
        assert rel_err(g, c) < 4 * tol
    # The fused sample+KL kernel draws the same z.
    if len(shape) == 2:
        with emu.configure(sm_count=1):
            fused, _, used = torch.ops.fastvae_emu.reparameterize_with_kl(mu, lv, K, None, state)
        assert rel_err(fused, got[0]) < tol and torch.equal(used, state)


def test_sampling_draws_its_state_from_the_generator_like_the_cpu_op():
    """Without rng_state the emulated sampling kernels unpack the generator's Philox state
    themselves and write the (seed, offset) they used: the CPU op's for a generator in the same
    state, and the generator advances."""
    mu, lv = torch.randn(3, 5), torch.randn(3, 5)
    g_emu, g_cpu = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    z1, s1 = torch.ops.fastvae_emu.reparameterize(mu, lv, 2, g_emu)
    z_cpu, s_cpu = torch.ops.fastvae.reparameterize(mu, lv, 2, g_cpu)
    assert torch.equal(s1, s_cpu) and rel_err(z1, z_cpu) < 1e-6
    _, s2 = torch.ops.fastvae_emu.reparameterize(mu, lv, 2, g_emu)
    assert torch.equal(s2, torch.ops.fastvae.reparameterize(mu, lv, 2, g_cpu)[1]) and not torch.equal(s1, s2)
    torch.manual_seed(5)
    z, _, default = torch.ops.fastvae_emu.reparameterize_with_kl(mu, lv, 1)
    torch.manual_seed(5)
    z_cpu, _, default_cpu = torch.ops.fastvae.reparameterize_with_kl(mu, lv, 1)
    assert torch.equal(default, default_cpu) and rel_err(z, z_cpu) < 1e-6


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("family", list(FAMILIES))
def test_bitwise_equal_on_repeat_and_in_either_thread_order(family):
    """No atomics, fixed reduction trees: the same bits every run, whichever order threads run in."""
    make, run, _ = FAMILIES[family]
    for path in ("lanes8_packed", "lanes32", "split"):
        shape, settings = PATHS[path]
        inputs = make(shape, torch.float32)
        runs = []
        for reverse in (False, False, True):
            with emu.configure(reverse=reverse, **settings):
                runs.append(run(torch.ops.fastvae_emu, inputs))
        for other in runs[1:]:
            for a, b in zip(runs[0], other):
                assert torch.equal(a, b), (family, path)


# ---------------------------------------------------------------- the emulator itself
def _selftest(name: str, values: torch.Tensor) -> torch.Tensor:
    return torch.ops.fastvae_emu._selftest(name, values)


@pytest.mark.parametrize("width", [1, 2, 4, 8, 16, 32])
def test_shuffles_follow_cuda_width_segments(width, order):
    """__shfl/_up/_down/_xor_sync and __ballot_sync of 64 threads, against CUDA's documented rules:
    a warp is split into segments of `width` lanes; up/down that leave the segment and xor into a
    later one return the lane's own value."""
    vals = torch.randn(64)
    got = _selftest(f"shuffles_w{width}", vals)
    want = torch.empty(5, 64)
    for t in range(64):
        base, lane = t // 32 * 32, t % 32
        seg = lane // width * width
        want[0, t] = vals[base + seg + 3 % width]
        want[1, t] = vals[t - 2] if lane - seg >= 2 else vals[t]
        want[2, t] = vals[t + 3] if lane - seg + 3 < width else vals[t]
        src = lane ^ 5
        want[3, t] = vals[base + src] if src < seg + width else vals[t]
        want[4, t] = (vals[base:base + 32] > 0).sum()
    assert torch.equal(got, want)


@pytest.mark.parametrize("name, message", [
    ("exited_lane", "has exited"),                   # a shuffle naming lanes that returned
    ("shuffle_vs_barrier", "divergence"),            # half a warp at a shuffle, half at __syncthreads
    ("split_barrier", "deadlock"),                   # two __syncthreads that never meet
])
def test_divergence_and_deadlock_fail_the_launch(name, message, order):
    with pytest.raises(RuntimeError, match=message):
        _selftest(name, torch.randn(64))


def test_missing_barrier_is_seen_in_both_orders_and_the_barrier_fixes_it(order):
    """Each thread reads the shared slot its neighbour writes: without the barrier, the slot is
    still the poison (NaN) for some thread in either order."""
    n = 128
    want = torch.tensor([float((t + 1) % (n // 2)) for t in range(n // 2)] * 2)
    assert torch.equal(_selftest("neighbour", torch.zeros(n)), want)
    racy = _selftest("neighbour_racy", torch.zeros(n))
    assert racy.isnan().any()


def test_shared_memory_starts_as_poison():
    assert _selftest("dynamic_shared", torch.zeros(96)).isnan().all()


def test_misaligned_vector_access_and_bad_launches_fail():
    buf = torch.arange(9, dtype=torch.float32)
    assert _selftest("vector_load", buf[4:])[0] == 4 + 5 + 6 + 7  # 16-byte aligned: fine
    with pytest.raises(RuntimeError, match="misaligned address"):
        _selftest("vector_load", buf[1:])
    with emu.configure(max_grid_y=3):
        _selftest("grid_y_limit", torch.zeros(3))
        with pytest.raises(RuntimeError, match="invalid launch configuration"):
            _selftest("grid_y_limit", torch.zeros(4))
    with pytest.raises(RuntimeError, match="invalid launch configuration"):
        _selftest("too_many_threads", torch.zeros(1025))


def test_emulated_device_settings_are_restored():
    before = torch.ops.fastvae_emu._configure()
    with emu.configure(sm_count=7, max_grid_y=5, reverse=True):
        assert torch.ops.fastvae_emu._configure() == [7, 5, 1]
    assert torch.ops.fastvae_emu._configure() == before
    with pytest.raises(RuntimeError, match="sm_count"):
        torch.ops.fastvae_emu._configure(0)


@pytest.mark.parametrize("op", ["kl_normal_backward", "reparameterize_with_kl_normal_backward"])
def test_a_shared_prior_takes_both_gradients_in_one_repeat_walk(op):
    """A prior broadcast alike in mean and log-variance (a learned per-dim prior): the element pass,
    then one partials launch for both operands and one sum of their partials (not two of each);
    a prior with only its mean broadcast sums that one operand."""
    mq, lq, g = torch.randn(12, 5), torch.randn(12, 5), torch.randn(12)
    state, gz = torch.tensor([12345, 8]), torch.randn(12, 5)

    def kernels(mp, lp):
        """Each launch's kernel, with the number of sums its repeat walk takes (kSums)."""
        torch.ops.fastvae_emu._launch_log()
        args = (g, mq, lq, mp, lp) if op == "kl_normal_backward" else (gz, mq, lq, mp, lp, state, g)
        getattr(torch.ops.fastvae_emu, op)(*args)
        taken = []
        for line in torch.ops.fastvae_emu._launch_log():
            sums = re.search(r"launch_repeat_sumsI\w+?Li(\d)E", line)
            taken.append((line.split(" ", 2)[2].split(" @ ")[0], int(sums[1]) if sums else None))
        return taken

    pair = [("repeat_partials_kernel<acc_t, kSums>", 2), ("sum_partials_kernel<acc_t>", 2)]
    assert kernels(torch.randn(3, 5), torch.randn(3, 5)) == [("row_map_kernel<V>", None), *pair]
    one = [("repeat_partials_kernel<acc_t, kSums>", 1), ("sum_partials_kernel<acc_t>", 1)]
    assert kernels(torch.randn(3, 5), torch.randn(12, 5)) == [("row_map_kernel<V>", None), *one]


# ---------------------------------------------------------------- which launch path ran
def _paths_taken(log: List[str]) -> List[tuple]:
    """(kind, pack width V, lanes or grid) of each row-sum launch in the emulator's launch log."""
    taken = []
    for line in log:
        grid, _, rest = line.split(" ", 2)
        gx, gy, _ = (int(v) for v in grid.split(","))
        lanes = re.search(r"launch_row_sums_by_lanesILi(\d+)ELi(\d+)E", rest)
        block = re.search(r"row_sums_packedILi(\d+)E", rest)
        if lanes:
            taken.append(("lanes", int(lanes[1]), int(lanes[2])))
        elif rest.startswith("row_sums_by_block_kernel") and block:
            taken.append(("block", int(block[1]), gx, gy))
        elif rest.startswith("sum_chunks_kernel"):
            taken.append(("sum_chunks",))
    return taken


# For float32 KL rows: (aligned, misaligned) launches. 16-byte packs are 4 floats; a misaligned
# or odd-width row takes packs of 1.
EXPECTED_PATHS = {
    "lanes8": ([("lanes", 1, 8)], [("lanes", 1, 8)]),
    "lanes8_packed": ([("lanes", 4, 8)], [("lanes", 1, 32)]),
    "lanes32": ([("lanes", 4, 32)], [("lanes", 1, 32)]),
    "block": ([("block", 1, 1, 5)], [("block", 1, 1, 5)]),
    "width1_lanes": ([("lanes", 1, 8)], [("lanes", 1, 8)]),
    "width1_few_rows": ([("lanes", 1, 8)], [("lanes", 1, 8)]),
    "split": ([("block", 1, 3, 3), ("sum_chunks",)], [("block", 1, 3, 3), ("sum_chunks",)]),
    "split_packed": ([("block", 4, 2, 2), ("sum_chunks",)], [("block", 1, 2, 2), ("sum_chunks",)]),
    "grid_y": ([("block", 1, 1, 3)] * 2 + [("block", 1, 1, 1)],) * 2,
    "grid_y_split": ([("block", 4, 2, 2)] * 2 + [("block", 4, 2, 1), ("sum_chunks",)],
                     [("block", 1, 2, 2)] * 2 + [("block", 1, 2, 1), ("sum_chunks",)]),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_each_shape_takes_its_launch_path(path):
    """The shapes above reach the launch paths they are named for (read from the launch log)."""
    shape, settings = PATHS[path]
    mu = torch.randn(shape)
    torch.ops.fastvae_emu._launch_log()
    taken = []
    with emu.configure(**settings):
        for layout in (lambda t: t, _unaligned):
            torch.ops.fastvae_emu.kl_standard_normal(layout(mu), layout(mu))
            taken.append(_paths_taken(torch.ops.fastvae_emu._launch_log()))
    assert tuple(taken) == EXPECTED_PATHS[path]
