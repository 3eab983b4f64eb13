"""Options described once: a dataclass field carries its default, help text, check and resume rule.

`TrainConfig` (and the command line's model and output options) declare each setting with
`option`; the dataclass validates itself from that metadata, and ``fastvae train`` builds its
flags, defaults, help texts, validation and the rules for what ``--resume`` may change from the
same fields. Nothing repeats a default or a check.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch

from .._args import check_int, check_real

__all__ = ["option", "check_fields", "Check", "integer", "real", "choice", "flag", "device", "text",
           "seed_number", "SEED_MAX", "resolve_device", "described", "cli_default", "split_resume"]

Check = Callable[[str, Any], Any]
_UNSET = object()
# torch.manual_seed and torch.Generator take 64-bit seeds; the trainer derives seed + k from the
# seed, so the top half of the unsigned range stays free.
SEED_MAX = 2**63 - 1


def option(
    default: Any,
    help: str,
    check: Check,
    resume: bool = False,
    cli_default: Any = _UNSET,
    choices: Optional[Sequence[Any]] = None,
    default_help: Optional[str] = None,
) -> Any:
    """A dataclass field with its metadata.

    check: ``check(name, value)`` returns the value (normalised) or raises ValueError naming
    ``name``. resume: a resumed run may change it. cli_default: the command line's default when
    it differs from the dataclass's (e.g. "auto"). choices: the values the command line offers.
    default_help: how the help text describes the default (else the default itself).
    """
    meta = {"help": help, "check": check, "resume": resume, "choices": tuple(choices) if choices else None,
            "default_help": default_help}
    if cli_default is not _UNSET:
        meta["cli_default"] = cli_default
    return dataclasses.field(default=default, metadata=meta)


def described(cls: type) -> Iterator[dataclasses.Field]:
    """The fields of ``cls`` that `option` declared."""
    return (f for f in dataclasses.fields(cls) if "check" in f.metadata)


def check_fields(obj: Any) -> None:
    """Run every field's check on ``obj`` and store the normalised values (for __post_init__)."""
    for f in described(type(obj)):
        setattr(obj, f.name, f.metadata["check"](f.name, getattr(obj, f.name)))


def cli_default(f: dataclasses.Field) -> Any:
    return f.metadata.get("cli_default", f.default)


# ---------------------------------------------------------------------- checks
def integer(low: Optional[int] = None, high: Optional[int] = None, optional: bool = False) -> Check:
    """An int in [low, high] (``optional``: or None)."""
    def check(name: str, value: Any) -> Any:
        return None if optional and value is None else check_int(name, value, low, high)
    return check


def real(low: Optional[float] = None, strict_low: bool = False) -> Check:
    """A finite real number >= low (> low with ``strict_low``), as a float."""
    def check(name: str, value: Any) -> float:
        return check_real(name, value, low, strict_low=strict_low)
    return check


def choice(*choices: Any) -> Check:
    """One of ``choices`` (None may be one of them)."""
    def check(name: str, value: Any) -> Any:
        if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        return value
    return check


def flag(optional: bool = False) -> Check:
    """A bool (``optional``: or None)."""
    def check(name: str, value: Any) -> Any:
        if isinstance(value, bool) or (optional and value is None):
            return value
        raise ValueError(f"{name} must be True or False{' or None' if optional else ''}, got {value!r}")
    return check


def text(optional: bool = False) -> Check:
    """A string (``optional``: or None)."""
    def check(name: str, value: Any) -> Any:
        if isinstance(value, str) or (optional and value is None):
            return value
        raise ValueError(f"{name} must be a string{' or None' if optional else ''}, got {value!r}")
    return check


def seed_number(name: str, value: Any) -> int:
    """A seed: an integer from 0 to `SEED_MAX`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= SEED_MAX:
        raise ValueError(f"{name} must be an integer from 0 to {SEED_MAX} (2**63 - 1), got {value!r}")
    return int(value)


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err


def device(name: str, value: Any) -> str:
    """A device string: "auto", "cpu", "cuda" or "cuda:N" (not checked against this machine)."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    try:
        resolve_device(value)
    except ValueError:
        raise ValueError(f"{name} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}") from None
    return value


def split_resume(cls: type) -> Tuple[Dict[str, dataclasses.Field], Dict[str, dataclasses.Field]]:
    """(fields a resumed run may change, fields the checkpoint fixes) of ``cls``."""
    free, fixed = {}, {}
    for f in described(cls):
        (free if f.metadata["resume"] else fixed)[f.name] = f
    return free, fixed
