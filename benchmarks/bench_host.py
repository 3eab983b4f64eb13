"""Host cost of the whole negative ELBO, forward + backward with its sample, at B=1 and B=128,
one CPU thread: fused vs eager PyTorch vs torch.compile, interleaved in one run. At B=1 the math
costs nothing, so the time is what every GPU step pays on the host (dispatcher, Python, autograd).
Also prints the fused step's kernel-launching dispatcher calls and device->host syncs.

    python benchmarks/bench_host.py [--repeats 200] [--out benchmarks/results/host-cpu.json]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from fastvae.bench import environment  # noqa: E402
from fastvae.host_cost import host_report, host_table  # noqa: E402

import torch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200, help="timed rounds per implementation (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args()
    report = host_report(threads=args.threads, repeats=args.repeats)
    report["environment"] = environment(torch.device("cpu"))
    print(host_table(report["rows"], report["counts"]))
    print("fused kernel calls:", ", ".join(report["counts"]["calls"]))
    goal = report["goal"]
    print(f"goal: fused host time <= 0.5x eager at B=1: {goal['fused_over_eager_at_B1']:.2f}x -> "
          f"{'met' if goal['met'] else 'NOT met'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
