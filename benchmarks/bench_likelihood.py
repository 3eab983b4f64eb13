"""The likelihood family: `bernoulli_log_likelihood` and `gaussian_log_likelihood`, forward + backward, fused against the eager reference
(fastvae.reference) and that reference under torch.compile: speed and peak memory per size and dtype.

    python benchmarks/bench_likelihood.py [--dtype float32 bfloat16] [--families mnist images] [--out r.json]

Every flag of `fastvae bench` applies (`--ops` picks some of the family's ops).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from fastvae.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(family="likelihood", description=__doc__))
