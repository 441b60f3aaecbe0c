"""The samplers on a CUDA device: exact tails, exact one-hot, masks, determinism, dtypes, compile.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda.py``. Statistical tests use fixed seeds and state their level.
"""

import math

import pytest
import torch
from scipy import stats

import gumbelkit as gk

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEV = "cuda"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_noise_matches_gumbel_law_and_documented_range(dtype):
    g = gk.gumbel_noise((1 << 20,), generator=_gen(1), dtype=dtype)
    assert g.device.type == "cuda" and g.dtype == dtype and bool(torch.isfinite(g).all())
    assert stats.kstest(g[:200_000].double().cpu().numpy(), stats.gumbel_r.cdf).pvalue > 1e-3
    lo, hi = -3.61, 37.44  # float64 exponential_ for both dtypes: about [-3.60, 36.7] (see gumbel_noise)
    assert lo <= float(g.min()) and float(g.max()) <= hi


def test_cuda_noise_tail_counts_beyond_the_24_bit_cap():
    # 2^30 float32 draws: counts above 17 and 19 and below -2.9 against Binomial(n, exact p),
    # two-sided at 1e-6 each. Uniforms with 24 random bits never exceed 16.64 (nor go below -2.81).
    n_chunk, chunks = 1 << 26, 16
    n = n_chunk * chunks
    counts = {17.0: 0, 19.0: 0, -2.9: 0}
    gen = _gen(2)
    for _ in range(chunks):
        g = gk.gumbel_noise((n_chunk,), generator=gen)
        for t in counts:
            counts[t] += int((g > t).sum()) if t > 0 else int((g < t).sum())
    for t, k in counts.items():
        p = -math.expm1(-math.exp(-t)) if t > 0 else math.exp(-math.exp(-t))
        assert stats.binomtest(k, n, p).pvalue > 1e-6, (t, k, n * p)


def test_cuda_gumbel_max_draws_a_class_19_nats_below_at_its_probability():
    # One class at 0, 65,535 at -19: the low classes have q = 3.67e-4. 400,000 draws (expected
    # 147), two-sided binomial test at 1e-6.
    V, N, rows = 65_536, 400_000, 4_000
    q = (V - 1) * math.exp(-19.0) / (1 + (V - 1) * math.exp(-19.0))
    x = torch.full((rows, V), -19.0, device=DEV)
    x[:, 0] = 0.0
    gen = _gen(3)
    k = sum(int((gk.gumbel_max(x, generator=gen) != 0).sum()) for _ in range(N // rows))
    assert stats.binomtest(k, N, q).pvalue > 1e-6, (k, N * q)


@pytest.mark.parametrize("method", ["st_gumbel", "st", "gumbel_rao", "reinmax", "gumbel_softmax"])
def test_cuda_methods_one_hot_masks_and_gradients(method):
    x = torch.randn(256, 20, 10, device=DEV)
    x[..., 3] = float("-inf")
    x.requires_grad_(True)
    y = gk.sample(x, method, tau=0.5, generator=_gen(4))
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    assert bool((y[..., 3] == 0).all())
    if gk.is_one_hot(method):
        assert bool(((y == 0) | (y == 1)).all()) and bool((y.sum(-1) == 1).all())
    (y * torch.randn_like(y)).sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and bool((x.grad[..., 3] == 0).all())


@pytest.mark.parametrize("method", ["st_gumbel", "gumbel_rao", "reinmax"])
def test_cuda_sample_matches_gumbel_max_under_the_same_generator(method):
    x = torch.randn(512, 1000, device=DEV).requires_grad_(True)
    expected = gk.gumbel_max(x.detach(), generator=_gen(5))
    got = gk.sample(x, method, tau=0.5, generator=_gen(5)).detach().argmax(-1)
    assert torch.equal(got, expected)


def test_cuda_generator_determinism_and_global_rng_untouched():
    x = torch.randn(8, 100, device=DEV, generator=_gen(0))
    state = torch.cuda.get_rng_state()
    a = gk.gumbel_softmax(x, 0.5, generator=_gen(6))
    assert torch.equal(a, gk.gumbel_softmax(x, 0.5, generator=_gen(6)))
    assert not torch.equal(a, gk.gumbel_softmax(x, 0.5, generator=_gen(7)))
    assert torch.equal(torch.cuda.get_rng_state(), state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cuda_half_precision_keeps_dtype_and_one_hot(dtype):
    x = torch.randn(64, 262_144 // 64, device=DEV, dtype=dtype).requires_grad_(True)
    y = gk.gumbel_softmax(x, 0.5, True, generator=_gen(7))
    assert y.dtype == dtype and bool((y.sum(-1) == 1).all())
    y.float().sum().backward()
    assert bool(torch.isfinite(x.grad.float()).all())


def test_cuda_layout_invariance():
    # the noise of an element depends on its logical position: the same sample in any layout (the
    # soft values up to float rounding: a kernel may sum a row in another order for another layout)
    base = torch.randn(32, 50, device=DEV)
    t = base.t().contiguous().t()  # same values, column-major
    a = gk.gumbel_softmax(base, 0.7, generator=_gen(8))
    b = gk.gumbel_softmax(t, 0.7, generator=_gen(8))
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    ha = gk.gumbel_softmax(base, 0.7, True, generator=_gen(8))
    assert torch.equal(ha, gk.gumbel_softmax(t, 0.7, True, generator=_gen(8)))


def test_cuda_compiled_gumbel_softmax_is_a_valid_sample():
    f = torch.compile(lambda x: gk.gumbel_softmax(x, 0.5, True), fullgraph=True)
    x = torch.randn(128, 1000, device=DEV)
    y = f(x)
    assert bool((y.sum(-1) == 1).all()) and bool(((y == 0) | (y == 1)).all())


def test_cuda_fused_kernel_rows_sum_to_one_any_layout():
    from gumbelkit import kernels

    x = torch.randn(64, 10, device=DEV).t()  # non-contiguous rows
    y = kernels.gumbel_softmax(x, 0.5, generator=_gen(9))
    assert torch.allclose(y.sum(-1), torch.ones(10, device=DEV), atol=1e-5)
    h = kernels.gumbel_softmax(x, 0.5, hard=True, generator=_gen(9))
    assert bool((h.sum(-1) == 1).all())
