"""Fused `reparameterize_with_kl` (the sample and its KL term in one pass) against the eager
reference (sampling, then the KL) and torch.compile, forward + backward.

    python benchmarks/bench_reparameterize_with_kl.py [--dtype float32 bfloat16] [--families mnist images] [--out r.json]

Prints speed and peak memory per size and dtype; every flag of `fastvae bench` applies.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from fastvae.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(ops=["reparameterize_with_kl"], train=False, description=__doc__))
