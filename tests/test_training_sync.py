"""A Trainer step waits for no device: a dispatcher trace of whole training steps shows no op that
reads a tensor's value on the host (issue 9, item 3), in one process and in a 2-rank gloo DDP run.

On the CPU these ops cost nothing, but they are exactly the ones that stall the host on a GPU:
``_local_scalar_dense`` (``.item()``, ``float(t)``), ``is_nonzero`` (``bool(t)``), ``equal``.
"""
from __future__ import annotations

import os
import signal
import socket
from typing import Any, Dict

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastvae.bench.dispatch import SYNC_OPS, DispatchCounter
from fastvae.vae import build_mlp_vae
from fastvae.training import TrainConfig, Trainer, seed_everything

LOSS_IMPLS = ("fused", "reference")
WORLD = 2


class TraceSteps:
    """Trainer callback tracing from after step ``first`` to after step ``last``: the loop's own
    work between steps (stop check, next batch, step, bookkeeping, logging) included."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.mode = DispatchCounter()

    def __call__(self, trainer: Trainer, info: Dict[str, Any]) -> None:
        if info["step"] == self.first:
            self.mode.__enter__()
        elif info["step"] == self.last:
            self.mode.__exit__(None, None, None)

    @property
    def syncs(self) -> Dict[str, int]:
        return {op: self.mode.counts[op] for op in SYNC_OPS if self.mode.counts[op]}


def _data(n: int = 300, dim: int = 64) -> torch.Tensor:
    protos = torch.rand(4, dim)
    return (protos[torch.randint(0, 4, (n,))] + 0.2 * torch.rand(n, dim)).clamp(0, 1)


def _trainer(loss_impl: str, trace: TraceSteps, **cfg: Any) -> Trainer:
    seed_everything(1)
    config = dict(epochs=1, batch_size=32, seed=2, device="cpu", binarize="dynamic", warmup=1,
                  progress=False, loss_impl=loss_impl)
    config.update(cfg)
    return Trainer(build_mlp_vae(64, (16,), 3), _data(), config=TrainConfig(**config), callbacks=[trace])


# ---------------------------------------------------------------------- one process
@pytest.mark.parametrize("loss_impl", LOSS_IMPLS)
def test_a_training_step_reads_no_tensor_on_the_host(loss_impl):
    # Step 4 of 10 in the epoch, after the warm-up's first steps; the whole step with the loss.
    trace = TraceSteps(3, 4)
    _trainer(loss_impl, trace).fit()
    counts = trace.mode.counts
    assert counts["addmm"] >= 4 and counts["_fused_adam_"] == 1  # the trace holds one whole step
    assert trace.syncs == {}, f"{loss_impl}: {trace.syncs}"


def test_progress_bar_and_log_read_the_loss_only_every_few_steps():
    # Plain-PyTorch loss, so that only the trainer's own reads count.
    first, last, log_every = 1, 14, 4
    trace = TraceSteps(first, last)
    trainer = _trainer("reference", trace, batch_size=16, progress=True, log_every=log_every)
    assert trainer.steps_per_epoch == 19
    trainer.fit()
    steps = range(first + 1, last + 1)
    expected = sum(s % log_every == 0 for s in steps) + sum(s % 10 == 0 for s in steps)
    assert expected == 4
    assert trace.mode.counts["_local_scalar_dense"] == expected, trace.syncs
    assert trace.syncs.keys() <= {"_local_scalar_dense"}


# ---------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same data on both ranks
    out: Dict[str, Any] = {}
    for impl in LOSS_IMPLS:
        trace = TraceSteps(3, 4)  # not a stop-check step (every 16 and at the epoch's end)
        trainer = _trainer(impl, trace, batch_size=64)  # 4 steps of 32 rows per rank
        assert trainer.dist.world_size == WORLD and trainer.steps_per_epoch == 5
        trainer.fit()
        out[impl] = {"syncs": trace.syncs, "fused_adam": trace.mode.counts["_fused_adam_"],
                     "allreduce_ops": trace.mode.counts["allreduce_"]}

    # Ctrl-C reaches rank 1 alone, after step 1: both ranks still stop after the same step,
    # the first stop check (every 3 steps here).
    def ctrl_c(trainer: Trainer, info: Dict[str, Any]) -> None:
        if rank == 1 and info["step"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    seed_everything(1)
    trainer = Trainer(build_mlp_vae(64, (16,), 3), _data(), callbacks=[ctrl_c],
                      config=TrainConfig(epochs=3, batch_size=64, seed=2, device="cpu", progress=False))
    trainer.stop_check_every = 3
    try:
        trainer.fit()
        out["stopped_at"] = None
    except KeyboardInterrupt:
        out["stopped_at"] = trainer.step
    steps = [torch.zeros((), dtype=torch.int64) for _ in range(WORLD)]
    dist.all_gather(steps, torch.tensor(out["stopped_at"] or -1))
    out["all_stopped_at"] = [int(s) for s in steps]
    if rank == 0:
        torch.save(out, result)
    trainer.close()
    # Leave without interpreter teardown: gloo's threads were seen to abort the process there
    # ("terminate called without an active exception") on a loaded machine, after the results
    # were written and the group left.
    os._exit(0)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> Dict[str, Any]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    result = tmp_path_factory.mktemp("ddp") / "result.pt"
    mp.spawn(_worker, args=(_free_port(), str(result)), nprocs=WORLD, join=True)
    return torch.load(result, weights_only=False)


@pytest.mark.parametrize("loss_impl", LOSS_IMPLS)
def test_a_ddp_training_step_reads_no_tensor_on_the_host(ddp_results, loss_impl):
    got = ddp_results[loss_impl]
    assert got["fused_adam"] == 1 and got["allreduce_ops"] >= 1  # one whole step, gradients reduced
    assert got["syncs"] == {}, f"{loss_impl}: {got['syncs']}"


def test_ddp_ranks_agree_on_a_ctrl_c_at_the_next_stop_check(ddp_results):
    assert ddp_results["all_stopped_at"] == [3, 3]
