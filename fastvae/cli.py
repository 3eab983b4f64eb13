"""Command line: ``fastvae train | sample | eval | bench`` (also ``python -m fastvae``).

``fastvae train`` with no flags trains a small VAE with a 2-D latent space on scikit-learn's
bundled 8x8 digits (no download) in seconds and writes a checkpoint, metrics and pictures.
Under ``torchrun --nproc_per_node N -m fastvae train ...`` it trains with DistributedDataParallel.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["main", "build_parser", "CLIError"]

# torch.manual_seed and torch.Generator take 64-bit seeds; the trainer derives seed + k from
# the seed, so the top half of the unsigned range stays free.
SEED_MAX = 2**63 - 1


class CLIError(ValueError):
    """A known failure the command line reports as one line (``error: ...``, exit status 2)."""

# Defaults of `train`, filled in after parsing so that a resumed run can tell which flags the
# user actually gave ("auto" entries depend on the data set; see _resolve_auto).
TRAIN_DEFAULTS: Dict[str, Any] = {
    "data": "digits", "data_dir": None, "npz_key": "x", "binarize": "auto",
    "epochs": "auto", "batch_size": 128, "lr": 1e-3, "max_steps": None,
    "arch": "mlp", "hidden": "400", "channels": "32,64", "activation": "relu", "latent_dim": "auto",
    "likelihood": "bernoulli", "obs_var": "fixed", "obs_logvar": 0.0,
    "beta": 1.0, "warmup": 0, "warmup_unit": "epochs", "free_bits": 0.0,
    "loss_impl": "fused", "seed": 0, "device": "auto", "amp": False, "compile": False,
    "out": None, "eval_samples": 100, "eval_batch_size": 1000, "log_every": 0,
    "checkpoint_every": 1, "progress": None, "plots": True, "num_images": 64,
}
# Flags that change the run itself; a resumed run takes them from the checkpoint.
_FIXED_ON_RESUME = ("data", "data_dir", "npz_key", "binarize", "batch_size", "lr", "arch", "hidden",
                    "channels", "activation", "latent_dim", "likelihood", "obs_var", "obs_logvar",
                    "beta", "warmup", "warmup_unit", "free_bits", "loss_impl", "seed")


def _csv_ints(text: str, flag: str) -> List[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{flag} must be comma-separated positive integers, got {text!r}")
    return values


def _need_int(value: Any, flag: str, low: int, what: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CLIError(f"{flag} must be an integer {what}, got {value!r}")


def _need_real(value: Any, flag: str, low: float, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise CLIError(f"{flag} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")


def _check_seed(value: Any, flag: str = "--seed") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise CLIError(f"{flag} must be an integer from 0 to {SEED_MAX} (2**63 - 1), got {value!r}")


def _check_device(value: Any, flag: str = "--device", kernels: bool = True) -> None:
    """``value`` names a device this machine has (fails here, not deep inside torch).

    ``kernels``: the fused ops will run on it, so a CUDA device needs fastvae's CUDA kernels.
    """
    import torch

    if value == "auto":
        return
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise CLIError(f"{flag} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}") from None
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise CLIError(f"{flag} {value}: only 'cpu' and 'cuda' devices are supported")
    if not torch.cuda.is_available():
        raise CLIError(f"{flag} {value}: CUDA is not available on this machine (no CUDA driver or no "
                       "visible GPU); use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise CLIError(f"{flag} {value}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    from ._extension import CUDA_BUILT

    if kernels and not CUDA_BUILT:
        raise CLIError(f"{flag} {value}: this fastvae was built without its CUDA kernels; rebuild it with "
                       "CUDA, or train with --loss-impl reference")


def _check_train_flags(cfg: Dict[str, Any]) -> None:
    """Every `train` setting present in ``cfg``, before any data is loaded or model built."""
    def has(key: str) -> bool:
        return cfg.get(key) is not None

    for key, low, what in (("epochs", 1, ">= 1"), ("batch_size", 1, ">= 1"), ("max_steps", 1, ">= 1"),
                           ("latent_dim", 1, ">= 1"), ("warmup", 0, ">= 0"), ("eval_samples", 0, ">= 0"),
                           ("eval_batch_size", 1, ">= 1"), ("log_every", 0, ">= 0"),
                           ("checkpoint_every", 0, ">= 0"), ("num_images", 1, ">= 1")):
        if has(key):
            _need_int(cfg[key], "--" + key.replace("_", "-"), low, what)
    if has("lr"):
        _need_real(cfg["lr"], "--lr", 0.0, strict=True)
    for key in ("beta", "free_bits"):
        if has(key):
            _need_real(cfg[key], "--" + key.replace("_", "-"), 0.0)
    if has("obs_logvar"):
        _need_real(cfg["obs_logvar"], "--obs-logvar", -math.inf)
    if has("seed"):
        _check_seed(cfg["seed"])
    if has("hidden"):
        _csv_ints(cfg["hidden"], "--hidden")
    if has("channels"):
        _csv_ints(cfg["channels"], "--channels")
    if has("data"):
        name = str(cfg["data"])
        if name not in ("digits", "mnist") and not name.endswith(".npz"):
            raise CLIError(f"--data must be 'digits', 'mnist' or a path to an .npz file, got {name!r}")
    if cfg.get("likelihood") == "bernoulli" and cfg.get("obs_var") not in (None, "fixed"):
        raise CLIError(f"--obs-var {cfg['obs_var']} needs --likelihood gaussian (a Bernoulli has no variance)")
    if has("device"):
        _check_device(cfg["device"], kernels=cfg.get("loss_impl", "fused") == "fused")
    if cfg.get("amp"):
        import torch

        device = cfg.get("device") or "auto"
        on_cuda = torch.cuda.is_available() if device == "auto" else str(device).startswith("cuda")
        if not on_cuda:
            raise CLIError(f"--amp (bf16 autocast) needs a CUDA device; --device is {device}"
                           + (" and this machine has no CUDA" if device == "auto" else ""))
    if has("out") and Path(cfg["out"]).exists() and not Path(cfg["out"]).is_dir():
        raise CLIError(f"--out {cfg['out']} is a file; it must be a directory")


def _default(name: str) -> str:
    return f" (default: {TRAIN_DEFAULTS[name]})"


def _add_data_args(p: argparse.ArgumentParser, for_train: bool) -> None:
    where = "" if for_train else " (default: the data set the checkpoint was trained on)"
    p.add_argument("--data", default=None,
                   help="'digits' (scikit-learn's 8x8 digits, bundled), 'mnist' (IDX files in "
                        "--data-dir) or a path to an .npz file" + (_default("data") if for_train else where))
    p.add_argument("--data-dir", default=None,
                   help="directory of the MNIST IDX files (default: $FASTVAE_MNIST_DIR, else "
                        "../shared/data/mnist-t10k next to the repository), or base for a relative .npz path")
    p.add_argument("--npz-key", default=None,
                   help="array name in the .npz file (also looks for KEY_train/KEY_test and y/labels)"
                        + (_default("npz_key") if for_train else where))


def _add_train_args(p: argparse.ArgumentParser) -> None:
    _add_data_args(p, for_train=True)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None,
                   help="passes over the training set (default: 50 for digits, 10 otherwise)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="global minibatch size, split evenly over torchrun ranks" + _default("batch_size"))
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate" + _default("lr"))
    g.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps in total (default: run all epochs)")
    g.add_argument("--seed", type=int, default=None,
                   help="seed for weights, data order, binarisation and sampling noise" + _default("seed"))
    m = p.add_argument_group("model")
    m.add_argument("--arch", choices=("mlp", "conv"), default=None,
                   help="fully connected or convolutional encoder/decoder" + _default("arch"))
    m.add_argument("--hidden", default=None,
                   help="MLP hidden widths, comma-separated, e.g. 512,256" + _default("hidden"))
    m.add_argument("--channels", default=None,
                   help="conv channels per stride-2 layer, comma-separated" + _default("channels"))
    m.add_argument("--activation", choices=("relu", "elu", "silu", "tanh"), default=None,
                   help="hidden activation" + _default("activation"))
    m.add_argument("--latent-dim", type=int, default=None,
                   help="latent dimensions (default: 2 for digits, so latents.png shows the latent "
                        "space; 20 otherwise)")
    m.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default=None,
                   help="p(x|z): Bernoulli on logits or Gaussian on a mean" + _default("likelihood"))
    m.add_argument("--obs-var", choices=("fixed", "scalar", "per_dim", "per_element"), default=None,
                   help="Gaussian observation variance: fixed at --obs-logvar, one learned scalar, one "
                        "learned per pixel, or predicted by the decoder" + _default("obs_var"))
    m.add_argument("--obs-logvar", type=float, default=None,
                   help="Gaussian observation log-variance (fixed value or initial value)" + _default("obs_logvar"))
    o = p.add_argument_group("objective")
    o.add_argument("--binarize", choices=("auto", "none", "static", "dynamic"), default=None,
                   help="binarise grey levels: 'dynamic' redraws x ~ Bernoulli(grey) for every batch, "
                        "'static' thresholds at 0.5; 'auto' is dynamic for a Bernoulli likelihood, "
                        "none for a Gaussian" + _default("binarize"))
    o.add_argument("--beta", type=float, default=None, help="weight of the KL term (beta-VAE)" + _default("beta"))
    o.add_argument("--warmup", type=int, default=None,
                   help="KL warm-up length: beta ramps linearly from 0 over this many --warmup-unit"
                        + _default("warmup"))
    o.add_argument("--warmup-unit", choices=("epochs", "steps"), default=None,
                   help="unit of --warmup" + _default("warmup_unit"))
    o.add_argument("--free-bits", type=float, default=None,
                   help="KL floor per latent dimension, in nats" + _default("free_bits"))
    o.add_argument("--loss-impl", choices=("fused", "reference"), default=None,
                   help="fused kernels (fastvae.functional) or plain PyTorch (fastvae.reference)"
                        + _default("loss_impl"))
    r = p.add_argument_group("run")
    r.add_argument("--device", default=None,
                   help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'; under torchrun each "
                        "rank uses cuda:LOCAL_RANK" + _default("device"))
    r.add_argument("--amp", action="store_true", default=None,
                   help="bf16 autocast for the networks (CUDA only)")
    r.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the encoder and decoder (the first steps take longer)")
    r.add_argument("--out", default=None,
                   help="output directory (default: runs/<data set name>; with --resume, the "
                        "checkpoint's directory)")
    r.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="continue the run saved in CHECKPOINT (a file or a directory; without a value: "
                        "--out's checkpoint); data, model and objective come from the checkpoint and "
                        "only --epochs, --max-steps and the flags of this group may change")
    r.add_argument("--eval-samples", type=int, default=None,
                   help="importance samples K for the test log-likelihood after training, 0 to skip"
                        + _default("eval_samples"))
    r.add_argument("--eval-batch-size", type=int, default=None,
                   help="examples per evaluation chunk" + _default("eval_batch_size"))
    r.add_argument("--log-every", type=int, default=None,
                   help="also log a metrics line every N steps (0: once per epoch)" + _default("log_every"))
    r.add_argument("--checkpoint-every", type=int, default=None,
                   help="epochs between checkpoints (0: only at the end and on Ctrl-C)"
                        + _default("checkpoint_every"))
    r.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress bar with the running ELBO (default: only on a terminal)")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="never show the progress bar")
    r.add_argument("--no-plots", dest="plots", action="store_false", default=None,
                   help="skip samples.png, reconstructions.png, curve.png and latents.png")
    r.add_argument("--plots", dest="plots", action="store_true",
                   help="draw the pictures (the default; with --resume, draws them for a run saved with --no-plots)")
    r.add_argument("--num-images", type=int, default=None,
                   help="images in samples.png" + _default("num_images"))


def _add_sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint file, or the directory holding checkpoint.pt")
    p.add_argument("--out", default=None, help="PNG to write (default: samples.png next to the checkpoint)")
    p.add_argument("-n", "--num", type=int, default=64, help="number of samples (default: 64)")
    p.add_argument("--nrow", type=int, default=None, help="images per row (default: about square)")
    p.add_argument("--draw", action="store_true",
                   help="draw x ~ p(x|z) instead of showing the decoder mean")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent draws (default: 0)")
    p.add_argument("--device", default="cpu", help="device to decode on (default: cpu)")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint file, or the directory holding checkpoint.pt")
    _add_data_args(p, for_train=False)
    p.add_argument("--num-samples", "-k", type=int, default=5000,
                   help="importance samples K per example for log p(x); cost grows linearly with K "
                        "(default: 5000)")
    p.add_argument("--max-examples", type=int, default=None,
                   help="evaluate only the first N test examples (default: all)")
    p.add_argument("--batch-size", type=int, default=100,
                   help="examples per log-likelihood chunk (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples (default: 0)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N' (default: auto)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress bar over test chunks (default: only on a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="never show the progress bar")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")


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

    from . import __version__
    from ._extension import CPU_ISA, CUDA_BUILT, _C

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
    from . import bench

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
    _add_train_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("sample", parents=[_common_parser()], help="draw samples from a checkpoint into a PNG grid",
                       description="Decode z ~ N(0, I) with a trained model and save a PNG grid.")
    _add_sample_args(p)
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("eval", parents=[_common_parser()], help="test ELBO and importance-sampled log-likelihood of a checkpoint",
                       description="Print the test ELBO and the importance-sampled estimate of log p(x) "
                                   "(IWAE bound with K samples) of a trained model.")
    _add_eval_args(p)
    p.set_defaults(func=cmd_eval)
    _add_bench(sub, with_bench_args)
    return parser


# ---------------------------------------------------------------------- helpers
def _resolve_auto(cfg: Dict[str, Any]) -> Dict[str, Any]:
    digits = cfg["data"] == "digits"
    if cfg["epochs"] == "auto":
        cfg["epochs"] = 50 if digits else 10
    if cfg["latent_dim"] == "auto":
        cfg["latent_dim"] = 2 if digits else 20
    if cfg["binarize"] == "auto":
        cfg["binarize"] = "dynamic" if cfg["likelihood"] == "bernoulli" else None
    elif cfg["binarize"] == "none":
        cfg["binarize"] = None
    return cfg


def _load_data(name: str, data_dir: Optional[str], key: str):
    from .data import load_dataset

    return load_dataset(name, data_dir=data_dir, key=key)


def _shaped(x, arch: str, image_shape):
    # Conv nets take (N, C, H, W); MLPs flatten whatever they get.
    return x.reshape(x.shape[0], *image_shape) if arch == "conv" else x


def _build_model(cfg: Dict[str, Any], image_shape, input_dim: int):
    from .models import build_conv_vae, build_mlp_vae

    common = dict(latent_dim=cfg["latent_dim"], likelihood=cfg["likelihood"], activation=cfg["activation"],
                  obs_var=cfg["obs_var"], obs_logvar=cfg["obs_logvar"], beta=cfg["beta"])
    if cfg["arch"] == "conv":
        if len(image_shape) != 3:
            raise ValueError(f"--arch conv needs (C, H, W) images; this data set has shape {image_shape}")
        return build_conv_vae(image_shape=image_shape, channels=_csv_ints(cfg["channels"], "--channels"), **common)
    return build_mlp_vae(input_dim=input_dim, hidden=_csv_ints(cfg["hidden"], "--hidden"), data_shape=image_shape, **common)


def _write_pictures(model, data, cfg: Dict[str, Any], metrics_path: Path, out: Path) -> List[Path]:
    from . import plots
    from .training import eval_data

    test = eval_data(_shaped(data.test, cfg["arch"], data.image_shape), cfg["binarize"], cfg["seed"])
    paths = [plots.save_samples(model, out / "samples.png", n=cfg["num_images"], seed=cfg["seed"]),
             plots.save_reconstructions(model, test, out / "reconstructions.png")]
    if metrics_path.is_file() and metrics_path.stat().st_size:
        paths.append(plots.save_training_curve(metrics_path, out / "curve.png"))
    if model.latent_dim == 2:
        paths.append(plots.save_latent_scatter(model, test, data.test_labels, out / "latents.png"))
    return paths


# ---------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    """`fastvae train`: fresh run or --resume; returns the exit status."""
    from .training import CHECKPOINT_NAME, CheckpointError, TrainConfig, Trainer, load_checkpoint, seed_everything

    given = {k: v for k, v in vars(args).items() if k in TRAIN_DEFAULTS and v is not None}
    _check_train_flags(given)  # the flags as given, before any file is read
    if args.resume is not None:
        ckpt = Path(args.resume) if args.resume else Path(given.get("out") or "")
        if not args.resume and "out" not in given:
            raise CLIError("--resume without a value needs --out (the directory holding checkpoint.pt)")
        fixed = sorted(k for k in given if k in _FIXED_ON_RESUME)
        if fixed:
            raise CLIError("cannot change " + ", ".join("--" + k.replace("_", "-") for k in fixed)
                           + " when resuming: the checkpoint fixes them")
        state = load_checkpoint(ckpt)
        saved = state["extra"].get("cli")
        if not isinstance(saved, dict):
            raise CLIError(f"{ckpt} was not written by `fastvae train`; continue it from Python "
                           "with fastvae.training.Trainer.from_checkpoint")
        cfg = {**TRAIN_DEFAULTS, **saved, **given}
        if "out" not in given:
            cfg["out"] = str(ckpt if ckpt.is_dir() else ckpt.parent)
        try:
            _check_train_flags({k: v for k, v in cfg.items() if k not in given and k not in ("device", "amp")})
        except ValueError as err:
            raise CheckpointError(ckpt, f"its saved training flags: {err}") from err
        try:  # the saved device may be one this machine lacks: a run flag, not damage
            _check_train_flags({k: cfg[k] for k in ("device", "amp", "loss_impl")})
        except CLIError as err:
            hint = "" if "device" in given else " (saved in the checkpoint; choose another with --device)"
            raise CLIError(f"{err}{hint}") from err
    else:
        cfg = _resolve_auto({**TRAIN_DEFAULTS, **given})
        _check_train_flags(cfg)
    if cfg["out"] is None:
        cfg["out"] = str(Path("runs") / Path(str(cfg["data"])).stem)
    out = Path(cfg["out"])

    data = _load_data(cfg["data"], cfg["data_dir"], cfg["npz_key"])
    train_x = _shaped(data.train, cfg["arch"], data.image_shape)
    test_x = _shaped(data.test, cfg["arch"], data.image_shape)
    run_keys = ("epochs", "max_steps", "device", "amp", "compile", "eval_samples", "eval_batch_size",
                "log_every", "checkpoint_every", "progress")
    if args.resume is not None:
        overrides = {k: cfg[k] for k in run_keys}
        trainer = Trainer.from_checkpoint(ckpt, train_x, test_x, out_dir=out, **overrides)
        trainer.extra["cli"] = {k: v for k, v in cfg.items() if k not in ("out",)}
        start = f"resuming at epoch {trainer.epoch}, step {trainer.step}"
    else:
        config = TrainConfig(
            epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], beta=cfg["beta"],
            warmup=cfg["warmup"], warmup_unit=cfg["warmup_unit"], free_bits=cfg["free_bits"],
            seed=cfg["seed"], device=cfg["device"], amp=cfg["amp"], compile=cfg["compile"],
            loss_impl=cfg["loss_impl"], binarize=cfg["binarize"], max_steps=cfg["max_steps"],
            eval_batch_size=cfg["eval_batch_size"], eval_samples=cfg["eval_samples"],
            log_every=cfg["log_every"], progress=cfg["progress"], checkpoint_every=cfg["checkpoint_every"],
        )
        seed_everything(cfg["seed"])  # the weights' initialisation
        model = _build_model(cfg, data.image_shape, data.input_dim)
        extra = {"cli": {k: v for k, v in cfg.items() if k != "out"}}
        trainer = Trainer(model, train_x, test_x, config, out_dir=out, extra=extra)
        start = "training"
    main_rank = trainer.dist.is_main
    say: Callable[..., None] = print if main_rank else (lambda *a, **k: None)
    say(f"fastvae: {start} on {data.name} ({data.train.shape[0]} train / {data.test.shape[0]} test, "
        f"image {tuple(data.image_shape)}), {trainer.dist.world_size} process(es) on {trainer.device}")
    try:
        summary = trainer.fit()
    except KeyboardInterrupt:
        trainer.close(barrier=False)
        ckpt_path = out / CHECKPOINT_NAME
        say(f"\ninterrupted at step {trainer.step}; checkpoint: {ckpt_path}\n"
            f"continue with: fastvae train --resume {ckpt_path}", file=sys.stderr)
        return 130
    except BaseException:
        trainer.close(barrier=False)
        raise
    if main_rank:
        _report(trainer, summary, data, cfg, out)
    trainer.close()  # the other ranks wait here while rank 0 draws
    return 0


def _report(trainer, summary: Dict[str, Any], data, cfg: Dict[str, Any], out: Path) -> None:
    """Print the results of a training run and write its pictures (rank 0)."""
    import torch

    from .training import CHECKPOINT_NAME, METRICS_NAME

    parts = [f"epoch {summary['epoch']}", f"step {summary['step']}"]
    if "test_elbo" in summary:
        parts.append(f"test ELBO {summary['test_elbo']:.3f} nats")
    if "test_log_likelihood" in summary:
        parts.append(f"test log p(x) ~ {summary['test_log_likelihood']:.3f} nats (K={cfg['eval_samples']})")
    print("done: " + ", ".join(parts) + f" in {summary['time']:.1f} s")
    written = [out / CHECKPOINT_NAME, out / METRICS_NAME]
    if cfg["plots"]:
        trainer.model.eval()
        with torch.no_grad():
            written += _write_pictures(trainer.model, data, cfg, out / METRICS_NAME, out)
    for path in written:
        print(f"wrote {path}")


def cmd_sample(args: argparse.Namespace) -> int:
    """`fastvae sample`: a PNG grid of samples from a checkpoint."""
    from . import plots
    from .training import load_model

    _need_int(args.num, "--num", 1, ">= 1")
    if args.nrow is not None:
        _need_int(args.nrow, "--nrow", 1, ">= 1")
    _check_seed(args.seed)
    _check_device(args.device)
    if args.out is not None and Path(args.out).is_dir():
        raise CLIError(f"--out {args.out} is a directory; it must name the PNG file to write")
    model, _ = load_model(args.checkpoint, args.device)
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent) / "samples.png"
    path = plots.save_samples(model, out, n=args.num, seed=args.seed, mean=not args.draw, nrow=args.nrow)
    print(f"wrote {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """`fastvae eval`: test ELBO and importance-sampled log-likelihood of a checkpoint."""
    import torch

    from .training import eval_data, load_model, resolve_device

    _need_int(args.num_samples, "--num-samples", 1, ">= 1")
    _need_int(args.batch_size, "--batch-size", 1, ">= 1")
    if args.max_examples is not None:
        _need_int(args.max_examples, "--max-examples", 1, ">= 1")
    _check_seed(args.seed)
    if args.data is not None:
        _check_train_flags({"data": args.data})
    _check_device(args.device)
    device = resolve_device(args.device)
    model, state = load_model(args.checkpoint, device)
    saved = state["extra"].get("cli")
    trained = {**TRAIN_DEFAULTS, **(saved if isinstance(saved, dict) else {})}
    name = args.data or trained["data"]
    data_dir = args.data_dir if args.data else (args.data_dir or trained["data_dir"])
    data = _load_data(name, data_dir, args.npz_key or trained["npz_key"])
    tcfg = state["train_config"]
    test = eval_data(data.test, tcfg.get("binarize"), tcfg.get("seed", 0))
    if args.max_examples is not None:
        test = test[:args.max_examples]
    test = _shaped(test, model.config.get("arch") or "mlp", data.image_shape)

    chunks = test.split(args.batch_size)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"eval (K={args.num_samples})", unit="chunk")
    torch.manual_seed(args.seed)
    elbo_sum, ll_sum = 0.0, 0.0
    with torch.no_grad():
        for chunk in chunks:
            chunk = chunk.to(device)
            elbo_sum += model.elbo(chunk).double().sum().item()
            ll_sum += model.log_likelihood(chunk, num_samples=args.num_samples).double().sum().item()
    n = test.shape[0]
    result = {"checkpoint": str(args.checkpoint), "data": str(name), "examples": n,
              "test_elbo": elbo_sum / n, "test_log_likelihood": ll_sum / n, "num_samples": args.num_samples}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"test examples:           {n} ({name})")
        print(f"test ELBO:               {result['test_elbo']:.4f} nats")
        print(f"test log p(x) (K={args.num_samples}): {result['test_log_likelihood']:.4f} nats")
    return 0


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
