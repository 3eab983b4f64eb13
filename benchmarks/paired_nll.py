"""Paired comparison of trained VAEs: importance-sampled NLL on the same images, and the standard
error of the per-image difference.

Two models scored on the same validation images share most of their per-image variation (some
digits are hard for every model), so the standard error of the mean difference is far smaller
than either model's own standard error over images. Each model draws its own importance samples
(seeded), K per image:

    python benchmarks/paired_nll.py RUN_A/checkpoint.pt RUN_B/checkpoint.pt --valid 2000 -k 5000 \
        --out benchmarks/results/quality-hierarchical/paired.json

prints and writes {model: mean NLL} and, for every model after the first, the mean of
(NLL_first - NLL_model) per image with its standard error (positive: that model is better).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "benchmarks"))
from quality_hierarchical import DEFAULT_DATA, load_split  # noqa: E402


def per_image_nll(model, images: torch.Tensor, k: int, seed: int, block: int = 500) -> torch.Tensor:
    """-log p(x) per image (IS, K samples), scored ``block`` images at a time."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return torch.cat([-model.log_likelihood(b, num_samples=k).double() for b in images.split(block)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint.pt files (or run directories)")
    p.add_argument("--valid", type=int, default=2000, help="the first N validation images")
    p.add_argument("-k", "--num-samples", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args()
    if len(args.checkpoints) < 2:
        p.error("give at least two checkpoints to compare")
    torch.set_num_threads(args.threads)
    from fastvae.training import load_model

    images = load_split(args.data_dir, "valid")[: args.valid]
    result = {"data": f"binarized-mnist (Larochelle) valid, first {images.shape[0]}", "num_samples": args.num_samples,
              "threads": args.threads, "models": {}, "better_than_first": {}}
    nlls = []
    for i, path in enumerate(args.checkpoints):
        model, state = load_model(path)
        t0 = time.perf_counter()
        nll = per_image_nll(model.eval(), images, args.num_samples, args.seed + i)
        nlls.append(nll)
        result["models"][str(path)] = {"arch": model.config, "epoch": state["epoch"], "nll": nll.mean().item(),
                                       "se_over_images": (nll.std() / math.sqrt(nll.numel())).item(),
                                       "eval_seconds": time.perf_counter() - t0}
        if i:
            diff = nlls[0] - nll
            result["better_than_first"][str(path)] = {"mean": diff.mean().item(),
                                                      "paired_se": (diff.std() / math.sqrt(diff.numel())).item(),
                                                      "fraction_of_images_better": (diff > 0).double().mean().item()}
        print(json.dumps(result["models"][str(path)] | result["better_than_first"].get(str(path), {}), default=str),
              flush=True)
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
