"""``fastvae train``: flags from the option dataclasses, a fresh run or ``--resume``, the report.

Every flag is a field of `TrainConfig`, `DataOptions`, `ModelOptions` or `OutputOptions`: its
default, help, check and whether ``--resume`` may change it are declared there once.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

from ..training.config import TrainConfig
from .checks import CLIError, check_device
from .flags import add_flags, check_values, defaults, fields_of, flag_name
from .options import (DISCRETE_LIKELIHOODS, HIERARCHICAL_ARCHS, DataOptions, ModelOptions, OutputOptions, csv_ints,
                      level_widths)
from .recipes import RECIPES, recipe_settings

__all__ = ["add_train_args", "cmd_train", "TRAIN_FIELDS"]

_CLASSES = (DataOptions, TrainConfig, ModelOptions, OutputOptions)
#: Every ``fastvae train`` setting, name -> its dataclass field.
TRAIN_FIELDS = fields_of(*_CLASSES)
# argparse validates binarize's choices; "none" and "auto" are its command-line spellings.
_SKIP_CHECK = ["binarize"]
_ENVIRONMENT = ("device", "amp", "loss_impl")  # checked against this machine, not only their form


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``fastvae train``, grouped as its help shows them."""
    p.add_argument("--recipe", default=None, choices=tuple(RECIPES),
                   help="a named preset of data, model, objective and schedule (" + "; ".join(
                       f"{name}: {r['arch']} {r['hidden']}, {r['objective']} K={r['num_samples']} {r['gradient']}"
                       for name, r in RECIPES.items())
                   + "); flags given with it override its settings")
    add_flags(p, DataOptions, ("data", "data_dir", "npz_key"))
    add_flags(p.add_argument_group("optimisation"), TrainConfig,
              ("epochs", "batch_size", "lr", "lr_schedule", "lr_final", "max_steps", "time_budget", "seed",
               "output_bias", "ema_decay"))
    add_flags(p.add_argument_group("model"), ModelOptions,
              ("arch", "levels", "hidden", "channels", "activation", "latent_dim", "likelihood", "num_mixtures",
               "bits", "obs_var", "obs_logvar"))
    add_flags(p.add_argument_group("objective"), TrainConfig,
              ("objective", "num_samples", "gradient", "binarize", "beta", "warmup", "warmup_unit", "free_bits",
               "loss_impl"))
    r = p.add_argument_group("run")
    add_flags(r, TrainConfig, ("device", "amp", "compile"))
    add_flags(r, OutputOptions, ("out",))
    r.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="continue the run saved in CHECKPOINT (a file or a directory; without a value: "
                        "--out's checkpoint); data, model and objective come from the checkpoint and "
                        "only " + ", ".join(flag_name(n) for n in _resumable()) + " may change")
    add_flags(r, TrainConfig, ("eval_samples", "ll_every", "eval_batch_size", "log_every", "checkpoint_every",
                               "progress"))
    add_flags(r, OutputOptions, ("plots", "num_images"))


def _resumable() -> List[str]:
    return [n for n, f in TRAIN_FIELDS.items() if f.metadata["resume"]]


def check_train_flags(cfg: Dict[str, Any]) -> None:
    """Every setting present in ``cfg``, before any data is loaded or model built: each field's
    own check, then the rules that join fields or ask this machine."""
    check_values(cfg, TRAIN_FIELDS, skip=_SKIP_CHECK)
    likelihood = cfg.get("likelihood")
    if likelihood not in (None, "gaussian") and cfg.get("obs_var") not in (None, "fixed"):
        raise CLIError(f"--obs-var {cfg['obs_var']} needs --likelihood gaussian (a {likelihood} likelihood has no "
                       f"variance)")
    if likelihood not in (None, "bernoulli", "gaussian") and cfg.get("arch", "mlp") in HIERARCHICAL_ARCHS:
        raise CLIError(f"--likelihood {likelihood} needs --arch mlp or conv (the hierarchical VAE's loss is the "
                       f"whole-ELBO op: bernoulli or gaussian)")
    if cfg.get("levels") not in (None, "auto") and cfg.get("arch", "mlp") not in HIERARCHICAL_ARCHS:
        raise CLIError(f"--levels needs --arch {' or '.join(HIERARCHICAL_ARCHS)}")
    if "/" in str(cfg.get("hidden", "")) and cfg.get("arch", "mlp") not in HIERARCHICAL_ARCHS:
        raise CLIError(f"--hidden {cfg['hidden']} gives widths per stochastic layer ('/'); that needs --arch "
                       f"{' or '.join(HIERARCHICAL_ARCHS)}")
    if cfg.get("device") is not None:
        check_device(cfg["device"], kernels=cfg.get("loss_impl", "fused") == "fused")
    if cfg.get("amp"):
        import torch

        device = cfg.get("device") or "auto"
        on_cuda = torch.cuda.is_available() if device == "auto" else str(device).startswith("cuda")
        if not on_cuda:
            raise CLIError(f"--amp (bf16 autocast) needs a CUDA device; --device is {device}"
                           + (" and this machine has no CUDA" if device == "auto" else ""))
    if cfg.get("out") is not None and Path(cfg["out"]).exists() and not Path(cfg["out"]).is_dir():
        raise CLIError(f"--out {cfg['out']} is a file; it must be a directory")


def _resolve_auto(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The command line's "auto" defaults, which depend on the data set and the likelihood."""
    digits = cfg["data"] == "digits"
    if cfg["epochs"] == "auto":
        cfg["epochs"] = 50 if digits else 10
    if cfg["levels"] == "auto":
        cfg["levels"] = 2 if cfg["arch"] in HIERARCHICAL_ARCHS else None
    if cfg["latent_dim"] == "auto":
        cfg["latent_dim"] = 2 if digits else 20
    if cfg["binarize"] == "auto":
        # Binarised MNIST is 0/1 already (a dynamic draw of it would only cost time).
        dynamic = cfg["likelihood"] == "bernoulli" and cfg["data"] != "binarized-mnist"
        cfg["binarize"] = "dynamic" if dynamic else None
    elif cfg["binarize"] == "none":
        cfg["binarize"] = None
    return cfg


def _resumed_config(args: argparse.Namespace, given: Dict[str, Any]):
    """(settings, checkpoint path) of ``--resume``: the checkpoint's flags with the run flags given."""
    from ..training import CheckpointError, load_checkpoint

    if not args.resume and "out" not in given:
        raise CLIError("--resume without a value needs --out (the directory holding checkpoint.pt)")
    ckpt = Path(args.resume) if args.resume else Path(given["out"])
    fixed = [k for k in given if not TRAIN_FIELDS[k].metadata["resume"]]
    if fixed:
        raise CLIError("cannot change " + ", ".join(flag_name(k) for k in fixed)
                       + " when resuming: the checkpoint fixes them")
    saved = load_checkpoint(ckpt)["extra"].get("cli")
    if not isinstance(saved, dict):
        raise CLIError(f"{ckpt} was not written by `fastvae train`; continue it from Python "
                       "with fastvae.training.Trainer.from_checkpoint")
    cfg = {**defaults(*_CLASSES), **saved, **given}
    if "out" not in given:
        cfg["out"] = str(ckpt if ckpt.is_dir() else ckpt.parent)
    try:
        check_train_flags({k: v for k, v in cfg.items() if k not in given and k not in _ENVIRONMENT})
    except ValueError as err:
        raise CheckpointError(ckpt, f"its saved training flags: {err}") from err
    try:  # the saved device may be one this machine lacks: a run flag, not damage
        check_train_flags({k: cfg[k] for k in _ENVIRONMENT})
    except CLIError as err:
        hint = "" if "device" in given else " (saved in the checkpoint; choose another with --device)"
        raise CLIError(f"{err}{hint}") from err
    return cfg, ckpt


def _shaped(x, arch: str, image_shape):
    # Conv nets take (N, C, H, W); MLPs flatten whatever they get.
    return x.reshape(x.shape[0], *image_shape) if arch == "conv" else x


def _build_model(cfg: Dict[str, Any], image_shape, input_dim: int):
    from ..vae import build_conv_vae, build_mlp_vae

    common = dict(latent_dim=cfg["latent_dim"], likelihood=cfg["likelihood"], activation=cfg["activation"],
                  obs_var=cfg["obs_var"], obs_logvar=cfg["obs_logvar"], beta=cfg["beta"])
    if cfg["likelihood"] not in ("bernoulli", "gaussian"):
        common.update(num_mixtures=cfg.get("num_mixtures", 10), bits=cfg.get("bits", 8))
    if cfg["arch"] in HIERARCHICAL_ARCHS:
        return _build_hierarchical(cfg, image_shape, input_dim, common)
    if cfg["arch"] == "conv":
        if len(image_shape) != 3:
            raise ValueError(f"--arch conv needs (C, H, W) images; this data set has shape {image_shape}")
        return build_conv_vae(image_shape=image_shape, channels=csv_ints(cfg["channels"], "--channels"), **common)
    return build_mlp_vae(input_dim=input_dim, hidden=csv_ints(cfg["hidden"], "--hidden"), data_shape=image_shape,
                         **common)


def _build_hierarchical(cfg: Dict[str, Any], image_shape, input_dim: int, common: Dict[str, Any]):
    from ..vae.hierarchical_builders import build_hierarchical_vae, halved_levels

    groups = level_widths(cfg["hidden"], "--hidden")
    latent_dims, hidden = halved_levels(cfg["levels"], groups[0], common.pop("latent_dim"))
    if len(groups) > 1:  # widths given per layer; the latent dims still halve
        if len(groups) != cfg["levels"]:
            raise ValueError(f"--hidden {cfg['hidden']} has {len(groups)} groups of widths for --levels {cfg['levels']}")
        hidden = groups
    if cfg["arch"] == "hierarchical":
        return build_hierarchical_vae(input_dim=input_dim, latent_dims=latent_dims, hidden=hidden,
                                      data_shape=image_shape, **common)
    if len(image_shape) != 3:
        raise ValueError(f"--arch hierarchical-conv needs (C, H, W) images; this data set has shape {image_shape}")
    return build_hierarchical_vae(latent_dims=latent_dims, hidden=hidden, image_shape=image_shape,
                                  channels=csv_ints(cfg["channels"], "--channels"), **common)


def cmd_train(args: argparse.Namespace) -> int:
    """`fastvae train`: fresh run or --resume; returns the exit status."""
    from ..training import CHECKPOINT_NAME, Trainer, seed_everything
    from ..vae.data import load_dataset

    given = {k: v for k, v in vars(args).items() if k in TRAIN_FIELDS and v is not None}
    check_train_flags(given)  # the flags as given, before any file is read
    recipe = recipe_settings(args.recipe) if getattr(args, "recipe", None) else {}
    if args.resume is not None:
        if recipe:
            raise CLIError("--recipe starts a run; a resumed run takes its settings from the checkpoint")
        cfg, ckpt = _resumed_config(args, given)
    else:
        cfg = _resolve_auto({**defaults(*_CLASSES), **recipe, **given})
        check_train_flags(cfg)
    if cfg["out"] is None:
        cfg["out"] = str(Path("runs") / Path(str(cfg["data"])).stem)
    out = Path(cfg["out"])

    data = load_dataset(cfg["data"], data_dir=cfg["data_dir"], key=cfg["npz_key"])
    train_x = _shaped(data.train, cfg["arch"], data.image_shape)
    test_x = _shaped(data.test, cfg["arch"], data.image_shape)
    saved = {k: v for k, v in cfg.items() if k != "out"}
    if args.resume is not None:
        overrides = {k: cfg[k] for k in _resumable() if k in fields_of(TrainConfig)}
        trainer = Trainer.from_checkpoint(ckpt, train_x, test_x, out_dir=out, **overrides)
        trainer.extra["cli"] = saved
        start = f"resuming at epoch {trainer.epoch}, step {trainer.step}"
    else:
        config = TrainConfig(**{k: cfg[k] for k in fields_of(TrainConfig)})
        seed_everything(cfg["seed"])  # the weights' initialisation
        model = _build_model(cfg, data.image_shape, data.input_dim)
        trainer = Trainer(model, train_x, test_x, config, out_dir=out, extra={"cli": saved})
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

    from ..training import CHECKPOINT_NAME, METRICS_NAME, eval_data
    from ..vae import plots

    parts = [f"epoch {summary['epoch']}", f"step {summary['step']}"]
    if "test_elbo" in summary:
        parts.append(f"test ELBO {summary['test_elbo']:.3f} nats")
    if "test_log_likelihood" in summary:
        parts.append(f"test log p(x) ~ {summary['test_log_likelihood']:.3f} nats (K={cfg['eval_samples']})")
    if cfg["likelihood"] in DISCRETE_LIKELIHOODS:  # image papers' unit: nats / (D ln 2)
        value = summary.get("test_log_likelihood", summary.get("test_elbo"))
        if value is not None:
            parts.append(f"{-value / (data.input_dim * math.log(2)):.4f} bits/dim")
    print("done: " + ", ".join(parts) + f" in {summary['time']:.1f} s")
    written = [out / CHECKPOINT_NAME, out / METRICS_NAME]
    if cfg["plots"]:
        model, metrics = trainer.model, out / METRICS_NAME
        model.eval()
        test = eval_data(_shaped(data.test, cfg["arch"], data.image_shape), cfg["binarize"], cfg["seed"])
        with torch.no_grad(), trainer.evaluation_weights():
            written += [plots.save_samples(model, out / "samples.png", n=cfg["num_images"], seed=cfg["seed"]),
                        plots.save_reconstructions(model, test, out / "reconstructions.png")]
            if metrics.is_file() and metrics.stat().st_size:
                written.append(plots.save_training_curve(metrics, out / "curve.png"))
            if model.latent_dim == 2:
                written.append(plots.save_latent_scatter(model, test, data.test_labels, out / "latents.png"))
    for path in written:
        print(f"wrote {path}")
