"""Shared by the samplers' tests: the empirical frequencies of every outcome of a discrete sampler
against the exact probabilities (from the likelihood ops), with bounds derived from the number of
draws.

For each group (a pixel) the N draws give counts c_l of its L outcomes, expected N p_l:
- every outcome: |c_l - N p_l| <= Z sqrt(N p_l (1 - p_l)) + Z. Z = 6 is a two-sided normal tail
  of 2e-9 per outcome; the added Z covers the outcomes of small expected count, where the normal
  approximation is poor (for N p <= 1 a count above 7 has Poisson probability below 1e-5 ... 1e-9).
- all outcomes together: Pearson's chi-square over the outcomes of each group with those of
  expected count below 5 pooled into one, summed over groups, against its 1 - 1e-6 quantile
  (Wilson-Hilferty) for the degrees of freedom. The tests run with fixed seeds, so a pass is
  deterministic; a wrong law of the size the tests' positive controls use fails both.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

Z = 6.0
Z_CHI2 = 4.753  # the standard normal's 1 - 1e-6 quantile


def counts_of(outcomes: torch.Tensor, num_outcomes: int) -> torch.Tensor:
    """outcomes (N, G) integer outcome indices of N draws for G groups -> counts (G, L) float64."""
    n, g = outcomes.shape
    flat = outcomes.long().cpu() + torch.arange(g).view(1, g) * num_outcomes
    return torch.bincount(flat.reshape(-1), minlength=g * num_outcomes).view(g, num_outcomes).double()


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> Tuple[float, float]:
    """(Pearson's statistic, its 1 - 1e-6 quantile) of counts (G, L) against probs (G, L), the
    outcomes of expected count below 5 pooled per group."""
    n = counts.sum(1, keepdim=True)
    expected = n * probs
    small = expected < 5
    stat, dof = 0.0, 0
    for c, e, s in zip(counts, expected, small):
        cells_c = torch.cat([c[~s], c[s].sum().view(1)]) if s.any() else c
        cells_e = torch.cat([e[~s], e[s].sum().view(1)]) if s.any() else e
        keep = cells_e > 0
        stat += (((cells_c - cells_e) ** 2)[keep] / cells_e[keep]).sum().item()
        dof += int(keep.sum()) - 1
    dof = max(dof, 1)
    a = 2.0 / (9 * dof)
    return stat, dof * (1 - a + Z_CHI2 * math.sqrt(a)) ** 3


def assert_frequencies_match(counts: torch.Tensor, probs: torch.Tensor) -> None:
    """Both bounds of the module docstring; probs rows must sum to 1."""
    assert torch.allclose(probs.sum(1), torch.ones(probs.shape[0], dtype=probs.dtype), atol=1e-9)
    n = counts.sum(1, keepdim=True)
    gap = (counts - n * probs).abs()
    bound = Z * (n * probs * (1 - probs)).clamp_min(0).sqrt() + Z
    worst = (gap - bound).max().item()
    assert worst <= 0, f"an outcome's count is {worst:.1f} beyond its bound"
    stat, limit = chi_square(counts, probs)
    assert stat < limit, f"chi-square {stat:.1f} >= {limit:.1f}"


def assert_frequencies_differ(counts: torch.Tensor, probs: torch.Tensor) -> None:
    """Positive control: the chi-square test rejects a wrong law for the same counts."""
    stat, limit = chi_square(counts, probs)
    assert stat > limit, f"chi-square {stat:.1f} <= {limit:.1f}: the test cannot tell this law apart"
