"""The continuous_bernoulli family: `continuous_bernoulli_log_likelihood`, forward + backward,
fused against `torch.distributions.ContinuousBernoulli(logits=...).log_prob(x)` summed per image
(what users write) and that under torch.compile: time and peak memory at B=64 3x32x32 and B=8
3x128x128, float32 and bf16.

    python benchmarks/bench_continuous_bernoulli.py [--dtype float32 bfloat16] [--out r.json]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from fwd_bwd import run  # noqa: E402

from fastvae import functional as F  # noqa: E402


def eager(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.distributions.ContinuousBernoulli(logits=logits, validate_args=False).log_prob(x).flatten(1).sum(1)


def _case(b: int, hw: int):
    def make(dtype):
        logits = torch.randn(b, 3, hw, hw).mul(3).to(dtype).requires_grad_(True)
        return logits, torch.rand(b, 3, hw, hw).to(dtype)
    return f"B={b} 3x{hw}x{hw}", make


if __name__ == "__main__":
    impls = {"fused": F.continuous_bernoulli_log_likelihood, "eager": eager, "compile": eager}
    run("continuous_bernoulli", impls, [_case(64, 32), _case(8, 128)])
