"""Training loop for fastvae's VAEs: one process or many under ``torchrun``.

`Trainer` runs Adam over shuffled minibatches of a tensor data set with KL warm-up, free bits,
optional bf16 autocast (CUDA) and ``torch.compile``. It writes metrics as JSON lines and a
checkpoint every epoch and on Ctrl-C, and resumes from a checkpoint exactly: on CPU, training E
epochs in one go gives the same weights, bit for bit, as training E1 epochs and resuming to E.

Randomness comes from two places, both saved in checkpoints:
- a data generator (torch.Generator seeded with ``seed``) that draws each epoch's order and the
  dynamic binarisation of each batch; every rank holds the same one, so all ranks agree on the
  global batch and each takes its own contiguous slice;
- torch's global RNG (and numpy's / Python's, in case user code draws from them), which drives
  the reparameterisation noise; each rank seeds its own stream.

Under ``torchrun --nproc_per_node N`` (WORLD_SIZE > 1) the trainer joins the process group (nccl
on CUDA, gloo on CPU), wraps the loss in DistributedDataParallel and writes files on rank 0 only.
Each rank computes the per-example *mean* loss of its slice of the global batch, slices are
equal in size, and DDP averages gradients over ranks, so an update equals the single-process
update on the whole global batch.
"""
from __future__ import annotations

import math
import os
import pickle
import random
import re
import signal
import sys
import threading
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import reference
from .models import VAE, build_vae
from .runlog import append_record, truncate_after_step

__all__ = [
    "TrainConfig",
    "Trainer",
    "fit",
    "vae_loss",
    "eval_data",
    "seed_everything",
    "resolve_device",
    "load_checkpoint",
    "load_model",
    "CheckpointError",
    "LOSS_IMPLS",
    "CHECKPOINT_NAME",
    "METRICS_NAME",
]

LOSS_IMPLS = ("fused", "reference")
_WARMUP_UNITS = ("steps", "epochs")
_BINARIZE = (None, "static", "dynamic")
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
_CHECKPOINT_FORMAT = "fastvae.checkpoint"
_CHECKPOINT_VERSION = 1
# Share of the free CUDA memory a training set may take and still be kept on the device.
_DEVICE_DATA_FRACTION = 0.25
# Settings a resumed run may change without breaking the continuation of the saved run.
_RESUME_OVERRIDABLE = frozenset(
    {"epochs", "max_steps", "progress", "device", "log_every", "checkpoint_every",
     "eval_samples", "eval_batch_size", "compile", "amp"}
)

PathLike = Union[str, os.PathLike]
Callback = Callable[["Trainer", Dict[str, Any]], None]


# ---------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Settings of a training run (saved in checkpoints).

    epochs: passes over the training set. batch_size: global batch (split over ranks).
    lr: Adam learning rate. beta: final KL weight. warmup: length of the linear KL warm-up
    (beta goes 0 -> beta) in ``warmup_unit`` ("epochs" or "steps"); 0 disables it.
    free_bits: per-latent-dim KL floor in nats (0 keeps the fully fused loss).
    seed: seeds data order, binarisation and sampling noise. device: "auto", "cpu", "cuda",
    "cuda:N". amp: bf16 autocast (CUDA only). compile: torch.compile the encoder and decoder
    in place (their state_dict keys do not change).
    loss_impl: "fused" (fastvae.functional) or "reference" (fastvae.reference, plain PyTorch).
    binarize: None, "static" (threshold 0.5) or "dynamic" (x ~ Bernoulli(grey level) afresh for
    every training batch, one fixed draw for the test set). max_steps: stop after this many
    optimizer steps in total (None: run all epochs). eval_batch_size: examples per evaluation
    chunk. eval_samples: K for the importance-sampled test log-likelihood after training (0:
    skip). log_every: also log a metrics line every this many steps (0: per epoch only).
    progress: tqdm bar (None: only when stderr is a terminal). checkpoint_every: epochs between
    checkpoints (0: only at the end and on interrupt).
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    beta: float = 1.0
    warmup: int = 0
    warmup_unit: str = "epochs"
    free_bits: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    compile: bool = False
    loss_impl: str = "fused"
    binarize: Optional[str] = None
    max_steps: Optional[int] = None
    eval_batch_size: int = 1000
    eval_samples: int = 0
    log_every: int = 0
    progress: Optional[bool] = None
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

        def non_negative(name: str) -> None:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

        for name in ("epochs", "batch_size", "eval_batch_size"):
            positive(name)
        for name in ("beta", "free_bits", "warmup", "eval_samples", "log_every", "checkpoint_every"):
            non_negative(name)
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.max_steps is not None and int(self.max_steps) < 1:
            raise ValueError(f"max_steps must be None or >= 1, got {self.max_steps}")
        if self.warmup_unit not in _WARMUP_UNITS:
            raise ValueError(f"warmup_unit must be one of {_WARMUP_UNITS}, got {self.warmup_unit!r}")
        if self.loss_impl not in LOSS_IMPLS:
            raise ValueError(f"loss_impl must be one of {LOSS_IMPLS}, got {self.loss_impl!r}")
        if self.binarize not in _BINARIZE:
            raise ValueError(f"binarize must be one of {_BINARIZE}, got {self.binarize!r}")
        resolve_device(self.device)  # fails early on a malformed device string


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and every CUDA device) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err


def _rank_seed(seed: int, rank: int) -> int:
    # Rank 0 keeps the plain seed (a one-process run is rank 0); other ranks get independent
    # streams, so no two ranks draw the same reparameterisation noise.
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, np.uint64)[0] >> 1)


# ---------------------------------------------------------------------- data
def _binarize(x: torch.Tensor, mode: str, gen: Optional[torch.Generator]) -> torch.Tensor:
    if mode == "static":
        return (x > 0.5).to(x.dtype)
    # Uniforms from a CPU generator: the same draw on every device and every rank.
    u = torch.rand(x.shape, generator=gen)
    return (u.to(x.device) < x).to(x.dtype)


def eval_data(x: torch.Tensor, binarize: Optional[str], seed: int) -> torch.Tensor:
    """The held-out set as a run with these settings evaluates it: grey levels, thresholded
    ("static"), or for "dynamic" one fixed Bernoulli draw from ``seed + 1``."""
    if binarize not in _BINARIZE:
        raise ValueError(f"binarize must be one of {_BINARIZE}, got {binarize!r}")
    if binarize is None:
        return x
    return _binarize(x, binarize, torch.Generator().manual_seed(int(seed) + 1))


# ---------------------------------------------------------------------- the loss
def vae_loss(
    model: VAE,
    x: torch.Tensor,
    beta: float = 1.0,
    free_bits: float = 0.0,
    reduction: str = "mean",
    loss_impl: str = "fused",
) -> torch.Tensor:
    """Negative ELBO of ``model`` on ``x`` with one posterior sample per example.

    ``loss_impl="fused"`` is `VAE.loss` (fused sampling and loss kernels); ``"reference"`` runs
    the same model through `fastvae.reference`, the plain-PyTorch formulas users write by hand.
    """
    if loss_impl == "fused":
        return model.loss(x, beta=beta, free_bits=free_bits, reduction=reduction)
    if loss_impl != "reference":
        raise ValueError(f"loss_impl must be one of {LOSS_IMPLS}, got {loss_impl!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    # The VAE's own helpers flatten x and split the decoder output exactly as its fused loss does.
    x_flat = model._flat_x(x)
    mu, logvar = model.encode(x)
    z = reference.reparameterize(mu, logvar)
    recon, obs_logvar = model._observation(model.decode(z), (x_flat.shape[0],))
    if free_bits == 0:
        return reference.elbo(recon, x_flat, mu, logvar, likelihood=model.likelihood,
                              obs_logvar=obs_logvar, beta=beta, reduction=reduction)
    if model.likelihood == "bernoulli":
        log_px = reference.bernoulli_log_likelihood(recon, x_flat)
    else:
        log_px = reference.gaussian_log_likelihood(recon, x_flat, obs_logvar)
    kl_dims = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    loss = -log_px + beta * kl_dims.clamp(min=free_bits).sum(-1)
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


class _Objective(nn.Module):
    """The loss as a module, so that DDP and torch.compile can wrap it whole."""

    def __init__(self, model: VAE, loss_impl: str, free_bits: float) -> None:
        super().__init__()
        self.model = model
        self.loss_impl = loss_impl
        self.free_bits = free_bits

    def forward(self, x: torch.Tensor, beta: float) -> torch.Tensor:
        return vae_loss(self.model, x, beta=beta, free_bits=self.free_bits, loss_impl=self.loss_impl)


# ---------------------------------------------------------------------- process group
@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: torch.device) -> Tuple[_Dist, torch.device]:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
    if dist.is_available() and dist.is_initialized():
        info = _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False)
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return _Dist(), device
        if not dist.is_available():
            raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            # nccl needs each rank on its own device before the group forms.
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        info = _Dist(dist.get_rank(), dist.get_world_size(), local_rank, True)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return info, device


# ---------------------------------------------------------------------- RNG state
def _rng_state(device: torch.device) -> Dict[str, Any]:
    """This process's global RNG states in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    return state


def _set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------- Ctrl-C
class _DeferredInterrupt:
    """Turns the first Ctrl-C into a flag checked between steps, so that a checkpoint never
    holds a half-finished update; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_DeferredInterrupt":
        # Signal handlers can only be set from the main thread.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


class _StopRequested(KeyboardInterrupt):
    """Ctrl-C seen by the deferred handler, acted on between steps by every rank together."""


# ---------------------------------------------------------------------- checkpoints
class CheckpointError(ValueError):
    """A file that is not a readable fastvae checkpoint; the message says which part is wrong."""

    def __init__(self, path: Optional[PathLike], why: str) -> None:
        self.path, self.why = path, why
        where = f"{path} is" if path is not None else "this is"
        super().__init__(f"{where} not a readable fastvae checkpoint ({why})")


# Entries every checkpoint `Trainer` writes, with the types they must have.
_CHECKPOINT_ENTRIES: Dict[str, Tuple[type, ...]] = {
    "model_config": (dict,), "model_state": (dict,), "train_config": (dict,),
    "optimizer_state": (dict,), "epoch": (int,), "step": (int,), "batch_in_epoch": (int,),
    "perm": (torch.Tensor, type(None)), "data_generator": (torch.Tensor,),
    "epoch_loss_sum": (torch.Tensor,), "epoch_batches": (int,), "elapsed": (int, float),
    "rng": (list,), "extra": (dict,),
}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _torch_load(path: Path, map_location: Union[str, torch.device]) -> Any:
    """torch.load, with the usual ways a file is unreadable told apart."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "the file is empty")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        raise CheckpointError(path, "not a torch.save archive: it does not start like a zip file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(path, f"truncated: the zip archive ({size} bytes) has no central "
                                    "directory (an interrupted copy or save?)")
    try:
        # weights_only: checkpoints hold only tensors and plain Python values, so loading one
        # cannot run code.
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is a page of advice; the line naming the refused object is the point.
        refused = [l.strip() for l in str(err).splitlines() if "Unsupported global" in l]
        detail = re.sub(r"\x1b\[[0-9;]*m", "", refused[0]).split(" was not")[0] if refused else _first_line(err)
        raise CheckpointError(path, "torch.load failed: it holds Python objects a weights-only load "
                                    f"refuses ({detail})") from err
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError ...
        raise CheckpointError(path, f"torch.load failed: {_first_line(err)}") from err


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by `Trainer` (a file, or a directory holding checkpoint.pt).

    Raises FileNotFoundError when there is no such file and `CheckpointError` (a ValueError)
    naming the part that is wrong when the file is not one: unreadable, another format or
    version, or an entry missing or of the wrong type. `load_model` and
    `Trainer.from_checkpoint` also check the weights against the model ``model_config`` builds.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = _torch_load(path, map_location)
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
        raise CheckpointError(path, f"no {_CHECKPOINT_FORMAT!r} format marker: not written by fastvae's Trainer")
    if state.get("version") != _CHECKPOINT_VERSION:
        raise CheckpointError(path, f"format version {state.get('version')!r}; this fastvae reads "
                                    f"version {_CHECKPOINT_VERSION}")
    for key, types in _CHECKPOINT_ENTRIES.items():
        if key not in state:
            raise CheckpointError(path, f"no {key!r} entry")
        # bool is an int; no checkpoint entry is meant to be one.
        if not isinstance(state[key], types) or isinstance(state[key], bool):
            raise CheckpointError(path, f"{key!r} is a {type(state[key]).__name__}, expected "
                                        + " or ".join(t.__name__ for t in types))
    bad = [k for k, v in state["model_state"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(path, f"'model_state' entry {bad[0]!r} is not a tensor")
    return state


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_model_state(model: nn.Module, model_state: Dict[str, Any], path: Optional[PathLike]) -> None:
    """The saved weights fit ``model``: the same names, each with the same shape."""
    expected = model.state_dict()
    problems = [f"{k!r} is {_shape(v)}, the model needs {tuple(expected[k].shape)}"
                for k, v in model_state.items()
                if k in expected and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)]
    missing = [k for k in expected if k not in model_state]
    unexpected = [k for k in model_state if k not in expected]
    if missing:
        problems.append(f"missing {missing[:3]}" + (" ..." if len(missing) > 3 else ""))
    if unexpected:
        problems.append(f"unexpected {unexpected[:3]}" + (" ..." if len(unexpected) > 3 else ""))
    if problems:
        raise CheckpointError(path, "'model_state' does not fit the model 'model_config' describes: "
                                    + "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else ""))


def _check_optimizer_state(optimizer: torch.optim.Optimizer, opt_state: Dict[str, Any],
                           path: Optional[PathLike]) -> None:
    """The saved Adam state fits ``optimizer``'s parameters (count and moment shapes)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups, per_param = opt_state.get("param_groups"), opt_state.get("state")
    if not isinstance(groups, list) or not isinstance(per_param, dict):
        raise CheckpointError(path, "'optimizer_state' lacks 'param_groups' or 'state'")
    ids = [i for g in groups if isinstance(g, dict) for i in g.get("params", [])]
    if len(ids) != len(params):
        raise CheckpointError(path, f"'optimizer_state' holds {len(ids)} parameters, the model has {len(params)}")
    for i, p in zip(ids, params):
        for name, value in (per_param.get(i) or {}).items():
            if name != "step" and isinstance(value, torch.Tensor) and value.shape != p.shape:
                raise CheckpointError(path, f"'optimizer_state' {name} of parameter {i} is "
                                            f"{tuple(value.shape)}, the parameter is {tuple(p.shape)}")


def _build_checked(state: Dict[str, Any], path: Optional[PathLike]) -> VAE:
    """The model ``state['model_config']`` describes, with the checkpoint's weights checked to fit."""
    try:
        model = build_vae(state["model_config"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(path, f"'model_config' does not build a model: {err}") from err
    _check_model_state(model, state["model_state"], path)
    return model


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[VAE, Dict[str, Any]]:
    """The trained VAE of a checkpoint (in eval mode on ``device``) and the checkpoint itself."""
    device = resolve_device(device) if isinstance(device, str) else device
    state = load_checkpoint(path)
    model = _build_checked(state, path)
    model.load_state_dict(state["model_state"])
    return model.to(device).eval(), state


def _atomic_save(obj: Any, path: Path) -> None:
    # Write then rename, so an interrupted save never leaves a truncated checkpoint behind.
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- trainer
class Trainer:
    """Trains a `VAE` on in-memory tensors.

    A training step does not wait for the device: the loss stays a tensor (read every
    `TrainConfig.log_every` steps, every 10 steps by the progress bar, and at epoch ends), a
    training set that fits is kept on the CUDA device (otherwise batches come from pinned
    memory with non-blocking copies), and under DDP the ranks agree on a Ctrl-C only every
    `stop_check_every` steps.

    Args:
        model: the VAE (moved to the configured device).
        train: training examples (N, ...) as floats; labels are not needed.
        test: held-out examples for the test ELBO after each epoch, or None.
        config: a `TrainConfig` (defaults when None).
        out_dir: where checkpoint.pt and metrics.jsonl go (rank 0); None writes nothing.
        extra: JSON-friendly dict saved in checkpoints (e.g. how the data was loaded).
        callbacks: called as ``cb(trainer, info)`` after every step on every rank, info holding
            "step", "epoch" and "loss" (a tensor).

    Example::

        trainer = Trainer(build_mlp_vae(64, (128,), 2), data.train, data.test,
                          TrainConfig(epochs=20), out_dir="runs/digits")
        summary = trainer.fit()
    """

    #: Under DDP, steps between the collective checks for a Ctrl-C (each one waits for the device).
    stop_check_every: int = 16

    def __init__(
        self,
        model: VAE,
        train: torch.Tensor,
        test: Optional[torch.Tensor] = None,
        config: Optional[TrainConfig] = None,
        out_dir: Optional[PathLike] = None,
        extra: Optional[Dict[str, Any]] = None,
        callbacks: Iterable[Callback] = (),
    ) -> None:
        self.config = cfg = config if config is not None else TrainConfig()
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(cfg).__name__}")
        if not isinstance(model, VAE):
            raise ValueError(f"model must be a fastvae.models.VAE, got {type(model).__name__}")
        self.train_data = self._check_data("train", train)
        self.test_data = self._check_data("test", test) if test is not None else None

        device = resolve_device(cfg.device)
        if cfg.amp and device.type != "cuda":
            raise ValueError(f"amp=True (bf16 autocast) needs a CUDA device; device is {device}")
        self.dist, self.device = _setup_distributed(device)
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of ranks "
                             f"({self.dist.world_size}): each rank takes an equal share of the global batch")
        self.model = model.to(self.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.extra = dict(extra or {})
        self.callbacks = list(callbacks)

        # The fused Adam keeps its step counts on the parameters' device; the default one reads
        # each count with .item() every step, a device sync once they live on CUDA.
        fused = self.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, fused=fused or None)
        objective: nn.Module = _Objective(self.model, cfg.loss_impl, cfg.free_bits)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            objective = DistributedDataParallel(
                objective, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if cfg.compile:
            # Compile the networks, not the loss: beta changes every warm-up step and would
            # recompile a graph that holds it; the fused loss is one kernel per term anyway.
            for net in (self.model.encoder, self.model.decoder):
                net.compile()
        self._loss_fn: Callable[[torch.Tensor, float], torch.Tensor] = objective

        seed_everything(_rank_seed(cfg.seed, self.dist.rank))
        # Identical on every rank: all ranks must agree on the order and the binarisation.
        self.data_generator = torch.Generator().manual_seed(cfg.seed)
        if self.test_data is not None:
            self.test_data = eval_data(self.test_data, cfg.binarize, cfg.seed)
        if cfg.binarize == "static":
            self.train_data = _binarize(self.train_data, "static", None)
        self._place_train_data()

        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimizer steps
        self.batch_in_epoch = 0
        self._perm: Optional[torch.Tensor] = None
        self._perm_on_data: Optional[torch.Tensor] = None  # _perm where the training set lives
        self._epoch_loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._epoch_batches = 0
        self._elapsed = 0.0  # from the runs this one resumed
        self._clock: Optional[float] = None
        self._in_step = False
        self._resumed = False
        self.history: List[Dict[str, Any]] = []
        self._warned_drop = False

    # ------------------------------------------------------------------ data
    @staticmethod
    def _check_data(name: str, data: torch.Tensor) -> torch.Tensor:
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of examples, got {type(data).__name__}")
        if data.dim() < 2 or data.shape[0] == 0:
            raise ValueError(f"{name} must be (N, ...) with N >= 1, got shape {tuple(data.shape)}")
        if not data.is_floating_point():
            raise ValueError(f"{name} must hold floats, got dtype {data.dtype}")
        return data

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass (a last batch smaller than the world size is dropped)."""
        n, b, w = self.train_data.shape[0], self.config.batch_size, self.dist.world_size
        steps = math.ceil(n / b)
        last = n - (steps - 1) * b
        return steps - 1 if last < w else steps

    def _place_train_data(self) -> None:
        """On CUDA, keep the training set on the device when it fits comfortably, so a step
        only gathers rows there; otherwise pin it, so batches copy with ``non_blocking``."""
        self._pin_batches = False
        if self.device.type != "cuda" or self.train_data.device == self.device:
            return
        nbytes = self.train_data.numel() * self.train_data.element_size()
        free, _ = torch.cuda.mem_get_info(self.device)
        if nbytes <= _DEVICE_DATA_FRACTION * free:
            self.train_data = self.train_data.to(self.device)
        else:
            self._pin_batches = True

    def _epoch_order(self) -> torch.Tensor:
        """This epoch's order where the training set lives (copied once per epoch, not per step)."""
        if self._perm_on_data is None:
            self._perm_on_data = self._perm.to(self.train_data.device)
        return self._perm_on_data

    def _global_batch(self, index: int) -> torch.Tensor:
        """This rank's slice of global batch ``index`` of the current epoch, on the device.

        Issues no device sync: rows are gathered where the data lives (on the device, or into
        pinned host memory copied with ``non_blocking``), and dynamic binarisation compares
        against uniforms drawn on the CPU and copied the same way.
        """
        b, w = self.config.batch_size, self.dist.world_size
        n_idx = min(b, self._perm.shape[0] - index * b)
        usable = n_idx - n_idx % w
        if usable != n_idx and self.dist.is_main and not self._warned_drop:
            # Equal shares keep the mean of per-rank means equal to the global mean.
            warnings.warn(f"the last batch of each epoch loses {n_idx - usable} example(s) so that "
                          f"it splits evenly over {w} ranks", stacklevel=3)
            self._warned_drop = True
        per_rank = usable // w
        start = index * b + self.dist.rank * per_rank
        rows = self._epoch_order()[start:start + per_rank]
        pin = self._pin_batches
        if pin:
            x = torch.empty((per_rank, *self.train_data.shape[1:]), dtype=self.train_data.dtype, pin_memory=True)
            torch.index_select(self.train_data, 0, rows, out=x)
        else:
            x = self.train_data[rows]
        x = x.to(self.device, non_blocking=True)
        if self.config.binarize == "dynamic":
            # Uniforms for the whole global batch from the CPU generator every rank holds, so all
            # ranks and devices see the same draw; this rank compares against its own rows.
            u = torch.rand((usable, *self.train_data.shape[1:]), generator=self.data_generator, pin_memory=pin)
            u = u[self.dist.rank * per_rank:(self.dist.rank + 1) * per_rank]
            x = (u.to(self.device, non_blocking=True) < x).to(x.dtype)
        return x

    # ------------------------------------------------------------------ schedule
    def beta_at(self, step: int) -> float:
        """KL weight for optimizer step ``step`` (0-based): linear warm-up from 0, then beta."""
        cfg = self.config
        warmup_steps = cfg.warmup * (self.steps_per_epoch if cfg.warmup_unit == "epochs" else 1)
        if warmup_steps <= 0 or step >= warmup_steps:
            return float(cfg.beta)
        return float(cfg.beta) * step / warmup_steps

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.config.amp)

    # ------------------------------------------------------------------ evaluation
    def _rng_fork(self):
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [],
                                     device_type=self.device.type)

    @torch.no_grad()
    def evaluate(self, data: Optional[torch.Tensor] = None, loss_impl: Optional[str] = None) -> float:
        """Mean single-sample ELBO (nats, beta = 1, no free bits) over ``data`` (default: the
        test set), with noise from its own seed so that it neither varies between calls nor
        disturbs the training stream. ``loss_impl`` defaults to the training one."""
        data = self.test_data if data is None else self._check_data("data", data)
        if data is None:
            raise ValueError("no data to evaluate: the trainer has no test set and none was given")
        was_training = self.model.training
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with self._rng_fork():
            torch.manual_seed(self.config.seed + 2)
            for chunk in data.split(self.config.eval_batch_size):
                chunk = chunk.to(self.device)
                with self._autocast():
                    loss = vae_loss(self.model, chunk, beta=1.0, reduction="sum",
                                    loss_impl=loss_impl or self.config.loss_impl)
                total -= loss.double()
        self.model.train(was_training)
        return total.item() / data.shape[0]

    @torch.no_grad()
    def log_likelihood(self, num_samples: int, data: Optional[torch.Tensor] = None) -> float:
        """Mean importance-sampled log p(x) (nats) over ``data`` (default: the test set)."""
        data = self.test_data if data is None else self._check_data("data", data)
        if data is None:
            raise ValueError("no data to evaluate: the trainer has no test set and none was given")
        self.model.eval()
        total = 0.0
        with self._rng_fork():
            torch.manual_seed(self.config.seed + 3)
            # Small example chunks: the model holds num_samples decoder passes per example.
            for chunk in data.split(max(1, self.config.eval_batch_size // 10)):
                total += self.model.log_likelihood(chunk.to(self.device), num_samples=num_samples).double().sum().item()
        self.model.train()
        return total / data.shape[0]

    # ------------------------------------------------------------------ state
    def state_dict(self, rng_states: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
        """Everything needed to continue this run exactly (see `load_state_dict`)."""
        return {
            "format": _CHECKPOINT_FORMAT,
            "version": _CHECKPOINT_VERSION,
            "model_config": self.model.config,
            "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer_state": self.optimizer.state_dict(),
            "train_config": asdict(self.config),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "perm": self._perm,
            "data_generator": self.data_generator.get_state(),
            "epoch_loss_sum": self._epoch_loss_sum.detach().cpu(),
            "epoch_batches": self._epoch_batches,
            "elapsed": self.elapsed,
            "world_size": self.dist.world_size,
            "rng": rng_states if rng_states is not None else [_rng_state(self.device)],
            "extra": self.extra,
        }

    def load_state_dict(self, state: Dict[str, Any], path: Optional[PathLike] = None) -> None:
        """Restore weights, optimizer, counters, data order and RNG states from a checkpoint
        (as `load_checkpoint` returns it; ``path``, where it came from, is named in errors).

        A checkpoint of another architecture raises ValueError; one whose parts do not fit
        this trainer (weights, optimizer moments, data order) raises `CheckpointError`.
        """
        if self.model.config != state["model_config"]:
            raise ValueError(
                f"checkpoint model config {state['model_config']} differs from this model's {self.model.config}"
            )
        _check_model_state(self.model, state["model_state"], path)
        _check_optimizer_state(self.optimizer, state["optimizer_state"], path)
        perm = state["perm"]
        if perm is not None and (perm.dim() != 1 or perm.numel() != self.train_data.shape[0]):
            raise CheckpointError(path, f"'perm' orders {perm.numel()} examples, the training set has "
                                        f"{self.train_data.shape[0]} (resumed with other data?)")
        try:
            self._restore(state)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(path, f"cannot restore the training state: {_first_line(err)}") from err
        self._resumed = True

    def _restore(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self._perm, self._perm_on_data = state["perm"], None
        self.data_generator.set_state(state["data_generator"])
        self._epoch_loss_sum = state["epoch_loss_sum"].to(self.device, torch.float64)
        self._epoch_batches = int(state["epoch_batches"])
        self._elapsed = float(state["elapsed"])
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            _set_rng_state(rngs[self.dist.rank], self.device)
        else:
            # Another world size: the sampling streams cannot continue; start fresh ones.
            if self.dist.is_main:
                warnings.warn(f"checkpoint was written by {len(rngs)} rank(s), this run has "
                              f"{self.dist.world_size}: sampling noise restarts from the seed", stacklevel=3)
            seed_everything(_rank_seed(self.config.seed + self.step, self.dist.rank))

    @classmethod
    def from_checkpoint(
        cls,
        path: PathLike,
        train: torch.Tensor,
        test: Optional[torch.Tensor] = None,
        out_dir: Optional[PathLike] = None,
        callbacks: Iterable[Callback] = (),
        **overrides: Any,
    ) -> "Trainer":
        """Rebuild model and trainer from a checkpoint and continue from where it stopped.

        ``overrides`` may change only settings that do not alter the run being continued:
        epochs, max_steps, progress, device, log_every, checkpoint_every, eval_samples,
        eval_batch_size, compile and amp.
        """
        bad = sorted(set(overrides) - _RESUME_OVERRIDABLE)
        if bad:
            raise ValueError(f"cannot change {bad} when resuming; allowed: {sorted(_RESUME_OVERRIDABLE)}")
        state = load_checkpoint(path)
        known = {f.name for f in fields(TrainConfig)}
        saved = {k: v for k, v in state["train_config"].items() if k in known}
        try:
            TrainConfig(**saved)
        except (ValueError, TypeError) as err:
            raise CheckpointError(path, f"'train_config': {err}") from err
        cfg = TrainConfig(**{**saved, **overrides})
        model = _build_checked(state, path)
        trainer = cls(model, train, test, cfg, out_dir=out_dir, extra=state.get("extra"), callbacks=callbacks)
        trainer.load_state_dict(state, path)
        return trainer

    def _gather_rng(self) -> Optional[List[Dict[str, Any]]]:
        """Every rank's RNG state, on rank 0 (collective: all ranks must call it)."""
        mine = _rng_state(self.device)
        if not self.dist.enabled:
            return [mine]
        gathered: Optional[List[Any]] = [None] * self.dist.world_size if self.dist.is_main else None
        dist.gather_object(mine, gathered, dst=0)
        return gathered

    def save_checkpoint(self, path: Optional[PathLike] = None) -> Optional[Path]:
        """Write the checkpoint (rank 0; collective under DDP). Returns its path, or None when
        there is nowhere to write it."""
        rngs = self._gather_rng()
        if not self.dist.is_main:
            return None
        if path is None:
            if self.out_dir is None:
                return None
            path = self.out_dir / CHECKPOINT_NAME
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(self.state_dict(rngs), path)
        return path

    # ------------------------------------------------------------------ logging
    def _log(self, record: Dict[str, Any]) -> None:
        self.history.append(record)
        if self.dist.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            append_record(self.out_dir / METRICS_NAME, record)  # whole lines, even under a kill

    def _reduce_mean(self, total: torch.Tensor, count: int) -> float:
        """Mean over ranks of per-rank means (equal batch sizes: the global mean)."""
        value = total.to(self.device, torch.float64) / max(count, 1)
        if self.dist.enabled:
            dist.all_reduce(value)
            value = value / self.dist.world_size
        return value.item()

    def _stop_everywhere(self, requested: bool, epoch_end: bool) -> bool:
        """Whether every rank stops after this step. One process: its own Ctrl-C flag, a Python
        bool. DDP: the ranks agree with an all-reduce that the host must wait for, so only every
        `stop_check_every` steps and at the end of an epoch, never on the others."""
        if not self.dist.enabled:
            return requested
        if self.step % self.stop_check_every and not epoch_end:
            return False
        flag = torch.tensor([int(requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _progress_enabled(self) -> bool:
        if not self.dist.is_main:
            return False
        if self.config.progress is None:
            return sys.stderr.isatty()
        return bool(self.config.progress)

    # ------------------------------------------------------------------ training
    def _train_step(self, x: torch.Tensor, beta: float) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self._loss_fn(x, beta)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _epoch_record(self, epoch_time: float, partial: bool) -> Dict[str, Any]:
        train_loss = self._reduce_mean(self._epoch_loss_sum, self._epoch_batches)
        record: Dict[str, Any] = {
            "kind": "partial_epoch" if partial else "epoch",
            "epoch": self.epoch + (self.batch_in_epoch / self.steps_per_epoch if partial else 0),
            "step": self.step,
            "train_loss": train_loss,
            "beta": self.beta_at(max(self.step - 1, 0)),
        }
        if self.test_data is not None and self.dist.is_main:
            record["test_elbo"] = self.evaluate()
        record.update(epoch_time=epoch_time, time=self.elapsed, lr=self.optimizer.param_groups[0]["lr"])
        return record

    def fit(self) -> Dict[str, Any]:
        """Train to ``config.epochs`` (or ``max_steps``); returns a summary dict.

        Ctrl-C finishes the current step, saves a checkpoint and re-raises KeyboardInterrupt.
        """
        cfg = self.config
        if self.dist.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not self._resumed:
                (self.out_dir / METRICS_NAME).write_text("")  # a fresh run starts a fresh log
            else:
                # Records written after the checkpoint (a kill before the next save) would
                # otherwise appear twice; a torn last line goes too.
                truncate_after_step(self.out_dir / METRICS_NAME, self.step)
        steps_per_epoch = self.steps_per_epoch
        if steps_per_epoch < 1:
            raise ValueError(f"{self.train_data.shape[0]} training examples are fewer than the "
                             f"{self.dist.world_size} ranks")
        max_steps = cfg.max_steps if cfg.max_steps is not None else math.inf
        self.model.train()
        self._clock = time.perf_counter()
        try:
            with _DeferredInterrupt() as interrupt:
                while self.epoch < cfg.epochs and self.step < max_steps:
                    if self._perm is None:
                        self._perm = torch.randperm(self.train_data.shape[0], generator=self.data_generator)
                        self._perm_on_data = None
                        self.batch_in_epoch = 0
                        self._epoch_loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
                        self._epoch_batches = 0
                    epoch_start = time.perf_counter()
                    self._run_epoch(steps_per_epoch, max_steps, interrupt)
                    partial = self.batch_in_epoch < steps_per_epoch
                    if not partial:
                        self.epoch += 1
                        self._perm = self._perm_on_data = None
                    self._log(self._epoch_record(time.perf_counter() - epoch_start, partial))
                    if partial or self.epoch == cfg.epochs or (
                        cfg.checkpoint_every and self.epoch % cfg.checkpoint_every == 0
                    ):
                        self.save_checkpoint()
        except _StopRequested:
            # Every rank stopped after the same whole step: a consistent, collective save.
            self.save_checkpoint()
            raise
        except KeyboardInterrupt:
            # Raised mid-step (a second Ctrl-C) or by a callback. Between steps the state is
            # whole and can be saved; ranks cannot agree on a save here, so DDP runs skip it.
            if not self._in_step and not self.dist.enabled:
                self.save_checkpoint()
            raise
        finally:
            self._in_step = False
        summary: Dict[str, Any] = {"epoch": self.epoch, "step": self.step, "time": self.elapsed}
        if self.history:
            summary.update({k: v for k, v in self.history[-1].items() if k in ("train_loss", "test_elbo")})
        if cfg.eval_samples and self.test_data is not None and self.dist.is_main:
            ll = self.log_likelihood(cfg.eval_samples)
            summary["test_log_likelihood"] = ll
            self._log({"kind": "final", "step": self.step, "test_log_likelihood": ll,
                       "eval_samples": cfg.eval_samples})
        summary["checkpoint"] = str(self.out_dir / CHECKPOINT_NAME) if self.out_dir is not None else None
        return summary

    def _run_epoch(self, steps_per_epoch: int, max_steps: float, interrupt: _DeferredInterrupt) -> None:
        """Steps from ``batch_in_epoch`` to the end of the epoch, or until ``max_steps``."""
        cfg = self.config
        bar = None
        if self._progress_enabled():
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_per_epoch, initial=self.batch_in_epoch, leave=False,
                       desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step", dynamic_ncols=True)
        running: Optional[torch.Tensor] = None
        try:
            while self.batch_in_epoch < steps_per_epoch and self.step < max_steps:
                # Until the counters move on, a KeyboardInterrupt finds a half-done update.
                self._in_step = True
                x = self._global_batch(self.batch_in_epoch)
                beta = self.beta_at(self.step)
                loss = self._train_step(x, beta)
                self._epoch_loss_sum += loss.double()
                self._epoch_batches += 1
                self.batch_in_epoch += 1
                self.step += 1
                self._in_step = False
                if bar is not None:
                    running = loss if running is None else 0.9 * running + 0.1 * loss
                    bar.update(1)
                    # .item() waits for the device: only every few steps.
                    if self.batch_in_epoch % 10 == 0 or self.batch_in_epoch == steps_per_epoch:
                        bar.set_postfix(elbo=f"{-running.item():.2f}", beta=f"{beta:.3g}")
                if cfg.log_every and self.step % cfg.log_every == 0:
                    self._log({"kind": "step", "epoch": self.epoch + self.batch_in_epoch / steps_per_epoch,
                               "step": self.step, "train_loss": self._reduce_mean(loss, 1), "beta": beta,
                               "time": self.elapsed})
                for cb in self.callbacks:
                    cb(self, {"step": self.step, "epoch": self.epoch, "loss": loss})
                if self._stop_everywhere(interrupt.requested, self.batch_in_epoch == steps_per_epoch):
                    raise _StopRequested
        finally:
            if bar is not None:
                bar.close()

    @property
    def elapsed(self) -> float:
        """Seconds spent in `fit`, over this run and the runs it resumed."""
        running = time.perf_counter() - self._clock if self._clock is not None else 0.0
        return self._elapsed + running

    def close(self, barrier: bool = True) -> None:
        """Leave the process group if this trainer created it.

        ``barrier`` first waits for every rank (collective), so that no rank tears its
        connections down while another still uses them (gloo aborts on that); pass False
        after an error, when the other ranks may never arrive.
        """
        if self.dist.owns_group and dist.is_initialized():
            if barrier:
                dist.barrier()
            dist.destroy_process_group()
            self.dist.owns_group = False


def fit(
    model: VAE,
    train: torch.Tensor,
    test: Optional[torch.Tensor] = None,
    out_dir: Optional[PathLike] = None,
    **config: Any,
) -> Dict[str, Any]:
    """Train ``model`` with `TrainConfig(**config)`; returns `Trainer.fit`'s summary."""
    trainer = Trainer(model, train, test, TrainConfig(**config), out_dir=out_dir)
    try:
        summary = trainer.fit()
    except BaseException:
        trainer.close(barrier=False)
        raise
    trainer.close()
    return summary
