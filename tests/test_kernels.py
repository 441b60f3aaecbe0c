"""gumbelkit.kernels: Philox known answers, noise quality, semantics of the fused Gumbel-Softmax.

The fast tests run the fused algorithm op by op (``gumbel_softmax_reference``: the very function
that is compiled, without the compiler), so they need no compilation; the tests that compile are
marked slow (tens of seconds of Inductor/C++ compilation on a 2-core CPU) and check that the
compiled kernel reproduces the reference.

Statistical tests use fixed seeds at level ALPHA: a correct sampler fails with probability ALPHA
over random seeds; with the fixed seed the outcome is deterministic.
"""

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
    (7, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A]),
    (10, [0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    (10, [0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (10, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
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
    batched = philox4x32(*[_i32([r[i] for r in rows]) for i in range(4)], _i32([r[4] for r in rows]),
                         _i32([r[5] for r in rows]))
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


def test_philox_gumbel_tail_reaches_float32_limit():
    # P(g > 12) ~ 6.1e-6: 4e6 draws exceed 12 about 24 times (none: probability e^-24).
    g = K.gumbel_noise_philox(4_000_000, K.draw_key(_gen(2), "cpu"))
    assert torch.isfinite(g).all()
    assert float(g.max()) > 12.0 and float(g.max()) < 16.7
    assert float(g.min()) > -2.9  # -log(-log 2^-24)


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
        r, p = stats.pearsonr(a.numpy(), b.numpy())
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


def test_masked_classes_get_zero_weight_and_zero_gradient():
    x = torch.tensor([[0.0, NEG_INF, 1.0], [NEG_INF, 2.0, NEG_INF]], requires_grad=True)
    for hard in (False, True):
        y = REF(x, tau=0.3, hard=hard, generator=_gen(11))
        assert y[0, 1] == 0 and y[1, 0] == 0 and y[1, 2] == 0
        assert torch.equal(y[1], torch.tensor([0.0, 1.0, 0.0]))
        (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        assert torch.isfinite(x.grad).all()
        assert x.grad[0, 1] == 0 and x.grad[1, 0] == 0 and x.grad[1, 2] == 0
        x.grad = None


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
    for rounds, ctr, key, expected in KAT[3:]:
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
