"""Pictures of a trained VAE: sample grids, reconstructions, training curves, 2-D latent spaces.

Figures are drawn with matplotlib's object API on Agg canvases, so nothing here needs a display
or changes the global pyplot backend. Every function writes a PNG and returns its path.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

from .model import VAE

__all__ = [
    "image_grid",
    "save_image_grid",
    "save_samples",
    "save_reconstructions",
    "save_training_curve",
    "save_latent_scatter",
    "read_metrics",
]

PathLike = Union[str, os.PathLike]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _as_images(images: torch.Tensor, image_shape: Optional[Sequence[int]]) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) float array in [0, 1] from flat or (N, C, H, W) images."""
    x = images.detach().float().cpu()
    if image_shape is not None:
        x = x.reshape(x.shape[0], *image_shape)
    elif x.dim() == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(
                f"cannot lay out {x.shape[1]} values per image as a square; pass image_shape"
            )
        x = x.reshape(x.shape[0], side, side)
    if x.dim() == 4:
        if x.shape[1] == 1:
            x = x[:, 0]
        elif x.shape[1] == 3:
            x = x.permute(0, 2, 3, 1)
        else:
            raise ValueError(f"images need 1 or 3 channels, got shape {tuple(x.shape)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"cannot draw images of shape {tuple(images.shape)}")
    return x.clamp(0, 1).numpy()


def image_grid(
    images: torch.Tensor, nrow: Optional[int] = None, image_shape: Optional[Sequence[int]] = None,
    pad: int = 1,
) -> np.ndarray:
    """Tile N images into one array, ``nrow`` images per row (default: about square)."""
    x = _as_images(images, image_shape)
    n = x.shape[0]
    if n == 0:
        raise ValueError("images is empty")
    ncol = int(nrow) if nrow is not None else math.ceil(math.sqrt(n))
    if ncol < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    nrows = math.ceil(n / ncol)
    h, w = x.shape[1], x.shape[2]
    grid = np.ones((nrows * (h + pad) + pad, ncol * (w + pad) + pad) + x.shape[3:], dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = x[i]
    return grid


def save_image_grid(
    images: torch.Tensor, path: PathLike, nrow: Optional[int] = None,
    image_shape: Optional[Sequence[int]] = None, title: Optional[str] = None,
) -> Path:
    """Write ``images`` (N, D), (N, H, W) or (N, C, H, W), values in [0, 1], as a PNG grid."""
    grid = image_grid(images, nrow=nrow, image_shape=image_shape)
    scale = 6.0 / max(grid.shape[:2])
    fig = _figure(max(2.0, grid.shape[1] * scale), max(2.0, grid.shape[0] * scale) + (0.4 if title else 0))
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return _save(fig, path)


@torch.no_grad()
def save_samples(
    model: VAE, path: PathLike, n: int = 64, seed: int = 0, mean: bool = True,
    nrow: Optional[int] = None,
) -> Path:
    """Grid of ``n`` ancestral samples (decoder means, or draws when ``mean=False``)."""
    ref = next(model.parameters())
    gen = torch.Generator(device=ref.device).manual_seed(seed)
    x = model.sample(n, mean=mean, generator=gen)
    if model.likelihood == "gaussian":
        x = x.clamp(0, 1)
    return save_image_grid(x, path, nrow=nrow, image_shape=model.data_shape,
                           title=f"{n} samples from p(x|z), z ~ N(0, I)")


@torch.no_grad()
def save_reconstructions(model: VAE, x: torch.Tensor, path: PathLike, n: int = 32) -> Path:
    """Inputs and their reconstructions (decoder mean at the posterior mean) in alternating rows."""
    if x.shape[0] == 0:
        raise ValueError("x is empty")
    ref = next(model.parameters())
    x = x[:n].to(ref.device)
    recon = model.reconstruct(x).clamp(0, 1)
    ncol = min(8, x.shape[0])
    pairs = []
    for start in range(0, x.shape[0], ncol):
        pairs += [x[start:start + ncol], recon[start:start + ncol]]
    # Pad a short last row pair so that every row holds ncol images.
    rows = [torch.cat([p, p.new_ones((ncol - p.shape[0], *p.shape[1:]))]) if p.shape[0] < ncol else p for p in pairs]
    return save_image_grid(torch.cat(rows), path, nrow=ncol, image_shape=model.data_shape,
                           title="inputs (odd rows) and reconstructions (even rows)")


def read_metrics(path: PathLike) -> List[Dict[str, Any]]:
    """The records of a metrics.jsonl file, in order (a torn last line is skipped with a warning;
    see `fastvae.training.runlog.read_metrics`)."""
    from ..training.runlog import read_metrics as _read

    return _read(path)


def save_training_curve(metrics: Union[PathLike, Iterable[Dict[str, Any]]], path: PathLike) -> Path:
    """Training loss and test ELBO against optimizer steps, from metrics records or a jsonl path."""
    records = read_metrics(metrics) if isinstance(metrics, (str, os.PathLike)) else list(metrics)
    epochs = [r for r in records if r.get("kind") in ("epoch", "partial_epoch")]
    steps = [r for r in records if r.get("kind") == "step"]
    if not epochs and not steps:
        raise ValueError("metrics hold no epoch or step records to plot")
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    if steps:
        ax.plot([r["step"] for r in steps], [-r["train_loss"] for r in steps], lw=0.8, alpha=0.5,
                color="tab:blue", label="train, per step")
    if epochs:
        ax.plot([r["step"] for r in epochs], [-r["train_loss"] for r in epochs], "o-", ms=3,
                color="tab:blue", label="train (epoch mean, KL weighted by beta)")
        test = [r for r in epochs if "test_elbo" in r]
        if test:
            ax.plot([r["step"] for r in test], [r["test_elbo"] for r in test], "s-", ms=3,
                    color="tab:orange", label="test ELBO")
        ll = [r for r in epochs if "test_log_likelihood" in r]
        if ll:
            ax.plot([r["step"] for r in ll], [r["test_log_likelihood"] for r in ll], "^-", ms=3,
                    color="tab:green", label="test log p(x), importance-sampled")
    values = [-r["train_loss"] for r in epochs + steps] + [r["test_elbo"] for r in epochs if "test_elbo" in r]
    # Early steps sit far below the rest; keep the axis on the part worth reading.
    low = float(np.percentile(values, 5)) if len(values) >= 20 else min(values)
    high = max(values)
    margin = 0.05 * (high - low) or 1.0
    ax.set_ylim(low - margin, high + margin)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("ELBO (nats per example)")
    ax.set_title("training curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


@torch.no_grad()
def save_latent_scatter(
    model: VAE, x: torch.Tensor, labels: Optional[torch.Tensor], path: PathLike, batch_size: int = 1000,
) -> Path:
    """Posterior means of ``x`` in a 2-D latent space, coloured by ``labels`` when given."""
    if model.latent_dim != 2:
        raise ValueError(f"a latent scatter needs latent_dim == 2, the model has {model.latent_dim}")
    if labels is not None and labels.shape[0] != x.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries but x has {x.shape[0]} examples")
    ref = next(model.parameters())
    mu = torch.cat([model.encode(chunk.to(ref.device))[0].float().cpu() for chunk in x.split(batch_size)])
    fig = _figure(6, 5.5)
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(mu[:, 0], mu[:, 1], s=4, alpha=0.6)
    else:
        lab = labels.cpu().numpy()
        classes = np.unique(lab)
        import matplotlib

        palette = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for i, c in enumerate(classes):
            sel = lab == c
            ax.scatter(mu[sel, 0], mu[sel, 1], s=4, alpha=0.7, color=palette(i % palette.N), label=str(c))
        ax.legend(title="label", markerscale=3, fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_xlabel("z[0] (posterior mean)")
    ax.set_ylabel("z[1] (posterior mean)")
    ax.set_title("encoded test set")
    ax.grid(alpha=0.3)
    return _save(fig, path)
