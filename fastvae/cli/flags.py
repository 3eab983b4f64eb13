"""Command-line flags made from option dataclasses (`TrainConfig` and the CLI's own options).

Each field declared with `fastvae.training.options.option` becomes one flag ``--field-name``:
its type, choices, help text and the default shown in the help come from the field; its
check validates the value given, naming the flag. Flags default to None on the command line so
that a resumed run can tell which ones the user gave.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Iterable, List, Optional

from ..training.options import cli_default, described

__all__ = ["flag_name", "add_flags", "defaults", "check_values", "fields_of"]


def flag_name(name: str) -> str:
    """The flag of a field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def fields_of(*classes: type) -> Dict[str, dataclasses.Field]:
    """Name -> field of every described field of ``classes``, in declaration order."""
    return {f.name: f for cls in classes for f in described(cls)}


def defaults(*classes: type) -> Dict[str, Any]:
    """The command line's default of every field of ``classes``."""
    return {name: cli_default(f) for name, f in fields_of(*classes).items()}


def _default_text(f: dataclasses.Field) -> str:
    text = f.metadata.get("default_help")
    if text is None:
        value = cli_default(f)
        text = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f" (default: {text})"


def _base_type(hint: Any) -> Any:
    """int for ``Optional[int]`` and so on."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def add_flags(group: Any, cls: type, names: Iterable[str]) -> None:
    """Add the flags of ``cls``'s fields ``names`` to an argparse parser or group."""
    hints = typing.get_type_hints(cls)
    fields = fields_of(cls)
    for name in names:
        f = fields[name]
        meta, flag = f.metadata, flag_name(name)
        kind = _base_type(hints[name])
        help_text = meta["help"]
        if kind is bool:
            if cli_default(f) is None or cli_default(f) is True:
                # A tri-state (None: decided at run time) or on-by-default setting: a flag each way.
                group.add_argument(flag, dest=name, action="store_true", default=None,
                                   help=help_text + _default_text(f))
                group.add_argument("--no-" + flag[2:], dest=name, action="store_false", default=None,
                                   help=f"the opposite of {flag}")
            else:
                group.add_argument(flag, dest=name, action="store_true", default=None, help=help_text)
            continue
        kwargs: Dict[str, Any] = {"dest": name, "default": None, "help": help_text + _default_text(f)}
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
        elif kind in (int, float):
            kwargs["type"] = kind
        group.add_argument(flag, **kwargs)


def check_values(values: Dict[str, Any], fields: Dict[str, dataclasses.Field],
                 skip: Optional[List[str]] = None) -> None:
    """Run each field's check on the values present (not None, not "auto"), naming its flag."""
    for name, value in values.items():
        if name in fields and value is not None and value != "auto" and name not in (skip or ()):
            fields[name].metadata["check"](flag_name(name), value)
