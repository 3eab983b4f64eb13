"""How the benchmarks measure: interleaved timing, peak memory and copy bandwidth.

Timing: warm-up calls, then ``repeats`` timed calls per implementation, interleaved round-robin so
that drift and noisy neighbours hit all alike; the median is reported (CUDA: CUDA events).

Memory: the peak of one call above what was allocated before it. CUDA:
``torch.cuda.max_memory_allocated``. CPU (torch keeps no CPU allocator statistics): one extra call
under ``torch.profiler`` with ``profile_memory=True``; the peak of the running sum of every
allocation and free made through torch's CPU allocator during that call. Memory a kernel takes
outside torch's allocator would not be seen (fastvae's CPU kernels allocate only ATen tensors).
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

COPY_BYTES = 256 * 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call(fn: Callable[[], None], device: torch.device, cpu_ms: Optional[List[float]] = None) -> float:
    """Milliseconds of one call (CUDA events on a GPU, perf_counter on the CPU). With ``cpu_ms``
    (CPU only), the calling thread's CPU time of the call is appended to it as well."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    if cpu_ms is not None:
        c0 = time.thread_time_ns()
    t0 = time.perf_counter()
    fn()
    t1 = time.perf_counter()
    if cpu_ms is not None:
        cpu_ms.append((time.thread_time_ns() - c0) * 1e-6)
    return (t1 - t0) * 1e3


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
    thread_cpu: Optional[Dict[str, float]] = None  # median CPU time of the calling thread, if asked


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
                     retries: int = 0, max_other_load: float = 0.25, thread_cpu: bool = False) -> Timings:
    """Times several functions round-robin.

    The first call (it includes torch.compile's compilation) is timed on its own, then ``warmup``
    untimed calls, then rounds of one call each, rotating the order, until ``repeats`` rounds and
    at least ``min_time_s`` seconds of timed calls have run (at most ``max_repeats`` rounds).
    When other processes kept more than ``max_other_load`` CPU cores busy on average meanwhile, the
    rounds run again, up to ``retries`` more times, and the least disturbed attempt is kept: a rule
    on the machine's state, never on the timings themselves. ``thread_cpu`` (CPU only): the median
    CPU time of the calling thread per call too, which time other processes take from it (a busy
    machine) does not inflate: what a single-threaded call costs the host.
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
    best: Optional[Tuple[Optional[float], Dict[str, List[float]], Dict[str, List[float]]]] = None
    attempts = 0
    while attempts <= retries:
        attempts += 1
        times: Dict[str, List[float]] = {n: [] for n in names}
        cpu: Dict[str, List[float]] = {n: [] for n in names}
        spent, rounds = 0.0, 0
        with _OtherLoad() as other:
            while rounds < repeats or (spent < min_time_s * 1e3 and rounds < max_repeats):
                order = names[rounds % len(names):] + names[: rounds % len(names)]
                for name in order:
                    t = _timed_call(fns[name], device, cpu[name] if thread_cpu and device.type == "cpu" else None)
                    times[name].append(t)
                    spent += t
                rounds += 1
        if best is None or (other.value is not None and best[0] is not None and other.value < best[0]):
            best = (other.value, times, cpu)
        if other.value is None or other.value <= max_other_load:
            break
    load, times, cpu = best
    iqr = {}
    for n, v in times.items():
        q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
        iqr[n] = q[2] - q[0]
    cpu_median = {n: statistics.median(v) for n, v in cpu.items()} if all(cpu.values()) else None
    return Timings(first, {n: statistics.median(v) for n, v in times.items()}, iqr,
                   {n: min(v) for n, v in times.items()}, load, attempts, cpu_median)


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
