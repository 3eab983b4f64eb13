"""The GPU benchmark subset of benchmarks/gpu_check.sh: ~2 minutes that answer the open GPU questions.

Rows, each appended to a JSON-lines file as soon as it is measured (a kill keeps what finished):
  copy     device copy bandwidth (the ceiling of every bandwidth-bound op)
  host     host time per call at B=1 (one CPU thread): fused loss with its sample vs the leanest
           eager loss (BCE-with-logits sum + closed-form KL) and fastvae.reference.elbo
  ops      every op family, forward + backward, at MNIST (B=128, D=784, Z=20) and a large size
           (B=131072, D=784; latent ops on (B, D)), fused vs eager (fastvae.reference)
  elbo     the whole negative ELBO, forward + backward, fused vs eager, at MNIST and large
  elbo_kl  issue 22 item 2: the ELBO with the KL from mu/logvar, latent 20, 512, 4096 at B=256
           and B=65536 (D=784), fused vs eager
  train    a 784-400-20 MLP VAE training step (Adam) at B=128: fused vs eager
  kl_normal issue 20: the sample of q with its KL against a per-row learned prior, forward +
           backward with all four gradients, at B=4096 Z=64 and a VDVAE-like B=32 Z=16x32x32,
           float32 and bfloat16, fused vs eager (fastvae.reference)
  iwae     issue 21: one Adam step of the 784-200-200-50 tanh MLP on the IWAE bound, k=50, B=100:
           fused reparam and DReG vs the usual eager IWAE (benchmarks/bench_iwae.py)
  compile  last, as they cost the most: torch.compile of the eager ELBO (MNIST, large), of
           the eager and fused training steps, of the eager kl_normal rows and the eager IWAE step
Each timing is the median over repetitions of CUDA-event-timed loops after warm-up (wall clock
on the CPU); peak memory is the allocator's peak above the start of one call. Only the public
API is used: fastvae.functional, fastvae.reference, fastvae.build_mlp_vae and the model's loss.

    python benchmarks/gpu_bench.py --device cuda --out bench-gpu.jsonl [--budget 110] [--tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as TF

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))  # bench_iwae, also when imported

import fastvae  # noqa: E402
from fastvae import functional as F  # noqa: E402
from fastvae import reference as R  # noqa: E402

import bench_iwae  # noqa: E402  (benchmarks/, next to this script)

Inputs = List[torch.Tensor]
Case = Tuple[Callable[..., Any], Inputs]  # fn(*inputs) -> output(s) to differentiate


# ---------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_loop(fn: Callable[[], Any], device: torch.device, inner: int) -> float:
    """Milliseconds per call of `inner` back-to-back calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) * 1e3 / inner


def measure(fn: Callable[[], Any], device: torch.device, reps: int, target_ms: float) -> Dict[str, Any]:
    """Median ms per call over `reps` loops of about `target_ms` each, after warm-up; peak memory."""
    for _ in range(3):
        fn()
    _sync(device)
    one = max(_time_loop(fn, device, 1), 1e-3)
    inner = int(min(max(target_ms / one, 1), 200))
    times = [_time_loop(fn, device, inner) for _ in range(reps)]
    row: Dict[str, Any] = {"median_ms": statistics.median(times), "min_ms": min(times),
                           "max_ms": max(times), "reps": reps, "inner": inner}
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        row["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return row


def fwd_bwd(fn: Callable[..., Any], inputs: Inputs) -> Callable[[], Any]:
    """A closure running fn(*inputs) and its backward with fixed random output gradients."""
    leaves = [t for t in inputs if t.requires_grad]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    grads = [torch.randn_like(o) for o in outs]

    def step() -> Any:
        out = fn(*inputs)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return torch.autograd.grad(out, leaves, grads)

    return step


# ---------------------------------------------------------------- cases
def _t(*shape: int, device: torch.device, grad: bool = True, binary: bool = False) -> torch.Tensor:
    t = (torch.rand(shape, device=device) < 0.5).float() if binary else torch.randn(shape, device=device)
    return t.requires_grad_(grad)


def eager_reparameterize_with_kl(mu: torch.Tensor, logvar: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    return z, R.kl_standard_normal(mu, logvar)


def op_cases(b: int, d: int, z: int, latent_cols: int, device: torch.device) -> Iterator[Tuple[str, Case, Case]]:
    """(op, fused case, eager case) for every op family; latent ops on (b, latent_cols)."""
    lat = lambda: _t(b, latent_cols, device=device)  # noqa: E731
    mu, lv, zz = lat(), lat(), lat()
    yield "kl_standard_normal", (F.kl_standard_normal, [mu, lv]), (R.kl_standard_normal, [mu, lv])
    yield "reparameterize", (F.reparameterize, [mu, lv]), (lambda m, v: R.reparameterize(m, v), [mu, lv])
    yield ("reparameterize_with_kl", (F.reparameterize_with_kl, [mu, lv]), (eager_reparameterize_with_kl, [mu, lv]))
    yield "gaussian_log_density", (F.gaussian_log_density, [zz, mu, lv]), (R.gaussian_log_density, [zz, mu, lv])
    yield "standard_normal_log_density", (F.standard_normal_log_density, [zz]), (R.standard_normal_log_density, [zz])
    logits, x = _t(b, d, device=device), _t(b, d, device=device, grad=False, binary=True)
    yield ("bernoulli_log_likelihood", (F.bernoulli_log_likelihood, [logits, x]),
           (R.bernoulli_log_likelihood, [logits, x]))
    xg = _t(b, d, device=device, grad=False)
    yield ("gaussian_log_likelihood", (lambda m, xx: F.gaussian_log_likelihood(m, xx, 0.0), [logits, xg]),
           (lambda m, xx: R.gaussian_log_likelihood(m, xx, 0.0), [logits, xg]))


def kl_normal_inputs(b: int, z: int, dtype: torch.dtype, device: torch.device) -> Inputs:
    """q's and a per-row prior's (mu, logvar), every one a leaf: a hierarchical VAE's layer."""
    return [(torch.randn(b, z, device=device) * s).to(dtype).requires_grad_() for s in (1.0, 0.5, 1.0, 0.5)]


def fused_sample_kl_normal(mu: torch.Tensor, lv: torch.Tensor, pm: torch.Tensor, plv: torch.Tensor) -> Any:
    return F.reparameterize_with_kl(mu, lv, prior_mu=pm, prior_logvar=plv)


def eager_sample_kl_normal(mu: torch.Tensor, lv: torch.Tensor, pm: torch.Tensor, plv: torch.Tensor) -> Any:
    return R.reparameterize(mu, lv), R.kl_normal(mu, lv, pm, plv)


def elbo_inputs(b: int, d: int, z: int, device: torch.device) -> Inputs:
    return [_t(b, d, device=device), _t(b, d, device=device, grad=False, binary=True),
            _t(b, z, device=device), _t(b, z, device=device)]


def mlp_step(model: torch.nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor],
             x: torch.Tensor) -> Callable[[], Any]:
    """One training step: zero the grads, the loss, backward, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x)
        loss.backward()
        opt.step()
        return loss

    return step


def eager_vae_loss(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's loss written eagerly: torch's sample, BCE-with-logits sum + closed-form KL."""
    def loss(x: torch.Tensor) -> torch.Tensor:
        mu, logvar = model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = model.decode(z).flatten(1)
        rec = TF.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (rec + kl) / x.shape[0]

    return loss


def host_cases(device: torch.device) -> Iterator[Tuple[str, Callable[[], Any]]]:
    """B=1 loss-with-sample forward + backward closures: fused, leanest eager, reference."""
    recon, x = _t(1, 784, device=device), _t(1, 784, device=device, grad=False, binary=True)
    mu, lv = _t(1, 20, device=device), _t(1, 20, device=device)
    one, gz = torch.ones((), device=device), torch.randn(1, 20, device=device)
    leaves = [recon, mu, lv]

    def fused() -> Any:
        z, kl = F.reparameterize_with_kl(mu, lv)
        loss = F.elbo(recon, x, None, None, kl=kl)
        return torch.autograd.grad([loss, z], leaves, [one, gz])

    def lean() -> Any:
        z = mu + torch.exp(0.5 * lv) * torch.randn_like(mu)
        kl = -0.5 * torch.sum(1 + lv - mu.pow(2) - lv.exp())
        loss = TF.binary_cross_entropy_with_logits(recon, x, reduction="sum") + kl
        return torch.autograd.grad([loss, z], leaves, [one, gz])

    def reference() -> Any:
        z = mu + torch.exp(0.5 * lv) * torch.randn_like(mu)
        loss = R.elbo(recon, x, mu, lv)
        return torch.autograd.grad([loss, z], leaves, [one, gz])

    yield "fused", fused
    yield "eager_lean", lean
    yield "eager_reference", reference


# ---------------------------------------------------------------- the run
class Runner:
    """Measures rows, appends each to the JSON-lines file and prints a line, within a time budget."""

    def __init__(self, out: Optional[str], device: torch.device, budget_s: float, tiny: bool):
        self.out, self.device, self.tiny = out, device, tiny
        self.deadline = time.monotonic() + budget_s
        self.reps, self.target_ms = (2, 0.5) if tiny else (15, 5.0)
        self.count = {"ok": 0, "error": 0, "skipped": 0}

    def write(self, row: Dict[str, Any]) -> None:
        if self.out:
            with open(self.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def row(self, group: str, op: str, impl: str, shape: Dict[str, Any], make: Callable[[], Callable[[], Any]],
            need_s: float = 1.0, dtype: str = "float32") -> None:
        """Build the closure (compiling, when it does) and measure it; an error is a row too."""
        base: Dict[str, Any] = {"kind": "row", "group": group, "op": op, "impl": impl, "shape": shape,
                                "dtype": dtype, "device": str(self.device)}
        if self.left() < need_s:
            self.count["skipped"] += 1
            self.write({**base, "skipped": f"time budget ({self.left():.0f} s left, needs ~{need_s:.0f} s)"})
            print(f"skip {group:8} {op:28} {impl:15} (time budget)", flush=True)
            return
        t0 = time.monotonic()
        try:
            fn = make()
            fn()  # first call: compiles, when it does
            _sync(self.device)
            first_s = time.monotonic() - t0
            row = {**base, **measure(fn, self.device, self.reps, self.target_ms), "first_call_s": first_s}
            self.count["ok"] += 1
            peak = f"  {row['peak_mib']:8.1f} MiB" if "peak_mib" in row else ""
            print(f"{group:8} {op:28} {impl:15} {_fmt(shape):32} {row['median_ms']:9.4f} ms{peak}", flush=True)
        except Exception as err:  # one failing row must not cost the rest
            self.count["error"] += 1
            row = {**base, "error": f"{type(err).__name__}: {str(err)[:300]}"}
            print(f"ERROR {group} {op} {impl}: {row['error']}", flush=True)
        self.write(row)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _fmt(shape: Dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def meta(device: torch.device, tiny: bool, budget: float) -> Dict[str, Any]:
    row: Dict[str, Any] = {
        "kind": "meta", "device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "fastvae_cuda_built": fastvae.CUDA_BUILT, "tiny": tiny,
        "budget_s": budget, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        row.update(gpu=props.name, sm_count=props.multi_processor_count,
                   gpu_mem_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}")
    return row


def sizes(tiny: bool) -> Dict[str, Any]:
    if tiny:
        return {"mnist": (16, 784, 20), "large": (64, 784, 16), "elbo_kl": [(8, 784, 20), (8, 784, 512)],
                "kl_normal": [(16, 8)], "iwae": (3, 4),
                "copy_mib": 4, "train_b": 16}
    return {"mnist": (128, 784, 20), "large": (131072, 784, 64),
            "kl_normal": [(4096, 64), (32, 16 * 32 * 32)], "iwae": (50, 100),
            "elbo_kl": [(b, 784, z) for b in (256, 65536) for z in (20, 512, 4096)], "copy_mib": 1024, "train_b": 128}


def run(run_: Runner, compile_: bool) -> None:
    dev, tiny = run_.device, run_.tiny
    s = sizes(tiny)
    n = s["copy_mib"] * 2**18
    src, dst = torch.randn(n, device=dev), torch.empty(n, device=dev)
    run_.row("copy", "copy_", "torch", {"bytes": 4 * n}, lambda: (lambda: dst.copy_(src)))
    del src, dst

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for impl, fn in host_cases(dev):
            run_.row("host", "elbo_with_sample_B1", impl, {"B": 1, "D": 784, "Z": 20}, lambda fn=fn: fn)
    finally:
        torch.set_num_threads(threads)

    for size in ("mnist",) if tiny else ("mnist", "large"):
        b, d, z = s[size]
        for op, fused, eager in op_cases(b, d, z, z if size == "mnist" else d, dev):
            shape = {"B": b, "cols": d if op.endswith("likelihood") or size == "large" else z}
            for impl, (fn, inputs) in (("fused", fused), ("eager", eager)):
                run_.row("ops", op, impl, {**shape, "size": size}, lambda fn=fn, i=inputs: fwd_bwd(fn, i))

    elbo_rows = [("elbo", size, *s[size]) for size in ("mnist", "large")]
    elbo_rows += [("elbo_kl", f"B{b}_Z{z}", b, d, z) for b, d, z in s["elbo_kl"]]
    for group, size, b, d, z in elbo_rows:
        inputs = elbo_inputs(b, d, z, dev)
        for impl, fn in (("fused", F.elbo), ("eager", R.elbo)):
            run_.row(group, "elbo", impl, {"B": b, "D": d, "Z": z, "size": size},
                     lambda fn=fn, i=inputs: fwd_bwd(fn, i))
        del inputs

    b = s["train_b"]
    x = (torch.rand(b, 784, device=dev) < 0.5).float()
    shape = {"B": b, "D": 784, "H": 400, "Z": 20}

    def model() -> Any:
        torch.manual_seed(0)
        return fastvae.build_mlp_vae(784, (400,), 20).to(dev)

    run_.row("train", "mlp_784_400_20_step", "fused", shape, lambda: (lambda m: mlp_step(m, m.loss, x))(model()))
    run_.row("train", "mlp_784_400_20_step", "eager", shape,
             lambda: (lambda m: mlp_step(m, eager_vae_loss(m), x))(model()))

    kl_cases = [(b, z, dt) for b, z in s["kl_normal"] for dt in (torch.float32, torch.bfloat16)]
    for b, z, dt in kl_cases:
        inputs = kl_normal_inputs(b, z, dt, dev)
        for impl, fn in (("fused", fused_sample_kl_normal), ("eager", eager_sample_kl_normal)):
            run_.row("kl_normal", "reparameterize_with_kl_normal", impl, {"B": b, "Z": z, "dtype": str(dt)[6:]},
                     lambda fn=fn, i=inputs: fwd_bwd(fn, i), dtype=str(dt)[6:])
        del inputs

    k, bi = s["iwae"]
    ishape = {"K": k, "B": bi, "D": 784, "H": "200-200", "Z": 50}
    for impl, name in (("fused_reparam", "fused"), ("fused_dreg", "fused_dreg"), ("eager", "eager")):
        run_.row("iwae", "iwae_mlp_step", name, ishape, lambda impl=impl: bench_iwae.make_step(impl, k, bi, dev))

    if not compile_:
        print("compile rows skipped (--no-compile)", flush=True)
        return
    need = 5.0 if tiny else 20.0
    for size in ("mnist", "large"):
        b, d, z = s[size]
        inputs = elbo_inputs(b, d, z, dev)
        run_.row("elbo", "elbo", "compile", {"B": b, "D": d, "Z": z, "size": size},
                 lambda i=inputs: fwd_bwd(torch.compile(R.elbo, dynamic=False), i), need)
        del inputs
    run_.row("train", "mlp_784_400_20_step", "compile", shape,
             lambda: (lambda m: mlp_step(m, torch.compile(eager_vae_loss(m), dynamic=False), x))(model()), need)
    run_.row("train", "mlp_784_400_20_step", "fused+compile", shape,
             lambda: (lambda m: mlp_step(m, torch.compile(m.loss, dynamic=False), x))(model()), need)
    run_.row("iwae", "iwae_mlp_step", "compile", ishape, lambda: bench_iwae.make_step("compile", k, bi, dev), need)
    for b, z, dt in kl_cases:
        inputs = kl_normal_inputs(b, z, dt, dev)
        run_.row("kl_normal", "reparameterize_with_kl_normal", "compile", {"B": b, "Z": z, "dtype": str(dt)[6:]},
                 lambda i=inputs: fwd_bwd(torch.compile(eager_sample_kl_normal, dynamic=False), i), need,
                 dtype=str(dt)[6:])
        del inputs


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--out", default=None, help="JSON-lines file the rows are appended to")
    parser.add_argument("--budget", type=float, default=110.0,
                        help="seconds; rows that would start after it are written as skipped")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and few repetitions (the dry run)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the torch.compile rows")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not fastvae.cuda_available():
        print(f"error: --device cuda but fastvae.cuda_available() is False "
              f"(CUDA built: {fastvae.CUDA_BUILT}, device visible: {torch.cuda.is_available()})", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.manual_seed(0)
    runner = Runner(args.out, device, args.budget, args.tiny)
    runner.write(meta(device, args.tiny, args.budget))
    run(runner, args.compile)
    c = runner.count
    print(f"gpu_bench: {c['ok']} rows measured, {c['error']} errors, {c['skipped']} skipped (budget)", flush=True)
    return 1 if c["error"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
