"""Fused `kl_standard_normal` against the eager reference and torch.compile, forward + backward.

    python benchmarks/bench_kl_standard_normal.py [--dtype float32 bfloat16] [--families mnist images] [--out r.json]

Prints speed and peak memory per size and dtype; every flag of `fastvae bench` applies.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from fastvae.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(ops=["kl_standard_normal"], train=False, description=__doc__))
