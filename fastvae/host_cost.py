"""Host cost of the loss: what a training step pays on the CPU side before any kernel runs.

On a GPU at everyday sizes (B=128, D=784, Z=20) a step is bound by host work (dispatcher calls,
Python, autograd nodes, launches), not by the kernels. This module measures that cost on the CPU,
where it can be seen without a GPU:

- :func:`host_cost`: time of one forward + backward of the whole negative ELBO (reparameterised
  sample with its KL term, likelihood, reduction) at tiny and everyday batch sizes, one thread,
  fused vs eager vs ``torch.compile``, interleaved in the same run. At B=1 the math costs nothing,
  so the time is host overhead.
- :class:`DispatchCounter`: a ``TorchDispatchMode`` that lists the dispatcher calls of a region,
  to count the kernel-launching ones and to find device->host syncs (``_local_scalar_dense`` …).

    python benchmarks/bench_host.py [--out r.json]      (or ``fastvae bench --host``)
"""
from __future__ import annotations

import collections
from typing import Callable, Dict, List, Optional, Sequence, Set

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import functional as F
from . import reference as R

#: Dispatcher calls that copy a value from the device to the host (each one a sync on a GPU).
SYNC_OPS = frozenset({"_local_scalar_dense", "item", "is_nonzero", "equal"})

# Calls that launch no kernel though the dispatcher does not mark them as views: bare allocations,
# metadata queries, and the seed gradient that ``loss.backward()`` itself makes (every loss pays it).
_NO_KERNEL = frozenset({
    "_unsafe_view", "_reshape_alias", "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty",
    "new_empty_strided", "promote_types", "result_type", "size", "stride", "sym_size", "sym_stride",
    "sym_numel", "dim", "ones_like",
})


def op_base(name: str) -> str:
    """``"aten::mul.Tensor"`` -> ``"mul"``: the op's name without namespace and overload."""
    return name.split("::", 1)[-1].split(".", 1)[0]


class DispatchCounter(TorchDispatchMode):
    """Records every op that reaches the dispatcher inside the ``with`` block (also usable by
    calling ``__enter__``/``__exit__`` from callbacks, around a stretch of a training loop).

    ``calls`` lists them (``"aten::mul.Tensor"``, ``"fastvae::reparameterize_with_kl"`` …) and
    ``views`` holds those the dispatcher marks as views; the properties pick out the
    kernel-launching calls and the device->host syncs, or count calls by op name.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: List[str] = []
        self.views: Set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func._schema.name) + ("." + func._overloadname if func._overloadname != "default" else "")
        self.calls.append(name)
        if func.is_view:
            self.views.add(name)
        return func(*args, **(kwargs or {}))

    @property
    def ops(self) -> List[str]:
        """The calls by op name alone (``"mul"``, ``"reparameterize_with_kl"`` …)."""
        return [op_base(c) for c in self.calls]

    @property
    def counts(self) -> "collections.Counter[str]":
        """How many times each op (by name alone) was called."""
        return collections.Counter(self.ops)

    @property
    def kernel_calls(self) -> List[str]:
        """Calls that launch a kernel on a GPU: all but views, metadata and bare allocations."""
        return [c for c in self.calls if c not in self.views and op_base(c) not in _NO_KERNEL]

    @property
    def syncs(self) -> List[str]:
        """Calls that copy a device value to the host."""
        return [c for c in self.calls if op_base(c) in SYNC_OPS]


def elbo_step(impl: str, batch: int, data_dim: int = 784, latent_dim: int = 20,
              dtype: torch.dtype = torch.float32, device: str = "cpu") -> Callable[[], None]:
    """One forward + backward of the negative ELBO with its sample, as in a training step.

    ``impl``: "fused" (fastvae.functional), "eager" (fastvae.reference, plain PyTorch) or
    "compile" (the eager code under ``torch.compile``). The sample goes on to the decoder, whose
    gradient arrives for it; the loss goes to the optimiser (``.backward()``).
    """
    if impl not in ("fused", "eager", "compile"):
        raise ValueError(f"impl must be 'fused', 'eager' or 'compile', got {impl!r}")
    if batch < 1 or data_dim < 1 or latent_dim < 1:
        raise ValueError(f"sizes must be >= 1, got batch={batch}, data_dim={data_dim}, latent_dim={latent_dim}")
    gen = torch.Generator().manual_seed(batch)
    recon = (3 * torch.randn(batch, data_dim, generator=gen, dtype=dtype)).to(device).requires_grad_()
    x = (torch.rand(batch, data_dim, generator=gen) < 0.5).to(dtype).to(device)
    mu = torch.randn(batch, latent_dim, generator=gen, dtype=dtype).to(device).requires_grad_()
    lv = (0.5 * torch.randn(batch, latent_dim, generator=gen, dtype=dtype)).to(device).requires_grad_()
    grad_z = torch.randn(batch, latent_dim, generator=gen, dtype=dtype).to(device)
    mod = F if impl == "fused" else R

    def loss_terms():
        z, kl = mod.reparameterize_with_kl(mu, lv)
        return z, mod.elbo(recon, x, mu, lv, kl=kl)

    if impl == "compile":
        torch._dynamo.reset()
        loss_terms = torch.compile(loss_terms)

    def step() -> None:
        for t in (recon, mu, lv):
            t.grad = None
        z, loss = loss_terms()
        torch.autograd.backward((z, loss), (grad_z, None))

    return step


def trace_elbo_step(batch: int = 128) -> DispatchCounter:
    """The dispatcher calls of one fused ELBO forward + backward (after a warm-up call)."""
    step = elbo_step("fused", batch)
    step()
    with DispatchCounter() as counter:
        step()
    return counter


def host_cost(batches: Sequence[int] = (1, 128), impls: Sequence[str] = ("fused", "eager", "compile"),
              threads: int = 1, repeats: int = 200, warmup: int = 20, retries: int = 2) -> List[Dict[str, object]]:
    """Microseconds per fwd+bwd of the whole negative ELBO, per batch size and implementation,
    interleaved in one run on the CPU with ``threads`` torch threads; ratios against eager."""
    from .bench import time_interleaved  # the harness the other benchmark rows use

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for batch in batches:
            steps = {impl: elbo_step(impl, batch) for impl in impls}
            t = time_interleaved(steps, torch.device("cpu"), warmup=warmup, repeats=repeats, retries=retries)
            row: Dict[str, object] = {"batch": batch, "data_dim": 784, "latent_dim": 20, "threads": threads,
                                      "other_load": t.other_load}
            for impl in impls:
                row[f"{impl}_us"] = 1e3 * t.median[impl]
                row[f"{impl}_iqr_us"] = 1e3 * t.iqr[impl]
            for impl in impls:
                if impl != "eager" and "eager" in steps:
                    row[f"{impl}_over_eager"] = t.median[impl] / t.median["eager"]
            rows.append(row)
    finally:
        torch.set_num_threads(previous)
    return rows


def host_table(rows: Sequence[Dict[str, object]], counts: Optional[Dict[str, int]] = None) -> str:
    """Markdown table of :func:`host_cost` rows (and the fused step's dispatcher counts)."""
    lines = ["| batch | fused µs | eager µs | compile µs | fused / eager | compile / eager |",
             "|---|---|---|---|---|---|"]

    def f(v, spec):
        return "–" if v is None else format(v, spec)

    for r in rows:
        lines.append(f"| {r['batch']} | {f(r.get('fused_us'), '.1f')} | {f(r.get('eager_us'), '.1f')} | "
                     f"{f(r.get('compile_us'), '.1f')} | {f(r.get('fused_over_eager'), '.2f')}× | "
                     f"{f(r.get('compile_over_eager'), '.2f')}× |")
    if counts:
        lines.append("")
        lines.append(f"Fused ELBO fwd+bwd (B=128): {counts['kernel_calls']} kernel-launching dispatcher "
                     f"calls, {counts['syncs']} device->host syncs.")
    return "\n".join(lines)


def host_report(threads: int = 1, repeats: int = 200) -> Dict[str, object]:
    """The host-cost family of ``fastvae bench``: timings, ratios and the fused step's call counts."""
    counter = trace_elbo_step(128)
    rows = host_cost(threads=threads, repeats=repeats)
    counts = {"kernel_calls": len(counter.kernel_calls), "syncs": len(counter.syncs),
              "calls": counter.kernel_calls}
    goal = next((r.get("fused_over_eager") for r in rows if r["batch"] == 1), None)
    return {"rows": rows, "counts": counts,
            "goal": {"fused_over_eager_at_B1": goal, "target": 0.5, "met": goal is not None and goal <= 0.5}}
