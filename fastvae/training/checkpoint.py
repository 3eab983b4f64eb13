"""The checkpoint format `Trainer` writes, and its validation on load.

A checkpoint is a ``torch.save`` archive of plain Python values and tensors (loaded with
``weights_only=True``, so loading one cannot run code) with a format marker and version. Every
way a file can fail to be one (empty, not a zip, truncated, refused objects, another format,
missing or mistyped entries, weights or optimizer moments that do not fit the model) raises
`CheckpointError` naming the part that is wrong.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from ..vae import VAE, build_vae
from .options import resolve_device

__all__ = ["CheckpointError", "load_checkpoint", "load_model", "CHECKPOINT_NAME", "CHECKPOINT_FORMAT",
           "CHECKPOINT_VERSION", "check_model_state", "check_optimizer_state", "build_checked",
           "atomic_save", "first_line"]

PathLike = Union[str, os.PathLike]
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "fastvae.checkpoint"
CHECKPOINT_VERSION = 1


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


def first_line(err: BaseException) -> str:
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
        detail = re.sub(r"\x1b\[[0-9;]*m", "", refused[0]).split(" was not")[0] if refused else first_line(err)
        raise CheckpointError(path, "torch.load failed: it holds Python objects a weights-only load "
                                    f"refuses ({detail})") from err
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError ...
        raise CheckpointError(path, f"torch.load failed: {first_line(err)}") from err


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
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(path, f"no {CHECKPOINT_FORMAT!r} format marker: not written by fastvae's Trainer")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(path, f"format version {state.get('version')!r}; this fastvae reads "
                                    f"version {CHECKPOINT_VERSION}")
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
    # Optional (runs with ema_decay, and checkpoints older than the option have none).
    ema = state.get("ema_state")
    if ema is not None:
        if not isinstance(ema, dict):
            raise CheckpointError(path, f"'ema_state' is a {type(ema).__name__}, expected dict or None")
        bad = [k for k, v in ema.items() if k not in state["model_state"] or not isinstance(v, torch.Tensor)
               or v.shape != state["model_state"][k].shape]
        if bad:
            raise CheckpointError(path, f"'ema_state' entry {bad[0]!r} does not match a weight in 'model_state'")
    return state


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_model_state(model: nn.Module, model_state: Dict[str, Any], path: Optional[PathLike]) -> None:
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


def check_optimizer_state(optimizer: torch.optim.Optimizer, opt_state: Dict[str, Any],
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


def build_checked(state: Dict[str, Any], path: Optional[PathLike]) -> VAE:
    """The model ``state['model_config']`` describes, with the checkpoint's weights checked to fit."""
    try:
        model = build_vae(state["model_config"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(path, f"'model_config' does not build a model: {err}") from err
    check_model_state(model, state["model_state"], path)
    return model


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu",
               averaged: bool = True) -> Tuple[VAE, Dict[str, Any]]:
    """The trained VAE of a checkpoint (in eval mode on ``device``) and the checkpoint itself.

    ``averaged``: a run trained with ``ema_decay`` gets its moving average of the weights (what
    it evaluated during training); False, or a run without one, gets the last weights.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    state = load_checkpoint(path)
    model = build_checked(state, path)
    weights = state["model_state"]
    if averaged and state.get("ema_state") is not None:
        weights = {**weights, **state["ema_state"]}
    model.load_state_dict(weights)
    return model.to(device).eval(), state


def atomic_save(obj: Any, path: Path) -> None:
    # Write then rename, so an interrupted save never leaves a truncated checkpoint behind.
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)

