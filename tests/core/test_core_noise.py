"""Noise: distribution (KS tests), finiteness, tail, dtype policy, explicit randomness."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import gumbelkit as gk

# Every KS/chi-square test here uses a fixed seed and level ALPHA: a correct sampler would fail
# with probability ALPHA over random seeds; with the fixed seed the outcome is deterministic.
ALPHA = 1e-3


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_gumbel_matches_gumbel_distribution():
    g = gk.gumbel_noise((200_000,), generator=_gen(1), dtype=torch.float64)
    assert stats.kstest(g.numpy(), stats.gumbel_r.cdf).pvalue > ALPHA


def test_exponential_and_logistic_match_their_distributions():
    e = gk.exponential_noise((200_000,), generator=_gen(2), dtype=torch.float64)
    assert stats.kstest(e.numpy(), stats.expon.cdf).pvalue > ALPHA
    lo = gk.logistic_noise((200_000,), generator=_gen(3), dtype=torch.float64)
    assert stats.kstest(lo.numpy(), stats.logistic.cdf).pvalue > ALPHA


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gumbel_tail_not_truncated_and_finite(dtype):
    # P(g > 12) = 1 - exp(-exp(-12)) ~ 6.1e-6, so 4e6 draws exceed 12 about 24 times
    # (probability of none: e^-24). Half-precision noise would stop near 7.6 (fp16) / 5.5 (bf16).
    g = gk.gumbel_noise((4_000_000,), generator=_gen(4), dtype=dtype)
    assert g.dtype == dtype
    assert torch.isfinite(g).all()
    assert float(g.max()) > 12.0
    assert float(g.min()) > -4.0


def test_uniform_open_interval():
    u = gk.uniform_open((1_000_000,), generator=_gen(5))
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    u64 = gk.uniform_open((100_000,), generator=_gen(5), dtype=torch.float64)
    assert u64.dtype == torch.float64 and float(u64.min()) > 0.0 and float(u64.max()) < 1.0


def test_float32_uniforms_are_cell_midpoints():
    # uniform_open float32 on CPU: u = (2m + 1) 2^-24 from 23 random bits, so 2^24 u is an odd integer.
    k = gk.uniform_open((1_000_000,), generator=_gen(6)) * 2.0**24
    assert torch.equal(k, k.round()) and bool((k.long() % 2 == 1).all())


def test_exact_construction_reaches_documented_extremes():
    # One bit picks the half of (0, 1), the rest give v = (m + 1/2) 2^-32 (2^-64): the extreme
    # words give the documented extremes of g = -log E exactly.
    from gumbelkit._core import noise as _noise

    w32 = torch.tensor([0, -(2**31), 2**31 - 1, -1], dtype=torch.int32)
    g32 = -_noise.exp_from_words32(w32, log=True).double()
    assert abs(float(g32[0]) - 33 * math.log(2)) < 1e-5  # E = -log1p(-2^-33) = 2^-33: g = 22.87
    assert abs(float(g32[1]) + math.log(33 * math.log(2))) < 1e-5  # E = 33 log 2: g = -3.13
    # v = 1/2 from either half: E = log 2
    assert torch.allclose(g32[2:], torch.full((2,), -math.log(math.log(2)), dtype=torch.float64), atol=1e-6)
    w64 = torch.tensor([0, -(2**63)], dtype=torch.int64)
    g64 = -_noise.exp_from_words64(w64, log=True)
    assert abs(float(g64[0]) - 65 * math.log(2)) < 1e-9  # 45.05
    assert abs(float(g64[1]) + math.log(65 * math.log(2))) < 1e-9  # -3.81


def test_cpu_float32_tail_cells_are_refined_from_fresh_words(monkeypatch):
    # The CPU float32 path: body cells give u = (2m + 1) 2^-24; the 16 outermost cells at each
    # end are redrawn from fresh words: U = p V (low tail) or 1 - U = p V (high tail), p = 2^-19.
    from gumbelkit._core import noise as _noise

    cells = [0, 15, 16, (1 << 23) - 17, (1 << 23) - 16, (1 << 23) - 1]
    fresh = [-(2**31), -(2**31), -(2**31), 2**31 - 1]  # V = 2^-33 (three times), 1 - 2^-33
    calls = []

    def take(self, n):
        calls.append(n)
        if len(calls) == 1:  # high bits set too: only the low 23 bits may matter for the cell
            return torch.tensor(cells[:n], dtype=torch.int64).bitwise_or(0x7F800000).to(torch.int32)
        return torch.tensor(fresh[:n], dtype=torch.int32)

    monkeypatch.setattr(_noise._WordStream, "take", take)
    e = _noise._exp_cpu32(len(cells), None, log=False).double()
    assert calls == [6, 4]
    p = 2.0**-19
    u16 = 33 * 2.0**-24
    assert abs(float(e[2]) + math.log(u16)) < 1e-6 * abs(math.log(u16))  # body cell 16
    e_hi = -math.log1p(-33 * 2.0**-24)  # body cell 2^23 - 17: u = (2m + 1) 2^-24 = 1 - 33 2^-24
    assert abs(float(e[3]) - e_hi) < 1e-6 * e_hi
    v = 1 - 2.0**-33  # fresh word 2^31 - 1: V = (W + 2^31 + 1/2) 2^-32
    expected = [-math.log(p * 2.0**-33), -math.log(p * 2.0**-33), -math.log1p(-p * v)]
    got = [float(e[0]), float(e[1]), float(e[5])]
    assert all(abs(a - b) < 1e-6 * abs(b) for a, b in zip(got, expected))
    # the word with a high-tail cell keeps its own fresh word's order: cell 2^23-16 got V = 2^-33
    assert abs(float(e[4]) - (-math.log1p(-p * 2.0**-33))) < 1e-6 * p * 2.0**-33
    g = -torch.log(e)
    assert float(g.max()) > 36.0 and float(g.min()) < -3.5  # 52 log 2 and -log(52 log 2)


def test_tail_refinement_follows_the_conditional_law():
    # E restricted to a tail region must follow Exp(1) conditioned on that region. KS test of
    # the refined values against the exact conditional CDFs (alpha = ALPHA, fixed seed).
    from gumbelkit._core import noise as _noise

    n = 200_000
    gen = _gen(31)
    fresh = torch.empty(n, dtype=torch.int64).random_(-(2**31), 2**31, generator=gen).to(torch.int32)
    p = _noise._TAIL_P
    low = _noise._exp_tail(torch.zeros(n, dtype=torch.int32), fresh).numpy()
    # low tail: U < p <=> E > -log p; P(E > x | E > -log p) = exp(-x) / p
    cdf_low = lambda x: 1.0 - np.exp(-x) / p
    assert stats.kstest(low, cdf_low).pvalue > ALPHA
    high = _noise._exp_tail(torch.full((n,), (1 << 23) - 1, dtype=torch.int32), fresh).numpy()
    # high tail: U > 1 - p <=> E < -log(1 - p); P(E <= x | ...) = (1 - exp(-x)) / p
    cdf_high = lambda x: -np.expm1(-x) / p
    assert stats.kstest(high, cdf_high).pvalue > ALPHA


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_tail_counts_match_exact_probabilities(dtype):
    # Counts of g above 14 and below -2.65 in 2^25 draws against Binomial(n, exact p); the
    # 23-bit construction without tail refinement puts every value above 13.17 (below -2.60)
    # into 16 discrete cells. Two-sided test at 1e-6 per count (4e-6 per run) with a fixed seed.
    n = 1 << 25
    g = torch.cat([gk.gumbel_noise((1 << 22,), generator=_gen(40 + i), dtype=dtype) for i in range(8)]).double()
    for t, upper in [(14.0, True), (-2.65, False)]:
        p = -math.expm1(-math.exp(-t)) if upper else math.exp(-math.exp(-t))
        k = int((g > t).sum()) if upper else int((g < t).sum())
        assert stats.binomtest(k, n, p).pvalue > 1e-6, (t, k, n * p)
    # the tail is not just present but continuous: distinct values above 13.2
    top = g[g > 13.2]
    assert top.unique().numel() == top.numel()


def test_float32_noise_matches_its_distribution():
    # The float32 paths against the exact CDFs: the 2^-23 cells of the CPU body are far below
    # what a KS test of 200k draws resolves (critical distance ~4e-3).
    u = gk.uniform_open((200_000,), generator=_gen(7))
    assert stats.kstest(u.double().numpy(), stats.uniform.cdf).pvalue > ALPHA
    g = gk.gumbel_noise((200_000,), generator=_gen(8))
    assert stats.kstest(g.double().numpy(), stats.gumbel_r.cdf).pvalue > ALPHA


@pytest.mark.parametrize("fn", [gk.gumbel_noise, gk.exponential_noise, gk.uniform_open, gk.logistic_noise])
def test_generator_determinism_and_global_rng_untouched(fn):
    state = torch.get_rng_state()
    a = fn((3, 7), generator=_gen(11))
    b = fn((3, 7), generator=_gen(11))
    c = fn((3, 7), generator=_gen(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_float64_noise_on_request_and_errors():
    assert gk.gumbel_noise((2,), dtype=torch.float64).dtype == torch.float64
    with pytest.raises(TypeError, match="floating"):
        gk.gumbel_noise((2,), dtype=torch.int64)
    with pytest.raises(TypeError, match="generator"):
        gk.gumbel_noise((2,), generator=123)


@pytest.mark.parametrize("n", [7, (1 << 15) + 1])  # the torch-generator path and the NumPy SFC64 path
def test_random_words_reproducible_keyed_by_the_generator_only(n):
    from gumbelkit._core import noise as _noise

    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = _noise._random_words(n, _gen(21), "cpu")
    b = _noise._random_words(n, _gen(21), "cpu")
    c = _noise._random_words(n, _gen(22), "cpu")
    assert a.shape == (n,) and a.dtype == torch.int32
    assert torch.equal(a, b) and not torch.equal(a, c)
    # neither the global torch RNG nor NumPy's global RNG is read or advanced
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    # consecutive draws on one generator differ, and every bit position is a fair coin
    g = _gen(23)
    assert not torch.equal(_noise._random_words(n, g, "cpu"), _noise._random_words(n, g, "cpu"))
    if n > 1000:
        bits = ((a.unsqueeze(1) >> torch.arange(32, dtype=torch.int32)) & 1).double()
        # each of the 32 bit columns: |mean - 1/2| < 4.9 sigma (two-sided 1e-6 each, 3.2e-5 total)
        assert ((bits.mean(0) - 0.5).abs() < 4.9 * 0.5 / n**0.5).all()
