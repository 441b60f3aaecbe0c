"""gumbelkit.kernels: Philox known answers, noise quality, semantics of the fused Gumbel-Softmax.

The fast tests run the fused algorithm op by op (``gumbel_softmax_reference``: the very function
that is compiled, without the compiler), so they need no compilation; the tests that compile are
marked slow (tens of seconds of Inductor/C++ compilation on a 2-core CPU) and check that the
compiled kernel reproduces the reference.

Statistical tests use fixed seeds at level ALPHA (or the level their docstring states): a correct
sampler fails with probability ALPHA over random seeds; with the fixed seed the outcome is
deterministic.
"""

import math
import random
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import gumbelkit as gk
from gumbelkit import kernels as K
from gumbelkit.kernels import _fused
from gumbelkit.kernels._philox import (
    PHILOX_M0,
    PHILOX_M1,
    add32,
    as_int32,
    as_uint32,
    gumbel_float32,
    gumbel_float64,
    join64,
    mulhilo32,
    philox4x32,
    uniform_float32,
    uniform_float64,
)

ALPHA = 1e-3
NEG_INF = float("-inf")
REF = K.gumbel_softmax_reference


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _chi2(counts, probs):
    counts = np.asarray(counts, dtype=np.float64)
    return stats.chisquare(counts, np.asarray(probs, dtype=np.float64) * counts.sum()).pvalue


# --------------------------------------------------------------------------- Philox4x32

# Random123 kat_vectors (Salmon, Moraes, Dror, Shaw, SC 2011): rounds, counter (4 words),
# key (2 words), expected output (4 words).
KAT = [
    (7, [0, 0, 0, 0], [0, 0], [0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48]),
    (7, [0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662]),
    (
        7,
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        [0xA4093822, 0x299F31D0],
        [0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A],
    ),
    (10, [0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    (10, [0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (
        10,
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        [0xA4093822, 0x299F31D0],
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    ),
]


def _i32(values):
    return torch.tensor([as_int32(v) for v in values], dtype=torch.int32)


@pytest.mark.parametrize("rounds,ctr,key,expected", KAT)
@pytest.mark.parametrize("key_as", ["int", "tensor"])
def test_philox_known_answers(rounds, ctr, key, expected, key_as):
    c = [_i32([v]) for v in ctr]
    k = [as_int32(v) for v in key] if key_as == "int" else [_i32([v])[0] for v in key]
    out = philox4x32(*c, *k, rounds=rounds)
    assert [as_uint32(w)[0] for w in out] == expected


def test_philox_batched_matches_one_at_a_time():
    # Many counters at once (the vectorised form used by the kernel) == each counter alone.
    rng = random.Random(0)
    rows = [[rng.getrandbits(32) for _ in range(6)] for _ in range(16)]
    batched = philox4x32(
        *[_i32([r[i] for r in rows]) for i in range(4)], _i32([r[4] for r in rows]), _i32([r[5] for r in rows])
    )
    for j, r in enumerate(rows):
        single = philox4x32(*[_i32([r[i]]) for i in range(4)], as_int32(r[4]), as_int32(r[5]))
        assert [as_uint32(w)[j] for w in batched] == [as_uint32(w)[0] for w in single]


@pytest.mark.parametrize("m", [PHILOX_M0, PHILOX_M1])
def test_mulhilo_is_the_exact_64_bit_product(m):
    rng = random.Random(1)
    vals = [0, 1, 2, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 2**31 - 1, 2**31, 2**32 - 1, 0xDEADBEEF]
    vals += [rng.getrandbits(32) for _ in range(5000)]
    hi, lo = mulhilo32(_i32(vals), m)
    got = [(h << 32) | low for h, low in zip(as_uint32(hi), as_uint32(lo))]
    assert got == [v * m for v in vals]


def test_add32_wraps_modulo_2_32():
    vals = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 0x9E3779B9]
    for c in (0x9E3779B9, 0xBB67AE85, 1):
        assert as_uint32(add32(_i32(vals), c)) == [(v + c) % 2**32 for v in vals]


def test_uniform_conversion_is_open_and_exact():
    w = _i32([0, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 511, 512])
    u = uniform_float32(w)
    assert u.dtype == torch.float32
    assert u.tolist() == [2.0**-24, 1 - 2.0**-24, 0.5 + 2.0**-24, 0.5 - 2.0**-24, 2.0**-24, 3 * 2.0**-24]
    u64 = uniform_float64(_i32([0, 0xFFFFFFFF]), _i32([0, 0xFFFFFFFF]))
    assert u64.dtype == torch.float64
    assert u64.tolist() == [2.0**-43, 1 - 2.0**-43]


# --------------------------------------------------------------------------- noise quality


def test_philox_gumbel_noise_matches_gumbel_distribution():
    key = K.draw_key(_gen(1), "cpu")
    for dtype in (torch.float32, torch.float64):
        g = K.gumbel_noise_philox(200_003, key, dtype)  # not a multiple of 4: the tail lane is cut
        assert g.shape == (200_003,) and g.dtype == dtype and torch.isfinite(g).all()
        assert stats.kstest(g.double().numpy(), stats.gumbel_r.cdf).pvalue > ALPHA


def test_philox_gumbel_tail_stays_in_the_documented_range():
    # P(g > 12) ~ 6.1e-6: 4e6 draws exceed 12 about 24 times (none: probability e^-24).
    g = K.gumbel_noise_philox(4_000_000, K.draw_key(_gen(2), "cpu"))
    assert torch.isfinite(g).all()
    assert float(g.max()) > 12.0 and float(g.max()) <= 22.874
    assert float(g.min()) >= -3.1301


# Exact Gumbel tail probabilities P(g > t) = 1 - exp(-e^-t), P(g < t) = exp(-e^-t).
def _p_above(t):
    return -math.expm1(-math.exp(-t))


def _p_below(t):
    return math.exp(-math.exp(-t))


def test_philox_noise_tails_have_the_exact_gumbel_probabilities():
    """Counts of the fused noise beyond thresholds in both tails against Binomial(n, p_exact).

    float32: n = 2^24 values under a fixed key; above 13 (expected 37.9), above 15 (5.1) and below
    -2.5 (85.9). float64: n = 2^22; above 13 (9.5) and below -2.5 (21.5). Two-sided binomial
    tests, Bonferroni over the five: the false-failure rate over random keys is 1e-6.
    """
    alpha = 1e-6 / 5
    checks = []
    g = K.gumbel_noise_philox(2**24, K.draw_key(_gen(70), "cpu"))
    checks += [(g, ">", 13.0), (g, ">", 15.0), (g, "<", -2.5)]
    g64 = K.gumbel_noise_philox(2**22, K.draw_key(_gen(71), "cpu"), torch.float64)
    checks += [(g64, ">", 13.0), (g64, "<", -2.5)]
    for x, side, t in checks:
        k = int((x > t).sum()) if side == ">" else int((x < t).sum())
        p = _p_above(t) if side == ">" else _p_below(t)
        assert stats.binomtest(k, x.numel(), p).pvalue > alpha, (x.dtype, side, t, k, x.numel() * p)


def _g_float32_exact(word):
    # The documented transform evaluated in float64 from the exact 31-bit m (no float32 rounding).
    w = word & 0xFFFFFFFF
    v = ((w & 0x7FFFFFFF) + 0.5) * 2.0**-32
    e = -math.log(v) if w >> 31 else -math.log1p(-v)
    return -math.log(e)


def _g_float64_exact(hi, lo):
    m = ((hi & 0x7FFFFFFF) << 32) | (lo & 0xFFFFFFFF)
    v = (float(m) + 0.5) * 2.0**-64  # as torch: int64 -> float64 rounds to nearest
    e = -math.log(v) if (hi & 0xFFFFFFFF) >> 31 else -math.log1p(-v)
    return -math.log(e)


def test_word_transforms_reach_the_documented_extremes():
    # Crafted words: small m in either half are the tails. float32: g in [-3.13, 22.87]; the
    # 23-bit uniform construction stopped at 16.6 -- here a word with m <= ~250 exceeds 16.64.
    words = [
        0,
        1,
        2,
        10,
        250,
        1000,
        2**20,
        2**30,
        0x7FFFFFFF,
        0x80000000,
        0x80000001,
        0x8000000A,
        0xC0000000,
        0xFFFFFFFF,
        0x9234ABCD,
        0x1234ABCD,
    ]
    g = gumbel_float32(_i32(words))
    assert g.dtype == torch.float32
    expected = torch.tensor([_g_float32_exact(w) for w in words], dtype=torch.float64)
    assert torch.allclose(g.double(), expected, rtol=2e-6, atol=2e-6)
    assert float(g[0]) == pytest.approx(33 * math.log(2), rel=1e-6) and round(float(g[0]), 2) == 22.87
    assert float(g[9]) == pytest.approx(-math.log(33 * math.log(2)), rel=1e-6) and round(float(g[9]), 2) == -3.13
    assert float(g.max()) == float(g[0]) and float(g.min()) == float(g[9])
    assert float(g[4]) > 16.64 and float(g[3]) > 19.0  # beyond the old cap of 16.6
    # float64: two words, g in [-3.81, 45.05]
    pairs = [
        (0, 0),
        (0, 1),
        (0, 0xFFFFFFFF),
        (1, 0),
        (0x7FFFFFFF, 0xFFFFFFFF),
        (0x80000000, 0),
        (0x80000000, 5),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x9234ABCD, 0x1234ABCD),
    ]
    g64 = gumbel_float64(_i32([h for h, _ in pairs]), _i32([lo for _, lo in pairs]))
    assert g64.dtype == torch.float64
    expected64 = torch.tensor([_g_float64_exact(h, lo) for h, lo in pairs], dtype=torch.float64)
    assert torch.allclose(g64, expected64, rtol=1e-13, atol=1e-13)
    assert float(g64[0]) == pytest.approx(65 * math.log(2), rel=1e-14) and round(float(g64[0]), 2) == 45.05
    assert round(float(g64[5]), 2) == -3.81
    assert float(g64.max()) == float(g64[0]) and float(g64.min()) == float(g64[5])


def test_join64_is_the_bit_pattern_of_hi_shifted_or_lo():
    rng = random.Random(5)
    his = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF] + [rng.getrandbits(32) for _ in range(50)]
    los = [0xFFFFFFFF, 0x80000000, 0, 1, 0xFFFFFFFF] + [rng.getrandbits(32) for _ in range(50)]
    got = join64(_i32(his), _i32(los))
    assert got.dtype == torch.int64
    want = [((h << 32) | lo) - (1 << 64) * (h >> 31) for h, lo in zip(his, los)]
    assert got.tolist() == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_element_to_word_mapping(dtype):
    # Element i: lane j = i // m, counter i mod m (m = ceil(n / lanes)); float32 takes word j,
    # float64 words 2j (high) and 2j + 1 (low).
    key = K.draw_key(_gen(72), "cpu")
    n = 23
    lanes = 4 if dtype == torch.float32 else 2
    m = -(-n // lanes)
    w = philox4x32(torch.arange(m, dtype=torch.int32), 0, key[2], key[3], key[0], key[1])
    g = K.gumbel_noise_philox(n, key, dtype)
    for i in range(n):
        j, c = divmod(i, m)
        if dtype == torch.float32:
            want = gumbel_float32(w[j][c : c + 1])
        else:
            want = gumbel_float64(w[2 * j][c : c + 1], w[2 * j + 1][c : c + 1])
        assert torch.equal(g[i : i + 1], want), i


def _uniform_words(key, n):
    c0 = torch.arange(n, dtype=torch.int32)
    return philox4x32(c0, 0, key[2], key[3], key[0], key[1])


def test_streams_for_neighbouring_counters_and_lanes_are_independent():
    # Pairs (u_i, u_j) binned on a 16 x 16 grid must be uniform (chi-square, 255 dof) for
    # neighbouring counters, for the four words of one counter, and across keys.
    n = 100_000
    w = _uniform_words(K.draw_key(_gen(3), "cpu"), n)
    w_other = _uniform_words(K.draw_key(_gen(4), "cpu"), n)
    bins = [(torch.bitwise_right_shift(x, 28) & 0xF) for x in (*w, *w_other)]
    pairs = {
        "counter i, i+1": (bins[0][:-1], bins[0][1:]),
        "word 0 vs 1": (bins[0], bins[1]),
        "word 1 vs 2": (bins[1], bins[2]),
        "word 2 vs 3": (bins[2], bins[3]),
        "key a vs key b": (bins[0], bins[4]),
    }
    for name, (a, b) in pairs.items():
        counts = torch.bincount(a * 16 + b, minlength=256).numpy()
        # Bonferroni over the five pairs keeps the family-wise level at ALPHA.
        assert _chi2(counts, np.full(256, 1 / 256)) > ALPHA / 5, name


def test_distinct_seeds_and_positions_give_uncorrelated_noise():
    g1 = K.gumbel_noise_philox(100_000, K.draw_key(_gen(5), "cpu"), torch.float64)
    g2 = K.gumbel_noise_philox(100_000, K.draw_key(_gen(6), "cpu"), torch.float64)
    m = 50_000  # float64 lane length: g[i] and g[i + m] come from the same Philox call
    for a, b in ((g1, g2), (g1[:-1], g1[1:]), (g1[:m], g1[m:])):
        _r, p = stats.pearsonr(a.numpy(), b.numpy())
        assert p > ALPHA / 3  # Bonferroni over the three pairs
    # identical generator state -> identical key -> identical noise
    assert torch.equal(K.draw_key(_gen(5), "cpu"), K.draw_key(_gen(5), "cpu"))


# --------------------------------------------------------------------------- fused sampler semantics

LOGITS = torch.tensor([0.3, -1.2, 2.0, NEG_INF, 0.0, 1.1])


@pytest.mark.parametrize("hard", [False, True])
def test_argmax_frequencies_match_softmax(hard):
    n = 200_000
    y = REF(LOGITS.expand(n, -1), tau=0.7, hard=hard, generator=_gen(7))
    counts = torch.bincount(y.argmax(-1), minlength=6)
    assert counts[3] == 0 and torch.all(y[:, 3] == 0)
    p = torch.softmax(LOGITS.double(), -1)
    keep = [0, 1, 2, 4, 5]
    assert _chi2(counts[keep], p[keep]) > ALPHA


def test_soft_sample_same_distribution_as_builtin():
    logits = torch.tensor([0.5, -0.5, 1.5, 0.0])
    n = 50_000
    ours = REF(logits.expand(n, -1), tau=0.8, generator=_gen(8))
    torch.manual_seed(0)
    ref = torch.nn.functional.gumbel_softmax(logits.expand(n, -1), tau=0.8)
    for k in range(4):
        assert stats.ks_2samp(ours[:, k].numpy(), ref[:, k].numpy()).pvalue > ALPHA / 4


def test_formula_layout_dim_and_non_contiguous_input():
    # y == softmax((x + g) / tau) along dim, with g laid out over x.movedim(dim, -1) row-major.
    x = torch.randn(3, 5, 4, 2, dtype=torch.float64, generator=_gen(9)).transpose(1, 3)
    assert not x.is_contiguous()
    y = REF(x, tau=0.6, dim=3, generator=_gen(10))
    key = K.draw_key(_gen(10), "cpu")
    moved = x.movedim(3, -1)
    g = K.gumbel_noise_philox(moved.numel(), key, torch.float64).view(moved.shape)
    expected = torch.softmax((moved + g) / 0.6, -1).movedim(-1, 3)
    assert torch.allclose(y, expected, rtol=1e-12, atol=1e-15)
    h = REF(x, tau=0.6, hard=True, dim=3, generator=_gen(10))
    assert torch.equal(h.argmax(3), y.argmax(3))
    assert torch.all(h.sum(3) == 1) and torch.all((h == 0) | (h == 1))


def test_generator_determinism_and_global_rng():
    x = torch.randn(8, 10)
    state = torch.get_rng_state()
    for hard in (False, True):
        a = REF(x, 0.5, hard=hard, generator=_gen(1))
        assert torch.equal(a, REF(x, 0.5, hard=hard, generator=_gen(1)))
        assert not torch.equal(REF(x, 0.5, generator=_gen(1)), REF(x, 0.5, generator=_gen(2)))
    assert torch.equal(torch.get_rng_state(), state)
    # without a generator the global RNG supplies the key: manual_seed makes it reproducible
    torch.manual_seed(3)
    a = REF(x)
    torch.manual_seed(3)
    assert torch.equal(a, REF(x))
    # consecutive calls on one generator draw fresh keys
    g = _gen(4)
    assert not torch.equal(REF(x, generator=g), REF(x, generator=g))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_use_float32_noise_and_arithmetic(dtype):
    x = torch.randn(64, 50, generator=_gen(12)).to(dtype)
    for hard in (False, True):
        y = REF(x, 0.5, hard=hard, generator=_gen(13))
        y32 = REF(x.float(), 0.5, hard=hard, generator=_gen(13))  # same key: same float32 noise
        assert y.dtype == dtype
        assert torch.equal(y, y32.to(dtype))
    assert torch.all(y.sum(-1) == 1)
    # large-magnitude half logits with masks: no NaN
    xb = (torch.randn(16, 4096, generator=_gen(14)) * 20).to(dtype)
    xb[:, ::7] = NEG_INF
    yb = REF(xb, tau=0.1, generator=_gen(15))
    assert not torch.isnan(yb).any() and torch.all(yb[:, ::7] == 0)


def test_float64_inputs_get_float64_noise():
    x = torch.randn(4, 6, dtype=torch.float64, generator=_gen(16))
    y = REF(x, generator=_gen(17))
    assert y.dtype == torch.float64
    g = K.gumbel_noise_philox(24, K.draw_key(_gen(17), "cpu"), torch.float64)
    assert torch.allclose(y, torch.softmax(x + g.view(4, 6), -1), rtol=1e-13, atol=0)


def test_gradients_soft_gradcheck_and_hard_straight_through():
    x = torch.randn(3, 5, dtype=torch.float64, generator=_gen(18), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: REF(a, 0.7, generator=_gen(19)), (x,))
    # hard: the gradient is the soft sample's gradient (same generator state, same noise)
    w = torch.randn(3, 5, dtype=torch.float64, generator=_gen(20))
    (REF(x, 0.7, hard=True, generator=_gen(19)) * w).sum().backward()
    g_hard = x.grad.clone()
    x.grad = None
    (REF(x, 0.7, generator=_gen(19)) * w).sum().backward()
    assert torch.allclose(g_hard, x.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fn", [REF, gk.gumbel_softmax], ids=["fused-reference", "eager"])
def test_hard_gradient_survives_retain_graph(fn):
    # The hard backward (fused and eager) overwrites its private saved softmax unless the graph
    # is retained.
    x = torch.randn(4, 7, requires_grad=True, generator=_gen(21))
    y = fn(x, 0.5, hard=True, generator=_gen(22))
    loss = (y * torch.arange(7.0)).sum()
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x)
    assert torch.equal(g1, g2) and g1.abs().sum() > 0


def test_bad_input_raises_like_the_eager_sampler(rejects_bad_logits):
    rejects_bad_logits(REF)
    with pytest.raises(ValueError, match="expected tau > 0"):
        K.gumbel_softmax(torch.zeros(2, 3), tau=0.0)
    with pytest.raises(IndexError, match=r"dim in \[-2, 1\]"):
        K.gumbel_softmax(torch.zeros(1, 2), dim=2)
    with pytest.raises(TypeError, match="generator"):
        K.gumbel_softmax(torch.zeros(1, 2), generator=3)


def test_tensor_temperatures_take_the_eager_path():
    # Per-row or learnable temperatures are not fused; results equal the eager sampler's.
    x = torch.randn(4, 5, generator=_gen(23))
    tau = torch.tensor([[0.5], [1.0], [2.0], [4.0]], requires_grad=True)
    y = K.gumbel_softmax(x, tau, generator=_gen(24))
    assert torch.equal(y, gk.gumbel_softmax(x, tau, generator=_gen(24)))
    y[:, 0].sum().backward()
    assert tau.grad is not None and tau.grad.abs().sum() > 0


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    _fused._reset_for_tests()

    def broken_compile(fn):
        def run(*args):
            raise RuntimeError("no C++ compiler (simulated)")

        return run

    monkeypatch.setattr(_fused, "_compile", broken_compile)
    x = torch.randn(6, 9, requires_grad=True)
    try:
        with pytest.warns(K.FusedFallbackWarning, match="simulated"):
            y = K.gumbel_softmax(x, 0.5, generator=_gen(25))
        assert torch.equal(y, gk.gumbel_softmax(x, 0.5, generator=_gen(25)))
        assert not K.is_available()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the warning is given once, not on every call
            h = K.gumbel_softmax(x, 0.5, hard=True, generator=_gen(26))
        assert torch.equal(h, gk.gumbel_softmax(x, 0.5, hard=True, generator=_gen(26)))
        (h * torch.randn(6, 9)).sum().backward()
        assert torch.isfinite(x.grad).all()
    finally:
        _fused._reset_for_tests()
    assert K.is_available()


def test_too_many_row_lengths_use_the_eager_path_silently(monkeypatch):
    # Past the per-variant budget of compiled shapes (Dynamo's recompile limit), calls take the
    # eager sampler -- from the caller's generator state -- without warning or disabling.
    _fused._reset_for_tests()
    compiled = []
    monkeypatch.setattr(_fused, "_compile", lambda fn: compiled.append(fn) or fn)
    monkeypatch.setattr(_fused, "_MAX_SIGNATURES", 0)
    x = torch.randn(5, 8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y = K.gumbel_softmax(x, 0.5, generator=_gen(28))
        assert torch.equal(y, gk.gumbel_softmax(x, 0.5, generator=_gen(28)))
        assert K.is_available() and K.compile_times() == {}
    finally:
        _fused._reset_for_tests()


def test_empty_batch_and_single_class():
    assert K.gumbel_softmax(torch.zeros(0, 4)).shape == (0, 4)
    y = REF(torch.zeros(5, 1), hard=True, generator=_gen(27))
    assert torch.equal(y, torch.ones(5, 1))


# --------------------------------------------------------------------------- memory layouts

LAYOUT_K = 8  # every case has 8 categories: one compiled kernel per variant serves them all


def _layout_cases():
    """name -> (view builder, base tensor, dim): the view is a non-trivial layout of the base."""
    gen = _gen(40)

    def r(*shape):
        return torch.randn(*shape, generator=gen)

    return {
        "contiguous": (lambda b: b, r(30, 8), -1),
        "transposed": (lambda b: b.t(), r(8, 30), -1),
        "3d-dim0": (lambda b: b, r(8, 5, 6), 0),
        "3d-dim1-permuted": (lambda b: b.permute(1, 2, 0), r(6, 4, 8), 1),
        "3d-dim-1-transposed": (lambda b: b.transpose(0, 2), r(8, 5, 7), -1),
        "channels-last-dim1": (lambda b: b.contiguous(memory_format=torch.channels_last), r(3, 8, 4, 5), 1),
        "expanded": (lambda b: b.expand(30, 8), r(1, 8), -1),
        "broadcast-middle": (lambda b: b.expand(5, 6, 8), r(5, 1, 8), -1),
        "sliced-steps": (lambda b: b[::3, 1::3], r(40, 24), -1),
        "sliced-dim0": (lambda b: b[::2, :, 1:], r(16, 3, 5), 0),
    }


LAYOUTS = list(_layout_cases())


def _noise_over(x, dim, seed, dtype=torch.float32):
    """The noise the sampler adds to x under _gen(seed): indexed over x.movedim(dim, -1) row-major."""
    moved = x.movedim(dim, -1)
    g = K.gumbel_noise_philox(moved.numel(), K.draw_key(_gen(seed), "cpu"), dtype)
    return g.view(moved.shape).movedim(-1, dim)


def _sample_and_grad(fn, x, dim, hard, seed, w, tau=0.5):
    x = x.detach().requires_grad_() if x.is_leaf else x
    y = fn(x, tau, hard=hard, dim=dim, generator=_gen(seed))
    (gx,) = torch.autograd.grad((y * w).sum(), x)
    return y.detach(), gx


def _check_layout(fn, name, hard, exact_vs_analytic=(1e-5, 1e-6)):
    view, base, dim = _layout_cases()[name]
    base = base.detach().requires_grad_()
    x = view(base)
    assert x.shape[dim] == LAYOUT_K
    w = torch.randn(x.shape, generator=_gen(41))
    y, gx = _sample_and_grad(fn, x, dim, hard, 42, w)
    # same logical values in a contiguous tensor, and with the category axis moved last
    yc, gc = _sample_and_grad(fn, x.detach().contiguous(), dim, hard, 42, w)
    xm = x.detach().movedim(dim, -1).contiguous()
    ym, gm = _sample_and_grad(fn, xm, -1, hard, 42, w.movedim(dim, -1))
    assert torch.equal(y, yc) and torch.equal(y, ym.movedim(-1, dim))
    assert torch.equal(gx, gc) and torch.equal(gx, gm.movedim(-1, dim))
    # the analytic (straight-through) gradient from the same noise, in float64
    g = _noise_over(x.detach(), dim, 42).double()
    soft = torch.softmax((x.detach().double() + g) / 0.5, dim)
    wd = w.double()
    analytic = soft * (wd - (soft * wd).sum(dim, keepdim=True)) / 0.5
    rtol, atol = exact_vs_analytic
    assert torch.allclose(gx.double(), analytic, rtol=rtol, atol=atol), (gx.double() - analytic).abs().max()
    if hard:
        assert torch.all((y == 0) | (y == 1)) and torch.all(y.sum(dim) == 1)
        assert torch.equal(y.argmax(dim), (x.detach().double() + g).argmax(dim))
    else:
        assert torch.allclose(y.sum(dim), torch.ones(()), atol=1e-6)
        assert torch.allclose(y.double(), soft, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("name", LAYOUTS)
def test_reference_layouts_give_the_same_sample_and_gradient(name, hard):
    # Noise is indexed by logical position: any layout of the same values gives the same sample
    # and gradient as the contiguous tensor, equal to the straight-through formula on that noise.
    _check_layout(REF, name, hard)


# --------------------------------------------------------------------------- tau and range limits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [1e-38, 1e-40, 5e-324], ids=["1e-38", "1e-40-subnormal", "min-subnormal"])
def test_tiny_tau_gives_one_hot_and_zero_gradients_not_nan(tau, dtype):
    # As tau -> 0 the soft sample is one_hot(argmax(x + g)) and its gradient 0; 1/tau overflows
    # float32 (and float64 for the smallest subnormal), which must not produce inf - inf or 0 * inf.
    x = torch.randn(16, 12, dtype=dtype, generator=_gen(80))
    x[:, 3] = NEG_INF
    x.requires_grad_()
    w = torch.randn(16, 12, dtype=dtype, generator=_gen(81))
    hard_y = REF(x, tau, hard=True, generator=_gen(82))
    for hard in (False, True):
        y = REF(x, tau, hard=hard, generator=_gen(82))
        (gx,) = torch.autograd.grad((y * w).sum(), x)
        assert not torch.isnan(y).any() and not torch.isnan(gx).any()
        assert torch.equal(y.detach(), hard_y.detach())  # exactly one-hot
        assert torch.all(gx == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_logits_give_no_nan(dtype):
    # Logits near the float limit: s / tau overflows for tau < 1 (the old inf - inf); x + g itself
    # stays finite (|g| < 46 is far below half an ulp there), so the sample must be exact.
    big = torch.finfo(dtype).max
    x = torch.tensor(
        [
            [0.9 * big, -0.9 * big, big, 1.0],
            [-0.9 * big, NEG_INF, 0.0, 0.9 * big],
            [0.9 * big, 0.9 * big * (1 - 1e-6), -big, 0.0],
        ],
        dtype=dtype,
        requires_grad=True,
    )
    w = torch.randn(3, 4, dtype=dtype, generator=_gen(83))
    for tau in (1.0, 0.5, 1e-38, 1e-40):
        for hard in (False, True):
            y = REF(x, tau, hard=hard, generator=_gen(84))
            (gx,) = torch.autograd.grad((y * w).sum(), x)
            assert torch.isfinite(y).all() and torch.isfinite(gx).all(), (tau, hard)
            assert torch.equal(y.detach().argmax(-1), torch.tensor([2, 3, 0]))
            assert torch.allclose(y.detach().sum(-1), torch.ones((), dtype=dtype))


# --------------------------------------------------------------------------- torch.func, double backward


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("fn", [REF, K.gumbel_softmax], ids=["reference", "fused"])
def test_func_grad_matches_autograd(fn, hard):
    x = torch.randn(6, 9, generator=_gen(90))
    w = torch.randn(6, 9, generator=_gen(91))
    gr = torch.func.grad(lambda a: (fn(a, 0.5, hard=hard, generator=_gen(92)) * w).sum())(x)
    xx = x.clone().requires_grad_()
    (REF(xx, 0.5, hard=hard, generator=_gen(92)) * w).sum().backward()
    assert torch.allclose(gr, xx.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("fn", [REF, K.gumbel_softmax], ids=["reference", "fused"])
def test_vmap_randomness_modes(fn, hard):
    x = torch.randn(9, generator=_gen(93))
    xb = x.expand(64, 9)

    def sample(a):
        return fn(a, 0.5, hard=hard)

    for y in (torch.vmap(sample, randomness="different")(xb), torch.vmap(sample, randomness="same")(xb)):
        assert y.shape == (64, 9)
        if hard:
            assert torch.all((y == 0) | (y == 1)) and torch.all(y.sum(-1) == 1)
        else:
            assert torch.allclose(y.sum(-1), torch.ones(()), atol=1e-6)
    assert len({tuple(r) for r in torch.vmap(sample, randomness="different")(xb).tolist()}) > 1
    same = torch.vmap(sample, randomness="same")(xb)
    assert torch.equal(same, same[:1].expand_as(same))
    with pytest.raises(RuntimeError, match="randomness"):
        torch.vmap(sample)(xb)  # like the built-in: random draws need a randomness mode
    # a generator makes the vmapped draw reproducible
    a = torch.vmap(lambda r: fn(r, 0.5, hard=hard, generator=_gen(94)), randomness="different")(xb)
    b = torch.vmap(lambda r: fn(r, 0.5, hard=hard, generator=_gen(94)), randomness="different")(xb)
    assert torch.equal(a, b)


@pytest.mark.parametrize("fn", [REF, K.gumbel_softmax], ids=["reference", "fused"])
def test_vmap_of_grad_and_grad_of_vmap(fn):
    xb = torch.randn(5, 3, 7, generator=_gen(95))
    w = torch.randn(5, 3, 7, generator=_gen(96))
    for hard in (False, True):
        per = torch.func.grad(lambda a, v, hard=hard: (fn(a, 0.7, hard=hard) * v).sum())
        gv = torch.vmap(per, randomness="different")(xb, w)
        assert gv.shape == xb.shape and torch.isfinite(gv).all()
        assert torch.allclose(gv.sum(-1), torch.zeros(()), atol=1e-5)  # softmax gradients sum to 0 per row
        batched = torch.vmap(lambda a, hard=hard: fn(a, 0.7, hard=hard), randomness="different")
        gb = torch.func.grad(lambda a, f=batched: (f(a) * w).sum())(xb)
        assert gb.shape == xb.shape and torch.isfinite(gb).all() and gb.abs().sum() > 0


def test_double_backward_soft_and_hard():
    x = torch.randn(3, 5, dtype=torch.float64, generator=_gen(97), requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a: REF(a, 0.7, generator=_gen(98)), (x,))
    w = torch.randn(3, 5, dtype=torch.float64, generator=_gen(99))

    def hessian_vector(hard):
        (gx,) = torch.autograd.grad((REF(x, 0.7, hard=hard, generator=_gen(98)) * w).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((gx * gx).sum(), x)
        return h

    soft, hard = hessian_vector(False), hessian_vector(True)
    assert soft.abs().sum() > 0 and torch.allclose(hard, soft, rtol=1e-12, atol=1e-14)
    # against autograd's own softmax on the same noise
    g = _noise_over(x.detach(), -1, 98, torch.float64)
    (gx,) = torch.autograd.grad((torch.softmax((x + g) / 0.7, -1) * w).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad((gx * gx).sum(), x)
    assert torch.allclose(soft, h, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- compiled (slow)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(300, 37), (40, 3, 130)], ids=["short-rows", "long-rows"])
def test_compiled_kernel_reproduces_reference(shape):
    # Inductor's C++ for the same ops: equal up to float rounding, identical one-hot samples
    # (rows of <= 64 and > 64 categories are two separately compiled kernels), and the
    # known-answer vectors through the compiled scalar (one-element) path.
    x = torch.randn(*shape, generator=_gen(30), requires_grad=True)
    w = torch.randn(*shape, generator=_gen(31))
    for hard in (False, True):
        y = K.gumbel_softmax(x, 0.7, hard=hard, generator=_gen(32))
        r = REF(x, 0.7, hard=hard, generator=_gen(32))
        if hard:
            assert torch.equal(y, r)
        else:
            assert torch.allclose(y, r, rtol=1e-5, atol=1e-6)
        (y * w).sum().backward()
        gy = x.grad.clone()
        x.grad = None
        (r * w).sum().backward()
        assert torch.allclose(gy, x.grad, rtol=1e-4, atol=1e-6)
        x.grad = None
    assert K.is_available()
    assert any(sig[0] == "soft" for sig in K.compile_times())
    kat = torch.compile(lambda c, k: philox4x32(c[0], c[1], c[2], c[3], k[0], k[1]), fullgraph=True)
    for _rounds, ctr, key, expected in KAT[3:]:
        out = kat(_i32(ctr), _i32(key))
        assert [as_uint32(w_)[0] for w_ in out] == expected


@pytest.mark.slow
def test_compiled_kernel_argmax_frequencies():
    n = 200_000
    y = K.gumbel_softmax(LOGITS.expand(n, -1), tau=0.7, hard=True, generator=_gen(33))
    counts = torch.bincount(y.argmax(-1), minlength=6)
    assert counts[3] == 0
    p = torch.softmax(LOGITS.double(), -1)
    keep = [0, 1, 2, 4, 5]
    assert _chi2(counts[keep], p[keep]) > ALPHA


@pytest.mark.slow
def test_compiled_kernel_layouts_give_the_same_sample_and_gradient():
    # The compiled kernel (Inductor's C++ miscomputed column-major rows: they summed to 0.4-1.8)
    # against the same checks as the reference: contiguous == any layout, exactly; the analytic
    # straight-through gradient; and the reference itself up to rounding. All cases have K = 8:
    # one kernel per variant.
    for hard in (False, True):
        for name in LAYOUTS:
            _check_layout(K.gumbel_softmax, name, hard)
            view, base, dim = _layout_cases()[name]
            x = view(base)
            y = K.gumbel_softmax(x, 0.5, hard=hard, dim=dim, generator=_gen(43))
            r = REF(x, 0.5, hard=hard, dim=dim, generator=_gen(43))
            assert torch.equal(y, r) if hard else torch.allclose(y, r, rtol=1e-5, atol=1e-6), name
    # the repro of the report (10 -> 8 categories, to share the kernel): rows of a transposed tensor
    y = K.gumbel_softmax(torch.randn(LAYOUT_K, 64, generator=_gen(44)).t(), 0.5)
    assert torch.allclose(y.sum(-1), torch.ones(()), atol=1e-6)
    assert K.is_available()


@pytest.mark.slow
def test_compiled_kernel_tiny_tau_huge_logits_and_double_backward():
    big = torch.finfo(torch.float32).max
    x = torch.randn(16, LAYOUT_K, generator=_gen(85))
    x[:3] = torch.tensor([0.9 * big, -0.9 * big, big, 1.0, -big, 0.0, 0.5 * big, NEG_INF])
    x.requires_grad_()
    w = torch.randn(16, LAYOUT_K, generator=_gen(86))
    for tau in (1.0, 0.5, 1e-38, 1e-40):
        for hard in (False, True):
            y = K.gumbel_softmax(x, tau, hard=hard, generator=_gen(87))
            (gx,) = torch.autograd.grad((y * w).sum(), x)
            assert torch.isfinite(y).all() and torch.isfinite(gx).all(), (tau, hard)
            assert torch.allclose(y.detach().sum(-1), torch.ones(()), atol=1e-6)
            assert torch.equal(y.detach()[:3].argmax(-1), torch.tensor([2, 2, 2]))
            if tau < 1e-30:
                assert torch.all((y == 0) | (y == 1)) and torch.all(gx == 0)
    # double backward through the compiled forward (soft and hard) equals the reference's
    xs = torch.randn(6, LAYOUT_K, generator=_gen(88), requires_grad=True)
    for hard in (False, True):
        hv = []
        for fn in (K.gumbel_softmax, REF):
            (gx,) = torch.autograd.grad(
                (fn(xs, 0.7, hard=hard, generator=_gen(89)) * w[:6]).sum(), xs, create_graph=True
            )
            hv.append(torch.autograd.grad((gx * gx).sum(), xs)[0])
        assert hv[0].abs().sum() > 0 and torch.allclose(hv[0], hv[1], rtol=1e-4, atol=1e-5)
    assert K.is_available()


@pytest.mark.slow
def test_compiled_word_transforms_match_eager():
    # Inductor's log / log1p on the crafted extreme words: the documented range holds compiled.
    words = _i32([0, 1, 10, 250, 0x7FFFFFFF, 0x80000000, 0x80000001, 0xFFFFFFFF, 0x9234ABCD])
    g = torch.compile(gumbel_float32, fullgraph=True)(words)
    assert torch.allclose(g, gumbel_float32(words), rtol=1e-6, atol=1e-6)
    assert round(float(g[0]), 2) == 22.87 and round(float(g[5]), 2) == -3.13
    g64 = torch.compile(gumbel_float64, fullgraph=True)(words, words.flip(0))
    assert torch.allclose(g64, gumbel_float64(words, words.flip(0)), rtol=1e-13, atol=1e-13)


@pytest.mark.slow
def test_fused_sampler_draws_classes_19_nats_down_at_the_exact_rate():
    """A 65,536-way row: class 0 at logit 0, the other 65,535 at -19.

    Exact: P(argmax != 0) = 65535 e^-19 / (1 + 65535 e^-19) = 3.670e-4 (the 65,535 together).
    N = 24,576 rows (hard, no grad, compiled; 512 rows per call, ~20 s on one core) expect 9.0
    such rows; a two-sided binomial test at false-failure rate ALPHA = 1e-3 (fixed seed:
    deterministic). A class wins only through g_i - g_0 > 19: with 23-bit uniforms (g in
    [-2.8, 16.6]) that almost never happens, and 0 rows gives p = 3.0e-4, a failure.
    """
    V, N, chunk = 65_536, 24_576, 512
    x = torch.full((1, V), -19.0)
    x[0, 0] = 0.0
    p = 65_535 * math.exp(-19) / (1 + 65_535 * math.exp(-19))
    gen = _gen(100)
    hits = 0
    for _ in range(N // chunk):
        y = K.gumbel_softmax(x.expand(chunk, V), 1.0, hard=True, generator=gen)
        hits += int((y[:, 0] == 0).sum())
    assert K.is_available()
    assert stats.binomtest(hits, N, p).pvalue > ALPHA, (hits, N * p)


def test_kernels_take_the_drop_in_signature_with_eps():
    import inspect

    want = inspect.signature(gk.gumbel_softmax)
    for fn in (K.gumbel_softmax, K.gumbel_softmax_reference):
        assert list(inspect.signature(fn).parameters) == list(want.parameters)
    x = torch.randn(4, 6)
    a = K.gumbel_softmax_reference(x, 0.5, True, 1e-10, 0, generator=torch.Generator().manual_seed(3))
    b = K.gumbel_softmax_reference(x, 0.5, True, dim=0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and bool((a.sum(0) == 1).all())
    with pytest.warns(DeprecationWarning, match="eps"):
        K.gumbel_softmax_reference(x, 0.5, False, 1e-3, generator=torch.Generator().manual_seed(3))


# --------------------------------------------------------------------------- counter-based noise


def test_counter_noise_is_a_pure_function_of_key_and_index():
    from gumbelkit.kernels._philox import counter_exponential, counter_gumbel

    key = torch.tensor([3, -9, 27, -81], dtype=torch.int32)
    idx = torch.tensor([0, 1, 2, 3, 2**33 + 5, 2**33 + 4], dtype=torch.int64)
    e = counter_exponential(key, idx)
    # any subset, order or batch of indices gives the same values element by element
    assert torch.equal(counter_exponential(key, idx.flip(0)), e.flip(0))
    per_row = counter_exponential(torch.stack([key, key + 1]).view(2, 1, 4), idx.view(1, -1))
    assert torch.equal(per_row[0], e) and not torch.equal(per_row[1], e)
    assert torch.equal(counter_gumbel(key, idx), -torch.log(e))
    # a pair of elements shares one Philox call: even/odd members use its two halves
    w = philox4x32(_i32([0]), _i32([0]), key[2], key[3], key[0], key[1])
    hi, lo = w[0].to(torch.int64), w[1].to(torch.int64)
    word = hi * 2**32 + (lo & 0xFFFFFFFF)
    v = (word & 0x7FFFFFFFFFFFFFFF).to(torch.float32).add(0.5).mul(2.0**-64)
    ref = torch.where(word < 0, -torch.log(v), -torch.log1p(-v))
    assert torch.equal(e[:1], ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_counter_noise_follows_exp1(dtype):
    # KS test of 10^6 values for each of 3 fixed keys at alpha = 1e-3: false-failure rate 3e-3 in all
    from gumbelkit.kernels._philox import counter_exponential

    for seed in (0, 2, 3):
        key = torch.randint(-(2**31), 2**31, (4,), generator=torch.Generator().manual_seed(seed)).to(torch.int32)
        e = counter_exponential(key, torch.arange(1_000_000), dtype)
        assert torch.isfinite(e).all() and (e > 0).all()
        assert stats.kstest(e.double().numpy(), "expon").pvalue > 1e-3
