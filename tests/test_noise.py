"""Noise: distribution (KS tests), finiteness, tail, dtype policy, explicit randomness."""

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
    assert float(g.min()) > -5.0


def test_uniform_open_interval_even_when_rand_returns_zero(monkeypatch):
    u = gk.uniform_open((1_000_000,), generator=_gen(5))
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    # float64 draws come from torch.rand: force its measure-zero event rand == 0, and its
    # largest value 1 - 2^-53, to check the guard.
    real_rand = torch.rand

    def fake_rand(shape, **kw):
        out = real_rand(shape, **kw)
        out[0] = 0.0
        out[1] = 1.0 - 2.0**-53
        return out

    monkeypatch.setattr(torch, "rand", fake_rand)
    g = gk.gumbel_noise((4,), generator=_gen(0), dtype=torch.float64)
    assert torch.isfinite(g).all()
    assert -6.6 < float(g[0]) < -6.5  # -log(-log(tiny)) = -log(708.4)
    assert 36.0 < float(g[1]) < 37.0  # -log(2^-53)


def test_float32_uniforms_are_cell_midpoints_and_extreme_words_stay_finite(monkeypatch):
    # float32 on CPU: u = (2m + 1) 2^-24 from 23 random bits, so 2^24 u is an odd integer.
    k = gk.uniform_open((1_000_000,), generator=_gen(6)) * 2.0**24
    assert torch.equal(k, k.round()) and bool((k.long() % 2 == 1).all())
    # The extreme words (all bits clear / all set) give 2^-24 and 1 - 2^-24: finite Gumbels.
    from gumbelkit import _noise

    def fake_words(n, generator, device):
        w = torch.zeros(n, dtype=torch.int32, device=device)
        w[1::2] = -1  # 0xFFFFFFFF
        return w

    monkeypatch.setattr(_noise, "_random_words", fake_words)
    u = gk.uniform_open((4,))
    assert u.tolist() == [2.0**-24, 1.0 - 2.0**-24] * 2
    g = gk.gumbel_noise((2,))
    assert torch.isfinite(g).all()
    assert -2.9 < float(g[0]) < -2.8  # -log(-log 2^-24) = -log(16.64)
    assert 16.0 < float(g[1]) < 17.0  # -log(-log(1 - 2^-24)) ~ 24 log 2


def test_float32_noise_matches_its_distribution():
    # The float32 path (23-bit integer draws) against the exact CDFs; its 2^-23 cells are far
    # below what a KS test of 200k draws resolves (critical distance ~4e-3).
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
    from gumbelkit import _noise

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
