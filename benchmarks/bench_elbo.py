"""The whole negative ELBO (reparameterised sample + KL + likelihood), forward + backward, fused
against the eager reference and torch.compile. Bernoulli likelihood, Gaussian in the images family.

    python benchmarks/bench_elbo.py [--dtype float32 bfloat16] [--families mnist] [--out r.json]

Prints speed, speed-ups and peak memory per size and dtype; every flag of `fastvae bench` applies.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from fastvae.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(ops=["elbo"], train=False, description=__doc__))
