"""Polyak averaging of the weights (`TrainConfig.ema_decay`): the average, its use in evaluation,
checkpoints, exact resume, `load_model` and `fastvae eval`."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fastvae.training import METRICS_NAME, CheckpointError, Trainer, TrainConfig, load_checkpoint, load_model
from fastvae.training.averaging import WeightAverage, decay_at
from fastvae.training.rng import seed_everything
from fastvae.vae import build_mlp_vae


def _data(n_train=300, n_test=100, dim=64):
    protos = torch.rand(5, dim)

    def make(n):
        return (protos[torch.randint(0, 5, (n,))] + 0.2 * torch.rand(n, dim)).clamp(0, 1)
    return make(n_train), make(n_test)


def _model(seed=0):
    seed_everything(seed)
    return build_mlp_vae(64, (32,), 2)


def _cfg(**kw):
    base = dict(epochs=3, batch_size=64, seed=3, device="cpu", binarize="dynamic", progress=False, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def test_the_average_follows_its_recurrence():
    torch.manual_seed(0)
    net = nn.Linear(7, 5)
    avg = WeightAverage(net, 0.75)
    expected = [p.detach().clone().double() for p in net.parameters()]
    for t in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        avg.update()
        d = decay_at(0.75, t)
        expected = [d * e + (1 - d) * p.detach().double() for e, p in zip(expected, net.parameters())]
    assert avg.updates == 30
    for a, e in zip(avg.averaged, expected):
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-5)
    assert decay_at(0.999, 0) == pytest.approx(0.1) and decay_at(0.999, 10**6) == 0.999
    # The block swaps the average in and the trained weights back.
    trained = [p.detach().clone() for p in net.parameters()]
    with avg.swapped_in():
        assert all(torch.equal(p, a) for p, a in zip(net.parameters(), avg.averaged))
    assert all(torch.equal(p, t) for p, t in zip(net.parameters(), trained))
    assert not torch.equal(trained[0], avg.averaged[0])


def test_bad_decays_are_named():
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="ema_decay"):
            _cfg(ema_decay=bad)
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(nn.Linear(2, 2), 1.0)


def test_training_evaluates_the_average_and_resumes_it_exactly(tmp_path):
    train, test = _data()
    full = Trainer(_model(), train, test, _cfg(), out_dir=tmp_path / "full")
    full.fit()
    # The logged test ELBO is the average's, not the last weights'.
    last_elbo = json.loads((tmp_path / "full" / METRICS_NAME).read_text().splitlines()[-1])["test_elbo"]
    assert full.evaluate() == pytest.approx(last_elbo)
    avg, full.average = full.average, None  # the last weights give another number
    assert full.evaluate() != pytest.approx(last_elbo, abs=1e-6)
    full.average = avg

    first = Trainer(_model(), train, test, _cfg(epochs=1), out_dir=tmp_path / "split")
    first.fit()
    resumed = Trainer.from_checkpoint(tmp_path / "split", train, test, out_dir=tmp_path / "split", epochs=3)
    assert resumed.average.updates == first.step
    resumed.fit()
    for a, b in zip(full.average.averaged, resumed.average.averaged):
        assert torch.equal(a, b)

    # load_model gives the average by default, the last weights on request.
    state = load_checkpoint(tmp_path / "full")
    assert set(state["ema_state"]) == {n for n, _ in full.model.named_parameters()}
    averaged, _ = load_model(tmp_path / "full")
    last, _ = load_model(tmp_path / "full", averaged=False)
    names = [n for n, _ in full.model.named_parameters()]
    for name, a in zip(names, full.average.averaged):
        assert torch.equal(averaged.state_dict()[name], a)
        assert torch.equal(last.state_dict()[name], full.model.state_dict()[name])


def test_a_checkpoint_without_the_average_cannot_resume_an_averaging_run(tmp_path):
    train, test = _data()
    Trainer(_model(), train, test, _cfg(epochs=1), out_dir=tmp_path).fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["ema_state"] = None
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="ema_state"):
        Trainer.from_checkpoint(tmp_path, train, test, epochs=2)
    state["ema_state"] = {"decoder.0.weight": torch.zeros(3)}
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="'ema_state' entry"):
        load_checkpoint(tmp_path)


def test_runs_without_averaging_keep_their_weights(tmp_path):
    train, test = _data()
    trainer = Trainer(_model(), train, test, _cfg(ema_decay=0.0, epochs=1), out_dir=tmp_path)
    trainer.fit()
    assert trainer.average is None and load_checkpoint(tmp_path)["ema_state"] is None
    model, _ = load_model(tmp_path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trainer.model.state_dict().items())
