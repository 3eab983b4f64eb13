"""``fastvae bench``: the command line of the benchmark harness, and the run it drives.

    fastvae bench [--quick] [--large] [--families ...] [--ops ...] [--dtype ...] [--out r.json]
    python -m fastvae.bench ...                     (the same)
    python benchmarks/bench_<family>.py ...         (one op family, no training rows)

The JSON report (``--out``) is the source of the tables: ``make bench-tables``
(benchmarks/tables.py); ``benchmarks/check_goals.py`` checks the project's goals against it.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

import torch

from .cases import FAMILIES, IMPLS, OP_FAMILIES, OP_FAMILY_SIZES, OPS, cases_for, default_families
from .report import Result, environment, format_row, format_train_row, make_report, run_case
from .timing import COPY_BYTES, copy_bandwidth_gbps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``fastvae bench`` (and of the scripts under benchmarks/)."""
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16", "float64"], help="input dtypes (default: float32 bfloat16)")
    parser.add_argument("--families", nargs="+", default=None, choices=FAMILIES,
                        help="size families (default: all on CUDA; on CPU all but 'large')")
    parser.add_argument("--ops", nargs="+", default=None, choices=OPS, help="ops to time (default: all)")
    parser.add_argument("--quick", action="store_true", help="CI-sized: the two small MNIST-like sizes only")
    parser.add_argument("--large", action="store_true", help="add the B*D >= 1e8 family on the CPU too (minutes)")
    parser.add_argument("--elbo-only", action="store_true", help="only the whole-ELBO cases (same as --ops elbo)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--no-train", action="store_true", help="skip the end-to-end training steps")
    parser.add_argument("--host", action="store_true",
                        help="add the host-cost family: whole ELBO fwd+bwd at B=1 and B=128, one CPU thread")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per case, at least (default: 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls after the first (default: 3)")
    parser.add_argument("--min-time", type=float, default=0.5,
                        help="keep timing a case until this many seconds are spent (default: 0.5)")
    parser.add_argument("--retries", type=int, default=2,
                        help="re-time a case while other processes kept more than --max-other-load "
                             "CPU cores busy, up to this many times (default: 2)")
    parser.add_argument("--max-other-load", type=float, default=0.25,
                        help="CPU cores other processes may use during a case before it is re-timed (default: 0.25)")
    parser.add_argument("--train-batches", type=int, nargs="+", default=[128, 1024], help="training batch sizes")
    parser.add_argument("--train-steps", type=int, default=30, help="timed training steps per loss (default: 30)")
    parser.add_argument("--out", default=None, help="write the JSON report here (and a .png plot beside it)")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="do not draw the plot")


def check_args(args: argparse.Namespace) -> None:
    """ValueError naming the first flag out of range."""
    for name in ("repeats", "train_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.min_time < 0 or args.retries < 0 or args.max_other_load < 0:
        raise ValueError("--warmup, --min-time, --retries and --max-other-load must be >= 0")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if any(b < 1 for b in args.train_batches):
        raise ValueError(f"--train-batches must be >= 1, got {args.train_batches}")


def resolve_device(name: Optional[str]) -> torch.device:
    """``--device``, by default CUDA when torch sees a device."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {name!r}")
    return device


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Runs the benchmarks named by args, prints a line per result, writes the JSON report and its plot."""
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    impls = [i for i in IMPLS if not (i == "compile" and args.no_compile)]
    families = args.families or default_families(device, args.quick, args.large)
    ops = list(args.ops) if args.ops is not None else (["elbo"] if args.elbo_only else list(OPS))
    env = environment(device)
    load, cpus = env.get("load_average"), os.cpu_count() or 1
    if load and load[0] > 0.5 * cpus:
        print(f"warning: load average {load[0]:.2f} on {cpus} CPUs before starting: other work is "
              "running and CPU timings will be noisy (recorded in the report)", flush=True)
    copy_gbps = copy_bandwidth_gbps(COPY_BYTES, device) if ops else None
    if copy_gbps:
        print(f"copy bandwidth ({COPY_BYTES >> 20} MiB, read + write): {copy_gbps:.1f} GB/s", flush=True)
    results: List[Result] = []
    for dname in args.dtype:
        for case in cases_for(families, ops, getattr(torch, dname), device, args.quick):
            res = run_case(case, device, impls, args.repeats, args.warmup, args.min_time,
                           memory=args.memory, copy_gbps=copy_gbps, retries=args.retries,
                           max_other_load=args.max_other_load)
            results.append(res)
            print(format_row(asdict(res)), flush=True)
    train: List[Dict[str, object]] = []
    if not args.no_train:
        from .train import train_rows  # builds the VAE application's model

        train = train_rows(args.train_batches, device, not args.no_compile, args.train_steps, args.retries,
                           args.max_other_load)
        for row in train:
            print(format_train_row(row), flush=True)
    host = None
    if args.host:  # host cost: one thread, whole ELBO at B=1 and B=128
        from .host import format_host, host_report

        host = host_report(threads=1)
        print(format_host(host), flush=True)
    env["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    settings = {"families": families, "ops": ops, "dtypes": list(args.dtype), "impls": impls,
                "repeats": args.repeats, "warmup": args.warmup, "min_time_s": args.min_time,
                "quick": bool(args.quick), "retries": args.retries, "max_other_load": args.max_other_load,
                "threads": torch.get_num_threads()}
    report = make_report(env, settings, results, train, host, copy_gbps)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
        if args.plot and report["results"]:
            from .plot import plot

            plot(report, os.path.splitext(args.out)[0] + ".png")
    return report


def command(args: argparse.Namespace) -> int:
    """``fastvae bench``: runs the benchmarks; the exit status."""
    check_args(args)
    run(args)
    return 0


def main(argv: Optional[Sequence[str]] = None, ops: Optional[Sequence[str]] = None, train: bool = True,
         description: Optional[str] = None, family: Optional[str] = None) -> int:
    """Entry point of ``python -m fastvae.bench`` and of the benchmarks/bench_*.py scripts:
    ``ops`` and ``train`` set the defaults; ``family`` (an OP_FAMILIES key) times that op family's
    ops and no training."""
    if family is not None:
        if family not in OP_FAMILIES:
            raise ValueError(f"family must be one of {tuple(OP_FAMILIES)}, got {family!r}")
        ops, train = OP_FAMILIES[family], False
    parser = argparse.ArgumentParser(description=description or __doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(ops=list(ops) if ops is not None else None, no_train=not train)
    if family in OP_FAMILY_SIZES:
        parser.set_defaults(families=list(OP_FAMILY_SIZES[family]))
    if not train:
        parser.add_argument("--train", dest="no_train", action="store_false", help="also time training steps")
    return command(parser.parse_args(argv))
