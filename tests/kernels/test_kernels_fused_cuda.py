"""gumbelkit.kernels on a CUDA device: the Triton code of the same fused Philox kernel.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with
``python -m pytest tests/kernels/test_kernels_fused_cuda.py``. The CPU checks of the same behaviour are in
``tests/kernels/test_kernels_fused.py``; here the kernels are compiled by Inductor into Triton (first calls
compile). Statistical tests use fixed seeds and state their false-failure rate.
"""

import math

import pytest
import torch
from scipy import stats

from gumbelkit import kernels as K
from gumbelkit.kernels._philox import as_int32, gumbel_float32, gumbel_float64

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEV = "cuda"
REF = K.gumbel_softmax_reference


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


def _i32(values):
    return torch.tensor([as_int32(v) for v in values], dtype=torch.int32, device=DEV)


def _layouts():
    g = torch.Generator(device=DEV).manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, generator=g, device=DEV)

    return {
        "transposed": (r(8, 64).t(), -1),
        "3d-dim0": (r(8, 5, 6), 0),
        "3d-dim1-permuted": (r(6, 4, 8).permute(1, 2, 0), 1),
        "channels-last-dim1": (r(3, 8, 4, 5).contiguous(memory_format=torch.channels_last), 1),
        "expanded": (r(1, 8).expand(30, 8), -1),
        "sliced-steps": (r(40, 24)[::3, 1::3], -1),
    }


def test_cuda_fused_layouts_same_sample_and_gradient():
    # Same values in any layout -> the same sample and gradient (noise by logical position);
    # soft rows sum to 1, hard is exactly one-hot; the reference (op by op) agrees.
    for hard in (False, True):
        for name, (x, dim) in _layouts().items():
            w = torch.randn(x.shape, device=DEV, generator=_gen(2))
            outs = []
            for xx in (x, x.contiguous()):
                leaf = xx.detach().requires_grad_()
                y = K.gumbel_softmax(leaf, 0.5, hard=hard, dim=dim, generator=_gen(3))
                (gx,) = torch.autograd.grad((y * w).sum(), leaf)
                outs.append((y.detach(), gx))
            (y, gx), (yc, gc) = outs
            assert torch.equal(y, yc) and torch.equal(gx, gc), name
            if hard:
                assert bool(((y == 0) | (y == 1)).all()) and bool((y.sum(dim) == 1).all()), name
            else:
                assert torch.allclose(y.sum(dim), torch.ones((), device=DEV), atol=1e-5), name
            r = REF(x, 0.5, hard=hard, dim=dim, generator=_gen(3))
            assert torch.equal(y, r) if hard else torch.allclose(y, r, rtol=1e-5, atol=1e-6), name
    assert K.is_available()


def test_cuda_word_transforms_compiled_reach_documented_extremes():
    words = _i32([0, 1, 10, 250, 0x7FFFFFFF, 0x80000000, 0x80000001, 0xFFFFFFFF, 0x9234ABCD])
    g = torch.compile(gumbel_float32, fullgraph=True)(words)
    assert torch.allclose(g, gumbel_float32(words), rtol=2e-6, atol=2e-6)
    assert round(float(g[0]), 2) == 22.87 and round(float(g[5]), 2) == -3.13
    assert float(g[3]) > 16.64
    g64 = torch.compile(gumbel_float64, fullgraph=True)(words, torch.zeros_like(words))
    assert round(float(g64[0]), 2) == 45.05 and round(float(g64[5]), 2) == -3.81


def test_cuda_compiled_noise_tail_counts():
    """2^28 float32 values of the compiled noise: counts above 15 and 17 and below -2.5 and -2.9
    against Binomial(n, exact p), two-sided, Bonferroni: false-failure rate 1e-6 in all."""
    n_chunk, chunks = 1 << 26, 4
    f = torch.compile(lambda k: K.gumbel_noise_philox(n_chunk, k), fullgraph=True, dynamic=False)
    thresholds = [(">", 15.0), (">", 17.0), ("<", -2.5), ("<", -2.9)]
    counts = [0] * len(thresholds)
    gen = _gen(4)
    lo, hi = math.inf, -math.inf
    for _ in range(chunks):
        g = f(K.draw_key(gen, DEV))
        lo, hi = min(lo, float(g.min())), max(hi, float(g.max()))
        for i, (side, t) in enumerate(thresholds):
            counts[i] += int((g > t).sum()) if side == ">" else int((g < t).sum())
    n = n_chunk * chunks
    assert lo >= -3.1301 and hi <= 22.874
    for (side, t), k in zip(thresholds, counts):
        p = -math.expm1(-math.exp(-t)) if side == ">" else math.exp(-math.exp(-t))
        assert stats.binomtest(k, n, p).pvalue > 1e-6 / len(thresholds), (side, t, k, n * p)


def test_cuda_tiny_tau_and_huge_logits_no_nan():
    big = torch.finfo(torch.float32).max
    x = torch.randn(16, 8, device=DEV, generator=_gen(5))
    x[:3] = torch.tensor([0.9 * big, -0.9 * big, big, 1.0, -big, 0.0, 0.5 * big, -math.inf], device=DEV)
    x.requires_grad_()
    w = torch.randn(16, 8, device=DEV, generator=_gen(6))
    for tau in (1.0, 0.5, 1e-38, 1e-40):
        for hard in (False, True):
            y = K.gumbel_softmax(x, tau, hard=hard, generator=_gen(7))
            (gx,) = torch.autograd.grad((y * w).sum(), x)
            assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(gx).all()), (tau, hard)
            assert torch.allclose(y.detach().sum(-1), torch.ones((), device=DEV), atol=1e-5)


def test_cuda_vocab_scale_tail_rate():
    """V = 65,536: class 0 at 0, the rest at -19; P(argmax != 0) = 3.670e-4. N = 2^17 rows expect
    48.1; two-sided binomial test at false-failure rate 1e-6."""
    V, N, chunk = 65_536, 1 << 17, 4096
    x = torch.full((1, V), -19.0, device=DEV)
    x[0, 0] = 0.0
    p = 65_535 * math.exp(-19) / (1 + 65_535 * math.exp(-19))
    gen = _gen(8)
    hits = 0
    for _ in range(N // chunk):
        y = K.gumbel_softmax(x.expand(chunk, V), 1.0, hard=True, generator=gen)
        hits += int((y[:, 0] == 0).sum())
    assert K.is_available()
    assert stats.binomtest(hits, N, p).pvalue > 1e-6, (hits, N * p)
