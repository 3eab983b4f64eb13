"""pytest-benchmark suite for the CI-sized cases: `pytest benchmarks/ --benchmark-only`.

Each case benchmarks forward + backward of the fused op and of its eager twin in the same session,
so `--benchmark-compare` / the printed table give the ratio on the machine at hand. Nothing here
asserts a speed: timings are measured, not tested.
"""
from __future__ import annotations

import pytest
import torch

from fastvae import bench

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZES = [(128, 784), (1024, 784), (65536, 64)]


def _op_cases():
    for b, d in SIZES:
        for case in bench.op_cases(b, d, torch.float32, DEVICE):
            yield pytest.param(case, id=f"{case.op}-B{b}-D{d}")
    for b, d, z in [(128, 784, 20), (1024, 784, 20)]:
        case = bench.elbo_case(b, d, z, torch.float32, DEVICE)
        yield pytest.param(case, id=f"elbo-B{b}-D{d}-Z{z}")


@pytest.mark.parametrize("impl", ["fused", "eager"])
@pytest.mark.parametrize("case", list(_op_cases()))
def test_forward_backward(benchmark, case, impl):
    fn = case.make(impl)
    benchmark.group = case.op + " " + "x".join(str(v) for v in case.shape.values())
    benchmark(fn)
