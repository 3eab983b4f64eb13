"""The ``fastvae`` command line: ``train | sample | eval | bench`` (also ``python -m fastvae``).

`main` is the console script's entry point; `build_parser` its parser. ``fastvae train``'s flags
are made from `fastvae.training.TrainConfig` and `fastvae.cli.options`' dataclasses.
"""
from .checks import CLIError
from .main import build_parser, main, version_text

__all__ = ["main", "build_parser", "CLIError", "version_text"]
