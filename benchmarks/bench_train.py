"""End to end: Adam steps per second of the classic 784-400-20 MLP VAE with the fused loss, the
eager reference loss and that loss under torch.compile (same model, same seed, layers eager).

    python benchmarks/bench_train.py [--train-batches 128 1024] [--train-steps 30] [--out r.json]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from fastvae.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(ops=[], train=True, description=__doc__))
