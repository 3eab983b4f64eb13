"""pytest-benchmark suite for the CI-sized cases: `pytest benchmarks/` (add `--benchmark-only`
to skip nothing but the plain tests, `--benchmark-json out.json` to keep the numbers).

Each case benchmarks forward + backward of the fused op and of its eager twin (and, with
FASTVAE_BENCH_COMPILE=1, of the twin under torch.compile) on the same inputs in one session, so
the printed groups give the ratio on the machine at hand. Nothing asserts a speed: timings are
measured, not tested; each case first checks that fused and eager agree, so a broken op fails.
"""
from __future__ import annotations

import os

import pytest
import torch

from fastvae.bench import cases, train

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IMPLS = ["fused", "eager"] + (["compile"] if os.environ.get("FASTVAE_BENCH_COMPILE") == "1" else [])
# (family, B, D, Z): the two CI-sized MNIST-like sizes and a short-row one, scaled down.
SIZES = [("mnist", 128, 784, 20), ("mnist", 1024, 784, 20), ("short_rows", 8192, 64, 16)]


def _cases():
    for family, b, d, z in SIZES:
        for op in cases.OPS:
            case = cases.build_case(op, {"B": b, "D": d, "Z": z}, torch.float32, DEVICE, family)
            yield pytest.param(case, id=f"{case.op}-" + "-".join(f"{k}{v}" for k, v in case.shape.items()))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(_cases()))
def test_forward_backward(benchmark, case, impl):
    if case.op != "reparameterize":  # the ELBO's loss (its last output) and every row op are deterministic
        fused, eager = case.forward("fused")()[-1], case.forward("eager")()[-1]
        torch.testing.assert_close(fused.double(), eager.double(), rtol=1e-4, atol=1e-3)
    benchmark.group = f"{case.op} " + " ".join(f"{k}={v}" for k, v in case.shape.items())
    benchmark.extra_info.update({"impl": impl, "dtype": case.dtype, "family": case.family})
    fn = case.make(impl)
    fn()  # the first call compiles under torch.compile; keep it out of the calibration
    benchmark(fn)


@pytest.mark.parametrize("loss_impl", ["fused", "eager"])
def test_train_step(benchmark, loss_impl):
    benchmark.group = "train step, 784-400-20 MLP VAE, batch 128"
    step = train.make_train_step(128, loss_impl, DEVICE)
    step()
    benchmark(step)
