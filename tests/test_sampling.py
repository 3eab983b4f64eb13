"""The sampling family: ``reparameterize`` and ``reparameterize_with_kl``. The draw's moments,
reproducibility under torch.manual_seed and generators, the (seed, offset) state the ops return,
eps regenerated (never stored) in the backward pass, the sample and its KL term from one pass
against the reference, float64 gradcheck, bad input and oversized draws; the CPU kernels' eps
stream against an independent Philox4x32-10 reference."""
from __future__ import annotations

import pytest
import torch

from fastvae import functional as F
from fastvae import reference as R

from .conftest import TOL, cpu_and_cuda, rel_err
from .philox_ref import fastvae_eps
from .reference_checks import DTYPES, stream_eps

ops = torch.ops.fastvae


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_reparameterize_moments_and_shape(device):
    mu = torch.randn(4, 16, device=device)
    lv = torch.randn(4, 16, device=device)
    z = F.reparameterize(mu, lv, num_samples=20000)
    assert z.shape == (20000, 4, 16)
    eps = (z - mu) / torch.exp(0.5 * lv)
    # 1.28M draws: mean within ~5 sigma of 0, std and kurtosis of a standard normal.
    assert abs(eps.mean().item()) < 5 / (eps.numel() ** 0.5)
    assert abs(eps.std().item() - 1) < 5e-3
    assert abs((eps**4).mean().item() - 3) < 0.05
    # Different elements are not correlated (lag-1 over the flat stream, across Philox groups).
    flat = eps.flatten()
    assert abs(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()) < 5e-3
    assert F.reparameterize(mu, lv).shape == (4, 16)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_reparameterize_reproducible_under_manual_seed(device):
    mu, lv = torch.randn(3, 9, device=device), torch.randn(3, 9, device=device)
    torch.manual_seed(1234)
    a = F.reparameterize(mu, lv, num_samples=2)
    b = F.reparameterize(mu, lv, num_samples=2)
    torch.manual_seed(1234)
    c = F.reparameterize(mu, lv, num_samples=2)
    assert torch.equal(a, c)
    assert not torch.equal(a, b)  # consecutive calls draw fresh noise
    g1 = torch.Generator(device=device).manual_seed(5)
    g2 = torch.Generator(device=device).manual_seed(5)
    assert torch.equal(F.reparameterize(mu, lv, generator=g1), F.reparameterize(mu, lv, generator=g2))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_sampling_ops_return_the_state_they_drew_from(device):
    """The raw ops draw (seed, offset) from the generator themselves and return it; given back
    as rng_state it reproduces the draw (what the backward pass relies on)."""
    ops = torch.ops.fastvae
    mu, lv = torch.randn(4, 9, device=device), torch.randn(4, 9, device=device)
    gen = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, ())))
    z, state = ops.reparameterize(mu, lv, 3, gen)
    z_kl, kl, state_kl = ops.reparameterize_with_kl(mu, lv, 3, gen)
    assert state.dtype == torch.int64 and state.shape == (2,) and not torch.equal(state, state_kl)
    assert not torch.equal(z, z_kl)  # a fresh stream per call
    assert torch.equal(ops.reparameterize(mu, lv, 3, rng_state=state)[0], z)
    again, kl_again, state_again = ops.reparameterize_with_kl(mu, lv, 3, rng_state=state_kl)
    assert torch.equal(again, z_kl) and torch.equal(kl_again, kl) and torch.equal(state_again, state_kl)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("op", ["reparameterize", "reparameterize_with_kl"])
def test_no_sample_dim_is_one_sample_shaped_like_mu(device, op):
    """num_samples None: the draw of num_samples=1 from the same state, without its sample dim,
    and the same gradients (the backward op sees one sample)."""
    sampler = getattr(torch.ops.fastvae, op)
    mu = torch.randn(4, 9, device=device, requires_grad=True)
    lv = torch.randn(4, 9, device=device, requires_grad=True)
    state = torch.tensor([int(torch.randint(0, 2**62, ())), 7], device=device)
    flat = sampler(mu, lv, None, None, state)
    one = sampler(mu, lv, 1, None, state)
    assert flat[0].shape == mu.shape and one[0].shape == (1, *mu.shape)
    assert torch.equal(flat[0], one[0][0]) and torch.equal(flat[-1], one[-1])
    w = torch.randn_like(mu)
    got = torch.autograd.grad(flat[0], (mu, lv), w)
    want = torch.autograd.grad(one[0], (mu, lv), w.unsqueeze(0))
    for g, r in zip(got, want):
        assert torch.equal(g, r)
    z = F.reparameterize(mu, lv)
    assert z.shape == mu.shape and z.grad_fn.name() == "fastvae::autograd::Reparameterize"  # no view node


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("shape", [(5, 7), (1, 1), (3, 1025)])
def test_backward_op_reads_a_mu_shaped_grad_z_as_one_sample(device, shape):
    """The autograd node hands z's gradient to reparameterize_backward as it is (no per-step
    unsqueeze): mu's shape means one sample, the same gradients as (1, *shape); other shapes raise."""
    mu, lv = torch.randn(shape, device=device), torch.randn(shape, device=device)
    state = torch.tensor([int(torch.randint(0, 2**62, ())), 3], device=device)
    gz, gkl = torch.randn(shape, device=device), torch.randn(shape[0], device=device)
    for kl in (None, gkl):
        flat = torch.ops.fastvae.reparameterize_backward(gz, mu, lv, state, kl)
        one = torch.ops.fastvae.reparameterize_backward(gz.unsqueeze(0), mu, lv, state, kl)
        for a, b in zip(flat, one):
            assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="grad_z must be"):
        torch.ops.fastvae.reparameterize_backward(gz.t().contiguous() if shape[0] != shape[1] else gz[:, :0],
                                                  mu, lv, state, None)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("samples", [3, 16, 17])  # one block of sample sums (<= 16), or blocks summed in double
def test_reparameterize_backward_regenerates_eps(device, dtype, samples):
    mu = torch.randn(5, 1025, device=device).to(dtype).requires_grad_()
    lv = torch.randn(5, 1025, device=device).to(dtype).requires_grad_()
    # The autograd graph holds mu, logvar and the 2-element rng state, never eps or z.
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        z = F.reparameterize(mu, lv, num_samples=samples)
    assert sorted(t.numel() for t in saved) == [2, mu.numel(), mu.numel()]
    w = torch.randn_like(z, dtype=torch.float64)
    z.backward(w.to(dtype))
    eps = (z.detach().double() - mu.detach().double()) / torch.exp(0.5 * lv.detach().double())
    grad_mu = w.sum(0)
    grad_lv = (w * eps * 0.5 * torch.exp(0.5 * lv.detach().double())).sum(0)
    tol = 3e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-5
    assert rel_err(mu.grad, grad_mu) < tol
    assert rel_err(lv.grad, grad_lv) < tol


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 1025), (7, 20), (1, 1), (4, 3, 7)])
@pytest.mark.parametrize("used", ["both", "z", "kl"])
def test_reparameterize_with_kl_is_sample_and_kl_in_one(device, dtype, shape, used):
    mu = (torch.randn(shape, dtype=torch.float64) * 0.7).to(device=device, dtype=dtype).requires_grad_()
    lv = (torch.randn(shape, dtype=torch.float64) * 0.7).to(device=device, dtype=dtype).requires_grad_()
    gen = torch.Generator(device=device)
    seed = int(torch.randint(0, 2**62, ()))
    z, kl = F.reparameterize_with_kl(mu, lv, num_samples=3, generator=gen.manual_seed(seed))
    assert z.shape == (3, *shape) and z.dtype == dtype and kl.shape == shape[:-1]
    # The sample is the one reparameterize draws from the same generator state.
    z_alone = F.reparameterize(mu.detach(), lv.detach(), num_samples=3, generator=gen.manual_seed(seed))
    assert rel_err(z, z_alone) <= (0 if device == "cpu" else 1e-6 if dtype != torch.float64 else 1e-14)
    # Reference on float64 copies, with the stream's eps from a float64 draw of the same seed.
    m64, l64 = mu.detach().double().requires_grad_(), lv.detach().double().requires_grad_()
    eps = stream_eps(m64, l64, 3, gen, seed)
    z_ref, kl_ref = R.reparameterize(m64, l64, num_samples=3, eps=eps), R.kl_standard_normal(m64, l64)
    assert rel_err(z, z_ref) <= TOL[dtype] and rel_err(kl, kl_ref) <= TOL[dtype]
    w_z, w_kl = torch.randn_like(z_ref), torch.randn_like(kl_ref)
    terms = {"z": [(z, z_ref, w_z)], "kl": [(kl, kl_ref, w_kl)]}
    terms["both"] = terms["z"] + terms["kl"]
    sum(((out * w.to(device=device, dtype=out.dtype)).sum() for out, _, w in terms[used])).backward()
    sum(((ref * w).sum() for _, ref, w in terms[used])).backward()
    for fused, ref in ((mu, m64), (lv, l64)):
        assert fused.grad.dtype == dtype
        assert rel_err(fused.grad, ref.grad) <= TOL[dtype] * 4


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_gradcheck(device):
    kw = dict(dtype=torch.float64, device=device)

    def leaf(*shape):
        return torch.randn(shape, **kw).requires_grad_()

    gc = torch.autograd.gradcheck
    gen = torch.Generator(device=device)

    def sample(mu, lv):
        gen.manual_seed(11)  # the same eps on every call, as gradcheck requires
        return F.reparameterize(mu, lv, num_samples=3, generator=gen)

    assert gc(sample, (leaf(2, 5), leaf(2, 5)))

    def sample_and_kl(mu, lv):
        gen.manual_seed(11)
        z, kl = F.reparameterize_with_kl(mu, lv, num_samples=2, generator=gen)
        return z, kl

    assert gc(sample_and_kl, (leaf(3, 5), leaf(3, 5)))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: F.reparameterize(torch.randn(3), torch.randn(3), num_samples=0), "num_samples"),
        (lambda: F.reparameterize_with_kl(torch.randn(()), torch.randn(())), "latent dim"),
        (lambda: F.reparameterize_with_kl(torch.randn(3, 2), torch.randn(3, 2), num_samples=-1), "num_samples"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("sampler", [F.reparameterize, F.reparameterize_with_kl])
def test_huge_num_samples_refused_before_any_allocation(sampler):
    """num_samples=10**12 would ask the allocator for tens of TB: a ValueError naming
    num_samples instead, raised before the generator advances."""
    mu, lv = torch.randn(3, 4), torch.randn(3, 4)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
    before = gen.get_state()
    with pytest.raises(ValueError, match="num_samples=1000000000000 would draw 12000000000000 elements"):
        sampler(mu, lv, num_samples=10**12, generator=gen)
    assert torch.equal(gen.get_state(), before)
    # An ordinary K still works, from the same generator state.
    z = sampler(mu, lv, num_samples=7, generator=gen)
    assert (z[0] if isinstance(z, tuple) else z).shape == (7, 3, 4)


# ---------------------------------------------------------------- the CPU kernels' eps stream
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,samples", [((3, 1003), 3), ((1, 5), 1), ((2, 4099), 2)])
def test_eps_is_the_philox_stream(dtype, shape, samples):
    # Sample boundaries inside a tile, partial blocks, an offset whose counter step (offset / 4)
    # uses its high word and whose offset % 4 moves the subsequences (tests/philox_ref.py).
    seed, offset = 0x1234_5678_9ABC_DEF1 & 0x7FFF_FFFF_FFFF_FFFF, (1 << 35) + 5
    mu = torch.zeros(shape, dtype=dtype)
    state = torch.tensor([seed, offset], dtype=torch.int64)
    eps = ops.reparameterize(mu, torch.zeros_like(mu), samples, None, state)[0].flatten().double()
    ref = fastvae_eps(seed, offset, eps.numel(), dtype)
    if dtype == torch.float64:
        assert (eps - ref).abs().max().item() < 1e-13
    else:
        # A few float32 ulp of the radius (up to ~6.7): the last bits of log, sqrt, sin, cos.
        ulp = torch.finfo(torch.float32).eps
        assert ((eps - ref).abs() / ref.abs().clamp_min(1.0)).max().item() < 16 * ulp
        assert rel_err(eps, ref) < 2 * ulp


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_sample_is_the_float_sample_rounded(dtype):
    mu = (torch.randn(7, 1001) * 2).to(dtype)
    lv = torch.randn(7, 1001).to(dtype)
    state = torch.tensor([987654321, 3], dtype=torch.int64)
    z = ops.reparameterize(mu, lv, 2, None, state)[0]
    z32 = ops.reparameterize(mu.float(), lv.float(), 2, None, state)[0]
    # The same float arithmetic, then one rounding: at most one unit in the last place apart.
    ulp = torch.finfo(dtype).eps
    assert ((z.double() - z32.double()).abs() / z32.double().abs().clamp_min(1e-3)).max().item() <= ulp


# ---------------------------------------------------------------- accumulation over many samples
@pytest.mark.parametrize("device", cpu_and_cuda())
def test_sampler_backward_sums_a_million_samples_closely(device):
    """The K-sample sum of the sampler's backward pass (issue 23, cause 4): at K = 10^6 float32
    samples summed one after another are off by ~1e-5 relative; both sums stay far closer."""
    k, cols = 10**6, 17  # 16 elements on the vector path, 1 in the scalar tail
    mu = torch.randn(1, cols, device=device)
    lv = torch.randn(1, cols, device=device) * 0.5
    state = torch.tensor([987654321, 0], dtype=torch.int64, device=device)
    grad_z = torch.rand(k, 1, cols, device=device) + 0.5
    grad_mu, grad_lv = torch.ops.fastvae.reparameterize_backward(grad_z, mu, lv, state, None)
    want_mu = grad_z.double().sum(0)
    assert rel_err(grad_mu, want_mu) < 1e-6
    eps = torch.ops.fastvae.reparameterize(torch.zeros_like(mu), torch.zeros_like(lv), k, None, state)[0]
    want_lv = (grad_z.double() * eps.double()).sum(0) * 0.5 * (0.5 * lv.double()).exp()
    assert rel_err(grad_lv, want_lv) < 1e-6
