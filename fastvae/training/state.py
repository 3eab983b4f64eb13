"""Saving and restoring a `Trainer`'s whole state, so that a resumed run continues exactly.

`TrainerState` is the part of `Trainer` that writes checkpoints (every rank's RNG state
gathered on rank 0, written atomically) and reads them back (weights, optimizer, counters,
data order and RNG states, each checked to fit before anything is restored).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Type, TypeVar, Union

import torch
import torch.distributed as dist

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CHECKPOINT_VERSION,
    CheckpointError,
    atomic_save,
    build_checked,
    check_model_state,
    check_optimizer_state,
    first_line,
    load_checkpoint,
)
from .config import RESUME_OVERRIDABLE, TrainConfig
from .rng import rank_seed, rng_state, seed_everything, set_rng_state

__all__ = ["TrainerState"]

PathLike = Union[str, os.PathLike]
T = TypeVar("T", bound="TrainerState")


class TrainerState:
    """Checkpoint methods of `Trainer` (a mixin: it reads and sets the trainer's attributes)."""

    def state_dict(self, rng_states: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
        """Everything needed to continue this run exactly (see `load_state_dict`)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
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
            "rng": rng_states if rng_states is not None else [rng_state(self.device)],
            "extra": self.extra,
            # The moving average of the weights (`TrainConfig.ema_decay`), or None.
            "ema_state": self.average.state_dict() if self.average is not None else None,
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
        check_model_state(self.model, state["model_state"], path)
        check_optimizer_state(self.optimizer, state["optimizer_state"], path)
        perm = state["perm"]
        if perm is not None and (perm.dim() != 1 or perm.numel() != self.train_data.shape[0]):
            raise CheckpointError(path, f"'perm' orders {perm.numel()} examples, the training set has "
                                        f"{self.train_data.shape[0]} (resumed with other data?)")
        if self.average is not None and not isinstance(state.get("ema_state"), dict):
            raise CheckpointError(path, f"the run averages its weights (ema_decay={self.config.ema_decay}) "
                                        "but the checkpoint holds no 'ema_state'")
        try:
            self._restore(state)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(path, f"cannot restore the training state: {first_line(err)}") from err
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
        if self.average is not None:
            self.average.load_state_dict(state["ema_state"], self.step)  # one update per step
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank], self.device)
        else:
            # Another world size: the sampling streams cannot continue; start fresh ones.
            if self.dist.is_main:
                warnings.warn(f"checkpoint was written by {len(rngs)} rank(s), this run has "
                              f"{self.dist.world_size}: sampling noise restarts from the seed", stacklevel=3)
            seed_everything(rank_seed(self.config.seed + self.step, self.dist.rank))

    @classmethod
    def from_checkpoint(
        cls: Type[T],
        path: PathLike,
        train: torch.Tensor,
        test: Optional[torch.Tensor] = None,
        out_dir: Optional[PathLike] = None,
        callbacks: Iterable[Any] = (),
        **overrides: Any,
    ) -> T:
        """Rebuild model and trainer from a checkpoint and continue from where it stopped.

        ``overrides`` may change only settings that do not alter the run being continued: the
        `TrainConfig` fields declared with ``resume=True`` (`RESUME_OVERRIDABLE`).
        """
        bad = sorted(set(overrides) - RESUME_OVERRIDABLE)
        if bad:
            raise ValueError(f"cannot change {bad} when resuming; allowed: {sorted(RESUME_OVERRIDABLE)}")
        state = load_checkpoint(path)
        known = {f.name for f in fields(TrainConfig)}
        saved = {k: v for k, v in state["train_config"].items() if k in known}
        try:
            TrainConfig(**saved)
        except (ValueError, TypeError) as err:
            raise CheckpointError(path, f"'train_config': {err}") from err
        cfg = TrainConfig(**{**saved, **overrides})
        model = build_checked(state, path)
        trainer = cls(model, train, test, cfg, out_dir=out_dir, extra=state.get("extra"), callbacks=callbacks)
        trainer.load_state_dict(state, path)
        return trainer

    def _gather_rng(self) -> Optional[List[Dict[str, Any]]]:
        """Every rank's RNG state, on rank 0 (collective: all ranks must call it)."""
        mine = rng_state(self.device)
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
        atomic_save(self.state_dict(rngs), path)
        return path

