"""The package's shape (issue 17): the core imports nothing heavy, the application loads lazily,
no Python file grows past 500 lines, and ``fastvae train``'s flags come from the option fields."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500

# Modules loaded by an import beyond what `import torch` already loaded (torch itself imports
# tqdm through torch.hub and numpy when they are installed, so those are compared, not banned).
_NEW_MODULES = """
import json, sys
import torch
before = set(sys.modules)
{stmt}
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _new_modules(stmt: str) -> list:
    proc = subprocess.run([sys.executable, "-c", _NEW_MODULES.format(stmt=stmt)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _top(names: list) -> set:
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize("stmt", ["import fastvae.functional", "import fastvae.loss", "import fastvae.reference",
                                  "import fastvae"])
def test_the_core_imports_no_application_and_nothing_heavy(stmt):
    new = _new_modules(stmt)
    assert not _top(new) & {"tqdm", "matplotlib", "sklearn", "PIL"}, new
    app = [n for n in new if n.startswith(("fastvae.vae", "fastvae.training", "fastvae.cli", "fastvae.bench"))]
    assert not app, app


def test_the_application_names_load_on_first_use_without_matplotlib():
    new = _new_modules("from fastvae import VAE, ELBOLoss, Trainer, TrainConfig, load_model, "
                       "build_mlp_vae, build_conv_vae, build_vae, fit")
    assert "fastvae.training.trainer" in new and "fastvae.vae.model" in new
    assert not _top(new) & {"matplotlib", "sklearn"}, new
    assert not [n for n in new if n.startswith(("fastvae.bench", "fastvae.vae.plots", "fastvae.cli"))], new


def test_the_core_works_without_the_train_extra():
    # tqdm, matplotlib and scikit-learn made unimportable: the core and the VAE module still work.
    code = ("import sys\nfor name in ('tqdm', 'matplotlib', 'sklearn'):\n    sys.modules[name] = None\n"
            "import torch, fastvae\nfrom fastvae import ELBOLoss, VAE, build_mlp_vae\n"
            "vae = build_mlp_vae(6, (4,), 2)\nprint(float(vae.loss(torch.rand(3, 6).round())) > 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr


def test_no_python_file_is_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.glob("fastvae/**/*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_train_flags_come_from_the_option_fields():
    """Every TrainConfig field is a flag with its help and default; --resume refuses exactly the
    fields not marked resume=True."""
    import argparse

    from fastvae import cli
    from fastvae.cli.train import TRAIN_FIELDS
    from fastvae.training import RESUME_OVERRIDABLE, TrainConfig

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = {}
    for action in sub.choices["train"]._actions:
        train.setdefault(action.dest, action)  # --progress before --no-progress
    for f in dataclasses.fields(TrainConfig):
        assert f.name in train and f.name in TRAIN_FIELDS, f.name
        assert f.metadata["help"] in train[f.name].help
    assert RESUME_OVERRIDABLE == {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resume"]}
    assert {"epochs", "max_steps", "device"} <= RESUME_OVERRIDABLE and not {"lr", "seed", "beta"} & RESUME_OVERRIDABLE
    # The help of a value flag shows the dataclass's default.
    assert "(default: 128)" in train["batch_size"].help and "(default: fused)" in train["loss_impl"].help
