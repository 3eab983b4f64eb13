"""The kl_normal family: KL(q || p) between two diagonal Gaussians (`kl_normal`) and the sample of q
with its KL against a per-row prior (`reparameterize_with_kl(..., prior_mu=, prior_logvar=)`, the
op of a hierarchical VAE's layer), forward + backward with all four gradients, fused against the
eager reference (fastvae.reference: torch.randn and the hand-written KL) and that reference under
torch.compile: speed and peak memory at a VAE's latent (B=4096, Z=64) and a VDVAE-like layer's
(B=32, Z=16x32x32).

    python benchmarks/bench_kl_normal.py [--dtype float32 bfloat16] [--families latents mnist] [--out r.json]

Every flag of `fastvae bench` applies (`--ops` picks some of the family's ops). The goals on the
CPU (benchmarks/check_goals.py): >= 2.5x eager, >= 1.5x torch.compile, peak memory <= 0.5x eager.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from fastvae.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(family="kl_normal", description=__doc__))
