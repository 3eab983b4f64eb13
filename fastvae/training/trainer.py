"""The training loop: `Trainer` and `fit`, one process or many under ``torchrun``.

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

import contextlib
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch

from ..vae import VAE
from ..vae.data import binarize
from ..vae.init import init_output_bias
from . import batching
from .averaging import WeightAverage
from .checkpoint import CHECKPOINT_NAME
from .config import TrainConfig
from .distributed import any_rank, leave, mean_over_ranks, setup_distributed
from .evaluation import evaluate
from .objective import training_objective
from .interrupt import DeferredInterrupt, StopRequested
from .options import resolve_device
from .rng import rank_seed, seed_everything
from .schedule import lr_at, out_of_time, progress
from .runlog import append_record, truncate_after_step
from .state import TrainerState

__all__ = ["Trainer", "fit", "METRICS_NAME"]

METRICS_NAME = "metrics.jsonl"

PathLike = Union[str, os.PathLike]
Callback = Callable[["Trainer", Dict[str, Any]], None]


class Trainer(TrainerState):
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
            raise ValueError(f"model must be a fastvae.VAE, got {type(model).__name__}")
        self.train_data = batching.check_data("train", train)
        self.test_data = batching.check_data("test", test) if test is not None else None
        if cfg.binarize == "dynamic":
            batching.check_grey_levels("train", self.train_data)

        device = resolve_device(cfg.device)
        if cfg.amp and device.type != "cuda":
            raise ValueError(f"amp=True (bf16 autocast) needs a CUDA device; device is {device}")
        self.dist, self.device = setup_distributed(device)
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of ranks "
                             f"({self.dist.world_size}): each rank takes an equal share of the global batch")
        self.model = model.to(self.device)
        if cfg.output_bias == "marginal":  # a resumed run loads its weights over this
            init_output_bias(self.model, self.train_data)
        # Polyak averaging (`TrainConfig.ema_decay`): evaluation and plots use the average.
        self.average = WeightAverage(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.extra = dict(extra or {})
        self.callbacks = list(callbacks)

        # The fused Adam keeps its step counts on the parameters' device; the default one reads
        # each count with .item() every step, a device sync once they live on CUDA.
        fused = self.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, fused=fused or None)
        self._loss_fn = training_objective(self.model, cfg, self.dist, self.device)

        seed_everything(rank_seed(cfg.seed, self.dist.rank))
        # Identical on every rank: all ranks must agree on the order and the binarisation.
        self.data_generator = torch.Generator().manual_seed(cfg.seed)
        if self.test_data is not None:
            self.test_data = batching.eval_data(self.test_data, cfg.binarize, cfg.seed)
        if cfg.binarize == "static":
            self.train_data = binarize(self.train_data, "static")
        self.train_data, self._pin_batches = batching.place(self.train_data, self.device)

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
    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass (a last batch smaller than the world size is dropped)."""
        return batching.steps_per_epoch(self.train_data.shape[0], self.config.batch_size, self.dist.world_size)

    def _epoch_order(self) -> torch.Tensor:
        """This epoch's order where the training set lives (copied once per epoch, not per step)."""
        if self._perm_on_data is None:
            self._perm_on_data = self._perm.to(self.train_data.device)
        return self._perm_on_data

    def _global_batch(self, index: int) -> torch.Tensor:
        """This rank's slice of global batch ``index`` of the current epoch, on the device
        (see `fastvae.training.batching.rank_batch`; no device sync)."""
        x, dropped = batching.rank_batch(
            self.train_data, self._epoch_order(), index, self.config.batch_size, self.dist, self.device,
            self._pin_batches, self.config.binarize, self.data_generator)
        if dropped and self.dist.is_main and not self._warned_drop:
            # Equal shares keep the mean of per-rank means equal to the global mean.
            warnings.warn(f"the last batch of each epoch loses {dropped} example(s) so that "
                          f"it splits evenly over {self.dist.world_size} ranks", stacklevel=3)
            self._warned_drop = True
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
    def _eval_data(self, data: Optional[torch.Tensor]) -> torch.Tensor:
        data = self.test_data if data is None else batching.check_data("data", data)
        if data is None:
            raise ValueError("no data to evaluate: the trainer has no test set and none was given")
        return data

    def evaluate(self, data: Optional[torch.Tensor] = None, loss_impl: Optional[str] = None) -> float:
        """Mean single-sample ELBO (nats, beta = 1, no free bits) over ``data`` (default: the
        test set), with noise from its own seed so that it neither varies between calls nor
        disturbs the training stream. ``loss_impl`` defaults to the training one."""
        cfg = self.config
        with self.evaluation_weights():
            return evaluate(self.model, self._eval_data(data), cfg.eval_batch_size, self.device, cfg.seed + 2,
                            loss_impl=loss_impl or cfg.loss_impl, amp=cfg.amp)["elbo"]

    def log_likelihood(self, num_samples: int, data: Optional[torch.Tensor] = None) -> float:
        """Mean importance-sampled log p(x) (nats) over ``data`` (default: the test set); the
        model is left in the mode it was in."""
        cfg = self.config
        # Small example chunks: the model holds num_samples decoder passes per example.
        with self.evaluation_weights():
            return evaluate(self.model, self._eval_data(data), max(1, cfg.eval_batch_size // 10), self.device,
                            cfg.seed + 3, elbo=False, num_samples=num_samples)["log_likelihood"]

    def evaluation_weights(self) -> contextlib.AbstractContextManager:
        """A block in which the model holds the weights evaluation uses: the moving average
        when `TrainConfig.ema_decay` is set, the trained weights otherwise."""
        return self.average.swapped_in() if self.average is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ logging
    def _log(self, record: Dict[str, Any]) -> None:
        self.history.append(record)
        if self.dist.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            append_record(self.out_dir / METRICS_NAME, record)  # whole lines, even under a kill

    def _reduce_mean(self, total: torch.Tensor, count: int) -> float:
        """Mean over ranks of per-rank means (equal batch sizes: the global mean)."""
        return mean_over_ranks(total.to(self.device, torch.float64) / max(count, 1), self.dist)

    def _stop_everywhere(self, requested: bool, epoch_end: bool) -> bool:
        """Whether every rank stops after this step. One process: its own Ctrl-C flag, a Python
        bool. DDP: the ranks agree with an all-reduce that the host must wait for, so only every
        `stop_check_every` steps and at the end of an epoch, never on the others."""
        if not self.dist.enabled:
            return requested
        if self.step % self.stop_check_every and not epoch_end:
            return False
        return any_rank(requested, self.dist, self.device)

    def _progress_enabled(self) -> bool:
        if not self.dist.is_main:
            return False
        if self.config.progress is None:
            return sys.stderr.isatty()
        return bool(self.config.progress)

    # ------------------------------------------------------------------ training
    def _train_step(self, x: torch.Tensor, beta: float) -> torch.Tensor:
        if self.config.lr_schedule != "constant":
            lr = lr_at(self.config, progress(self.config, self.step, self.steps_per_epoch, self.elapsed))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self._loss_fn(x, beta)
        loss.backward()
        self.optimizer.step()
        if self.average is not None:
            self.average.update()
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
            cfg = self.config
            if cfg.ll_every and cfg.eval_samples and (partial or self.epoch % cfg.ll_every == 0):
                record["test_log_likelihood"] = self.log_likelihood(cfg.eval_samples)
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
            with DeferredInterrupt() as interrupt:
                while self.epoch < cfg.epochs and self.step < max_steps and not out_of_time(cfg, self.elapsed):
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
        except StopRequested:
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

    def _run_epoch(self, steps_per_epoch: int, max_steps: float, interrupt: DeferredInterrupt) -> None:
        """Steps from ``batch_in_epoch`` to the end of the epoch, or until ``max_steps``."""
        cfg = self.config
        bar = None
        if self._progress_enabled():
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_per_epoch, initial=self.batch_in_epoch, leave=False,
                       desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step", dynamic_ncols=True)
        running: Optional[torch.Tensor] = None
        try:
            while (self.batch_in_epoch < steps_per_epoch and self.step < max_steps
                   and not out_of_time(cfg, self.elapsed)):
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
                    raise StopRequested
        finally:
            if bar is not None:
                bar.close()

    @property
    def elapsed(self) -> float:
        """Seconds spent in `fit`, over this run and the runs it resumed."""
        running = time.perf_counter() - self._clock if self._clock is not None else 0.0
        return self._elapsed + running

    def close(self, barrier: bool = True) -> None:
        """Leave the process group if this trainer created it (see `distributed.leave`;
        ``barrier=False`` after an error, when the other ranks may never arrive)."""
        leave(self.dist, barrier)


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
