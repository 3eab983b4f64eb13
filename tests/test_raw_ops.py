"""The raw dispatcher ops (``torch.ops.fastvae.*``) on 0 rows and 0 columns, each in a subprocess:
the Python layer refuses empty inputs, but the ops must still answer (empty outputs, zero sums
over no rows, or an error naming the argument), never crash. Moved out of test_edges.py."""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Sequence, Tuple

import pytest
import torch

from .conftest import cpu_and_cuda


# ---------------------------------------------------------------- raw dispatcher ops, 0 rows
def _raw_cases() -> Dict[str, Tuple[Callable[[str], Sequence[torch.Tensor]], Any]]:
    """name -> (call on a device, expected): the outputs' shapes (empty, or zero sums over no
    rows: the reference's value) or the argument an error must name. The Python layer refuses
    empty inputs; the dispatcher ops must still answer, never crash."""
    ops = torch.ops.fastvae

    def t(*shape, device, dtype=torch.float32):
        return torch.randn(shape, dtype=dtype, device=device)

    def st(device):
        return torch.tensor([5, 0], dtype=torch.int64, device=device)

    return {
        "reparameterize": (lambda d: ops.reparameterize(t(0, 5, device=d), t(0, 5, device=d), 1, None, st(d))[:1],
                           [(1, 0, 5)]),
        "reparameterize_with_kl": (
            lambda d: ops.reparameterize_with_kl(t(0, 5, device=d), t(0, 5, device=d), 1, None, st(d))[:2],
            [(1, 0, 5), (0,)]),
        "reparameterize_backward": (
            lambda d: ops.reparameterize_backward(t(1, 0, 5, device=d), t(0, 5, device=d), t(0, 5, device=d), st(d)),
            [(0, 5), (0, 5)]),
        "reparameterize_backward[0 samples]": (
            lambda d: ops.reparameterize_backward(t(0, 3, 5, device=d), t(3, 5, device=d), t(3, 5, device=d), st(d)),
            [(3, 5, 0.0), (3, 5, 0.0)]),
        "kl_standard_normal": (lambda d: [ops.kl_standard_normal(t(0, 5, device=d), t(0, 5, device=d))], [(0,)]),
        "kl_standard_normal[0 cols]": (lambda d: [ops.kl_standard_normal(t(3, 0, device=d), t(3, 0, device=d))],
                                       [(3, 0.0)]),
        "kl_standard_normal_backward": (
            lambda d: ops.kl_standard_normal_backward(t(0, device=d), t(0, 5, device=d), t(0, 5, device=d)),
            [(0, 5), (0, 5)]),
        "kl_normal": (lambda d: [ops.kl_normal(t(0, 5, device=d), t(0, 5, device=d), t(1, 5, device=d),
                                               t(1, 5, device=d))], [(0,)]),
        "kl_normal[0 cols]": (lambda d: [ops.kl_normal(t(3, 0, device=d), t(3, 0, device=d), t(3, 0, device=d),
                                                       t(1, 0, device=d))], [(3, 0.0)]),
        "kl_normal[0 prior rows]": (lambda d: [ops.kl_normal(t(3, 5, device=d), t(3, 5, device=d), t(0, 5, device=d),
                                                             t(1, 5, device=d))], "mu_p"),
        "kl_normal_backward": (
            lambda d: ops.kl_normal_backward(t(0, device=d), t(0, 5, device=d), t(0, 5, device=d), t(1, 5, device=d),
                                             t(1, 5, device=d)),
            [(0, 5), (0, 5), (1, 5, 0.0), (1, 5, 0.0)]),
        "reparameterize_with_kl_normal": (
            lambda d: ops.reparameterize_with_kl_normal(t(0, 5, device=d), t(0, 5, device=d), t(1, 5, device=d),
                                                        t(1, 5, device=d), 1, None, st(d))[:2],
            [(1, 0, 5), (0,)]),
        "reparameterize_with_kl_normal[0 cols]": (
            lambda d: ops.reparameterize_with_kl_normal(t(3, 0, device=d), t(3, 0, device=d), t(1, 0, device=d),
                                                        t(3, 0, device=d), None, None, st(d))[:2],
            [(3, 0), (3, 0.0)]),
        "reparameterize_with_kl_normal_backward": (
            lambda d: ops.reparameterize_with_kl_normal_backward(
                t(1, 0, 5, device=d), t(0, 5, device=d), t(0, 5, device=d), t(1, 5, device=d), t(1, 5, device=d),
                st(d), t(0, device=d)),
            [(0, 5), (0, 5), (1, 5, 0.0), (1, 5, 0.0)]),
        "bernoulli_log_likelihood": (
            lambda d: ops.bernoulli_log_likelihood(t(0, 5, device=d), t(1, 5, device=d), True), [(0,), (0, 5)]),
        "bernoulli_log_likelihood_": (
            lambda d: [ops.bernoulli_log_likelihood_(t(0, 5, device=d), t(1, 5, device=d))], [(0,)]),
        "linear_bernoulli_log_likelihood": (
            lambda d: [ops.linear_bernoulli_log_likelihood(t(0, 4, device=d), t(5, 4, device=d), t(5, device=d),
                                                           t(1, 5, device=d))], [(0,)]),
        "gaussian_log_likelihood": (
            lambda d: [ops.gaussian_log_likelihood(t(0, 5, device=d), t(1, 5, device=d), t(1, 5, device=d))], [(0,)]),
        "gaussian_log_likelihood_backward": (
            lambda d: ops.gaussian_log_likelihood_backward(t(0, device=d), t(0, 5, device=d), t(1, 5, device=d),
                                                           t(1, 5, device=d), True),
            [(0, 5), (1, 5, 0.0)]),
        "gaussian_log_density": (
            lambda d: [ops.gaussian_log_density(t(0, 5, device=d), t(1, 5, device=d), t(1, 5, device=d))], [(0,)]),
        "gaussian_log_density_backward": (
            lambda d: ops.gaussian_log_density_backward(t(0, device=d), t(0, 5, device=d), t(1, 5, device=d),
                                                        t(1, 5, device=d)),
            [(0, 5), (1, 5, 0.0), (1, 5, 0.0)]),
        "standard_normal_log_density": (lambda d: [ops.standard_normal_log_density(t(0, 5, device=d))], [(0,)]),
        "standard_normal_log_density_backward": (
            lambda d: [ops.standard_normal_log_density_backward(t(0, device=d), t(0, 5, device=d))], [(0, 5)]),
        "elbo_loss": (lambda d: ops.elbo_loss(t(0, 5, device=d), t(0, 5, device=d), None, t(0, 3, device=d),
                                              t(0, 3, device=d), None, 0.0, "bernoulli", 1.0, "mean",
                                              [True, True, False]), "recon"),
        "elbo_rescale": (lambda d: ops.elbo_rescale(t(device=d), [t(0, 5, device=d)]), [(0, 5)]),
    }


def _raw_outcome(name: str, device: str) -> str:
    """Runs one raw case and describes what it did: 'ok', or what went wrong."""
    call, expected = _raw_cases()[name]
    try:
        outs = list(call(device))
    except (ValueError, RuntimeError) as e:
        if isinstance(expected, str) and re.search(rf"\b{expected}\b", str(e)):
            return "ok"
        return f"raised {type(e).__name__}: {e}"
    if isinstance(expected, str):
        return f"returned {[tuple(o.shape) for o in outs]} instead of an error naming {expected}"
    for o, want in zip(outs, expected):
        shape, fill = (want[:-1], want[-1]) if isinstance(want[-1], float) else (want, None)
        if tuple(o.shape) != tuple(shape):
            return f"shape {tuple(o.shape)}, expected {shape}"
        if fill is not None and not torch.equal(o.cpu(), torch.full(shape, fill, dtype=o.dtype)):
            return f"values {o.cpu().flatten()[:5].tolist()}, expected {fill}"
    return "ok"


def _raw_child(device: str, route: bool, start: int) -> None:  # pragma: no cover (a subprocess)
    """Entry point of the subprocess: the raw cases from ``start`` on, one JSON line each."""
    import json
    from contextlib import nullcontext

    from . import emu

    with emu.routed() if route else nullcontext():
        for name in list(_raw_cases())[start:]:
            print(json.dumps([name, _raw_outcome(name, device)]), flush=True)


_RAW_RESULTS: Dict[Tuple[str, bool], Dict[str, str]] = {}


def _raw_results(device: str, route: bool, cwd: str) -> Dict[str, str]:
    """Every raw case's outcome on a device, from subprocesses: a case that kills its process is
    recorded as a crash and the next process goes on after it."""
    import json
    import subprocess
    import sys

    names = list(_raw_cases())
    results: Dict[str, str] = {}
    while len(results) < len(names):
        code = f"from tests.test_raw_ops import _raw_child; _raw_child({device!r}, {route}, {len(results)})"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)
        results.update(json.loads(line) for line in proc.stdout.splitlines() if line.startswith("["))
        if len(results) < len(names):
            results[names[len(results)]] = f"crashed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
    return results


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("name", list(_raw_cases()))
def test_raw_op_with_no_rows(name, device, request):
    """The raw ops on 0 rows, in subprocesses, so that a crash (issue 22 item 3: a division by
    zero in the launch heuristics) fails its case instead of the whole test run."""
    route = any(m.kwargs.get("route") for m in request.node.iter_markers("emu"))
    if (device, route) not in _RAW_RESULTS:
        _RAW_RESULTS[device, route] = _raw_results(device, route, str(request.config.rootpath))
    outcome = _RAW_RESULTS[device, route][name]
    assert outcome == "ok", outcome
