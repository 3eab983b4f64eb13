"""The training step on a real GPU: no device->host sync, and a CUDA graph of the whole step.

These need a CUDA device (skipped here, failures with FASTVAE_REQUIRE_CUDA=1 on the GPU machine);
the CPU-side counterparts (dispatcher traces without syncs) are in test_autograd.py and
test_training_sync.py.
"""
from __future__ import annotations

import pytest
import torch

from fastvae import build_mlp_vae

pytestmark = pytest.mark.needs_cuda


def _model_and_data(batch: int = 128):
    torch.manual_seed(0)
    model = build_mlp_vae(784, (400,), 20).cuda()
    x = (torch.rand(batch, 784, device="cuda") > 0.5).float()
    return model, x


def test_fused_training_step_makes_no_device_sync():
    model, x = _model_and_data()
    # fused Adam keeps its step counters on the device (the default one reads them on the host)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(x).backward()
        opt.step()

    step()
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cuda_graph_of_a_training_step_replays_like_eager():
    model, x = _model_and_data()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capturing stream, as CUDA graphs require
        for _ in range(3):
            model.zero_grad(set_to_none=False)
            model.loss(x).backward()
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=False)  # gradients accumulate into these tensors on every replay
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = model.loss(x)
        loss.backward()

    state = torch.cuda.get_rng_state()  # the replay draws its eps from the generator's offset now
    graph.replay()
    torch.cuda.synchronize()
    got_loss, got = loss.clone(), [p.grad.clone() for p in model.parameters()]

    torch.cuda.set_rng_state(state)
    model.zero_grad(set_to_none=True)
    want_loss = model.loss(x)
    want_loss.backward()
    assert torch.isfinite(got_loss) and torch.allclose(got_loss, want_loss, rtol=1e-5, atol=1e-5)
    for g, p in zip(got, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)
    # a second replay draws new eps: the graph does not freeze the sample
    graph.replay()
    torch.cuda.synchronize()
    assert not torch.equal(loss, got_loss)


def _replay_and_eager(fn):
    """fn() under a CUDA graph, replayed once, and eagerly from the generator state of the replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    state = torch.cuda.get_rng_state()
    graph.replay()
    torch.cuda.synchronize()
    got = out.detach().clone()
    torch.cuda.set_rng_state(state)
    return got, fn().detach()


def test_cuda_graph_replay_of_the_sampler_draws_the_eager_eps():
    # Narrows the training-step graph test down to the sampler: same generator state, same eps.
    torch.manual_seed(0)
    mu, logvar = torch.randn(128, 20, device="cuda"), torch.randn(128, 20, device="cuda")
    from fastvae import functional as F

    got, want = _replay_and_eager(lambda: F.reparameterize(mu, logvar))
    assert torch.equal(got, want)
    got, want = _replay_and_eager(lambda: F.reparameterize_with_kl(mu, logvar)[0])
    assert torch.equal(got, want)


def test_cuda_graph_replay_of_the_model_forward_matches_eager():
    model, x = _model_and_data()
    with torch.no_grad():
        got, want = _replay_and_eager(lambda: model.loss(x))
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6), (got.item(), want.item())
