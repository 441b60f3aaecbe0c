"""The Triton kernels: the same sample as the op-by-op reference, the law, gradients, layouts, keys, no host reads.

Without a GPU the kernels run under Triton's interpreter on CPU tensors: this module sets
``TRITON_INTERPRET=1`` before the kernels are first built (they are built lazily, on first use; run
this module before anything that builds them, e.g. ``pytest tests/kernels/test_kernels_triton.py``). With a CUDA
device the same tests run compiled on it. Shapes are small (the interpreter runs each program in
NumPy); the CUDA-only tests (graph capture) skip without a GPU. Statistical tests use fixed seeds
and state their false-failure rate.

The reference: element i of a tensor (its row-major logical index) gets E_i =
``counter_exponential(key, i)`` with the key drawn from the same generator state, g = -log E, and
the sample is computed in float64 from x + g with torch ops.
"""

import math
import os

import pytest
import torch
from scipy import stats

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

import gumbelkit as gk  # noqa: E402
from gumbelkit._core import gpu as T  # noqa: E402
from gumbelkit.kernels import _triton_noise as noise  # noqa: E402
from gumbelkit.kernels._philox import as_int32, counter_exponential, exp_from_word64, join64  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
# the interpreter runs Philox's uint32 arithmetic in NumPy, which warns on the (intended) wrap-around
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
NAN, NEG_INF = float("nan"), float("-inf")
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=_gen(seed), device=DEV).to(dtype)


def _key(seed: int) -> torch.Tensor:
    return T.draw_key(_gen(seed), torch.device(DEV))


def _reference(x, seed, tau=1.0, hard=False, dim=-1):
    """(sample, y, s) in float64 from the counter noise of the key the call with ``seed`` draws."""
    idx = torch.arange(x.numel(), device=DEV).view(x.shape)
    g = -torch.log(counter_exponential(_key(seed), idx))
    s = x.detach().double() + g.double()
    t = tau.double() if isinstance(tau, torch.Tensor) else tau
    y = torch.softmax((s - s.amax(dim, keepdim=True)) / t, dim)
    if hard:
        return torch.zeros_like(s).scatter_(dim, s.argmax(dim, keepdim=True), 1.0), y, s
    return y, y, s


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 8 categories and up to 8 chunks: the long-row (chunked) paths at test sizes."""
    monkeypatch.setitem(T._CONFIG, "row_block", 8)
    monkeypatch.setitem(T._CONFIG, "tile", 64)


# --------------------------------------------------------------------------- the noise mapping


@triton.jit
def _words_to_exp(hi_ptr, lo_ptr, out_ptr, out64_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    hi = tl.load(hi_ptr + offs, mask=mask, other=0).to(tl.uint32, bitcast=True)
    lo = tl.load(lo_ptr + offs, mask=mask, other=0).to(tl.uint32, bitcast=True)
    tl.store(out_ptr + offs, noise.exp_from_words(hi, lo), mask=mask)
    tl.store(out64_ptr + offs, noise.exp_from_words_f64(hi, lo), mask=mask)


@triton.jit
def _noise_at(key_ptr, idx_ptr, out_ptr, BLOCK: tl.constexpr):
    k0, k1, c2, c3 = noise.load_key(key_ptr)
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, noise.counter_exponential(k0, k1, c2, c3, tl.load(idx_ptr + offs)))


def test_word_to_noise_map_is_exact_at_the_extreme_words():
    # both halves of the unit interval at their ends and middles: E down to 2^-65 (g = 45.06)
    # and up to 64 log 2 (g = -3.79), in float32 and float64, against the torch definition
    highs = [0, 0, 0, 1, 0x7FFFFFFF, 0x7FFFFFFF, 0x80000000, 0x80000000, 0x80000001, 0xFFFFFFFF, 0x9234ABCD, 0x00000400]
    lows = [0, 1, 0xFFFFFFFF, 0, 0xFFFFFFFF, 0, 0, 1, 0x12345678, 0xFFFFFFFF, 0xDEADBEEF, 0]
    hi = torch.tensor([as_int32(v) for v in highs], dtype=torch.int32, device=DEV)
    lo = torch.tensor([as_int32(v) for v in lows], dtype=torch.int32, device=DEV)
    out = torch.empty(len(highs), device=DEV)
    out64 = torch.empty(len(highs), device=DEV, dtype=torch.float64)
    _words_to_exp[(1,)](hi, lo, out, out64, len(highs), BLOCK=16)
    word = join64(hi, lo)
    ref, ref64 = exp_from_word64(word, torch.float32), exp_from_word64(word, torch.float64)
    assert torch.allclose(out, ref, rtol=4e-7, atol=0), (out, ref)
    assert torch.allclose(out64, ref64, rtol=1e-15, atol=0), (out64, ref64)
    g = -torch.log(out.double())
    assert g.max().item() == pytest.approx(45.06, abs=0.01)  # the word 0: E = 2^-65
    assert g.min().item() == pytest.approx(-3.81, abs=0.01)  # the sign bit alone: E = 65 log 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_fill_is_counter_exponential_including_the_stream_word(dtype):
    key = _key(1)
    n = 3001
    for stream in (0, 5):
        log_e = T.log_exponential((n,), key, stream, dtype)
        k = key.clone()
        k[3] += stream
        ref = counter_exponential(k, torch.arange(n, device=DEV), dtype).log()
        tol = 1e-6 if dtype == torch.float32 else 1e-14
        assert log_e.dtype == dtype and torch.allclose(log_e, ref, rtol=tol, atol=tol)


def test_noise_at_large_logical_indices_matches_the_reference():
    # indices beyond 2^32 use the second counter word (checked on the device function directly)
    idx = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**45 + 7], device=DEV)
    out = torch.empty(8, device=DEV)
    key = _key(2)
    _noise_at[(1,)](key, idx, out, BLOCK=8)
    assert torch.allclose(out, counter_exponential(key, idx), rtol=4e-7, atol=0)


# --------------------------------------------------------------------------- the same sample as the reference


SHAPES = [
    ((6, 10), -1),  # one block, K even (paired noise)
    ((5, 7), -1),  # K odd: one Philox call per element
    ((3, 9, 4), 1),  # categories not last: columns along the tile, inner even
    ((2, 5, 3, 3), 1),  # inner odd
    ((4, 6, 5), 0),
]


@pytest.mark.parametrize("shape, dim", SHAPES)
@pytest.mark.parametrize("hard", [False, True])
def test_forward_is_the_reference_sample(shape, dim, hard):
    x = _randn(*shape, seed=3)
    y = gk.kernels.triton_gumbel_softmax(x, 0.7, hard, dim, generator=_gen(4))
    ref, _, _ = _reference(x, 4, 0.7, hard, dim)
    assert y.shape == x.shape and y.dtype == x.dtype
    if hard:
        assert torch.equal(y.double(), ref)
    else:
        assert torch.allclose(y.double(), ref, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("shape, dim", [((3, 40), -1), ((2, 37), -1), ((2, 30, 3), 1), ((3, 21, 4), 1)])
@pytest.mark.parametrize("hard", [False, True])
def test_long_rows_in_chunks_are_the_reference_sample(small_blocks, shape, dim, hard):
    x = _randn(*shape, seed=5)
    x.select(dim, 3).fill_(NEG_INF)  # a masked class in every row
    y = gk.kernels.triton_gumbel_softmax(x, 0.5, hard, dim, generator=_gen(6))
    ref, _, _ = _reference(x, 6, 0.5, hard, dim)
    if hard:
        assert torch.equal(y.double(), ref)
    else:
        assert torch.allclose(y.double(), ref, rtol=2e-6, atol=1e-7)
    assert bool((y.select(dim, 3) == 0).all())
    z = gk.kernels.triton_gumbel_max(x, dim, generator=_gen(6))
    assert torch.equal(z, ref.argmax(dim))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32_and_casts_back(dtype):
    x = _randn(8, 24, seed=7, dtype=dtype)
    for hard in (False, True):
        y = gk.kernels.triton_gumbel_softmax(x, 0.5, hard, generator=_gen(8))
        ref, _, _ = _reference(x, 8, 0.5, hard)  # the same float32 noise on the half logits
        assert y.dtype == dtype
        assert (
            torch.allclose(y.double(), ref.to(dtype).double(), rtol=0, atol=0)
            if hard
            else torch.allclose(y.double(), ref, rtol=1e-2, atol=1e-3)
        )


def test_huge_logits_keep_their_noise_and_tiny_tau_gives_no_nan():
    # theta + g in float64: 1e7 + g is not rounded to the float32 grid of 1e7 (ulp 1)
    x = torch.tensor([[1e7, 1e7, 1e7 - 0.5], [3e38, -3e38, 3e38], [0.0, 1.0, NEG_INF]], device=DEV)
    for tau in (1.0, 1e-30, 1e-45):
        for hard in (False, True):
            y = gk.kernels.triton_gumbel_softmax(x, tau, hard, generator=_gen(9))
            ref, _, _ = _reference(x, 9, max(tau, torch.finfo(torch.float32).tiny), True)
            assert bool(torch.isfinite(y).all())
            assert torch.equal(y.argmax(-1), ref.argmax(-1))


# --------------------------------------------------------------------------- layouts


def _layouts():
    return {
        "transposed": (_randn(12, 8, seed=10).t(), -1),
        "channels-last-dim1": (_randn(2, 6, 3, 4, seed=11).contiguous(memory_format=torch.channels_last), 1),
        "expanded": (_randn(1, 8, seed=12).expand(5, 8), -1),
        "sliced": (_randn(10, 24, seed=13)[::3, 1::3], -1),
        "permuted-dim1": (_randn(6, 4, 8, seed=14).permute(1, 2, 0), 1),
        "uncollapsible": (_randn(3, 4, 5, 6, seed=15).permute(2, 0, 3, 1), 2),
    }


@pytest.mark.parametrize("name", list(_layouts()))
def test_any_layout_gives_the_same_sample_and_gradient(name):
    x, dim = _layouts()[name]
    w = _randn(*x.shape, seed=16)
    for hard in (False, True):
        outs = []
        for xx in (x, x.contiguous()):
            leaf = xx.detach().requires_grad_()
            y = gk.kernels.triton_gumbel_softmax(leaf, 0.5, hard, dim, generator=_gen(17))
            (gx,) = torch.autograd.grad((y * w).sum(), leaf)
            outs.append((y.detach(), gx))
        (y, gx), (yc, gc) = outs
        if hard:
            assert torch.equal(y, yc), name
        assert torch.allclose(y, yc, rtol=1e-6, atol=1e-7) and torch.allclose(gx, gc, rtol=1e-5, atol=1e-7), name
        if name == "channels-last-dim1":
            assert y.is_contiguous(memory_format=torch.channels_last)  # laid out like the input


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("shape, dim", [((5, 12), -1), ((2, 7, 4), 1)])
@pytest.mark.parametrize("hard", [False, True])
def test_gradient_matches_float64_reference_and_masks_get_zero(shape, dim, hard):
    x = _randn(*shape, seed=18)
    x.select(dim, 2).fill_(NEG_INF)
    x.requires_grad_()
    w = _randn(*shape, seed=19)
    y = gk.kernels.triton_gumbel_softmax(x, 0.6, hard, dim, generator=_gen(20))
    (gx,) = torch.autograd.grad((y * w).sum(), x)
    # reference: d/dx of sum(w * y) through y = softmax((x + g) / tau) in float64, the noise fixed
    _, _, s = _reference(x, 20, 0.6, hard, dim)
    x64 = x.detach().double().requires_grad_()
    g = torch.where(torch.isneginf(x64), 0.0, s - torch.where(torch.isneginf(x64), 0.0, x64.detach()))
    y64 = torch.softmax((x64 + g) / 0.6, dim)
    (ref,) = torch.autograd.grad((y64 * w.double()).sum(), x64)
    assert torch.allclose(gx.double(), ref, rtol=1e-4, atol=1e-6)
    assert bool((gx.select(dim, 2) == 0).all())


def test_tensor_tau_gets_its_gradient_and_masked_classes_give_it_zero():
    x = _randn(4, 9, seed=21)
    x[:, 5] = NEG_INF
    x[0, :] = torch.tensor([0.0, NEG_INF, NEG_INF, NEG_INF, NEG_INF, NEG_INF, NEG_INF, NEG_INF, NEG_INF])
    tau = torch.tensor([[0.5], [1.0], [2.0], [0.7]], device=DEV, requires_grad=True)
    x.requires_grad_()
    w = _randn(4, 9, seed=22)
    for hard in (False, True):
        y = gk.kernels.triton_gumbel_softmax(x, tau, hard, generator=_gen(23))
        gx, gt = torch.autograd.grad((y * w).sum(), (x, tau))
        _, _, s = _reference(x, 23, 1.0, hard)
        t64 = tau.detach().double().requires_grad_()
        x64 = x.detach().double().requires_grad_()
        noise = torch.where(torch.isneginf(x64), 0.0, s - torch.where(torch.isneginf(x64), 0.0, x64.detach()))
        z = x64 + noise
        # masked classes at -1e4 instead of -inf: the same zero weight, but d(z / tau)/d tau stays finite
        z = torch.where(torch.isneginf(z), -1e4, z - z.amax(-1, keepdim=True))
        y64 = torch.softmax(z / t64, -1)
        rx, rt = torch.autograd.grad((y64 * w.double()).sum(), (x64, t64))
        assert torch.allclose(gx.double(), rx, rtol=1e-4, atol=1e-6)
        assert torch.allclose(gt.double(), rt, rtol=1e-4, atol=1e-6)
        assert gt[0].item() == 0.0  # one unmasked class: y is exactly one-hot, nothing depends on tau


def test_scalar_tensor_tau_and_broadcast_tau_reduce_their_gradient(monkeypatch):
    x = _randn(3, 20, seed=24).requires_grad_()
    w = _randn(3, 20, seed=26)
    grads = []
    for tau in (
        torch.tensor(0.5, device=DEV),
        torch.full((1, 1), 0.5, device=DEV),
        torch.full((3, 1), 0.5, device=DEV),
    ):
        tau.requires_grad_()
        y = gk.kernels.triton_gumbel_softmax(x, tau, generator=_gen(25))
        (gt,) = torch.autograd.grad((y * w).sum(), tau)
        assert gt.shape == tau.shape and bool(torch.isfinite(gt).all())
        grads.append(gt.sum())
    monkeypatch.setitem(T._CONFIG, "row_block", 8)  # the per-row gradient again, from chunk partials
    tau = torch.full((3, 1), 0.5, device=DEV, requires_grad=True)
    y = gk.kernels.triton_gumbel_softmax(x, tau, generator=_gen(25))
    (gt,) = torch.autograd.grad((y * w).sum(), tau)
    grads.append(gt.sum())
    assert torch.allclose(torch.stack(grads), grads[0].expand(4), rtol=1e-5)


def test_double_backward_through_the_saved_softmax():
    x = _randn(3, 6, seed=27).requires_grad_()
    for hard in (False, True):
        y = gk.kernels.triton_gumbel_softmax(x, 0.5, hard, generator=_gen(28))
        (gx,) = torch.autograd.grad((y * _randn(3, 6, seed=29)).sum(), x, create_graph=True)
        (ggx,) = torch.autograd.grad((gx**2).sum(), x)
        assert bool(torch.isfinite(ggx).all()) and float(ggx.abs().sum()) > 0


# --------------------------------------------------------------------------- the law


def test_gumbel_max_law_chi_square():
    """200 rows x 40 draws of a 6-way categorical, one masked class: chi-square at 1e-4 (false
    failures: 1 in 10,000 seeds; the seed is fixed)."""
    logits = torch.tensor([1.0, 0.0, -1.0, NEG_INF, 2.0, 0.5], device=DEV)
    x = logits.expand(8000, 6)
    z = gk.kernels.triton_gumbel_max(x, generator=_gen(30))
    counts = torch.bincount(z, minlength=6).double().cpu()
    p = torch.softmax(logits, 0).double().cpu()
    assert counts[3] == 0
    keep = p > 0
    expected = p[keep] / p[keep].sum() * counts.sum()
    assert stats.chisquare(counts[keep].numpy(), expected.numpy()).pvalue > 1e-4


def test_tail_class_seven_nats_below_is_drawn_at_its_rate():
    """A two-way row [0, -7]: P(class 1) = 9.11e-4; 2^16 draws expect 59.7; two-sided binomial
    test at 1e-6 (many short rows: 32 programs of 2048 rows)."""
    n = 1 << 16
    x = torch.tensor([0.0, -7.0], device=DEV).expand(n, 2)
    k = int(gk.kernels.triton_gumbel_max(x, generator=_gen(31)).sum())
    q = 1.0 / (1.0 + math.exp(7.0))
    assert stats.binomtest(k, n, q).pvalue > 1e-6, (k, n * q)


# --------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("shape, dim", [((4, 12), -1), ((3, 10, 4), 1)])
def test_topk_is_the_reference_order(small_blocks, shape, dim):
    x = _randn(*shape, seed=32)
    x.select(dim, 1).fill_(NEG_INF)
    top = T.gumbel_topk(x, 3, dim % x.dim(), _gen(33))
    _, _, s = _reference(x, 33, dim=dim)
    assert torch.equal(top, s.topk(3, dim).indices)
    z = gk.kernels.triton_gumbel_max(x, dim, generator=_gen(33))
    assert torch.equal(top.select(dim, 0), z)  # the same key: the first of the top k is the Gumbel-Max sample


# --------------------------------------------------------------------------- keys and entry points


def test_key_is_a_device_tensor_drawn_by_the_generator():
    g = _gen(34)
    a, b = T.draw_key(g, torch.device(DEV)), T.draw_key(g, torch.device(DEV))
    assert a.device.type == DEV and a.dtype == torch.int32 and a.shape == (4,)
    assert not torch.equal(a, b)  # the generator advanced
    assert torch.equal(a, _key(34))  # the same state, the same key
    rng_state = torch.cuda.get_rng_state if CUDA else torch.get_rng_state
    state = rng_state()
    gk.kernels.triton_gumbel_softmax(_randn(2, 5), generator=_gen(35))
    assert torch.equal(rng_state(), state)  # the global RNG untouched when a generator is given


def test_entry_points_refuse_what_they_cannot_run():
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        gk.kernels.triton_gumbel_softmax(_randn(2, 3).double())
    with pytest.raises(TypeError, match="floating dtype"):
        gk.kernels.triton_gumbel_max(torch.zeros(2, 3, dtype=torch.long, device=DEV))
    with pytest.raises(ValueError, match="tau > 0"):
        gk.kernels.triton_gumbel_softmax(_randn(2, 3), tau=0.0)
    with pytest.raises(IndexError, match="dim"):
        gk.kernels.triton_gumbel_max(_randn(2, 3), dim=2)
    if not CUDA:
        os.environ["TRITON_INTERPRET"] = "0"
        try:
            with pytest.raises(gk.GumbelkitError, match="CUDA device"):
                gk.kernels.triton_gumbel_softmax(_randn(2, 3))
        finally:
            os.environ["TRITON_INTERPRET"] = "1"


def test_bad_rows_raise_or_come_out_nan():
    x = _randn(4, 6, seed=36)
    x[1, 2] = NAN
    x[3] = NEG_INF
    with gk.validation("raise"), pytest.raises(ValueError, match="NaN"):
        gk.kernels.triton_gumbel_softmax(x)
    with gk.validation("device"):
        for hard in (False, True):
            y = gk.kernels.triton_gumbel_softmax(x, 0.5, hard, generator=_gen(37))
            assert bool(y[[1, 3]].isnan().all()) and not bool(y[[0, 2]].isnan().any())
        z = gk.kernels.triton_gumbel_max(x, generator=_gen(37))
        assert z[1] == -1 and z[3] == -1 and bool((z[[0, 2]] >= 0).all())
        tau = torch.tensor([[1.0], [1.0], [-1.0], [1.0]], device=DEV)
        y = gk.kernels.triton_gumbel_softmax(x, tau, generator=_gen(37))
        assert bool(y[2].isnan().all()) and not bool(y[0].isnan().any())


# --------------------------------------------------------------------------- the default path


@pytest.fixture
def cuda_path():
    """The default samplers as they run for CUDA tensors: the Triton path, "device" validation."""
    with T.triton_on_cpu(), gk.validation("device"):
        yield


@pytest.fixture
def launches(monkeypatch):
    """Counts the kernel launches of the Triton host code (forward, backward, top-k, noise)."""
    counts = {"n": 0}
    for name in ("_forward", "_backward", "_topk", "log_exponential"):
        original = getattr(T, name)

        def counted(*args, _original=original, **kwargs):
            counts["n"] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(T, name, counted)
    return counts


def test_default_samplers_take_the_kernels(cuda_path):
    x = _randn(6, 10, seed=40)
    hard = gk.gumbel_softmax(x, 0.5, hard=True, generator=_gen(41))
    ref, _, s = _reference(x, 41, 0.5, True)
    assert torch.equal(hard.double(), ref)
    assert torch.allclose(gk.gumbel_softmax(x, 0.5, generator=_gen(41)).double(), _reference(x, 41, 0.5)[0], rtol=2e-6)
    z = s.argmax(-1)
    assert torch.equal(gk.gumbel_max(x, generator=_gen(41)), z)
    assert torch.equal(gk.gumbel_topk(x, 3, generator=_gen(41)), s.topk(3, -1).indices)
    leaf = x.clone().requires_grad_()
    for method in ("st_gumbel", "gumbel_rao", "reinmax", "st", "gapped_st", "decoupled_st_gumbel"):
        y = gk.sample(leaf, method, tau=0.5, generator=_gen(41))
        assert torch.equal(y.detach().argmax(-1), z), method  # the same key, the same sample
    soft = gk.sample(leaf, "gumbel_softmax", tau=0.5, generator=_gen(41))
    assert torch.allclose(soft.detach().double(), _reference(x, 41, 0.5)[0], rtol=2e-6)


def test_decoupled_forward_temperature_draws_from_the_counter_noise(cuda_path):
    # tau_forward != 1: argmax((theta - max) / tau_f - log E) with E the counter noise of the call's key
    x = _randn(5, 8, seed=42).requires_grad_()
    y = gk.sample(x, "decoupled_st_gumbel", tau=0.5, tau_forward=2.0, generator=_gen(43))
    idx = torch.arange(x.numel(), device=DEV).view(x.shape)
    log_e = counter_exponential(_key(43), idx).log()
    expected = ((x.detach() - x.detach().amax(-1, keepdim=True)) / 2.0 - log_e).argmax(-1)
    assert torch.equal(y.detach().argmax(-1), expected)
    y.sum().backward()
    assert bool(torch.isfinite(x.grad).all())


def test_gumbel_rao_draws_are_counter_noise_streams_and_unbiased_shape(cuda_path):
    x = _randn(4, 6, seed=44).requires_grad_()
    w = _randn(4, 6, seed=45)
    grads = []
    for _ in range(2):
        y = gk.sample(x, "gumbel_rao", tau=0.5, k=3, generator=_gen(46))
        (g,) = torch.autograd.grad((y * w).sum(), x)
        grads.append(g)
    assert torch.equal(grads[0], grads[1])  # the same generator state: the same draws and gradient
    assert bool(torch.isfinite(grads[0]).all()) and torch.allclose(
        grads[0].sum(-1), torch.zeros(4, device=DEV), atol=1e-6
    )


def test_quantizer_runs_on_the_kernels(cuda_path, launches):
    torch.manual_seed(0)
    q = gk.nn.GumbelQuantizer(8, n_codes=16, embedding_dim=4, dim=1).to(DEV)
    out = q(_randn(2, 8, 3, 3, seed=47))
    (out.z_q.sum() + out.loss).backward()
    assert launches["n"] >= 2 and out.codes.shape == (2, 3, 3) and bool((out.codes >= 0).all())


# --------------------------------------------------------------------------- no host reads


class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op that reads a tensor's value to the host (a device synchronisation on CUDA)."""

    READS = frozenset(
        {
            "aten::_local_scalar_dense",
            "aten::item",
            "aten::is_nonzero",
            "aten::equal",
            "aten::allclose",
            "aten::nonzero",
            "aten::masked_select",
            "aten::_unique2",
            "aten::unique_consecutive",
            "aten::repeat_interleave",
            "aten::_assert_async",
        }
    )

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.READS:
            self.reads.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def _quantizer(gen=None):
    torch.manual_seed(0)
    return gk.nn.GumbelQuantizer(6, n_codes=10, embedding_dim=3, dim=1, generator=gen).to(DEV)


def _quantizer_step(x, gen, q=None):
    out = (q or _quantizer(gen))(x.t().reshape(1, 6, 2, 2))
    return out.z_q.sum() + out.loss


CALLS = {
    "gumbel_softmax-soft": lambda x, g: gk.gumbel_softmax(x, 0.5, generator=g),
    "gumbel_softmax-hard": lambda x, g: gk.gumbel_softmax(x, 0.5, True, generator=g),
    "gumbel_softmax-tensor-tau": lambda x, g: gk.gumbel_softmax(
        x, torch.full((4, 1), 0.5, device=DEV), True, generator=g
    ),
    "gumbel_softmax-dim0": lambda x, g: gk.gumbel_softmax(x.t(), 0.5, True, dim=0, generator=g),
    "gumbel_max": lambda x, g: gk.gumbel_max(x.detach(), generator=g),
    "gumbel_topk": lambda x, g: gk.gumbel_topk(x.detach(), 3, generator=g),
    "sample-st_gumbel": lambda x, g: gk.sample(x, "st_gumbel", 0.5, generator=g),
    "sample-gumbel_softmax": lambda x, g: gk.sample(x, "gumbel_softmax", 0.5, generator=g),
    "sample-gumbel_rao": lambda x, g: gk.sample(x, "gumbel_rao", 0.5, generator=g, k=2),
    "sample-decoupled": lambda x, g: gk.sample(x, "decoupled_st_gumbel", 0.5, generator=g),
    "sample-decoupled-tau_f": lambda x, g: gk.sample(x, "decoupled_st_gumbel", 0.5, generator=g, tau_forward=2.0),
    "kl_categorical": lambda x, g: gk.kl_categorical(x, torch.zeros(6, device=DEV)),
    "GumbelQuantizer": lambda x, g: _quantizer_step(x, g),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_default_path_reads_nothing_back_to_the_host(cuda_path, launches, name):
    x = _randn(4, 6, seed=48).requires_grad_(name != "gumbel_max")
    gen = _gen(49)
    with _HostReads() as mode:
        out = CALLS[name](x, gen)
        if out.requires_grad:
            (out * torch.ones_like(out)).sum().backward()
    assert mode.reads == [], (name, mode.reads)
    assert launches["n"] > 0 or name == "kl_categorical"  # it took the Triton path


def test_the_raising_mode_does_read(launches):
    with T.triton_on_cpu(), gk.validation("raise"), _HostReads() as mode:
        gk.gumbel_softmax(_randn(4, 6), 0.5, True, generator=_gen(50))
    assert mode.reads and launches["n"] == 1  # the synchronous check: one read, then the kernel


# --------------------------------------------------------------------------- torch.compile


class _Sampler(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 10)

    def forward(self, x):
        z = self.proj(x)
        return gk.gumbel_softmax(z, 0.5), gk.gumbel_softmax(z, 0.5, True), gk.gumbel_max(z.detach())


def test_compiled_model_has_no_graph_break_and_samples(cuda_path):
    torch.manual_seed(0)
    model = _Sampler().to(DEV)
    x = _randn(16, 6, seed=51)
    graphs = []

    def backend(gm, example_inputs):  # records the graph, then Inductor (CUDA) or AOT eager (interpreter)
        graphs.append(gm)
        if CUDA:
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)
        from functorch.compile import make_boxed_func

        aot = torch._dynamo.backends.common.aot_autograd(fw_compiler=lambda g, _: make_boxed_func(g.forward))
        return aot(gm, example_inputs)

    compiled = torch.compile(model, fullgraph=True, backend=backend)  # fullgraph: a graph break fails
    soft, hard, z = compiled(x)
    assert len(graphs) == 1
    assert all(f"triton_gumbel_{op}" in graphs[0].code for op in ("softmax_soft", "softmax_hard", "max"))
    assert soft.shape == hard.shape == (16, 10) and z.shape == (16,)
    assert torch.allclose(soft.detach().sum(-1), torch.ones(16, device=DEV), atol=1e-5)
    assert bool(((hard == 0) | (hard == 1)).all()) and bool((hard.sum(-1) == 1).all())
    (soft * hard).sum().backward()
    assert bool(torch.isfinite(model.proj.weight.grad).all()) and float(model.proj.weight.grad.abs().sum()) > 0
    assert not torch.equal(soft, compiled(x)[0])  # a fresh key each call


def test_custom_ops_pass_opcheck():
    x = _randn(4, 6, seed=52)
    key = _key(53)
    tau = torch.full((4, 1), 0.7, device=DEV)
    ops = torch.ops.gumbelkit
    for args in ((x, key, None, 0.5, 1), (x.t(), key, None, 0.5, 0), (x, key, tau, 1.0, 1)):
        torch.library.opcheck(ops.triton_gumbel_softmax_soft, args, test_utils=("test_schema", "test_faketensor"))
        torch.library.opcheck(ops.triton_gumbel_softmax_hard, args, test_utils=("test_schema", "test_faketensor"))
    # the autograd registration (the compiled backward's path) once
    leaf = x.clone().requires_grad_()
    torch.library.opcheck(
        ops.triton_gumbel_softmax_hard, (leaf, key, None, 0.5, 1), test_utils="test_autograd_registration"
    )
    y = torch.softmax(x, -1)
    quick = ("test_schema", "test_faketensor")
    torch.library.opcheck(ops.triton_softmax_backward, (y, x, tau, 1.0, 1, torch.float32), test_utils=quick)
    torch.library.opcheck(ops.triton_gumbel_max, (x, key, 1), test_utils=quick)
    torch.library.opcheck(ops.triton_gumbel_topk, (x, key, 2, 1), test_utils=quick)


# --------------------------------------------------------------------------- CUDA only


@needs_cuda
def test_cuda_graph_capture_replays_fresh_noise():
    x = _randn(64, 1000, seed=54)
    w = _randn(64, 1000, seed=55)

    def step():
        leaf = x.detach().requires_grad_()
        y = gk.gumbel_softmax(leaf, 0.5, True)
        (g,) = torch.autograd.grad((y * w).sum(), leaf)
        return y, g, gk.gumbel_max(x)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # builds the kernels before the capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, g, z = step()
    samples = []
    for _ in range(3):
        graph.replay()
        samples.append((y.clone(), g.clone(), z.clone()))
    torch.cuda.synchronize()
    for yy, gg, zz in samples:
        assert bool((yy.sum(-1) == 1).all()) and bool(((yy == 0) | (yy == 1)).all())
        assert bool(torch.isfinite(gg).all()) and bool(((zz >= 0) & (zz < 1000)).all())
    assert not torch.equal(samples[0][0], samples[1][0]) and not torch.equal(samples[1][2], samples[2][2])


@needs_cuda
def test_cuda_default_path_never_synchronises():
    x = _randn(32, 3000, seed=56).requires_grad_()
    tau = torch.full((32, 1), 0.5, device=DEV, requires_grad=True)
    gen = _gen(57)
    q = _quantizer(gen)  # built (and copied to the device, a synchronising copy) beforehand
    calls = dict(CALLS, GumbelQuantizer=lambda xx, g: _quantizer_step(xx, g, q))
    inputs = {name: _randn(4, 6, seed=58).requires_grad_(name != "gumbel_max") for name in calls}
    for name, call in calls.items():  # builds every kernel first
        call(inputs[name], gen)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for hard in (False, True):
            y = gk.gumbel_softmax(x, tau, hard, generator=gen)
            (y * y.detach()).sum().backward()
        gk.gumbel_max(x.detach(), generator=gen)
        gk.gumbel_topk(x.detach(), 4, generator=gen)
        for name, call in calls.items():
            out = call(inputs[name], gen)
            if out.requires_grad:
                out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_gumbel_rao_on_the_counter_noise_has_the_st_gumbel_mean(cuda_path):
    """Gumbel-Rao's conditional draws from the counter noise: the mean gradient over 4000
    independent rows equals ST-Gumbel's (the Rao-Blackwellised estimator is unbiased for it).
    Two-sample z-test per coordinate, Bonferroni over 4: false-failure rate 1e-4."""
    theta = torch.tensor([0.5, -0.3, 1.0, 0.0], device=DEV)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], device=DEV)
    grads = {}
    for method, options in (("gumbel_rao", {"k": 4}), ("st_gumbel", {})):
        x = theta.expand(4000, 4).clone().requires_grad_()
        y = gk.sample(x, method, tau=0.7, generator=_gen(59), **options)
        (g,) = torch.autograd.grad((y * w).sum(), x)
        grads[method] = g.double()
    a, b = grads["gumbel_rao"], grads["st_gumbel"]
    z = (a.mean(0) - b.mean(0)) / (a.var(0) / 4000 + b.var(0) / 4000).sqrt()
    assert bool((z.abs() < stats.norm.isf(1e-4 / 8)).all()), z
    assert bool((a.var(0) < b.var(0)).all())  # and lower variance


# --------------------------------------------------------------------------- the GPU benchmark script


@pytest.mark.skipif(CUDA, reason="the GPU run is the benchmark itself")
def test_cuda_benchmark_script_runs_dry_on_the_cpu(tmp_path):
    """benchmarks/cuda_bench.py --dry-run: every stage on tiny shapes under the interpreter, then
    the report; benchmarks/cuda_check.sh parses. (The numbers mean nothing; the code paths run.)"""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(
        os.environ, TRITON_INTERPRET="1", PYTHONPATH=f"{root / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    )
    assert subprocess.run(["bash", "-n", str(root / "benchmarks" / "cuda_check.sh")]).returncode == 0
    script = str(root / "benchmarks" / "cuda_bench.py")
    run = subprocess.run(
        [sys.executable, script, "--dry-run", "--out", str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]  # the dry run ends with the report (--report alone)
    res = json.loads((tmp_path / "cuda_bench.json").read_text())
    assert set(res) == {"speed", "compiled", "latency", "syncs", "graphs", "tails", "sampling"}
    assert not res["speed"]["skipped"] and len(res["speed"]["items"]) == 8
    assert all(it["syncs"]["default"] == 0 for it in res["syncs"]["items"])
    md = (tmp_path / "cuda_bench.md").read_text()
    for heading in ("Forward + backward", "torch.compile", "Host synchronisations", "Tails", "Sampling"):
        assert heading in md
