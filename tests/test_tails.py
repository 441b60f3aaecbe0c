"""Exact tails at vocabulary scale: a class 19 nats below the top of a 65,536-way softmax.

With one class at 0 and the other 65,535 at -19, the low classes together have probability
q = 65535 e^-19 / (1 + 65535 e^-19) = 3.67e-4. A sampler whose Gumbel noise stops near 16.6 (23 or
24 random bits per uniform) draws them essentially never. The test counts, over N draws, how
often a low class wins and applies a two-sided binomial test at level 1e-6 with a fixed seed
(a correct sampler fails with probability 1e-6 over seeds; with the seed fixed the outcome is
deterministic). N = 40,000 gives an expected 14.7 wins; P(0 wins | correct) = 4e-7 < 1e-6/2, so a
truncated tail cannot pass.

Every other eager sampler draws its sample from the same noise stream as ``gumbel_max`` (the
same generator state gives the same index), which the second group of tests checks exactly, so
the vocabulary-scale law carries over to them without another 2.6e9-element run each.
"""

import math

import pytest
import torch
from scipy import stats

import gumbelkit as gk

V = 65_536
GAP = 19.0
N = 40_000
ROWS = 100  # draws per batch: 100 x 65536 float32 = 26 MB of noise at a time
Q = (V - 1) * math.exp(-GAP) / (1 + (V - 1) * math.exp(-GAP))


def test_gumbel_max_draws_a_class_19_nats_below_at_its_probability():
    gen = torch.Generator().manual_seed(2026)
    x = torch.full((ROWS, V), -GAP)
    x[:, 0] = 0.0
    k = sum(int((gk.gumbel_max(x, generator=gen) != 0).sum()) for _ in range(N // ROWS))
    p = stats.binomtest(k, N, Q).pvalue
    assert p > 1e-6, f"low classes won {k} of {N} draws, expected {N * Q:.1f} (p = {p:.2g})"


def _index(method: str, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if method == "gumbel_softmax_hard":
        return gk.gumbel_softmax(x, 0.5, True, generator=gen).detach().argmax(-1)
    if method == "gumbel_softmax_soft":
        return gk.gumbel_softmax(x, 1.0, generator=gen).detach().argmax(-1)
    if method == "gumbel_topk":
        return gk.gumbel_topk(x.detach(), 1, generator=gen)[..., 0]
    return gk.sample(x, method, tau=0.5, generator=gen).detach().argmax(-1)


@pytest.mark.parametrize("requires_grad", [True, False])
@pytest.mark.parametrize(
    "method",
    [
        "st_gumbel",
        "st",
        "gumbel_rao",
        "reinmax",
        "gapped_st",
        "decoupled_st_gumbel",
        "gumbel_softmax_hard",
        "gumbel_softmax_soft",
        "gumbel_topk",
    ],
)
def test_every_eager_sampler_draws_the_gumbel_max_sample(method, requires_grad):
    # Logits with a 19-nat tail in every row, so that the tail noise matters here too.
    base = torch.randn(64, 4096, generator=torch.Generator().manual_seed(1))
    base[:, 1:] -= GAP
    expected = gk.gumbel_max(base, generator=torch.Generator().manual_seed(7))
    x = base.clone().requires_grad_(requires_grad)
    got = _index(method, x, torch.Generator().manual_seed(7))
    assert torch.equal(got, expected)
