"""Quality check of issue 20: a 2-level hierarchical VAE against the 1-level IWAE-paper VAE.

Both models train on the 50 000 Larochelle binarised-MNIST training images (or, with
``--data mnist-t10k``, on 8 000 grey-level MNIST images binarised once or at every batch) for the same number
of epochs with the same objective (the single-sample ELBO unless ``--objective`` / ``--train-samples``
say otherwise) and Adam (same batch size, learning rate, schedule and seed), then the
validation NLL, -log p(x), is estimated by importance sampling with K samples per image on a
fixed subset of the validation split (the first ``--valid`` images; all 10 000 with 10000).
Both start with the decoder's output bias at the training data's marginal logits
(``--output-bias marginal``, the default; ``zero`` keeps PyTorch's initialisation).

    python benchmarks/quality_hierarchical.py --model hierarchical --epochs 10 --out DIR
    python benchmarks/quality_hierarchical.py --model flat --epochs 10 --out DIR

Models (Burda et al. 2016, tanh): "hierarchical" is 784-100-100 -> z_1 (100) -> 50-50 -> z_2 (50)
(`build_hierarchical_vae()`; ``--hidden 200,200/50,50 --latent-dims 50,25`` gives it the flat model's
bottom layer), "flat" is 784-200-200 -> z (50) (`build_mlp_vae`). Each run writes
``DIR/<model>.json`` (the Trainer's checkpoint and metrics go to ``--run-dir``); run it with
``--threads 1`` beside other work. ``--eval-only`` re-evaluates the checkpoint in ``--run-dir``.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "binarized-mnist"


def load_split(data_dir: Path, split: str) -> torch.Tensor:
    """One split of the .amat files (plain or gzipped) as a float32 (N, 784) tensor of 0/1."""
    from fastvae.vae.amat import find_amat, read_amat

    path = find_amat(data_dir, split)
    if path is None:
        raise FileNotFoundError(f"no binarized_mnist_{split}.amat(.gz) in {data_dir}")
    return read_amat(path)


def load_data(args) -> "tuple[torch.Tensor, torch.Tensor, str | None, str]":
    """(train, valid, the trainer's binarize mode, a description) for ``--data``.

    mnist-t10k: the 10 000 grey-level MNIST test images split as ../shared/data/README says
    (0-7999 train, 8000-9999 valid). The valid images are one Bernoulli draw of their grey
    levels (a fixed seed, the same for every run); the training images are either one such draw
    kept for every epoch ("fixed", a static binarisation like Larochelle's) or redrawn at every
    batch ("dynamic", the binarisation behind the IWAE paper's Table 1).
    """
    if args.data == "binarized-mnist":
        return (load_split(args.data_dir, "train"), load_split(args.data_dir, "valid")[: args.valid], None,
                "binarized-mnist (Larochelle), 50000 train")
    from fastvae.vae.data import binarize, default_mnist_dir, load_idx

    grey, _ = load_idx(args.mnist_dir or default_mnist_dir(), "t10k")
    valid = binarize(grey[8000:], "dynamic", torch.Generator().manual_seed(20_000))[: args.valid]
    what = f"mnist-t10k grey 0-7999 train ({args.train_binarization} Bernoulli binarisation), 8000-9999 valid (one draw)"
    if args.train_binarization == "dynamic":
        return grey[:8000], valid, "dynamic", what
    return binarize(grey[:8000], "dynamic", torch.Generator().manual_seed(10_000)), valid, None, what


def parse_layers(hidden: str | None, latent_dims: str | None) -> dict:
    """build_hierarchical_vae's widths from "200,200/50,50" and "50,25" (None: its defaults)."""
    from fastvae.cli.options import csv_ints, level_widths  # the command line's parsers of the same forms

    kwargs = {}
    if hidden:
        kwargs["hidden"] = [tuple(group) for group in level_widths(hidden, "--hidden")]
    if latent_dims:
        kwargs["latent_dims"] = tuple(csv_ints(latent_dims, "--latent-dims"))
    return kwargs


def build(model: str, layers: dict | None = None):
    from fastvae.vae import build_hierarchical_vae, build_mlp_vae

    if model == "hierarchical":
        return build_hierarchical_vae(**(layers or {}))  # default: the IWAE paper's two-layer model
    return build_mlp_vae(784, hidden=(200, 200), latent_dim=50, activation="tanh")


def objective_name(objective: str, k: int, gradient: str = "reparam") -> str:
    """The training objective as the result files name it."""
    how = {"reparam": "reparameterised gradient", "dreg": "DReG gradient", "stl": "STL gradient"}[gradient]
    if objective == "iwae":
        return f"IWAE bound, K={k}, {how}"
    name = "single-sample ELBO" if k == 1 else f"ELBO averaged over K={k} samples"
    return name if gradient == "reparam" else f"{name}, {how}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("hierarchical", "flat"), required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--valid", type=int, default=10000, help="validation images scored (first N)")
    p.add_argument("-k", "--num-samples", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output-bias", choices=("marginal", "zero"), default="marginal",
                   help="decoder output bias at the start: the training data's marginal logits "
                        "(`fastvae.vae.init_output_bias`, both models) or PyTorch's default")
    p.add_argument("--warmup", type=int, default=0,
                   help="KL warm-up: beta ramps linearly from 0 to 1 over this many epochs (0: none)")
    p.add_argument("--objective", choices=("elbo", "iwae"), default="elbo",
                   help="training objective: the ELBO or the importance-weighted bound")
    p.add_argument("--gradient", choices=("reparam", "stl", "dreg"), default="reparam",
                   help="gradient estimator (stl with elbo, dreg with iwae)")
    p.add_argument("--train-samples", type=int, default=1, help="samples K per image in the training objective")
    p.add_argument("--lr-schedule", choices=("constant", "exponential", "cosine"), default="constant",
                   help="learning rate from --lr to --lr-final over the epochs (TrainConfig.lr_schedule)")
    p.add_argument("--lr-final", type=float, default=1e-4, help="last learning rate of a decaying schedule")
    p.add_argument("--free-bits", type=float, default=0.0, help="KL floor per latent dim, in nats (0: none)")
    p.add_argument("--hidden", default=None,
                   help='hierarchical: hidden widths per layer, bottom first, e.g. "200,200/50,50" '
                        "(default: the IWAE paper's 100,100/50,50)")
    p.add_argument("--latent-dims", default=None,
                   help='hierarchical: latent dims per layer, bottom first, e.g. "50,25" (default: 100,50)')
    p.add_argument("--tag", default="", help="suffix of the result file: DIR/<model><tag>.json")
    p.add_argument("--data", choices=("binarized-mnist", "mnist-t10k"), default="binarized-mnist",
                   help="Larochelle's static split, or the 10k grey MNIST test images (see load_data)")
    p.add_argument("--train-binarization", choices=("fixed", "dynamic"), default="fixed",
                   help="mnist-t10k: one Bernoulli draw of the training images, or a new draw per batch")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--mnist-dir", type=Path, default=None, help="mnist-t10k's folder (default: ../shared/data/mnist-t10k)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality-hierarchical")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="where the Trainer writes checkpoint.pt and metrics.jsonl (default: a temporary directory)")
    p.add_argument("--eval-only", action="store_true", help="score RUN_DIR/checkpoint.pt, no training")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from fastvae.training import Trainer, TrainConfig, evaluate, load_model

    if args.run_dir is None and args.eval_only:
        p.error("--eval-only needs --run-dir")
    if args.model == "flat" and (args.hidden or args.latent_dims):
        p.error("--hidden and --latent-dims shape the hierarchical model; the flat one is the IWAE paper's")
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix=f"fastvae-quality-{args.model}-"))
    train, valid, binarize_mode, data_name = load_data(args)
    t0 = time.perf_counter()
    if args.eval_only:
        model, state = load_model(run_dir / "checkpoint.pt")
        epochs, summary = state["epoch"], {"time": state["elapsed"]}
    else:
        torch.manual_seed(args.seed)
        model = build(args.model, parse_layers(args.hidden, args.latent_dims))
        if args.output_bias == "marginal":
            from fastvae.vae import init_output_bias
            init_output_bias(model, train)
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             device="cpu", binarize=binarize_mode, eval_samples=0, progress=False,
                             warmup=args.warmup, free_bits=args.free_bits, lr_schedule=args.lr_schedule,
                             lr_final=args.lr_final, objective=args.objective, num_samples=args.train_samples,
                             gradient=args.gradient)
        trainer = Trainer(model, train, None, config, out_dir=run_dir)
        summary = trainer.fit()
        epochs = trainer.epoch
    train_time = time.perf_counter() - t0
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {
        "model": args.model, "arch": model.config, "parameters": sum(q.numel() for q in model.parameters()),
        "epochs": epochs, "batch_size": args.batch_size, "lr": args.lr, "lr_schedule": args.lr_schedule,
        "lr_final": args.lr_final if args.lr_schedule != "constant" else None,
        "seed": args.seed, "output_bias": args.output_bias,
        "objective": objective_name(args.objective, args.train_samples, args.gradient), "warmup_epochs": args.warmup, "free_bits": args.free_bits,
        "data": data_name,
        "num_samples": args.num_samples, "train_seconds": summary.get("time"), "wall_train_seconds": train_time,
        "threads": args.threads, "run_dir": str(run_dir), "machine": platform.processor() or platform.machine(), "commit": commit,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    # Scored in blocks of 1000 images, the JSON rewritten after each: a run cut short still
    # leaves the mean over the first blocks (valid_examples says how many).
    t1, sums, done = time.perf_counter(), {"elbo": 0.0, "log_likelihood": 0.0}, 0
    for block in valid.split(1000):
        scores = evaluate(model, block, 10, torch.device("cpu"), args.seed + 7 + done, num_samples=args.num_samples)
        for name in sums:
            sums[name] += scores[name] * block.shape[0]
        done += block.shape[0]
        result.update(valid_examples=done, valid_elbo=sums["elbo"] / done, valid_nll=-sums["log_likelihood"] / done,
                      eval_seconds=time.perf_counter() - t1, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        (args.out / f"{args.model}{args.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result), flush=True)

if __name__ == "__main__":
    main()
