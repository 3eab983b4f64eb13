"""``fastvae sample`` and ``fastvae eval``: a trained checkpoint's pictures and numbers."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .._args import check_int
from ..training.options import seed_number
from .checks import CLIError, check_device
from .options import DATA_HELP, DISCRETE_LIKELIHOODS, DataOptions, data_name

__all__ = ["add_sample_args", "add_eval_args", "cmd_sample", "cmd_eval"]


def add_sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint file, or the directory holding checkpoint.pt")
    p.add_argument("--out", default=None, help="PNG to write (default: samples.png next to the checkpoint)")
    p.add_argument("-n", "--num", type=int, default=64, help="number of samples (default: 64)")
    p.add_argument("--nrow", type=int, default=None, help="images per row (default: about square)")
    p.add_argument("--draw", action="store_true",
                   help="draw x ~ p(x|z) instead of showing the decoder mean")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent draws (default: 0)")
    p.add_argument("--device", default="cpu", help="device to decode on (default: cpu)")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint file, or the directory holding checkpoint.pt")
    trained = " (default: the data set the checkpoint was trained on)"
    p.add_argument("--data", default=None, help=DATA_HELP + trained)
    p.add_argument("--data-dir", default=None,
                   help="directory of the MNIST IDX files (default: $FASTVAE_MNIST_DIR, else "
                        "../shared/data/mnist-t10k next to the repository), or base for a relative .npz path")
    p.add_argument("--npz-key", default=None, help="array name in the .npz file" + trained)
    p.add_argument("--num-samples", "-k", type=int, default=5000,
                   help="importance samples K per example for log p(x); cost grows linearly with K "
                        "(default: 5000)")
    p.add_argument("--max-examples", type=int, default=None,
                   help="evaluate only the first N test examples (default: all)")
    p.add_argument("--split", default=None,
                   help="held-out split to evaluate, e.g. 'valid' or 'test' for binarized-mnist (default: the "
                        "split the run was evaluated on during training: 'valid' there, 'test' elsewhere)")
    p.add_argument("--batch-size", type=int, default=100,
                   help="examples per log-likelihood chunk (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples (default: 0)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N' (default: auto)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress bar over test chunks (default: only on a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="never show the progress bar")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--last-weights", action="store_true",
                   help="score the last weights of a run trained with --ema-decay, not their moving average")


def cmd_sample(args: argparse.Namespace) -> int:
    """`fastvae sample`: a PNG grid of samples from a checkpoint."""
    from ..training import load_model
    from ..vae import plots

    check_int("--num", args.num, 1)
    if args.nrow is not None:
        check_int("--nrow", args.nrow, 1)
    seed_number("--seed", args.seed)
    check_device(args.device)
    if args.out is not None and Path(args.out).is_dir():
        raise CLIError(f"--out {args.out} is a directory; it must name the PNG file to write")
    model, _ = load_model(args.checkpoint, args.device)
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent) / "samples.png"
    path = plots.save_samples(model, out, n=args.num, seed=args.seed, mean=not args.draw, nrow=args.nrow)
    print(f"wrote {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """`fastvae eval`: test ELBO and importance-sampled log-likelihood of a checkpoint, through
    the trainer's chunked evaluation (`fastvae.training.evaluate`)."""
    from ..training import eval_data, evaluate, load_model, resolve_device
    from ..vae.data import load_dataset

    check_int("--num-samples", args.num_samples, 1)
    check_int("--batch-size", args.batch_size, 1)
    if args.max_examples is not None:
        check_int("--max-examples", args.max_examples, 1)
    seed_number("--seed", args.seed)
    if args.data is not None:
        data_name("--data", args.data)
    check_device(args.device)
    device = resolve_device(args.device)
    model, state = load_model(args.checkpoint, device, averaged=not args.last_weights)
    saved = state["extra"].get("cli")
    trained = {**vars(DataOptions()), **(saved if isinstance(saved, dict) else {})}
    name = args.data or trained["data"]
    data_dir = args.data_dir if args.data else (args.data_dir or trained["data_dir"])
    data = load_dataset(name, data_dir=data_dir, key=args.npz_key or trained["npz_key"])
    tcfg = state["train_config"]
    split = args.split or data.test_split
    test = eval_data(data.split(args.split), tcfg.get("binarize"), tcfg.get("seed", 0))
    if args.max_examples is not None:
        test = test[:args.max_examples]
    if (model.config.get("arch") or "mlp") == "conv":
        test = test.reshape(test.shape[0], *data.image_shape)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    # The bound the run trained (its objective and K; the gradient estimator does not change it).
    trained_bound = {"objective": tcfg.get("objective", "elbo"), "num_samples": tcfg.get("num_samples", 1)}
    means = evaluate(model, test, args.batch_size, device, args.seed, num_samples=args.num_samples,
                     progress=progress, desc=f"eval (K={args.num_samples})", bound=trained_bound)
    n = test.shape[0]
    result = {"checkpoint": str(args.checkpoint), "data": str(name), "split": split, "examples": n,
              "test_elbo": means["elbo"], "test_log_likelihood": means["log_likelihood"],
              "test_log_likelihood_se": means["log_likelihood_se"], "nll": -means["log_likelihood"],
              "num_samples": args.num_samples, "test_bound": means["bound"],
              "bound_objective": trained_bound["objective"], "bound_num_samples": trained_bound["num_samples"],
              "weights": "moving average" if state.get("ema_state") is not None and not args.last_weights else "last"}
    if model.likelihood in DISCRETE_LIKELIHOODS:  # image papers' unit: nats / (D ln 2)
        per_dim = math.log(2) * data.input_dim
        result.update(test_bits_per_dim=-means["log_likelihood"] / per_dim, elbo_bits_per_dim=-means["elbo"] / per_dim)
    if args.json:
        print(json.dumps(result))
    else:
        bound_name = f"{trained_bound['objective'].upper()} bound (K={trained_bound['num_samples']}, trained)"
        print(f"{split} examples: {n} ({name}), the {result['weights']} weights")
        print(f"{split} ELBO: {result['test_elbo']:.4f} nats")
        print(f"{split} {bound_name}: {result['test_bound']:.4f} nats")
        print(f"{split} log p(x) (K={args.num_samples}): {result['test_log_likelihood']:.4f} nats "
              f"+- {result['test_log_likelihood_se']:.4f} (standard error over examples)")
        print(f"{split} NLL (K={args.num_samples}): {result['nll']:.4f} +- {result['test_log_likelihood_se']:.4f} nats")
        if "test_bits_per_dim" in result:
            print(f"{split} bits/dim (K={args.num_samples}): {result['test_bits_per_dim']:.4f} "
                  f"(negative ELBO: {result['elbo_bits_per_dim']:.4f})")
    return 0
