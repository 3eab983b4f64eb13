"""Bad and edge inputs x ops x devices, as one table (issue 23's probe, kept as a test).

Each cell runs one op of :mod:`fastvae.functional` with one edge applied to one argument, on
the CPU kernels and on the emulated CUDA kernels (``emu``), and expects one of two outcomes:

* ``REF``: the value and every input gradient equal :mod:`fastvae.reference`'s, evaluated in
  float64 on the same (rounded) inputs and then rounded to the output's dtype: NaN exactly where
  the reference has NaN, an infinity of the same sign where it has one, the finite values within
  the dtype's tolerance. A NaN in must come out as NaN, an infinity as the reference's infinity,
  and a result that is finite in the output's dtype must not overflow on the way.
* ``raises``: a ValueError or RuntimeError whose message names the argument.

Edges that carry a value (NaN, infinities, log-variances at the edge of float32's exp range, a
valid dtype of another kind) expect ``REF``; edges of kind (a meta tensor among real ones, an
int64 tensor, a list, a wrong shape) expect ``raises``; ``Op.refuses`` lists the exceptions.
Values land in the vector path and in the row tail (rows of 37 columns) and in the scalar path
(rows of 5 columns, shorter than a vector).

A new op is one more ``Op`` in OPS: its arguments with their roles, a fresh-input maker and the
fused and reference calls. Every edge that applies to one of its roles then runs on it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as TF

import fastvae
from fastvae import functional as F
from fastvae import reference as R

from .conftest import TOL, cpu_and_cuda

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
SHAPES = {"vec": (3, 37), "scalar": (3, 5)}  # (rows, cols): vector path + row tail; scalar path
SEED = 1234  # the generator seed of the sampling ops


# ---------------------------------------------------------------- oracles
def _bernoulli_terms(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) per element in float64: x log sigmoid(l) + (1 - x) log sigmoid(-l).

    This is fastvae.reference's -binary_cross_entropy_with_logits wherever torch's form is
    defined (test_oracles_are_the_reference checks it); at a logit of -inf torch computes
    inf - inf and returns NaN where the limit is -inf (x > 0), which this form keeps. Both leave
    0 * inf (x exactly 1 at +inf, exactly 0 at -inf) NaN."""
    x = x.to(logits.dtype)
    return x * TF.logsigmoid(logits) + (1 - x) * TF.logsigmoid(-logits)


def _ref_bernoulli(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    logits, x = torch.broadcast_tensors(logits, x.to(logits.dtype))
    return _bernoulli_terms(logits, x).flatten(1).sum(1)


def _ref_elbo(recon, x, mu, logvar, likelihood="bernoulli", obs_logvar=0.0, kl=None) -> torch.Tensor:
    """fastvae.reference.elbo (mean reduction, beta 1) with _bernoulli_terms for its BCE."""
    if likelihood == "gaussian":
        return R.elbo(recon, x, mu, logvar, likelihood, obs_logvar, kl=kl)
    rec = -_bernoulli_terms(recon, x.to(recon.dtype).expand_as(recon)).flatten(1).sum(1)
    return (rec + (R.kl_standard_normal(mu, logvar) if kl is None else kl)).mean()


def _generator(*tensors: Any) -> torch.Generator:
    """A generator seeded with SEED on the device of the first real tensor among ``tensors``."""
    device = next((t.device for t in tensors if isinstance(t, torch.Tensor) and t.device.type != "meta"),
                  torch.device("cpu"))
    return torch.Generator(device).manual_seed(SEED)


def _eps(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """The eps a sampling op drew for the output ``like`` (same seed, same device and route): the
    draw of mu = 0, logvar = 0 in the accumulation dtype, as float64 on the CPU."""
    acc = torch.float64 if like.dtype == torch.float64 else torch.float32
    zeros = torch.zeros(shape, dtype=acc, device=like.device)
    return F.reparameterize(zeros, zeros, generator=_generator(zeros)).double().cpu()


# ---------------------------------------------------------------- ops
@dataclass(frozen=True)
class Arg:
    name: str
    role: str  # "loc", "logvar", "logits", "target" (Bernoulli x), "const_logvar" (a Python float)


@dataclass(frozen=True)
class Op:
    """One row of the table. ``fused(**inputs)`` and ``ref(out, **inputs64)`` return a tuple of
    tensors (``out``: the fused op's first output); ``make(shape, dtype)`` fresh valid inputs by
    argument name."""

    name: str
    args: Tuple[Arg, ...]
    fused: Callable[..., Tuple[torch.Tensor, ...]]
    ref: Callable[..., Tuple[torch.Tensor, ...]]
    make: Callable[[Tuple[int, int], torch.dtype], Dict[str, Any]]
    # (argument, edge) -> the argument the error must name, for cells that must raise although
    # the edge carries a value (e.g. elbo refuses a non-finite obs_logvar).
    refuses: Dict[Tuple[str, str], str] = field(default_factory=dict)


def _randn(shape, dtype, scale=1.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)


def _loc_lv(shape, dtype, *names):
    """Gaussian operands: locations N(0, 1), log-variances N(0, 0.25)."""
    return {n: _randn(shape, dtype, 0.5 if "logvar" in n else 1.0) for n in names}


def _sample_ref(out, mu, logvar):
    return (R.reparameterize(mu, logvar, eps=_eps(torch.broadcast_shapes(mu.shape, logvar.shape), out)),)


def _sample_kl_ref(out, mu, logvar):
    return _sample_ref(out, mu, logvar) + (R.kl_standard_normal(mu, logvar),)


def _elbo_inputs(shape, dtype, likelihood, obs=None):
    out = {"recon": _randn(shape, dtype, 4.0 if likelihood == "bernoulli" else 1.0),
           "x": torch.rand(shape, dtype=torch.float64).to(dtype)}
    out.update(_loc_lv(shape, dtype, "mu", "logvar"))
    if obs == "tensor":
        out["obs_logvar"] = _randn(shape, dtype, 0.5)
    elif obs == "float":
        out["obs_logvar"] = 0.3
    return out


LOC, LV, LOGITS, TARGET, CONST_LV = "loc", "logvar", "logits", "target", "const_logvar"
_NONFINITE_OBS = {("obs_logvar", e): "obs_logvar" for e in ("nan", "+inf", "-inf")}

OPS: List[Op] = [
    Op("reparameterize", (Arg("mu", LOC), Arg("logvar", LV)),
       lambda mu, logvar: (F.reparameterize(mu, logvar, generator=_generator(mu, logvar)),),
       _sample_ref, lambda s, d: _loc_lv(s, d, "mu", "logvar")),
    Op("reparameterize_with_kl", (Arg("mu", LOC), Arg("logvar", LV)),
       lambda mu, logvar: F.reparameterize_with_kl(mu, logvar, generator=_generator(mu, logvar)),
       _sample_kl_ref, lambda s, d: _loc_lv(s, d, "mu", "logvar")),
    Op("kl_standard_normal", (Arg("mu", LOC), Arg("logvar", LV)),
       lambda mu, logvar: (F.kl_standard_normal(mu, logvar),),
       lambda _, mu, logvar: (R.kl_standard_normal(mu, logvar),), lambda s, d: _loc_lv(s, d, "mu", "logvar")),
    Op("kl_normal", (Arg("mu_q", LOC), Arg("logvar_q", LV), Arg("mu_p", LOC), Arg("logvar_p", LV)),
       lambda mu_q, logvar_q, mu_p, logvar_p: (F.kl_normal(mu_q, logvar_q, mu_p, logvar_p),),
       lambda _, mu_q, logvar_q, mu_p, logvar_p: (R.kl_normal(mu_q, logvar_q, mu_p, logvar_p),),
       lambda s, d: _loc_lv(s, d, "mu_q", "logvar_q", "mu_p", "logvar_p")),
    Op("reparameterize_with_kl[prior]",
       (Arg("mu", LOC), Arg("logvar", LV), Arg("prior_mu", LOC), Arg("prior_logvar", LV)),
       lambda mu, logvar, prior_mu, prior_logvar: F.reparameterize_with_kl(
           mu, logvar, generator=_generator(mu, logvar), prior_mu=prior_mu, prior_logvar=prior_logvar),
       lambda out, mu, logvar, prior_mu, prior_logvar: (
           _sample_ref(out, mu, logvar) + (R.kl_normal(mu, logvar, prior_mu, prior_logvar),)),
       lambda s, d: _loc_lv(s, d, "mu", "logvar", "prior_mu", "prior_logvar")),
    Op("bernoulli_log_likelihood", (Arg("logits", LOGITS), Arg("x", TARGET)),
       lambda logits, x: (F.bernoulli_log_likelihood(logits, x),),
       lambda _, logits, x: (_ref_bernoulli(logits, x),),
       lambda s, d: {"logits": _randn(s, d, 4.0), "x": torch.rand(s, dtype=torch.float64).to(d)}),
    Op("gaussian_log_likelihood", (Arg("mean", LOC), Arg("x", LOC), Arg("logvar", LV)),
       lambda mean, x, logvar: (F.gaussian_log_likelihood(mean, x, logvar),),
       lambda _, mean, x, logvar: (R.gaussian_log_likelihood(mean, x, logvar),),
       lambda s, d: _loc_lv(s, d, "mean", "x", "logvar")),
    Op("gaussian_log_likelihood[float logvar]", (Arg("mean", LOC), Arg("x", LOC), Arg("logvar", CONST_LV)),
       lambda mean, x, logvar: (F.gaussian_log_likelihood(mean, x, logvar),),
       lambda _, mean, x, logvar: (R.gaussian_log_likelihood(mean, x, logvar),),
       lambda s, d: dict(_loc_lv(s, d, "mean", "x"), logvar=0.3)),
    Op("gaussian_log_density", (Arg("z", LOC), Arg("mu", LOC), Arg("logvar", LV)),
       lambda z, mu, logvar: (F.gaussian_log_density(z, mu, logvar),),
       lambda _, z, mu, logvar: (R.gaussian_log_density(z, mu, logvar),),
       lambda s, d: _loc_lv(s, d, "z", "mu", "logvar")),
    Op("standard_normal_log_density", (Arg("z", LOC),),
       lambda z: (F.standard_normal_log_density(z),),
       lambda _, z: (R.standard_normal_log_density(z),), lambda s, d: _loc_lv(s, d, "z")),
    Op("elbo[bernoulli]", (Arg("recon", LOGITS), Arg("x", TARGET), Arg("mu", LOC), Arg("logvar", LV)),
       lambda recon, x, mu, logvar: (F.elbo(recon, x, mu, logvar),),
       lambda _, recon, x, mu, logvar: (_ref_elbo(recon, x, mu, logvar),),
       lambda s, d: _elbo_inputs(s, d, "bernoulli")),
    Op("elbo[bernoulli, kl]", (Arg("recon", LOGITS), Arg("x", TARGET), Arg("kl", LOC)),
       lambda recon, x, kl: (F.elbo(recon, x, None, None, kl=kl),),
       lambda _, recon, x, kl: (_ref_elbo(recon, x, None, None, kl=kl),),
       lambda s, d: {"recon": _randn(s, d, 4.0), "x": torch.rand(s, dtype=torch.float64).to(d),
                     "kl": torch.rand(s[0], dtype=torch.float64).to(torch.float64 if d == torch.float64
                                                                    else torch.float32)}),
    Op("elbo[gaussian]", (Arg("recon", LOC), Arg("x", LOC), Arg("mu", LOC), Arg("logvar", LV),
                          Arg("obs_logvar", LV)),
       lambda recon, x, mu, logvar, obs_logvar: (F.elbo(recon, x, mu, logvar, "gaussian", obs_logvar),),
       lambda _, recon, x, mu, logvar, obs_logvar: (_ref_elbo(recon, x, mu, logvar, "gaussian", obs_logvar),),
       lambda s, d: _elbo_inputs(s, d, "gaussian", "tensor")),
    Op("elbo[gaussian, float obs_logvar]", (Arg("recon", LOC), Arg("x", LOC), Arg("mu", LOC), Arg("logvar", LV),
                                            Arg("obs_logvar", CONST_LV)),
       lambda recon, x, mu, logvar, obs_logvar: (fastvae.ELBOLoss("gaussian", obs_logvar)(recon, x, mu, logvar),),
       lambda _, recon, x, mu, logvar, obs_logvar: (_ref_elbo(recon, x, mu, logvar, "gaussian", obs_logvar),),
       lambda s, d: _elbo_inputs(s, d, "gaussian", "float"), refuses=_NONFINITE_OBS),
]


# ---------------------------------------------------------------- edges
def _spots(t: torch.Tensor) -> Tuple[Tuple[int, ...], ...]:
    """Where value edges land: the first and last column of row 1 (a vector and the row's tail)
    and the last element (the sampler's scalar tail); rows 0 keeps only finite values."""
    if t.dim() == 1:
        return ((1,), (t.shape[0] - 1,))
    return ((1, 0), (1, t.shape[1] - 1), (t.shape[0] - 1, t.shape[1] - 1))


def _put(value: float) -> Callable[[Any], Any]:
    def apply(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return value
        t = t.clone()
        for s in _spots(t):
            t[s] = value
        return t
    return apply


def _fill(value: float) -> Callable[[Any], Any]:
    return lambda t: torch.full_like(t, value) if isinstance(t, torch.Tensor) else value


def _other_float(t: torch.Tensor) -> torch.Tensor:
    """The same values in another floating dtype (exactly representable in both)."""
    return t.double() if t.dtype != torch.float64 else t.float().double().float()


def _meta(t: torch.Tensor) -> torch.Tensor:
    return t.to("meta")


def _wider(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t, t[..., :1]], dim=-1) if t.dim() > 1 else torch.cat([t, t[:1]])


@dataclass(frozen=True)
class Edge:
    name: str
    roles: Tuple[str, ...]
    apply: Callable[[Any], Any]
    raises: bool  # kind edges: the error must name the argument
    mismatch: bool = False  # an error only against another tensor argument (devices, shapes)
    # Where float32 itself overflows (e^89, e^100): an infinity is also right where the reference
    # computed as torch computes it, in the inputs' own dtypes, has it.
    torch_range: bool = False


_ALL = (LOC, LV, LOGITS, TARGET)
EDGES: List[Edge] = [
    Edge("nan", _ALL + (CONST_LV,), _put(math.nan), False),
    Edge("+inf", (LOC, LV, LOGITS, CONST_LV), _put(math.inf), False),
    Edge("-inf", (LOC, LV, LOGITS, CONST_LV), _put(-math.inf), False),
    Edge("7e4", (LOGITS,), _put(7e4), False),  # +inf in float16
    # exp(-lv) or exp(lv) alone overflows float32 where the results are still finite.
    Edge("lv=-88", (LV, CONST_LV), _fill(-88.0), False),
    Edge("lv=-89", (LV, CONST_LV), _fill(-89.0), False, torch_range=True),
    Edge("lv=+89", (LV, CONST_LV), _fill(89.0), False, torch_range=True),
    Edge("lv=-100", (LV, CONST_LV), _fill(-100.0), False, torch_range=True),
    Edge("other_float", _ALL, _other_float, False),
    Edge("uint8", (TARGET,), lambda t: (t > 0.5).to(torch.uint8), False),
    Edge("bool", (TARGET,), lambda t: t > 0.5, False),
    Edge("meta", _ALL, _meta, True, mismatch=True),
    Edge("int64", _ALL, lambda t: (t * 3).to(torch.int64), True),
    Edge("list", _ALL, lambda t: t.tolist(), True),
    Edge("shape", _ALL, _wider, True, mismatch=True),
    Edge("str", (CONST_LV,), lambda v: "0.3", True),
]


def _cells() -> List[Any]:
    cells = []
    for op in OPS:
        for arg in op.args:
            for edge in EDGES:
                if arg.role not in edge.roles or (edge.mismatch and len(op.args) < 2):
                    continue
                # Value edges: every dtype on the vector path, float32 on the scalar path too
                # (which widens every dtype alike); kind edges: float32 once.
                for dtype in (DTYPES if not edge.raises else DTYPES[:1]):
                    for shape in (SHAPES if not edge.raises and dtype == torch.float32 else ["vec"]):
                        cells.append(pytest.param(op, arg.name, edge, dtype, shape,
                                                  id=f"{op.name}-{arg.name}-{edge.name}-{str(dtype)[6:]}-{shape}"))
    return cells


CELLS = _cells()


# ---------------------------------------------------------------- comparison
def _assert_equal_to_reference(got: torch.Tensor, want64: torch.Tensor, tol: float, what: str,
                               own: Optional[torch.Tensor] = None) -> None:
    """got against the float64 reference rounded to got's dtype: NaN and infinities in the same
    places (an entry within 1% of the dtype's largest value may round either way; with ``own``,
    the reference computed in the inputs' own dtypes as torch computes it, an infinity it has
    too), finite entries within tol (relative over the finite entries, plus the dtype's smallest
    normal per entry: results in the subnormal range carry no relative precision)."""
    assert got.shape == want64.shape, (what, got.shape, want64.shape)
    want = want64.detach().to(got.dtype).double()
    g = got.detach().double()
    free = want64.detach().abs() >= 0.99 * torch.finfo(got.dtype).max
    if own is not None:
        free |= own.detach().isinf() & (own.detach().double() == g)
    nan_g, nan_w = g.isnan(), want.isnan()
    assert torch.equal(nan_g, nan_w), f"{what}: NaN at {nan_g.nonzero().tolist()}, reference {nan_w.nonzero().tolist()}"
    inf_g, inf_w = g.isinf() & ~free, want.isinf() & ~free
    assert torch.equal(inf_g, inf_w), f"{what}: inf at {inf_g.nonzero().tolist()}, reference {inf_w.nonzero().tolist()}"
    assert torch.equal(g[inf_g], want[inf_w]), f"{what}: infinities of another sign"
    fin = g.isfinite() & want.isfinite()
    if fin.any():
        a, b = g[fin], want64.detach()[fin]
        floor = torch.finfo(got.dtype).tiny * math.sqrt(a.numel())
        err = (a - b).norm().item()
        assert err <= tol * b.norm().item() + floor, f"{what}: relative error {err / b.norm().item():.3g} > {tol:g}"


def _leaves(inputs: Dict[str, Any], dtype64: bool) -> Dict[str, Any]:
    """Fresh leaves (float64 copies for the reference) with requires_grad on every float tensor."""
    out = {}
    for name, v in inputs.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().double() if dtype64 and v.is_floating_point() else v.detach().clone()
            if v.is_floating_point() and v.device.type != "meta":
                v.requires_grad_(True)
        out[name] = v
    return out


def _run_cell(op: Op, arg: str, edge: Edge, dtype: torch.dtype, shape: str, device: str) -> None:
    inputs = op.make(SHAPES[shape], dtype)
    inputs[arg] = edge.apply(inputs[arg])
    inputs = {n: v.to(device) if isinstance(v, torch.Tensor) and v.device.type != "meta" else v
              for n, v in inputs.items()}
    must_name = op.refuses.get((arg, edge.name), arg if edge.raises else None)
    leaves = _leaves(inputs, False)
    if must_name is not None:
        with pytest.raises((ValueError, RuntimeError)) as info:
            op.fused(**leaves)
        assert re.search(rf"\b{re.escape(must_name)}\b", str(info.value)), (must_name, str(info.value))
        return
    out = op.fused(**leaves)
    cpu_inputs = {n: v.cpu() if isinstance(v, torch.Tensor) else v for n, v in inputs.items()}
    ins = [_leaves(cpu_inputs, True)] + ([_leaves(cpu_inputs, False)] if edge.torch_range else [])
    refs = [(i, op.ref(out[0], **i)) for i in ins]  # float64, then torch's own dtypes
    assert all(len(r) == len(out) for _, r in refs)
    # The tolerance of the least precise dtype in the cell (an input cast down computes in it).
    tol = max(TOL.get(t.dtype, 0.0) for t in [*out, *leaves.values()] if isinstance(t, torch.Tensor))
    for i, o in enumerate(out):
        own = refs[1][1][i] if len(refs) > 1 else None
        _assert_equal_to_reference(o.cpu(), refs[0][1][i], tol, f"output {i}", own)
    # A random incoming gradient per output (finite, never exactly zero).
    ws = [torch.rand(o.shape, dtype=torch.float64) + 0.5 for o in out]
    torch.autograd.backward(list(out), [w.to(o.dtype).to(o.device) for o, w in zip(out, ws)])
    for _, r in refs:
        torch.autograd.backward(list(r), [w.to(t.dtype) for t, w in zip(r, ws)])
    for name, leaf in leaves.items():
        if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
            assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype, name
            own = refs[1][0][name].grad if len(refs) > 1 else None
            _assert_equal_to_reference(leaf.grad.cpu(), refs[0][0][name].grad, 4 * tol, f"d/d{name}", own)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("op,arg,edge,dtype,shape", CELLS)
def test_edge(op: Op, arg: str, edge: Edge, dtype: torch.dtype, shape: str, device: str) -> None:
    _run_cell(op, arg, edge, dtype, shape, device)


def test_every_op_is_in_the_table():
    assert {c.values[0].name for c in CELLS} == {op.name for op in OPS}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_oracles_are_the_reference(dtype):
    """_ref_bernoulli / _ref_elbo are fastvae.reference's functions wherever torch's BCE form is
    finite: the table's Bernoulli oracle differs only in the limits at infinite logits."""
    logits, x = torch.randn(4, 9, dtype=dtype) * 5, torch.rand(4, 9, dtype=dtype)
    mu, lv = torch.randn(4, 3, dtype=dtype), torch.randn(4, 3, dtype=dtype)
    tol = TOL[dtype]
    assert torch.allclose(_ref_bernoulli(logits, x), R.bernoulli_log_likelihood(logits, x), rtol=tol, atol=0)
    assert torch.allclose(_ref_elbo(logits, x, mu, lv), R.elbo(logits, x, mu, lv), rtol=tol, atol=0)
    inf = torch.tensor([[math.inf, -math.inf, math.inf]], dtype=dtype)
    ll = _bernoulli_terms(inf, torch.tensor([[0.0, 0.5, 0.5]], dtype=dtype))
    assert ll.isneginf().all()
