"""Load a script of benchmarks/ as a module, for the tests of that script."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str) -> ModuleType:
    """benchmarks/NAME.py as module ``benchmark_NAME`` (a prefix, so that "tables" cannot shadow a
    package of that name), registered in sys.modules: dataclasses look their module up there."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
