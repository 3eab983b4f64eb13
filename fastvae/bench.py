"""Benchmarks: the fused ops against the eager reference and that reference under torch.compile.

Every case runs forward + backward of the same inputs for three implementations in one run:

- ``fused``: :mod:`fastvae.functional`,
- ``eager``: the plain-PyTorch twin in :mod:`fastvae.reference`,
- ``compile``: that twin under ``torch.compile`` (default mode, static shapes, fresh per case).

Timing: warm-up calls, then ``repeats`` timed calls per implementation, interleaved round-robin so
that drift and noisy neighbours hit all three alike; the median is reported (CUDA: CUDA events).
Speed-up = median(baseline) / median(fused), so > 1 means fused is faster.

Memory: the peak of forward + backward above what was allocated before the call. CUDA:
``torch.cuda.max_memory_allocated``. CPU (torch keeps no CPU allocator statistics): one extra call
under ``torch.profiler`` with ``profile_memory=True``; the peak of the running sum of every
allocation and free made through torch's CPU allocator during that call. Memory a kernel takes
outside torch's allocator would not be seen (fastvae's CPU kernels allocate only ATen tensors).

Bandwidth: minimum bytes the op must move (each input read once, each gradient and output written
once, each upstream gradient read once) over the fused median, next to the bandwidth of a plain
``copy_`` of a 256 MiB buffer measured in the same run. Reported on every device (a table column);
it only means something for cases far larger than the caches.

``train`` rows are Adam steps per second of the classic 784-400-20 MLP VAE with each loss.

    fastvae bench [--quick] [--large] [--families ...] [--ops ...] [--dtype ...] [--out r.json]
    fastvae bench --table r.json        # the markdown table for README.md, from a saved report
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from . import _extension
from . import functional as F
from . import reference as R

SCHEMA = "fastvae-bench/2"
IMPLS = ("fused", "eager", "compile")
OPS = (
    "elbo",
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "kl_standard_normal",
    "gaussian_log_density",
    "standard_normal_log_density",
    "reparameterize",
    "reparameterize_with_kl",
)
# Ops on the latent code: at MNIST-like sizes they run on (B, Z), elsewhere on (B, D).
LATENT_OPS = ("kl_standard_normal", "gaussian_log_density", "standard_normal_log_density", "reparameterize",
              "reparameterize_with_kl")
FAMILIES = ("mnist", "short_rows", "images", "large")
COPY_BYTES = 256 * 2**20


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


def _leaf(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, device=device) * scale).to(dtype).requires_grad_()


def _binary(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return (torch.rand(shape, device=device) > 0.5).to(dtype)


def _upstream_grads(like: Sequence[Tuple[int, ...]], device: torch.device) -> Callable:
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
        recon = _leaf((b, d), dtype, device, 1.0 if gaussian else 3.0)
        x = torch.randn(b, d, device=device).to(dtype) if gaussian else _binary((b, d), dtype, device)
        mu, lv = _leaf((b, z), dtype, device), _leaf((b, z), dtype, device, 0.5)
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
        up = _upstream_grads([(b, z), ()], device)
        # inputs read, grads written, z written and its upstream grad read
        min_bytes = _nbytes(recon, x, mu, lv) + _nbytes(recon, mu, lv) + 2 * b * z * esize
        op_name = "elbo_gaussian" if gaussian else "elbo"
        return Case(op_name, family, case_shape, dname, min_bytes, _forward(impl_fn), up, leaves)

    a = _leaf((b, cols), dtype, device)
    lv = _leaf((b, cols), dtype, device, 0.5)
    up_rows = _upstream_grads([(b,)], device)
    row_out = b * rows_esize * 2  # row output written, its upstream grad read
    if op == "bernoulli_log_likelihood":
        x = _binary((b, cols), dtype, device)
        spec = (lambda mod: lambda: (mod.bernoulli_log_likelihood(a, x),), [a], _nbytes(a, x, a) + row_out, up_rows)
    elif op == "gaussian_log_likelihood":
        x = torch.randn(b, cols, device=device).to(dtype)
        spec = (lambda mod: lambda: (mod.gaussian_log_likelihood(a, x, lv),), [a, lv],
                _nbytes(a, x, lv, a, lv) + row_out, up_rows)
    elif op == "kl_standard_normal":
        spec = (lambda mod: lambda: (mod.kl_standard_normal(a, lv),), [a, lv], _nbytes(a, lv, a, lv) + row_out, up_rows)
    elif op == "gaussian_log_density":
        zz = _leaf((b, cols), dtype, device)
        spec = (lambda mod: lambda: (mod.gaussian_log_density(zz, a, lv),), [zz, a, lv],
                2 * _nbytes(zz, a, lv) + row_out, up_rows)
    elif op == "standard_normal_log_density":
        spec = (lambda mod: lambda: (mod.standard_normal_log_density(a),), [a], _nbytes(a, a) + row_out, up_rows)
    elif op == "reparameterize":  # z goes on to the decoder; eps is never stored by the fused op
        spec = (lambda mod: lambda: (mod.reparameterize(a, lv),), [a, lv],
                _nbytes(a, lv, a, lv) + 2 * b * cols * esize, _upstream_grads([(b, cols)], device))
    else:  # reparameterize_with_kl: z and the KL term of the same (mu, logvar), both used
        spec = (lambda mod: lambda: mod.reparameterize_with_kl(a, lv), [a, lv],
                _nbytes(a, lv, a, lv) + 2 * b * cols * esize + row_out, _upstream_grads([(b, cols), (b,)], device))
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


# ---------------------------------------------------------------- timing and memory
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call(fn: Callable[[], None], device: torch.device) -> float:
    """Milliseconds of one call (CUDA events on a GPU, perf_counter on the CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


@dataclass
class Timings:
    """Per implementation, in ms: the first call, the median, interquartile range and fastest call;
    ``other_load``: CPU cores other processes kept busy on average while the rounds ran (None where
    /proc/stat is unreadable); ``attempts``: how many times the rounds ran (see time_interleaved)."""

    first: Dict[str, float]
    median: Dict[str, float]
    iqr: Dict[str, float]
    min: Dict[str, float]
    other_load: Optional[float] = None
    attempts: int = 1


def _busy_cpu_s() -> Optional[float]:
    """Seconds of CPU time the whole machine has been busy (user, system, irq, steal) since boot."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class _OtherLoad:
    """Measures the CPU cores other processes used over a window: machine busy time minus ours."""

    def __enter__(self) -> "_OtherLoad":
        self.value: Optional[float] = None
        self._busy, self._own, self._wall = _busy_cpu_s(), sum(os.times()[:2]), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, wall = _busy_cpu_s(), time.perf_counter() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            return
        own = sum(os.times()[:2]) - self._own
        self.value = max(0.0, (busy - self._busy - own) / wall)


def time_interleaved(fns: Dict[str, Callable[[], None]], device: torch.device, warmup: int = 3,
                     repeats: int = 15, min_time_s: float = 0.0, max_repeats: int = 500,
                     retries: int = 0, max_other_load: float = 0.25) -> Timings:
    """Times several functions round-robin.

    The first call (it includes torch.compile's compilation) is timed on its own, then ``warmup``
    untimed calls, then rounds of one call each, rotating the order, until ``repeats`` rounds and
    at least ``min_time_s`` seconds of timed calls have run (at most ``max_repeats`` rounds).
    When other processes kept more than ``max_other_load`` CPU cores busy on average meanwhile, the
    rounds run again, up to ``retries`` more times, and the least disturbed attempt is kept: a rule
    on the machine's state, never on the timings themselves.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    names = list(fns)
    first = {}
    for name in names:
        _sync(device)
        first[name] = _timed_call(fns[name], device)
        for _ in range(warmup):
            fns[name]()
    _sync(device)
    best: Optional[Tuple[Optional[float], Dict[str, List[float]]]] = None
    attempts = 0
    while attempts <= retries:
        attempts += 1
        times: Dict[str, List[float]] = {n: [] for n in names}
        spent, rounds = 0.0, 0
        with _OtherLoad() as other:
            while rounds < repeats or (spent < min_time_s * 1e3 and rounds < max_repeats):
                order = names[rounds % len(names):] + names[: rounds % len(names)]
                for name in order:
                    t = _timed_call(fns[name], device)
                    times[name].append(t)
                    spent += t
                rounds += 1
        if best is None or (other.value is not None and best[0] is not None and other.value < best[0]):
            best = (other.value, times)
        if other.value is None or other.value <= max_other_load:
            break
    load, times = best
    iqr = {}
    for n, v in times.items():
        q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
        iqr[n] = q[2] - q[0]
    return Timings(first, {n: statistics.median(v) for n, v in times.items()}, iqr,
                   {n: min(v) for n, v in times.items()}, load, attempts)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silences C-level writes to stderr (the profiler's start/stop lines) for a moment."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def peak_memory_mb(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    """Peak memory of one call of fn above what was allocated before it, in MiB (see module doc)."""
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if device.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    return _running_peak([n for _, n in records]) / 2**20


def _running_peak(deltas: Sequence[int]) -> int:
    """Largest prefix sum of allocation (+) and free (-) sizes: the peak above the start."""
    level = peak = 0
    for n in deltas:
        level += n
        peak = max(peak, level)
    return peak


def copy_bandwidth_gbps(nbytes: int, device: torch.device, repeats: int = 10) -> float:
    """Bandwidth of ``dst.copy_(src)`` for an nbytes buffer, counting the read and the write."""
    src = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
    src.fill_(1)
    dst = torch.empty_like(src)
    ms = time_interleaved({"copy": lambda: dst.copy_(src)}, device, warmup=2, repeats=repeats).median["copy"]
    return 2 * src.numel() / (ms * 1e-3) / 1e9


# ---------------------------------------------------------------- results
@dataclass
class Result:
    op: str
    family: str
    shape: Dict[str, int]
    dtype: str
    elements: int
    min_bytes: int
    median_ms: Dict[str, Optional[float]]
    iqr_ms: Dict[str, Optional[float]]
    min_ms: Dict[str, Optional[float]]
    first_call_ms: Dict[str, Optional[float]]
    peak_mem_mb: Dict[str, Optional[float]]
    speedup_vs_eager: Optional[float]
    speedup_vs_compile: Optional[float]
    fused_gbps: Optional[float]
    fraction_of_copy: Optional[float]
    other_load: Optional[float] = None  # CPU cores other processes used while it was timed
    attempts: int = 1  # timing attempts (re-timed while other processes were busy)


def speedup(baseline_ms: Optional[float], fused_ms: Optional[float]) -> Optional[float]:
    """time(baseline) / time(fused): above 1 the fused op is faster; None when either is missing."""
    if baseline_ms is None or fused_ms is None or fused_ms <= 0:
        return None
    return baseline_ms / fused_ms


def run_case(case: Case, device: torch.device, impls: Sequence[str] = IMPLS, repeats: int = 15,
             warmup: int = 3, min_time_s: float = 0.0, memory: bool = True,
             copy_gbps: Optional[float] = None, retries: int = 0, max_other_load: float = 0.25) -> Result:
    """Times (and measures the memory of) every implementation in ``impls`` on one case."""
    unknown = set(impls) - set(IMPLS)
    if unknown:
        raise ValueError(f"impls must be drawn from {IMPLS}, got {sorted(unknown)}")
    fns = {impl: case.make(impl) for impl in IMPLS if impl in impls}
    t = time_interleaved(fns, device, warmup, repeats, min_time_s, retries=retries, max_other_load=max_other_load)
    mem = {impl: peak_memory_mb(fn, device) if memory else None for impl, fn in fns.items()}
    pick = lambda d: {impl: d.get(impl) for impl in IMPLS}  # noqa: E731  (None for skipped impls)
    fused = t.median.get("fused")
    gbps = case.min_bytes / (fused * 1e-3) / 1e9 if fused else None
    return Result(
        case.op, case.family, case.shape, case.dtype, case.elements, case.min_bytes,
        pick(t.median), pick(t.iqr), pick(t.min), pick(t.first), pick(mem),
        speedup(t.median.get("eager"), fused), speedup(t.median.get("compile"), fused),
        gbps, gbps / copy_gbps if gbps and copy_gbps else None,
        t.other_load, t.attempts,
    )


# ---------------------------------------------------------------- end to end
# fused / eager: the model eager with the fused / reference loss; compile / fused_compile: the
# whole objective (model + reference / fused loss) under torch.compile, as `fastvae train --compile`.
TRAIN_IMPLS = ("fused", "eager", "compile", "fused_compile")


def make_train_step(batch: int, loss_impl: str, device: torch.device) -> Callable[[], None]:
    """One Adam step of the 784-400-20 MLP VAE (``fastvae.models.build_mlp_vae``) on random
    binary data, with the loss of ``loss_impl`` (see TRAIN_IMPLS); same seed, same model."""
    from .models import build_mlp_vae  # higher layers than the ops: only the training rows need them
    from .training import vae_loss

    if loss_impl not in TRAIN_IMPLS:
        raise ValueError(f"loss_impl must be one of {TRAIN_IMPLS}, got {loss_impl!r}")
    torch.manual_seed(0)
    model = build_mlp_vae(784, (400,), 20).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = _binary((batch, 784), torch.float32, device)
    which = "fused" if loss_impl.startswith("fused") else "reference"

    def objective(inputs: torch.Tensor) -> torch.Tensor:
        return vae_loss(model, inputs, loss_impl=which)

    if loss_impl in ("compile", "fused_compile"):
        torch._dynamo.reset()
        objective = torch.compile(objective)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        objective(x).backward()
        opt.step()

    return step


def train_steps_per_second(batch: int, loss_impl: str, device: torch.device, steps: int = 30,
                           warmup: int = 5) -> float:
    """Median Adam steps per second of `make_train_step` alone (the first step and ``warmup``
    more untimed). ``fastvae bench`` times every loss's steps interleaved instead."""
    t = time_interleaved({"step": make_train_step(batch, loss_impl, device)}, device, warmup=warmup, repeats=steps)
    return 1e3 / t.median["step"]


# ---------------------------------------------------------------- environment
def _cpu_info() -> Dict[str, object]:
    info: Dict[str, object] = {"model": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name"):
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
            break
    return info


def _git_commit() -> Optional[str]:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> Dict[str, object]:
    """Where and with what the figures were measured."""
    cpu = _cpu_info()
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu["model"],
        "device_type": device.type,
        "cpu": cpu,
        "cpu_threads": torch.get_num_threads(),
        # The vector ISA of torch's own CPU kernels, the eager baseline's (ATEN_CPU_CAPABILITY
        # lowers it): on some CPUs an op is faster in torch's AVX2 kernel than in its AVX-512 one.
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fastvae_cpu_isa": _extension.CPU_ISA,
        "fastvae_cpu_threads_used": _extension._C.parallel_threads(torch.get_num_threads()),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fastvae_commit": _git_commit(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


METHOD = {
    "timing": "forward + backward of the same inputs; first call timed apart; warm-up; then "
              "round-robin rounds over the implementations; median per implementation "
              "(CUDA: CUDA events; CPU: perf_counter)",
    "speedup": "median(baseline) / median(fused); > 1 means fused is faster",
    "disturbance": "other_load: CPU cores other processes kept busy while a case was timed (/proc/stat "
                   "busy time minus this process's CPU time, over wall time); above max_other_load "
                   "the case is timed again, up to retries times, keeping the least disturbed attempt",
    "compile": "torch.compile(reference), default mode, torch._dynamo.reset() before each case",
    "memory_cuda": "torch.cuda.max_memory_allocated during one forward + backward minus memory_allocated before",
    "memory_cpu": "torch.profiler(profile_memory=True) during one forward + backward: peak of the "
                  "running sum of CPU allocator allocations and frees",
    "bandwidth": "min_bytes (inputs read once, gradients and outputs written once, upstream "
                 "gradients read once) / fused median; copy_gbps: dst.copy_(src) of 256 MiB, read + write",
    "train": "Adam steps/s (median, losses interleaved round-robin) of "
             "fastvae.models.build_mlp_vae(784, (400,), 20) on random binary data, loss fastvae.training.vae_loss (fused or reference); compile and fused_compile run the "
             "whole objective (model + loss) under torch.compile",
}


# ---------------------------------------------------------------- driver
def _resolve_device(name: Optional[str]) -> torch.device:
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {name!r}")
    return device


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Runs the benchmarks named by args, prints a table, writes the JSON report and its plot."""
    device = _resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    impls = [i for i in IMPLS if not (i == "compile" and args.no_compile)]
    families = args.families or default_families(device, args.quick, args.large)
    ops = list(args.ops) if args.ops is not None else (["elbo"] if args.elbo_only else list(OPS))
    env = environment(device)
    load, cpus = env.get("load_average"), os.cpu_count() or 1
    if load and load[0] > 0.5 * cpus:
        print(f"warning: load average {load[0]:.2f} on {cpus} CPUs before starting: other work is "
              "running and CPU timings will be noisy (recorded in the report)", flush=True)
    copy_gbps = copy_bandwidth_gbps(COPY_BYTES, device) if ops else None
    if copy_gbps:
        print(f"copy bandwidth ({COPY_BYTES >> 20} MiB, read + write): {copy_gbps:.1f} GB/s", flush=True)
    results: List[Result] = []
    for dname in args.dtype:
        for case in cases_for(families, ops, getattr(torch, dname), device, args.quick):
            res = run_case(case, device, impls, args.repeats, args.warmup, args.min_time,
                           memory=args.memory, copy_gbps=copy_gbps, retries=args.retries,
                           max_other_load=args.max_other_load)
            results.append(res)
            print(format_row(asdict(res)), flush=True)
    train = []
    if not args.no_train:
        for batch in args.train_batches:
            row: Dict[str, object] = {"batch": batch}
            # All losses' steps interleaved round-robin, like the op cases (separate, equal models).
            steps = {impl: make_train_step(batch, impl, device)
                     for impl in TRAIN_IMPLS if "compile" not in impl or not args.no_compile}
            t = time_interleaved(steps, device, warmup=5, repeats=args.train_steps, retries=args.retries,
                                 max_other_load=args.max_other_load)
            for impl in steps:
                row[f"{impl}_steps_per_s"] = 1e3 / t.median[impl]
            row["other_load"], row["attempts"] = t.other_load, t.attempts
            row["speedup_vs_eager"] = _train_ratio(row, "eager")
            row["speedup_vs_compile"] = _train_ratio(row, "compile")
            row["fused_compile_vs_compile"] = _train_ratio(row, "compile", "fused_compile")
            train.append(row)
            print(format_train_row(row), flush=True)
    host = None
    if args.host:  # host cost: one thread, whole ELBO at B=1 and B=128 (fastvae/host_cost.py)
        from .host_cost import host_report, host_table

        host = host_report(threads=1)
        print(host_table(host["rows"], host["counts"]), flush=True)
    env["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "schema": SCHEMA,
        "environment": env,
        "settings": {"families": families, "ops": ops, "dtypes": list(args.dtype), "impls": impls,
                     "repeats": args.repeats, "warmup": args.warmup, "min_time_s": args.min_time,
                     "quick": bool(args.quick), "retries": args.retries, "max_other_load": args.max_other_load,
                     "threads": torch.get_num_threads()},
        "method": METHOD,
        "copy_gbps": copy_gbps,
        "results": [asdict(r) for r in results],
        "train": train,
        "host": host,
    }
    report["targets"] = targets(report)
    for line in report["targets"]["lines"]:
        print(line)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
        if args.plot and report["results"]:
            plot(report, os.path.splitext(args.out)[0] + ".png")
    return report


def _train_ratio(row: Dict[str, object], other: str, mine: str = "fused") -> Optional[float]:
    """Speed-up in steps/s: ``mine`` over ``other`` (None when either was not run)."""
    fused, base = row.get(f"{mine}_steps_per_s"), row.get(f"{other}_steps_per_s")
    return fused / base if fused and base else None


# The CPU kernel goals of issue 11, checked in every report that has the rows they speak of.
SAMPLER_GOAL = 1.5  # reparameterize fwd+bwd (float32) vs eager, at every benchmarked size
BF16_GAUSSIAN_OPS = ("gaussian_log_likelihood", "kl_standard_normal", "gaussian_log_density",
                     "standard_normal_log_density")
BANDWIDTH_GOAL = 0.7  # fraction of copy bandwidth, large Bernoulli and Gaussian likelihood cases


def _goal(lines: List[str], out: Dict[str, object], key: str, text: str, values: List[float], target: float) -> None:
    met = min(values) >= target
    out[key] = {"min": min(values), "max": max(values), "target": target, "met": met}
    lines.append(f"goal: {text}: measured {min(values):.2f}..{max(values):.2f} -> {'met' if met else 'NOT met'}")


def targets(report: Dict[str, object]) -> Dict[str, object]:
    """The project's stated target (CPU whole-ELBO fwd+bwd >= 2x eager at MNIST-like sizes), checked;
    with the rows for them, the kernel goals too (``goals``): the sampler >= 1.5x eager (float32),
    the bf16 Gaussian ops >= 1x eager and >= 1x compile, large likelihoods >= 70 % of copy."""
    results = report["results"]
    rows = [r for r in results if r["op"] == "elbo" and r["family"] == "mnist"
            and r["speedup_vs_eager"] is not None]
    lines, out = [], {}
    for dtype in sorted({r["dtype"] for r in rows}):
        ratios = [r["speedup_vs_eager"] for r in rows if r["dtype"] == dtype]
        met = min(ratios) >= 2.0
        out[dtype] = {"min": min(ratios), "max": max(ratios), "target": 2.0, "met": met}
        lines.append(f"target: whole ELBO fwd+bwd >= 2x eager at MNIST-like sizes "
                     f"({report['environment']['device_type']}, {dtype}): measured "
                     f"{min(ratios):.2f}x..{max(ratios):.2f}x -> {'met' if met else 'NOT met'}")
    goals: Dict[str, object] = {}
    sampler = [r["speedup_vs_eager"] for r in results
               if r["op"] == "reparameterize" and r["dtype"] == "float32" and r["speedup_vs_eager"] is not None]
    if sampler:
        _goal(lines, goals, "sampler_vs_eager", f"reparameterize fwd+bwd >= {SAMPLER_GOAL}x eager at every size "
              "(float32), x", sampler, SAMPLER_GOAL)
    bf16 = [r for r in results if r["op"] in BF16_GAUSSIAN_OPS and r["dtype"] == "bfloat16"]
    for key, base in (("speedup_vs_eager", "eager"), ("speedup_vs_compile", "compile")):
        vals = [r[key] for r in bf16 if r[key] is not None]
        if vals:
            _goal(lines, goals, f"bf16_gaussian_vs_{base}", f"bf16 Gaussian ops (log-lik, KL, log q, log p) "
                  f">= 1x {base}, x", vals, 1.0)
    bw = [r["fraction_of_copy"] for r in results if r.get("family") == "large" and r["dtype"] == "float32"
          and r["op"] in ("bernoulli_log_likelihood", "gaussian_log_likelihood") and r.get("fraction_of_copy")]
    if bw:
        _goal(lines, goals, "large_likelihood_bandwidth", f"large Bernoulli / Gaussian likelihood >= "
              f"{BANDWIDTH_GOAL:.0%} of copy bandwidth, fraction", bw, BANDWIDTH_GOAL)
    if goals:
        out["goals"] = goals
    out["lines"] = lines
    return out


# ---------------------------------------------------------------- tables and plot
def _shape_str(shape: Dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def _fmt(v: Optional[float], spec: str = ".3f", none: str = "–") -> str:
    return format(v, spec) if v is not None else none


def _fmt_mb(v: Optional[float]) -> str:
    """MiB with two decimals below 10 MiB (small cases would all read 0.0), one above."""
    return _fmt(v, ".2f" if v is not None and v < 10 else ".1f")


def format_row(r: Dict[str, object]) -> str:
    """One printed line of a result."""
    ms = " ".join(f"{k} {_fmt(v)}" for k, v in r["median_ms"].items())
    mem = "/".join(_fmt_mb(v) for v in r["peak_mem_mb"].values())
    return (f"{r['op']:28s} {_shape_str(r['shape']):22s} {r['dtype']:8s} ms: {ms} | "
            f"x{_fmt(r['speedup_vs_eager'], '.2f')} vs eager, x{_fmt(r['speedup_vs_compile'], '.2f')} vs compile "
            f"| peak MiB f/e/c {mem}{_disturbed_note(r)}")


def _disturbed_note(r: Dict[str, object], limit: float = 0.25) -> str:
    load = r.get("other_load")
    if load is None or load <= limit:
        return ""
    return f" | DISTURBED: other processes used {load:.2f} cores ({r.get('attempts', 1)} attempts)"


def format_train_row(row: Dict[str, object]) -> str:
    parts = ", ".join(f"{k.replace('_steps_per_s', '')} {v:.1f}" for k, v in row.items() if k.endswith("_steps_per_s"))
    return (f"train 784-400-20 batch {row['batch']}: steps/s {parts}; fused x{_fmt(row.get('speedup_vs_eager'), '.2f')} "
            f"vs eager, x{_fmt(row.get('speedup_vs_compile'), '.2f')} vs compile; compiled fused "
            f"x{_fmt(row.get('fused_compile_vs_compile'), '.2f')} vs compiled reference")


def markdown_table(report: Dict[str, object], source: Optional[str] = None) -> str:
    """The README's performance table from a saved report, headed by where it was measured
    (and by the report's path when ``source`` is given)."""
    env = report["environment"]
    cuda = env["device_type"] == "cuda"
    cpu = env.get("cpu") or {}
    where = (f"{env['device']}" if cuda else f"{cpu.get('model', env['device'])}, {env['cpu_threads']} threads")
    if not cuda and "fastvae_cpu_isa" in env:  # reports before the ISA choice ran AVX2 on one thread
        where += f", fastvae CPU kernels {env['fastvae_cpu_isa']} on {env['fastvae_cpu_threads_used']} threads"
    if not cuda and "torch_cpu_capability" in env:
        where += f", torch's CPU kernels {env['torch_cpu_capability']}"
    lines = [
        f"Measured on {where} ({env['device_type']}), torch {env['torch']}"
        + (f", CUDA {env['cuda']}" if cuda else "")
        + f", fastvae {env.get('fastvae_commit') or '?'}, {env['time']}. Forward + backward, median ms; "
          "speed-up = baseline time / fused time (> 1: fused faster); peak = extra memory of one "
          "forward + backward" + (" (`max_memory_allocated`)." if cuda else " (torch profiler, CPU allocator).")
        + (f" Source: `{source}`." if source else ""),
        "",
    ]
    head = ("| op | shape | dtype | fused ms | eager ms | compile ms | vs eager | vs compile | peak MiB fused / eager / "
            "compile | fused GB/s (% of copy) |")
    sep = "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    lines += [head, sep]
    limit = (report.get("settings") or {}).get("max_other_load", 0.25)
    disturbed = 0
    for r in report["results"]:
        m, p = r["median_ms"], r["peak_mem_mb"]
        mark = ""
        if r.get("other_load") is not None and r["other_load"] > limit:
            mark, disturbed = " †", disturbed + 1
        row = (f"| {r['op']}{mark} | {_shape_str(r['shape'])} | {r['dtype']} | {_fmt(m['fused'])} | {_fmt(m['eager'])} | "
               f"{_fmt(m['compile'])} | {_fmt(r['speedup_vs_eager'], '.2f')}× | {_fmt(r['speedup_vs_compile'], '.2f')}× | "
               f"{_fmt_mb(p['fused'])} / {_fmt_mb(p['eager'])} / {_fmt_mb(p['compile'])} |")
        frac = r.get("fraction_of_copy")
        row += f" {_fmt(r.get('fused_gbps'), '.1f')} ({_fmt(frac * 100 if frac else None, '.0f')}%) |"
        lines.append(row)
    if disturbed:
        lines.append(f"\n† Other processes kept more than {limit} CPU cores busy while this row was timed, "
                     "on every attempt: its figures are less reliable.")
    if report.get("copy_gbps"):
        lines.append(f"\nCopy bandwidth in the same run ({COPY_BYTES >> 20} MiB `copy_`, read + write): "
                     f"{report['copy_gbps']:.1f} GB/s. Fused GB/s: the minimum bytes the op must move over its "
                     "median; cases that fit in the caches can exceed the copy.")
    if report.get("train"):
        lines += ["", "Training, Adam steps/s of the 784-400-20 MLP VAE (eager model; *compiled*: model + loss "
                      "under torch.compile):", "",
                  "| batch | fused | eager | compiled, reference loss | compiled, fused loss | fused vs eager "
                  "| fused vs compiled | compiled: fused vs reference |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for t in report["train"]:
            lines.append(f"| {t['batch']} | {_fmt(t.get('fused_steps_per_s'), '.1f')} | "
                         f"{_fmt(t.get('eager_steps_per_s'), '.1f')} | {_fmt(t.get('compile_steps_per_s'), '.1f')} | "
                         f"{_fmt(t.get('fused_compile_steps_per_s'), '.1f')} | {_fmt(t.get('speedup_vs_eager'), '.2f')}× | "
                         f"{_fmt(t.get('speedup_vs_compile'), '.2f')}× | {_fmt(t.get('fused_compile_vs_compile'), '.2f')}× |")
    tg = report.get("targets") or targets(report)
    if tg["lines"]:
        lines += [""] + [f"- {line[0].upper()}{line[1:]}" for line in tg["lines"]]
    return "\n".join(lines)


def plot(report: Dict[str, object], path: str) -> None:
    """Speed-up of the fused ops over eager and over compile against problem size: colour per op,
    line style per dtype, marker per size family (lines join sizes of one family only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    ops = sorted({r["op"] for r in report["results"]})
    colors = {op: plt.cm.tab10(i % 10) for i, op in enumerate(ops)}
    styles = {"float32": "-", "bfloat16": "--", "float16": ":", "float64": "-."}
    markers = {"mnist": "o", "short_rows": "s", "images": "^", "large": "D"}
    for ax, key, title in ((axes[0], "speedup_vs_eager", "vs eager"), (axes[1], "speedup_vs_compile", "vs torch.compile")):
        series: Dict[Tuple[str, str, str], List[Tuple[int, float]]] = {}
        for r in report["results"]:
            if r[key] is not None:
                series.setdefault((r["op"], r["dtype"], r.get("family", "")), []).append((r["elements"], r[key]))
        for (op, dtype, family), pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers.get(family, "x"), ms=4,
                    color=colors[op], ls=styles.get(dtype, "-"))
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FormatStrFormatter("%.1f"))
        ax.set_xlabel("B x D (elements of the largest operand)")
        ax.set_title(f"fused {title}", fontsize=10)
    axes[0].set_ylabel("speed-up, forward + backward (> 1: fused faster)")
    dtypes = sorted({r["dtype"] for r in report["results"]})
    families = [f for f in markers if any(r.get("family") == f for r in report["results"])]
    handles = ([Line2D([], [], color=colors[op], label=op) for op in ops]
               + [Line2D([], [], color="black", ls=styles.get(d, "-"), label=d) for d in dtypes]
               + [Line2D([], [], color="black", ls="", marker=markers[f], label=f) for f in families])
    env = report["environment"]
    fig.suptitle(f"fastvae on {env['device_type']}: {env['device']}, torch {env['torch']}, {env['time'][:10]}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    if handles:
        fig.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(0.82, 0.5))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


# ---------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``fastvae bench`` (and of the scripts under benchmarks/)."""
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16", "float64"], help="input dtypes (default: float32 bfloat16)")
    parser.add_argument("--families", nargs="+", default=None, choices=FAMILIES,
                        help="size families (default: all on CUDA; on CPU all but 'large')")
    parser.add_argument("--ops", nargs="+", default=None, choices=OPS, help="ops to time (default: all)")
    parser.add_argument("--quick", action="store_true", help="CI-sized: the two small MNIST-like sizes only")
    parser.add_argument("--large", action="store_true", help="add the B*D >= 1e8 family on the CPU too (minutes)")
    parser.add_argument("--elbo-only", action="store_true", help="only the whole-ELBO cases (same as --ops elbo)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--no-train", action="store_true", help="skip the end-to-end training steps")
    parser.add_argument("--host", action="store_true",
                        help="add the host-cost family: whole ELBO fwd+bwd at B=1 and B=128, one CPU thread")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per case, at least (default: 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls after the first (default: 3)")
    parser.add_argument("--min-time", type=float, default=0.5,
                        help="keep timing a case until this many seconds are spent (default: 0.5)")
    parser.add_argument("--retries", type=int, default=2,
                        help="re-time a case while other processes kept more than --max-other-load "
                             "CPU cores busy, up to this many times (default: 2)")
    parser.add_argument("--max-other-load", type=float, default=0.25,
                        help="CPU cores other processes may use during a case before it is re-timed (default: 0.25)")
    parser.add_argument("--train-batches", type=int, nargs="+", default=[128, 1024], help="training batch sizes")
    parser.add_argument("--train-steps", type=int, default=30, help="timed training steps per loss (default: 30)")
    parser.add_argument("--out", default=None, help="write the JSON report here (and a .png plot beside it)")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="do not draw the plot")
    parser.add_argument("--table", metavar="REPORT", default=None,
                        help="print the markdown table of a saved JSON report and exit (runs nothing)")


def _check_args(args: argparse.Namespace) -> None:
    for name in ("repeats", "train_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.min_time < 0 or args.retries < 0 or args.max_other_load < 0:
        raise ValueError("--warmup, --min-time, --retries and --max-other-load must be >= 0")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if any(b < 1 for b in args.train_batches):
        raise ValueError(f"--train-batches must be >= 1, got {args.train_batches}")


def command(args: argparse.Namespace) -> int:
    """``fastvae bench``: runs the benchmarks (or prints a saved report's table); the exit status."""
    if args.table:
        with open(args.table) as f:
            report = json.load(f)
        # --ops / --families / --dtype pick rows of the saved report (a shorter README table).
        report["results"] = [r for r in report["results"]
                             if (args.ops is None or r["op"] in args.ops or (r["op"].startswith("elbo") and "elbo" in args.ops))
                             and (args.families is None or r.get("family") in args.families)
                             and r["dtype"] in args.dtype]
        print(markdown_table(report, source=args.table))
        return 0
    _check_args(args)
    run(args)
    return 0


def main(argv: Optional[Sequence[str]] = None, ops: Optional[Sequence[str]] = None, train: bool = True,
         description: str = __doc__) -> int:
    """Entry point of ``python -m fastvae.bench`` and of the benchmarks/bench_*.py scripts:
    ``ops`` and ``train`` set the defaults (a script for one op times that op and no training)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(ops=list(ops) if ops is not None else None, no_train=not train)
    if not train:
        parser.add_argument("--train", dest="no_train", action="store_false", help="also time training steps")
    return command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
