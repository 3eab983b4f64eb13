"""What the benchmarks measure: the cases (one op's forward + backward at one size and dtype) and
the size families they are drawn from.

Each case runs three implementations of the same inputs: ``fused`` (:mod:`fastvae.functional`),
``eager`` (its plain-PyTorch twin in :mod:`fastvae.reference`) and ``compile`` (that twin under
``torch.compile``, default mode, static shapes, fresh per case).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .. import functional as F
from .. import reference as R

IMPLS = ("fused", "eager", "compile")
#: The fused ops by family, as csrc/, fastvae.functional and benchmarks/bench_<family>.py name them.
OP_FAMILIES: Dict[str, Tuple[str, ...]] = {
    "sampling": ("reparameterize", "reparameterize_with_kl"),
    "kl": ("kl_standard_normal",),
    "likelihood": ("bernoulli_log_likelihood", "gaussian_log_likelihood"),
    "density": ("gaussian_log_density", "standard_normal_log_density"),
    "elbo": ("elbo",),
    # The KL against a prior that is a network's output (per row: a hierarchical VAE's top-down
    # prior), alone and fused with the sample of q.
    "kl_normal": ("kl_normal", "reparameterize_with_kl_normal"),
}
#: Size families an op family's script times by default (the others: default_families()).
OP_FAMILY_SIZES: Dict[str, Tuple[str, ...]] = {"kl_normal": ("latents",)}
OPS = (
    "elbo",
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "kl_standard_normal",
    "gaussian_log_density",
    "standard_normal_log_density",
    "reparameterize",
    "reparameterize_with_kl",
    "kl_normal",
    "reparameterize_with_kl_normal",
)
# Ops on the latent code: at MNIST-like sizes they run on (B, Z), elsewhere on (B, D).
LATENT_OPS = ("kl_standard_normal", "gaussian_log_density", "standard_normal_log_density", "reparameterize",
              "reparameterize_with_kl", "kl_normal", "reparameterize_with_kl_normal")
# "latents": latent codes themselves (D = Z): a VAE's (4096, 64) and a VDVAE-like layer's
# (32, 16 x 32 x 32) flattened.
FAMILIES = ("mnist", "short_rows", "images", "large", "latents")


# ---------------------------------------------------------------- sizes
def family_shapes(family: str, quick: bool = False) -> List[Dict[str, int]]:
    """The (B, D, Z) shapes of one size family; ``quick`` keeps a CI-sized subset."""
    if family == "mnist":
        sizes = [(128, 784, 20), (1024, 784, 20), (4096, 784, 64)]
        if quick:
            sizes = [(128, 784, 20), (1024, 784, 20)]
    elif family == "short_rows":
        sizes = [(65536, 64, 16)]
    elif family == "images":
        sizes = [(256, 3 * 64 * 64, 128)]
    elif family == "large":
        sizes = [(131072, 784, 64)]  # B * D = 1.03e8
    elif family == "latents":
        sizes = [(4096, 64, 64), (32, 16 * 32 * 32, 16 * 32 * 32)]
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return [{"B": b, "D": d, "Z": z} for b, d, z in sizes]


def default_families(device: torch.device, quick: bool, large: bool) -> List[str]:
    """Every family on CUDA; on CPU the large one only with ``large`` and none but MNIST when quick."""
    if quick:
        return ["mnist"] + (["large"] if large else [])
    if device.type == "cuda" or large:
        return list(FAMILIES)
    return ["mnist", "short_rows", "images"]


# ---------------------------------------------------------------- cases
@dataclass
class Case:
    """One benchmark. ``forward(impl)`` returns a function computing the outputs;
    ``make(impl)`` a function running forward + backward once (gradients dropped after)."""

    op: str
    family: str
    shape: Dict[str, int]
    dtype: str
    min_bytes: int
    forward: Callable[[str], Callable[[], Tuple[torch.Tensor, ...]]] = field(repr=False)
    upstream: Callable[[Tuple[torch.Tensor, ...]], Tuple[Optional[torch.Tensor], ...]] = field(repr=False)
    leaves: Sequence[torch.Tensor] = field(repr=False, default=())

    @property
    def elements(self) -> int:
        """Elements of the largest operand: the x axis of the plot."""
        b, d = self.shape["B"], self.shape["D"]
        return b * d

    def make(self, impl: str) -> Callable[[], None]:
        forward = self.forward(impl)
        leaves = self.leaves
        upstream = self.upstream

        def step() -> None:
            outs = forward()
            torch.autograd.backward(outs, upstream(outs))
            for t in leaves:
                t.grad = None

        return step


def leaf(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, device=device) * scale).to(dtype).requires_grad_()


def binary(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return (torch.rand(shape, device=device) > 0.5).to(dtype)


def upstream_grads(like: Sequence[Tuple[int, ...]], device: torch.device) -> Callable:
    """Random upstream gradients for non-scalar outputs (as a decoder or a weighted mean would
    deliver), one per output shape, cast once per output dtype and cached."""
    base = [torch.randn(s, device=device) if s else None for s in like]
    cache: Dict[Tuple[int, torch.dtype], torch.Tensor] = {}

    def grads(outs: Tuple[torch.Tensor, ...]) -> Tuple[Optional[torch.Tensor], ...]:
        res = []
        for i, (o, g) in enumerate(zip(outs, base)):
            if g is None:
                res.append(None)
                continue
            key = (i, o.dtype)
            if key not in cache:
                cache[key] = g.to(o.dtype)
            res.append(cache[key])
        return tuple(res)

    return grads


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def build_case(op: str, shape: Dict[str, int], dtype: torch.dtype, device: torch.device,
               family: str = "custom") -> Case:
    """The case for ``op`` at ``shape`` (keys B, D, Z). Latent ops use (B, Z) in the MNIST family
    and (B, D) elsewhere; ``elbo`` uses a Gaussian likelihood in the images family."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    b, d, z = int(shape["B"]), int(shape["D"]), int(shape["Z"])
    if min(b, d, z) < 1:
        raise ValueError(f"shape sizes must be >= 1, got {shape}")
    dname = str(dtype).replace("torch.", "")
    esize = torch.empty((), dtype=dtype).element_size()
    rows_esize = 8 if dtype == torch.float64 else 4  # row outputs are float32 (float64 for float64)
    cols = z if (op in LATENT_OPS and family == "mnist") else d
    case_shape = {"B": b, "D": cols} if op != "elbo" else {"B": b, "D": d, "Z": z}

    if op == "elbo":
        gaussian = family == "images"
        recon = leaf((b, d), dtype, device, 1.0 if gaussian else 3.0)
        x = torch.randn(b, d, device=device).to(dtype) if gaussian else binary((b, d), dtype, device)
        mu, lv = leaf((b, z), dtype, device), leaf((b, z), dtype, device, 0.5)
        lik = "gaussian" if gaussian else "bernoulli"

        def impl_fn(mod):
            # The whole loss of a training step: the sample z goes on to the decoder (its
            # gradient arrives from there), the negative ELBO to the optimiser. The KL term comes
            # with the sample, as in VAE.forward.
            def step():
                z, kl = mod.reparameterize_with_kl(mu, lv)
                return z, mod.elbo(recon, x, mu, lv, likelihood=lik, obs_logvar=-1.0, kl=kl)

            return step

        leaves = [recon, mu, lv]
        up = upstream_grads([(b, z), ()], device)
        # inputs read, grads written, z written and its upstream grad read
        min_bytes = _nbytes(recon, x, mu, lv) + _nbytes(recon, mu, lv) + 2 * b * z * esize
        op_name = "elbo_gaussian" if gaussian else "elbo"
        return Case(op_name, family, case_shape, dname, min_bytes, _forward(impl_fn), up, leaves)

    a = leaf((b, cols), dtype, device)
    lv = leaf((b, cols), dtype, device, 0.5)
    up_rows = upstream_grads([(b,)], device)
    row_out = b * rows_esize * 2  # row output written, its upstream grad read
    if op == "bernoulli_log_likelihood":
        x = binary((b, cols), dtype, device)
        spec = (lambda mod: lambda: (mod.bernoulli_log_likelihood(a, x),), [a], _nbytes(a, x, a) + row_out, up_rows)
    elif op == "gaussian_log_likelihood":
        x = torch.randn(b, cols, device=device).to(dtype)
        spec = (lambda mod: lambda: (mod.gaussian_log_likelihood(a, x, lv),), [a, lv],
                _nbytes(a, x, lv, a, lv) + row_out, up_rows)
    elif op == "kl_standard_normal":
        spec = (lambda mod: lambda: (mod.kl_standard_normal(a, lv),), [a, lv], _nbytes(a, lv, a, lv) + row_out, up_rows)
    elif op == "gaussian_log_density":
        zz = leaf((b, cols), dtype, device)
        spec = (lambda mod: lambda: (mod.gaussian_log_density(zz, a, lv),), [zz, a, lv],
                2 * _nbytes(zz, a, lv) + row_out, up_rows)
    elif op == "standard_normal_log_density":
        spec = (lambda mod: lambda: (mod.standard_normal_log_density(a),), [a], _nbytes(a, a) + row_out, up_rows)
    elif op in ("kl_normal", "reparameterize_with_kl_normal"):
        # A per-row prior (a network's output), every operand requiring its gradient.
        pm, plv = leaf((b, cols), dtype, device), leaf((b, cols), dtype, device, 0.5)
        four = _nbytes(a, lv, pm, plv)
        if op == "kl_normal":
            spec = (lambda mod: lambda: (mod.kl_normal(a, lv, pm, plv),), [a, lv, pm, plv], 2 * four + row_out, up_rows)
        else:  # z and its KL against the prior, both used
            spec = (lambda mod: lambda: mod.reparameterize_with_kl(a, lv, prior_mu=pm, prior_logvar=plv),
                    [a, lv, pm, plv], 2 * four + 2 * b * cols * esize + row_out,
                    upstream_grads([(b, cols), (b,)], device))
    elif op == "reparameterize":  # z goes on to the decoder; eps is never stored by the fused op
        spec = (lambda mod: lambda: (mod.reparameterize(a, lv),), [a, lv],
                _nbytes(a, lv, a, lv) + 2 * b * cols * esize, upstream_grads([(b, cols)], device))
    else:  # reparameterize_with_kl: z and the KL term of the same (mu, logvar), both used
        spec = (lambda mod: lambda: mod.reparameterize_with_kl(a, lv), [a, lv],
                _nbytes(a, lv, a, lv) + 2 * b * cols * esize + row_out, upstream_grads([(b, cols), (b,)], device))
    impl_fn, leaves, min_bytes, up = spec
    return Case(op, family, case_shape, dname, min_bytes, _forward(impl_fn), up, leaves)


def _forward(impl_fn: Callable) -> Callable[[str], Callable[[], Tuple[torch.Tensor, ...]]]:
    """Maps an implementation name to the forward function: fused, eager or compiled eager."""

    def forward(impl: str) -> Callable[[], Tuple[torch.Tensor, ...]]:
        if impl == "fused":
            return impl_fn(F)
        if impl == "eager":
            return impl_fn(R)
        if impl == "compile":
            # A fresh compile per case: no recompilation limit, no automatic dynamic shapes
            # carried over from earlier cases; static shapes, as with a fixed batch size.
            torch._dynamo.reset()
            return torch.compile(impl_fn(R))
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")

    return forward


def cases_for(families: Sequence[str], ops: Sequence[str], dtype: torch.dtype, device: torch.device,
              quick: bool = False) -> List[Case]:
    """Every case of the given size families and ops for one dtype."""
    cases = []
    for family in families:
        for shape in family_shapes(family, quick):
            for op in ops:
                cases.append(build_case(op, shape, dtype, device, family))
    return cases
