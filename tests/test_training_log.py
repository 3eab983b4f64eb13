"""The training run's metrics log under kills: a torn last line is skipped and cut off, the log is
truncated to the checkpoint a run resumes from, and a run killed mid-epoch resumes with each
record once (moved from test_training.py, which had grown past 500 lines)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from fastvae.training import METRICS_NAME, Trainer, load_checkpoint

from .test_training import _data

def test_metrics_reader_skips_a_torn_last_line(tmp_path):
    from fastvae.training.runlog import append_record, read_metrics

    log = tmp_path / METRICS_NAME
    append_record(log, {"kind": "epoch", "step": 5, "train_loss": 1.5})
    with open(log, "a") as f:
        f.write('{"kind": "epoch", "step": 1')
    with pytest.warns(RuntimeWarning, match="torn last line"):
        assert read_metrics(log) == [{"kind": "epoch", "step": 5, "train_loss": 1.5}]
    # The next append cuts the torn line off instead of gluing its record onto it.
    with pytest.warns(RuntimeWarning, match="dropped a torn last line"):
        append_record(log, {"kind": "epoch", "step": 10, "train_loss": 1.25})
    assert [json.loads(l)["step"] for l in log.read_text().splitlines()] == [5, 10]


def test_truncating_the_log_to_a_checkpoint_step(tmp_path):
    from fastvae.training.runlog import truncate_after_step

    log = tmp_path / METRICS_NAME
    records = [{"kind": "step", "step": s} for s in (2, 4, 6, 8)]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "ep')
    with pytest.warns(RuntimeWarning, match=r"torn last line and 2 record\(s\) after step 4"):
        assert truncate_after_step(log, 4) == 3
    assert [json.loads(l)["step"] for l in log.read_text().splitlines()] == [2, 4]
    assert truncate_after_step(log, 4) == 0  # nothing left to cut: the file is not rewritten


_KILLED_RUN = """
import os, signal, sys, torch
from fastvae.vae import build_mlp_vae
from fastvae.training import TrainConfig, Trainer, seed_everything
sys.path.insert(0, {tests!r})
from test_training import _data, _model, _cfg
torch.manual_seed(0)
train, test = _data()
def kill(trainer, info):
    # Epoch 3's record is written, the next checkpoint (after epoch 4) never is.
    if info["step"] == 16:
        os.kill(os.getpid(), signal.SIGKILL)
Trainer(_model(), train, test, _cfg(epochs=4, checkpoint_every=2, log_every=3), out_dir={out!r},
        callbacks=[kill]).fit()
"""


def test_a_killed_run_resumes_with_each_record_once(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    script = _KILLED_RUN.format(tests=str(Path(__file__).parent), out=str(out))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    before = [json.loads(l) for l in (out / METRICS_NAME).read_text().splitlines()]
    assert [r["epoch"] for r in before if r["kind"] == "epoch"] == [1, 2, 3]
    assert load_checkpoint(out)["step"] == 10  # after epoch 2 (5 steps each)

    torch.manual_seed(0)
    train, test = _data()
    with pytest.warns(RuntimeWarning, match=r"after step 10"):
        resumed = Trainer.from_checkpoint(out, train, test, out_dir=out)
        resumed.fit()
    after = [json.loads(l) for l in (out / METRICS_NAME).read_text().splitlines()]
    assert [r["epoch"] for r in after if r["kind"] == "epoch"] == [1, 2, 3, 4]
    assert [r["step"] for r in after if r["kind"] == "step"] == [3, 6, 9, 12, 15, 18]
    # The exact resume redid epoch 3 as the killed run did it.
    redone = next(r for r in after if r["kind"] == "epoch" and r["epoch"] == 3)
    killed = next(r for r in before if r["kind"] == "epoch" and r["epoch"] == 3)
    assert redone["train_loss"] == killed["train_loss"] and redone["test_elbo"] == killed["test_elbo"]
