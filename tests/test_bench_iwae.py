"""benchmarks/bench_iwae.py: its eager baseline computes the bound the fused loss trains, and its
report has every row the docs cite."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from fastvae.vae import build_mlp_vae
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
B = load_script("bench_iwae")


def test_eager_baseline_estimates_the_fused_loss_in_mean():
    # The speed-up compares like with like only if both sides estimate the same negative IWAE bound.
    torch.manual_seed(5)
    model = build_mlp_vae(12, (8,), 3, activation="tanh").double()
    x = (torch.rand(4, 12) < 0.4).double()
    draws = 3000
    with torch.no_grad():
        eager = torch.stack([B.eager_iwae_loss(model, x, 3) for _ in range(draws)])
        fused = torch.stack([model.loss(x, objective="iwae", num_samples=3, gradient="dreg") for _ in range(draws)])
    se = (eager.var() / draws + fused.var() / draws).sqrt()
    assert se > 0 and (eager.mean() - fused.mean()).abs() < 4 * se
    # and K = 1 (the one-sample ELBO) gives a larger mean loss than the K = 3 bound
    with torch.no_grad():
        elbo = torch.stack([B.eager_iwae_loss(model, x, 1) for _ in range(draws)])
    assert elbo.mean() > eager.mean()


def test_report_rows(tmp_path):
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_iwae.py"), "--k", "2", "--batch", "3",
                    "--steps", "1", "--threads", "1", "--no-compile", "--out", str(out)], check=True,
                   capture_output=True, cwd=ROOT)
    row = json.loads(out.read_text())
    assert row["k"] == 2 and row["batch"] == 3 and row["steps"] == 1 and row["threads"] == 1
    for impl in ("fused_reparam", "fused_dreg", "eager"):
        assert row[f"{impl}_ms"] > 0 and row[f"{impl}_peak_mb"] > 0
    assert "compile_ms" not in row
    clock = "cpu_ms" if "eager_cpu_ms" in row else "ms"  # one thread: the calling thread's CPU time
    assert row["fused_dreg_speedup_vs_eager"] == row[f"eager_{clock}"] / row[f"fused_dreg_{clock}"]
    assert row["environment"]["torch"] == torch.__version__ and row["environment"]["device_type"] == "cpu"
