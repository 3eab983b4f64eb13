"""Host cost of the loss: what a training step pays on the CPU side before any kernel runs.

On a GPU at everyday sizes (B=128, D=784, Z=20) a step is bound by host work (dispatcher calls,
Python, autograd nodes, launches), not by the kernels. This measures that cost on the CPU, where
it can be seen without a GPU: one forward + backward of the whole negative ELBO with its
reparameterised sample, at tiny and everyday batch sizes, one thread, interleaved in one run:

- ``fused``: :func:`fastvae.functional.reparameterize_with_kl` + :func:`fastvae.functional.elbo`;
- ``eager``: the leanest eager loss, as pytorch/examples writes it (the baseline):
  ``binary_cross_entropy_with_logits(recon, x, reduction="sum")`` + the closed-form KL, with the
  sample ``mu + randn_like(std) * std``;
- ``reference``: :mod:`fastvae.reference` (``reduction="none"`` BCE, ``expand_as``, sums);
- ``compile``: the eager loss under ``torch.compile``.

At B=1 the math costs nothing, so the time is host overhead.

    python benchmarks/bench_host.py [--out r.json]      (or ``fastvae bench --host``)
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as TF

from .. import functional as F
from .. import reference as R
from .dispatch import DispatchCounter
from .timing import time_interleaved

HOST_IMPLS = ("fused", "eager", "reference", "compile")
DATA_DIM, LATENT_DIM = 784, 20


def lean_eager_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor,
                    logvar: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(z, negative ELBO summed over the batch) as pytorch/examples' VAE writes them."""
    std = torch.exp(0.5 * logvar)
    z = mu + torch.randn_like(std) * std
    bce = TF.binary_cross_entropy_with_logits(recon, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return z, bce + kld


def fused_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor,
               logvar: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The same (z, loss) from fastvae's fused ops: the sample with its KL term, then the ELBO."""
    z, kl = F.reparameterize_with_kl(mu, logvar)
    return z, F.elbo(recon, x, mu, logvar, reduction="sum", kl=kl)


def reference_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor,
                   logvar: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The same (z, loss) from fastvae.reference, the fused ops' plain-PyTorch twins."""
    z, kl = R.reparameterize_with_kl(mu, logvar)
    return z, R.elbo(recon, x, mu, logvar, reduction="sum", kl=kl)


_LOSSES: Dict[str, Callable] = {"fused": fused_loss, "eager": lean_eager_loss, "reference": reference_loss,
                                "compile": lean_eager_loss}


def elbo_step(impl: str, batch: int, data_dim: int = DATA_DIM, latent_dim: int = LATENT_DIM,
              dtype: torch.dtype = torch.float32, device: str = "cpu") -> Callable[[], None]:
    """One forward + backward of the negative ELBO with its sample, as in a training step.

    ``impl``: one of HOST_IMPLS (see the module doc). The sample goes on to the decoder, whose
    gradient arrives for it; the loss goes to the optimiser (one ``backward`` for both).
    """
    if impl not in HOST_IMPLS:
        raise ValueError(f"impl must be one of {HOST_IMPLS}, got {impl!r}")
    if batch < 1 or data_dim < 1 or latent_dim < 1:
        raise ValueError(f"sizes must be >= 1, got batch={batch}, data_dim={data_dim}, latent_dim={latent_dim}")
    gen = torch.Generator().manual_seed(batch)
    recon = (3 * torch.randn(batch, data_dim, generator=gen, dtype=dtype)).to(device).requires_grad_()
    x = (torch.rand(batch, data_dim, generator=gen) < 0.5).to(dtype).to(device)
    mu = torch.randn(batch, latent_dim, generator=gen, dtype=dtype).to(device).requires_grad_()
    lv = (0.5 * torch.randn(batch, latent_dim, generator=gen, dtype=dtype)).to(device).requires_grad_()
    grad_z = torch.randn(batch, latent_dim, generator=gen, dtype=dtype).to(device)
    loss_terms = _LOSSES[impl]
    if impl == "compile":
        torch._dynamo.reset()
        loss_terms = torch.compile(loss_terms)
    leaves = (recon, mu, lv)

    def step() -> None:
        for t in leaves:
            t.grad = None
        z, loss = loss_terms(recon, x, mu, lv)
        torch.autograd.backward((z, loss), (grad_z, None))

    step.leaves = leaves  # type: ignore[attr-defined]  (for tests: the gradients it writes)
    return step


def trace_elbo_step(batch: int = 128) -> DispatchCounter:
    """The dispatcher calls of one fused ELBO forward + backward (after a warm-up call)."""
    step = elbo_step("fused", batch)
    step()
    with DispatchCounter() as counter:
        step()
    return counter


def host_cost(batches: Sequence[int] = (1, 128), impls: Sequence[str] = HOST_IMPLS, threads: int = 1,
              repeats: int = 200, warmup: int = 20, retries: int = 2) -> List[Dict[str, object]]:
    """Microseconds per fwd+bwd of the whole negative ELBO, per batch size and implementation,
    interleaved in one run on the CPU with ``threads`` torch threads; each ratio is over the
    lean eager loss (``<impl>_over_eager``). ``thread_cpu`` holds the same fields measured as the
    calling thread's CPU time."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for batch in batches:
            steps = {impl: elbo_step(impl, batch) for impl in impls}
            t = time_interleaved(steps, torch.device("cpu"), warmup=warmup, repeats=repeats, retries=retries,
                                 thread_cpu=True)
            row: Dict[str, object] = {"batch": batch, "data_dim": DATA_DIM, "latent_dim": LATENT_DIM,
                                      "threads": threads, "other_load": t.other_load}
            for impl in impls:
                row[f"{impl}_us"] = 1e3 * t.median[impl]
                row[f"{impl}_iqr_us"] = 1e3 * t.iqr[impl]
            for impl in impls:
                if impl != "eager" and "eager" in steps:
                    row[f"{impl}_over_eager"] = t.median[impl] / t.median["eager"]
            # The same calls' CPU time on this thread: unlike the wall-clock figures above, what
            # other processes take from a busy machine does not inflate them.
            cpu = {f"{impl}_us": 1e3 * t.thread_cpu[impl] for impl in impls}
            if "eager" in steps:
                cpu.update({f"{impl}_over_eager": t.thread_cpu[impl] / t.thread_cpu["eager"]
                            for impl in impls if impl != "eager"})
            row["thread_cpu"] = cpu
            rows.append(row)
    finally:
        torch.set_num_threads(previous)
    return rows


def host_report(threads: int = 1, repeats: int = 200, batches: Sequence[int] = (1, 128),
                impls: Sequence[str] = HOST_IMPLS) -> Dict[str, object]:
    """The host-cost family of ``fastvae bench``: timings, ratios and the fused step's call counts."""
    counter = trace_elbo_step(128)
    rows = host_cost(batches, impls, threads=threads, repeats=repeats)
    counts = {"kernel_calls": len(counter.kernel_calls), "syncs": len(counter.syncs), "calls": counter.kernel_calls}
    return {"baseline": "eager: binary_cross_entropy_with_logits(reduction='sum') + closed-form KL, "
                        "pytorch/examples style", "rows": rows, "counts": counts}


def format_host(report: Dict[str, object]) -> str:
    """Plain-text lines of a host report: µs per implementation and ratios over eager, per batch."""
    lines = []
    for r in report["rows"]:
        us = ", ".join(f"{k[:-3]} {v:.1f}" for k, v in r.items() if k.endswith("_us") and not k.endswith("_iqr_us"))
        ratios = ", ".join(f"{k[:-11]} {v:.2f}x" for k, v in r.items() if k.endswith("_over_eager"))
        lines.append(f"host B={r['batch']} ({r['threads']} thread(s)): µs {us}; over eager: {ratios}")
        cpu = r.get("thread_cpu") or {}
        us = ", ".join(f"{k[:-3]} {v:.1f}" for k, v in cpu.items() if k.endswith("_us"))
        ratios = ", ".join(f"{k[:-11]} {v:.2f}x" for k, v in cpu.items() if k.endswith("_over_eager"))
        lines.append(f"  thread CPU time: µs {us}; over eager: {ratios}")
    counts = report["counts"]
    lines.append(f"fused ELBO fwd+bwd (B=128): {counts['kernel_calls']} kernel-launching dispatcher calls "
                 f"({', '.join(counts['calls'])}), {counts['syncs']} device->host syncs")
    return "\n".join(lines)
