"""DistributedDataParallel on CPU (gloo): two ranks train like one process on the global batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastvae.functional as F
from fastvae.vae import build_mlp_vae
from fastvae.training import METRICS_NAME, TrainConfig, Trainer, load_checkpoint, seed_everything

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available")

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    """320 training / 64 test examples (float64): 5 full global batches of 64 per epoch."""
    g = torch.Generator().manual_seed(11)
    protos = torch.rand(4, 64, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 4, (384,), generator=g)
    x = (protos[idx] + 0.3 * torch.rand(384, 64, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x[:320], x[320:]


def _model():
    seed_everything(5)
    return build_mlp_vae(64, (32,), 3).double()


def _config(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=64, seed=9, device="cpu", binarize="dynamic", warmup=1,
                free_bits=0.05, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _noise_free(mu, logvar, num_samples=None, generator=None):
    return mu


def _noise_free_with_kl(mu, logvar, num_samples=None, generator=None):
    return mu, F.kl_standard_normal(mu, logvar)


def _worker(rank: int, port: int, out_dir: str, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # two ranks on two cores
    train, test = _data()
    # The fused sampler's Philox counter runs over each rank's own rows, so per-example noise
    # depends on the sharding; without noise the runs must agree up to rounding.
    real_samplers = F.reparameterize, F.reparameterize_with_kl
    F.reparameterize, F.reparameterize_with_kl = _noise_free, _noise_free_with_kl
    ddp = Trainer(_model(), train, test, _config(), out_dir=out_dir)  # joins the group from the env
    ddp.fit()
    F.reparameterize, F.reparameterize_with_kl = real_samplers
    # With the real sampler (each rank its own noise) DDP keeps the ranks' weights identical.
    noisy = Trainer(_model(), train, test, _config(epochs=1))
    noisy.fit()
    flat = torch.cat([p.detach().flatten() for p in noisy.model.parameters()])
    every = [torch.empty_like(flat) for _ in range(WORLD)]
    dist.all_gather(every, flat)
    if rank == 0:
        torch.save({"state": ddp.model.state_dict(), "noisy": every}, result)
    ddp.close()


def test_two_gloo_ranks_match_one_process_on_the_global_batch(tmp_path, monkeypatch):
    out_dir, result = tmp_path / "ddp", tmp_path / "result.pt"
    mp.spawn(_worker, args=(_free_port(), str(out_dir), str(result)), nprocs=WORLD, join=True)

    monkeypatch.setattr(F, "reparameterize", _noise_free)
    monkeypatch.setattr(F, "reparameterize_with_kl", _noise_free_with_kl)
    train, test = _data()
    single = Trainer(_model(), train, test, _config())
    single.fit()
    got = torch.load(result, weights_only=True)
    moved = 0.0
    initial = _model().state_dict()
    for name, expected in single.model.state_dict().items():
        assert torch.allclose(got["state"][name], expected, rtol=1e-9, atol=1e-12), name
        moved = max(moved, (expected - initial[name]).abs().max().item())
    assert moved > 1e-3  # the weights did train, so the comparison means something

    noisy = got["noisy"]
    assert torch.equal(noisy[0], noisy[1])

    # Rank 0 alone wrote the log and the checkpoint, with both ranks' RNG states.
    records = [json.loads(l) for l in (out_dir / METRICS_NAME).read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    state = load_checkpoint(out_dir)
    assert state["world_size"] == WORLD and len(state["rng"]) == WORLD
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # independent noise
    assert records[-1]["test_elbo"] == pytest.approx(single.history[-1]["test_elbo"], rel=1e-9)


def test_torchrun_cli_trains_with_two_processes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           "-m", "fastvae", "train", "--epochs", "2", "--hidden", "32", "--device", "cpu",
           "--out", str(out), "--no-progress", "--eval-samples", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("2 process(es)") == 1  # only rank 0 speaks
    for name in ("checkpoint.pt", "metrics.jsonl", "samples.png", "reconstructions.png", "curve.png", "latents.png"):
        assert (out / name).is_file(), name
    assert len((out / METRICS_NAME).read_text().splitlines()) == 2
    state = load_checkpoint(out)
    assert state["world_size"] == WORLD and state["step"] == 2 * 12  # 1438 digits in batches of 128

    # The two-rank checkpoint continues in one process (fresh sampling streams, with a warning).
    from fastvae.vae.data import load_dataset

    data = load_dataset("digits")
    with pytest.warns(UserWarning, match="2 rank"):
        trainer = Trainer.from_checkpoint(out, data.train, data.test, epochs=3, progress=False)
    trainer.fit()
    assert trainer.epoch == 3 and trainer.step == 3 * 12
