"""Host cost of the whole negative ELBO, forward + backward with its sample, at B=1 and B=128,
one CPU thread, interleaved in one run: fused against the leanest eager loss (pytorch/examples
style: BCE-with-logits summed + the closed-form KL), fastvae.reference and torch.compile of the
eager loss. At B=1 the math costs nothing, so the time is what every GPU step pays on the host
(dispatcher, Python, autograd). Also prints the fused step's kernel-launching dispatcher calls
and device->host syncs. `benchmarks/check_goals.py` checks the host goal against the report.

    python benchmarks/bench_host.py [--repeats 200] [--out benchmarks/results/host-cpu.json]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402

from fastvae.bench.host import format_host, host_report  # noqa: E402
from fastvae.bench.report import environment  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200, help="timed rounds per implementation (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 128], help="batch sizes (default 1 128)")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args()
    report = host_report(threads=args.threads, repeats=args.repeats, batches=args.batches)
    report["environment"] = environment(torch.device("cpu"))
    print(format_host(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
