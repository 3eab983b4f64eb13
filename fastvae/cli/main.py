"""The ``fastvae`` command: its parser and entry point (also ``python -m fastvae``).

``fastvae train`` with no flags trains a small VAE with a 2-D latent space on scikit-learn's
bundled 8x8 digits (no download) in seconds and writes a checkpoint, metrics and pictures.
Under ``torchrun --nproc_per_node N -m fastvae train ...`` it trains with DistributedDataParallel.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

from .commands import add_eval_args, add_sample_args, cmd_eval, cmd_sample
from .train import add_train_args, cmd_train

__all__ = ["main", "build_parser", "version_text"]

_DEBUG_HELP = ("on an error, show the Python traceback instead of the one-line message "
               "(also FASTVAE_DEBUG=1)")


def _common_parser() -> argparse.ArgumentParser:
    """Flags every command takes (after the command name, too)."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a command without --debug must not reset one given before the command name.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return common


def version_text() -> str:
    """``fastvae --version``: this package's version, torch's, and the kernels this build has."""
    import torch

    from .. import __version__
    from .._extension import CPU_ISA, CUDA_BUILT, _C

    if CUDA_BUILT:
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        kernels = f"CUDA kernels built (CUDA {torch.version.cuda}), {devices} CUDA device(s) visible"
    else:
        kernels = "CUDA kernels not built (CPU kernels only)"
    threads = torch.get_num_threads()
    cpu = f"CPU kernels {CPU_ISA}, {_C.parallel_threads(threads)} of {threads} threads"
    return f"fastvae {__version__} (torch {torch.__version__}; {kernels}; {cpu})"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: Optional[str] = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any,
                 option_string: Optional[str] = None) -> None:
        print(version_text())  # stdout, as argparse's own version action does
        parser.exit(0)


def _add_bench(sub: Any, wanted: bool) -> None:
    p = sub.add_parser("bench", parents=[_common_parser()], help="time the fused losses against plain PyTorch (fastvae.bench)",
                       description="Benchmarks from fastvae.bench.")
    if not wanted:
        # Importing the benchmarks costs time; only `fastvae bench ...` needs their flags.
        return
    from .. import bench

    bench.add_arguments(p)
    p.set_defaults(func=bench.command)


def build_parser(with_bench_args: bool = False) -> argparse.ArgumentParser:
    """The argument parser; ``with_bench_args`` imports fastvae.bench for its flags."""
    parser = argparse.ArgumentParser(
        prog="fastvae",
        description="Train, sample from and evaluate VAEs on fastvae's fused loss kernels.",
        epilog="Run `fastvae COMMAND --help` for a command's flags. Multi-process training: "
               "torchrun --nproc_per_node N -m fastvae train ...",
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="print fastvae's version, torch's, whether the CUDA kernels are built, "
                             "and the CPU kernels' ISA and threads")
    parser.add_argument("--debug", action="store_true", default=False, help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("train", parents=[_common_parser()], help="train a VAE; writes checkpoint, metrics and pictures",
                       description="Train a VAE (Adam, minibatches) and write checkpoint.pt, metrics.jsonl, "
                                   "samples.png, reconstructions.png, curve.png and, for a 2-D latent space, "
                                   "latents.png to --out.")
    add_train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sample", parents=[_common_parser()], help="draw samples from a checkpoint into a PNG grid",
                       description="Decode z ~ N(0, I) with a trained model and save a PNG grid.")
    add_sample_args(p)
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("eval", parents=[_common_parser()], help="test ELBO and importance-sampled log-likelihood of a checkpoint",
                       description="Print the test ELBO and the importance-sampled estimate of log p(x) "
                                   "(IWAE bound with K samples) of a trained model.")
    add_eval_args(p)
    p.set_defaults(func=cmd_eval)
    _add_bench(sub, with_bench_args)
    return parser


def _command_of(argv: Sequence[str]) -> Optional[str]:
    for token in argv:
        if not token.startswith("-"):
            return token
    return None


def _debug_from_env() -> bool:
    return os.environ.get("FASTVAE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``fastvae`` console script; returns the exit status.

    Known failures (bad flag values, unreadable data or checkpoint files, a device this machine
    lacks, a missing optional dependency) end as one line, ``fastvae COMMAND: error: ...`` on
    stderr with exit status 2 (raised as SystemExit, like argparse's own errors); ``--debug``
    or FASTVAE_DEBUG=1 lets the exception through with its traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(with_bench_args=_command_of(argv) == "bench")
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or _debug_from_env()
    try:
        rc = args.func(args)
    except (ValueError, OSError, ImportError) as err:
        # ValueError covers CLIError and fastvae's CheckpointError; OSError missing or
        # unwritable files. Anything else is a bug and keeps its traceback.
        if debug:
            raise
        parser.exit(2, f"fastvae {args.command}: error: {_one_line(err)}\n")
    except KeyboardInterrupt:
        if debug:
            raise
        parser.exit(130, f"fastvae {args.command}: interrupted\n")
    return int(rc or 0)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
