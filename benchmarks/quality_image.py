"""Quality check of issue 19: the conv VAE with a DMoL decoder trained with the fused loss against
the same model trained with the PixelCNN++ / NVAE eager loss (benchmarks/dmol_eager.py).

Both variants build the same model from the same seed (`build_conv_vae`, the CLI's defaults:
channels 32,64, 20 latents, ReLU) and train through `fastvae.training.Trainer` on the same
batches with the same noise (Adam, one-sample ELBO); they differ in log p(x|z) alone:

- "fused": what ``fastvae train`` runs, the exact fused op;
- "eager": the baseline formula, plugged in by `EagerBaselineVAE`, a VAE whose training-mode
  `loss` takes log p(x|z) from `eager_dmol_log_likelihood` (evaluation mode is the library's).

Both are then scored the same way, exactly: the test ELBO and the importance-sampled log p(x)
of `fastvae.training.evaluate` (what ``fastvae eval`` runs: the fused op), in bits/dim,
nats / (D ln 2). Beside them, with the same K samples of z per image, the estimate the
baseline's own formula gives (density at the bin centre below 1e-5) and its paired difference.

    python benchmarks/quality_image.py --data photos --variant fused --seed 0 --epochs 30
    python benchmarks/quality_image.py --data mnist --variant eager --seed 1 --train-size 4000
    python benchmarks/quality_image.py --table          # the Markdown table of the results

Data: "photos" is the 1550 / 350 3x32x32 patches of scikit-learn's two photographs; "mnist" the
8-bit grey levels of ``--data mnist`` (on this project's machines the t10k split: images
0-7999 train, 8000-9999 test; ``--train-size`` / ``--test-size`` keep the first N of each).
Each run writes ``OUT/<data>-<variant>-seed<seed>.json`` and, with ``--samples``,
``OUT/<data>-<variant>-samples.png``. Run it with ``--threads 1`` beside other work.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "benchmarks"))

from dmol_eager import eager_dmol_log_likelihood  # noqa: E402
from fastvae import functional as F  # noqa: E402
from fastvae.vae import VAE  # noqa: E402
from fastvae.vae.image_likelihoods import levels  # noqa: E402
from fastvae.vae.objectives import reduce  # noqa: E402

DATASETS = ("photos", "mnist")
VARIANTS = ("fused", "eager")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "quality-image"


def baseline_input(x: torch.Tensor, image_shape: Sequence[int], bits: int) -> torch.Tensor:
    """The eager baseline's input: images in [0, 1] (B, D) or (B, C, H, W) as the bin centres
    2 v / (2^bits - 1) - 1 in [-1, 1] of their levels v, shaped (B, C, H, W)."""
    v = levels(x.reshape(x.shape[0], -1), bits).view(x.shape[0], *image_shape)
    return v.float() * (2.0 / (2**bits - 1)) - 1.0


def bits_per_dim(log_px: float, dims: int) -> float:
    """A mean log-likelihood (nats per image) as the negative bits per subpixel, -log p / (D ln 2)."""
    if dims < 1:
        raise ValueError(f"dims must be >= 1, got {dims}")
    return -log_px / (dims * math.log(2))


class EagerBaselineVAE(VAE):
    """A DMoL `VAE` whose training-mode `loss` is the eager baseline's negative ELBO: the same
    encoder pass, fused reparameterisation and KL as `VAE.loss`, log p(x|z) from
    `eager_dmol_log_likelihood`. In evaluation mode everything is `VAE`'s (exact)."""

    def loss(self, x: torch.Tensor, beta: Optional[float] = None, free_bits: float = 0.0,  # type: ignore[override]
             reduction: str = "mean", impl: str = "fused", objective: str = "elbo", num_samples: int = 1,
             gradient: str = "reparam") -> torch.Tensor:
        """`VAE.loss`; in training mode the baseline's one-sample ELBO (plain ELBO settings only)."""
        if not self.training:
            return super().loss(x, beta, free_bits, reduction, impl, objective, num_samples, gradient)
        plain = (free_bits, impl, objective, num_samples, gradient) == (0.0, "fused", "elbo", 1, "reparam")
        if not plain:
            raise ValueError("EagerBaselineVAE trains the plain one-sample ELBO only (free_bits=0, impl='fused', "
                             "objective='elbo', num_samples=1, gradient='reparam')")
        out = self(x)
        xb = baseline_input(x, self.data_shape, self.bits)
        log_px = eager_dmol_log_likelihood(out.recon, xb, self.num_mixtures, self.bits)
        loss = -log_px + (self.beta if beta is None else beta) * out.kl
        return reduce(loss, reduction)


def eager_baseline(model: VAE) -> EagerBaselineVAE:
    """``model``'s networks (the same modules, so the same weights) in an `EagerBaselineVAE`."""
    if model.likelihood != "dmol":
        raise ValueError(f"model must have likelihood='dmol', got {model.likelihood!r}")
    cfg = model.config
    vae = EagerBaselineVAE(model.encoder, model.decoder, model.latent_dim, likelihood="dmol", data_shape=model.data_shape,
                           beta=model.beta, num_mixtures=model.num_mixtures, bits=model.bits)
    vae._arch = {k: cfg[k] for k in ("arch", "image_shape", "channels", "activation")}  # for build_vae
    return vae


@torch.no_grad()
def paired_log_likelihood(model: VAE, x: torch.Tensor, num_samples: int, seed: int,
                          rows: int = 200) -> Tuple[torch.Tensor, torch.Tensor]:
    """Importance-sampled log p(x) per image (N,) under the exact op and under the baseline's
    formula, from the same K = ``num_samples`` draws z_k ~ q(z|x) of each image (about ``rows``
    decoder rows at a time: the eager formula keeps ~25 tensors of the decoder output's size)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    exact: List[torch.Tensor] = []
    baseline: List[torch.Tensor] = []
    try:
        for chunk in x.split(max(1, rows // num_samples)):
            mu, logvar = model.encode(chunk)
            eps = torch.randn(num_samples, *mu.shape, generator=gen, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * eps  # (K, B, Z)
            log_prior_ratio = F.standard_normal_log_density(z) - F.gaussian_log_density(z, mu, logvar)
            params = model.decode(z.reshape(-1, model.latent_dim))
            xs = chunk.reshape(1, chunk.shape[0], -1).expand(num_samples, -1, -1).reshape(params.shape[0], -1)
            v = levels(xs, model.bits).view(params.shape[0], *model.data_shape)
            ll_exact = F.discretized_mix_logistic_log_likelihood(params, v, model.num_mixtures, bits=model.bits)
            ll_base = eager_dmol_log_likelihood(params, baseline_input(xs, model.data_shape, model.bits),
                                                model.num_mixtures, model.bits)
            for out, ll in ((exact, ll_exact), (baseline, ll_base)):
                log_w = ll.view(num_samples, -1).double() + log_prior_ratio.double()
                out.append(torch.logsumexp(log_w, dim=0) - math.log(num_samples))
    finally:
        model.train(was_training)
    return torch.cat(exact), torch.cat(baseline)


def load(name: str, train_size: Optional[int], test_size: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """(train, test) images (N, C, H, W) in [0, 1], the first ``*_size`` of each split, and a description."""
    from fastvae.vae.data import load_dataset

    data = load_dataset(name)
    train = data.train.reshape(-1, *data.image_shape)[:train_size]
    test = data.test.reshape(-1, *data.image_shape)[:test_size]
    where = "scikit-learn's sample photographs" if name == "photos" else "MNIST t10k 0-7999 / 8000-9999"
    return train, test, f"{name}: {len(train)} train / {len(test)} test of {tuple(data.image_shape)} ({where})"


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Train one variant, score it, write its JSON (and samples); returns the result."""
    from fastvae.bench.report import environment
    from fastvae.training import TrainConfig, Trainer, evaluate, seed_everything
    from fastvae.vae import build_conv_vae
    from fastvae.vae import plots

    train, test, described = load(args.data, args.train_size, args.test_size)
    shape, dims = tuple(train.shape[1:]), math.prod(train.shape[1:])
    seed_everything(args.seed)  # the weights, as `fastvae train` does
    model = build_conv_vae(shape, channels=args.channels, latent_dim=args.latent_dim, likelihood="dmol",
                           num_mixtures=args.num_mixtures, bits=8)
    if args.variant == "eager":
        model = eager_baseline(model)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device="cpu",
                         binarize=None, eval_samples=0, progress=False, checkpoint_every=0)
    t0 = time.perf_counter()
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix=f"fastvae-quality-{args.data}-{args.variant}-"))
    summary = Trainer(model, train, None, config, out_dir=run_dir).fit()
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = evaluate(model, test, 10, torch.device("cpu"), args.seed + 7, num_samples=args.num_samples)
    exact, base = paired_log_likelihood(model, test, args.paired_samples, args.seed + 11)
    eval_s = time.perf_counter() - t1
    diff = (base - exact).double()
    result = {
        "data": args.data, "variant": args.variant, "seed": args.seed, "sizes": described, "dims": dims,
        "model": model.config, "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": args.epochs, "steps": summary.get("step"), "batch_size": args.batch_size, "lr": args.lr,
        "num_samples": args.num_samples, "paired_samples": args.paired_samples,
        "test_elbo_nats": scores["elbo"], "test_log_likelihood_nats": scores["log_likelihood"],
        "test_log_likelihood_se": scores["log_likelihood_se"],
        "bits_per_dim_elbo": bits_per_dim(scores["elbo"], dims),
        "bits_per_dim": bits_per_dim(scores["log_likelihood"], dims),
        "paired_bits_per_dim_exact": bits_per_dim(exact.mean().item(), dims),
        "paired_bits_per_dim_baseline_formula": bits_per_dim(base.mean().item(), dims),
        "baseline_formula_minus_exact_nats": diff.mean().item(),
        "baseline_formula_minus_exact_nats_max": diff.max().item(),
        "run_dir": str(run_dir), "train_seconds": train_s, "eval_seconds": eval_s, "threads": torch.get_num_threads(),
    }
    env = environment(torch.device("cpu"))
    result.update(device=f"cpu ({env['device']})", torch=env["torch"], commit=env["fastvae_commit"],
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), environment=env)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.data}-{args.variant}-seed{args.seed}.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.samples:
        plots.save_samples(model, args.out / f"{args.data}-{args.variant}-samples.png", n=64, seed=args.seed)
    return result


def table(results: Sequence[Dict[str, Any]]) -> str:
    """Markdown table: one row per data set and variant, the seeds' bits/dim side by side."""
    rows = ["| data | loss in training | test bits/dim, IS (per seed) | mean ± sd | ELBO bits/dim (per seed) | "
            "baseline formula's bits/dim (per seed) | train s (per seed) |", "|---|---|---|---|---|---|---|"]
    groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["data"], r["variant"]), []).append(r)
    for (data, variant), runs in sorted(groups.items(), key=lambda kv: (DATASETS.index(kv[0][0]),
                                                                         VARIANTS.index(kv[0][1]))):
        runs = sorted(runs, key=lambda r: r["seed"])

        def col(key: str, fmt: str = "{:.4f}") -> str:
            return " / ".join(fmt.format(r[key]) for r in runs)

        name = "fused (exact)" if variant == "fused" else "eager baseline"
        bpd = [r["bits_per_dim"] for r in runs]
        spread = f"{statistics.mean(bpd):.4f} ± {statistics.stdev(bpd):.4f}" if len(bpd) > 1 else "-"
        rows.append(f"| {data} | {name} | {col('bits_per_dim')} | {spread} | {col('bits_per_dim_elbo')} | "
                    f"{col('paired_bits_per_dim_baseline_formula')} | {col('train_seconds', '{:.0f}')} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=DATASETS, default="photos")
    p.add_argument("--variant", choices=VARIANTS, default="fused")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-mixtures", type=int, default=10)
    p.add_argument("--channels", type=lambda s: [int(c) for c in s.split(",")], default=[32, 64])
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--train-size", type=int, default=None, help="first N training images (default: all)")
    p.add_argument("--test-size", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("-k", "--num-samples", type=int, default=50, help="importance samples per test image")
    p.add_argument("--paired-samples", type=int, default=20,
                   help="importance samples per test image for the exact-vs-baseline-formula pair")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--samples", action="store_true", help="also write OUT/<data>-<variant>-samples.png")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--run-dir", type=Path, default=None,
                   help="where the Trainer writes checkpoint.pt and metrics.jsonl (default: a temporary directory)")
    p.add_argument("--table", action="store_true", help="print the Markdown table of OUT/*.json and exit")
    args = p.parse_args()
    if args.table:
        print(table([json.loads(f.read_text()) for f in sorted(args.out.glob("*.json"))]))
        return
    torch.set_num_threads(args.threads)
    print(json.dumps(run(args), indent=1), flush=True)


if __name__ == "__main__":
    main()
