"""Relaxed permutations: Sinkhorn, Gumbel-Sinkhorn, NeuralSort, SoftSort (gumbelkit.permutations)."""

import itertools
import math

import pytest
import torch
from scipy import stats
from scipy.optimize import linear_sum_assignment

import gumbelkit as gk
from gumbelkit._core.numerics import log_exp_noise
from gumbelkit.permutations import gumbel_sinkhorn, neural_sort, sinkhorn, soft_sort
from gumbelkit.structured import permutation_matrix

INF = float("inf")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ref_sinkhorn(log_alpha, n_iters):
    """Float64 reference: the plain log-space iterations, no shift."""
    x = log_alpha.double()
    for _ in range(n_iters):
        x = x - torch.logsumexp(x, -1, keepdim=True)
        x = x - torch.logsumexp(x, -2, keepdim=True)
    return x.exp()


def is_perm_matrix(p):
    return bool(((p == 0) | (p == 1)).all() and (p.sum(-1) == 1).all() and (p.sum(-2) == 1).all())


def brute_force_best(scores):
    """The permutation maximising sum_i scores[i, perm[i]], over all n! permutations."""
    n = scores.shape[-1]
    best = max(itertools.permutations(range(n)), key=lambda pm: sum(float(scores[i, pm[i]]) for i in range(n)))
    return torch.tensor(best)


def noisy_scores(log_alpha, seed):
    """log_alpha + g with the noise gumbel_sinkhorn draws for the same generator state."""
    return log_alpha - log_exp_noise(log_alpha.shape, gen(seed), log_alpha.device, log_alpha.dtype)


# --------------------------------------------------------------------------- sinkhorn


def test_sinkhorn_is_doubly_stochastic_after_50_iterations():
    s = sinkhorn(torch.randn(4, 6, 6, generator=gen(1)), n_iters=50)
    assert torch.allclose(s.sum(-1), torch.ones(4, 6), atol=1e-4)
    assert torch.allclose(s.sum(-2), torch.ones(4, 6), atol=1e-4)
    assert (s >= 0).all()


def test_sinkhorn_equals_float64_reference():
    x = torch.randn(3, 5, 5, generator=gen(2), dtype=torch.float64) * 3
    assert torch.allclose(sinkhorn(x, n_iters=7), ref_sinkhorn(x, 7), atol=1e-12, rtol=0)
    x32 = x.float()
    assert torch.allclose(sinkhorn(x32, n_iters=7).double(), ref_sinkhorn(x32, 7), atol=1e-5)


def test_sinkhorn_computes_half_precision_in_float32():
    x = torch.randn(5, 5, generator=gen(3))
    out = sinkhorn(x.to(torch.bfloat16), n_iters=30)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref_sinkhorn(x.to(torch.bfloat16), 30).float(), atol=1e-2)


def test_sinkhorn_forbidden_entries_get_zero_weight_and_zero_gradient():
    x = torch.randn(4, 4, generator=gen(4), dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    x = x.masked_fill(~mask, -INF).requires_grad_()
    s = sinkhorn(x, n_iters=200)
    assert (s.detach()[~mask] == 0).all()
    assert torch.allclose(s.detach().sum(-1), torch.ones(4, dtype=torch.float64), atol=1e-6)
    (s * torch.randn(4, 4, generator=gen(5), dtype=torch.float64)).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all()


def test_sinkhorn_rejects_an_all_forbidden_row_or_column():
    x = torch.zeros(2, 3, 3)
    x[1, 2, :] = -INF
    with pytest.raises(
        gk.GumbelkitValueError, match=r"sinkhorn: expected a finite entry in every row and column.*1 all -inf row"
    ):
        sinkhorn(x)
    y = torch.zeros(3, 3)
    y[:, 0] = -INF
    with pytest.raises(gk.GumbelkitValueError, match=r"0 all -inf row\(s\) and 1 all -inf column"):
        gumbel_sinkhorn(y)


def test_gumbel_sinkhorn_hard_rejects_a_pattern_without_perfect_matching():
    # every row and column has a finite entry, but rows 0 and 1 can only use column 0 (Hall fails)
    x = torch.tensor([[0.0, -INF, -INF], [0.0, -INF, -INF], [0.0, 0.0, 0.0]])
    with pytest.raises(gk.GumbelkitValueError, match="gumbel_sinkhorn: expected a permutation avoiding the -inf"):
        gumbel_sinkhorn(x, hard=True, generator=gen(0))


def test_sinkhorn_transposed_input_gives_the_contiguous_result():
    x = torch.randn(3, 6, 6, generator=gen(6)).transpose(-1, -2)
    assert not x.is_contiguous()
    assert torch.equal(sinkhorn(x, 10), sinkhorn(x.contiguous(), 10))
    a = gumbel_sinkhorn(x, 0.5, 10, hard=True, generator=gen(7))
    b = gumbel_sinkhorn(x.contiguous(), 0.5, 10, hard=True, generator=gen(7))
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- gumbel_sinkhorn


@pytest.mark.parametrize(
    ("tau", "n_iters", "tol"), [(1.0, 20, 1e-3), (1.0, 100, 1e-5), (0.1, 20, None), (0.1, 100, 3e-2), (0.1, 200, 1e-2)]
)
def test_gumbel_sinkhorn_row_sum_error_grows_at_low_tau(tau, n_iters, tol):
    """The measured trade-off quoted in gumbel_sinkhorn's docstring (n = 10, 5 draws)."""
    errs = []
    for seed in range(5):
        la = torch.randn(10, 10, generator=gen(seed))
        y = gumbel_sinkhorn(la, tau=tau, n_iters=n_iters, generator=gen(100 + seed))
        errs.append(float((y.sum(-1) - 1).abs().max()))
        assert torch.allclose(y.sum(-2), torch.ones(10), atol=1e-5)  # columns are normalised last
    if tol is None:
        assert max(errs) > 0.05  # 20 iterations are not enough at tau = 0.1
    else:
        assert max(errs) < tol


def test_gumbel_sinkhorn_noise_zero_is_sinkhorn_of_scaled_scores():
    x = torch.randn(2, 4, 4, generator=gen(8), dtype=torch.float64)
    out = gumbel_sinkhorn(x, tau=0.5, n_iters=30, noise=0.0)
    assert torch.allclose(out, ref_sinkhorn(x / 0.5, 30), atol=1e-10)


def test_gumbel_sinkhorn_soft_uses_the_library_noise():
    x = torch.randn(4, 4, generator=gen(9), dtype=torch.float64)
    out = gumbel_sinkhorn(x, tau=0.7, n_iters=15, generator=gen(10))
    assert torch.allclose(out, ref_sinkhorn(noisy_scores(x, 10) / 0.7, 15), atol=1e-10)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_gumbel_sinkhorn_hard_is_the_assignment_optimum(n):
    for seed in range(4):
        x = torch.randn(3, n, n, generator=gen(seed), dtype=torch.float64)
        if n >= 3:
            x[0, 0, 1] = -INF  # a forbidden entry is never used
        p = gumbel_sinkhorn(x, tau=0.3, hard=True, generator=gen(50 + seed))
        assert p.dtype == x.dtype and is_perm_matrix(p)
        keys = noisy_scores(x, 50 + seed)
        for b in range(3):
            best = brute_force_best(keys[b])
            assert torch.equal(p[b], permutation_matrix(best, torch.float64))
            cost = keys[b].masked_fill(keys[b] == -INF, -1e9).numpy()
            assert torch.equal(torch.from_numpy(linear_sum_assignment(cost, maximize=True)[1]), best)
        if n >= 3:
            assert p[0, 0, 1] == 0


def test_gumbel_sinkhorn_hard_backward_equals_relaxed_gradient():
    w = torch.randn(2, 4, 4, generator=gen(11))
    x1 = torch.randn(2, 4, 4, generator=gen(12), requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    (gumbel_sinkhorn(x1, 0.5, 10, hard=True, generator=gen(13)) * w).sum().backward()
    (gumbel_sinkhorn(x2, 0.5, 10, generator=gen(13)) * w).sum().backward()
    assert torch.equal(x1.grad, x2.grad)


def test_gumbel_sinkhorn_tensor_tau_per_matrix():
    x = torch.randn(3, 4, 4, generator=gen(14), dtype=torch.float64)
    tau = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).view(3, 1, 1)
    out = gumbel_sinkhorn(x, tau, 10, noise=0.0)
    for b in range(3):
        assert torch.allclose(out[b], gumbel_sinkhorn(x[b], float(tau[b]), 10, noise=0.0), atol=1e-12)
    with pytest.raises(gk.GumbelkitValueError, match="gumbel_sinkhorn: expected tau broadcastable to"):
        gumbel_sinkhorn(x, torch.ones(4))


def test_gumbel_sinkhorn_tiny_tau_stays_finite():
    x = torch.randn(5, 5, generator=gen(15), requires_grad=True)
    y = gumbel_sinkhorn(x, tau=1e-30, n_iters=5, generator=gen(16))
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- gradcheck


def test_gradcheck_sinkhorn_and_gumbel_sinkhorn():
    x = torch.randn(2, 4, 4, generator=gen(17), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: sinkhorn(a, 5), (x,))
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, t: gumbel_sinkhorn(a, t, 5, generator=gen(18)), (x, tau))


def test_gradcheck_neural_sort_and_soft_sort():
    s = torch.randn(2, 5, generator=gen(19), dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, t: neural_sort(a, t), (s, tau))
    assert torch.autograd.gradcheck(lambda a: neural_sort(a, 0.5, stochastic=True, generator=gen(20)), (s,))
    assert torch.autograd.gradcheck(lambda a, t: soft_sort(a, t, p=1), (s, tau))
    assert torch.autograd.gradcheck(lambda a, t: soft_sort(a, t, p=2), (s, tau))


# --------------------------------------------------------------------------- neural_sort


def test_neural_sort_matches_the_formula():
    s = torch.randn(3, 6, generator=gen(21), dtype=torch.float64)
    n = 6
    a = (s.unsqueeze(-1) - s.unsqueeze(-2)).abs()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    logits = (n + 1 - 2 * i).view(n, 1) * s.unsqueeze(-2) - (a @ torch.ones(n, dtype=torch.float64)).unsqueeze(-2)
    assert torch.allclose(neural_sort(s, 0.7), torch.softmax(logits / 0.7, -1), atol=1e-12)


def test_neural_sort_small_tau_approaches_sorting_permutation():
    s = torch.randn(4, 7, generator=gen(22))
    target = permutation_matrix(s.argsort(-1, descending=True))
    gap = float(s.sort(-1).values.diff(dim=-1).min())  # the closest pair of scores (~0.02 here)
    p = neural_sort(s, tau=gap / 20)
    assert torch.allclose(p, target, atol=1e-4)
    assert torch.allclose(p.sum(-1), torch.ones(4, 7), atol=1e-5)
    assert (p @ s.unsqueeze(-1)).squeeze(-1).allclose(s.sort(-1, descending=True).values, atol=1e-3)


def test_neural_sort_hard_is_argsort_with_relaxed_gradient():
    s = torch.randn(3, 6, generator=gen(23), requires_grad=True)
    h = neural_sort(s, 0.5, hard=True)
    assert is_perm_matrix(h.detach())
    assert torch.equal(h.detach(), permutation_matrix(s.detach().argsort(-1, descending=True)))
    w = torch.randn(3, 6, 6, generator=gen(24))
    (h * w).sum().backward()
    s2 = s.detach().clone().requires_grad_()
    (neural_sort(s2, 0.5) * w).sum().backward()
    assert torch.equal(s.grad, s2.grad)


def test_neural_sort_stochastic_hard_follows_plackett_luce():
    """Chi-square over the 6 orders of n = 3, 20,000 draws in one batch, fixed seed, level 1e-3."""
    logits = torch.tensor([1.0, 0.0, -0.5])
    draws = 20_000
    h = neural_sort(logits.expand(draws, 3), hard=True, stochastic=True, generator=gen(25))
    orders = h.argmax(-1)  # row i: the item ranked i-th
    counts = {}
    for o in map(tuple, orders.tolist()):
        counts[o] = counts.get(o, 0) + 1
    w = logits.exp().tolist()
    observed, expected = [], []
    for o in itertools.permutations(range(3)):
        prob = w[o[0]] / sum(w) * w[o[1]] / (w[o[1]] + w[o[2]])
        observed.append(counts.get(o, 0))
        expected.append(prob * draws)
    assert math.isclose(sum(expected), draws)
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_neural_sort_transposed_input_gives_the_contiguous_result():
    s = torch.randn(5, 4, generator=gen(26)).t()
    assert not s.is_contiguous()
    assert torch.equal(neural_sort(s, 0.3), neural_sort(s.contiguous(), 0.3))
    a = neural_sort(s, 0.3, hard=True, stochastic=True, generator=gen(27))
    assert torch.equal(a, neural_sort(s.contiguous(), 0.3, hard=True, stochastic=True, generator=gen(27)))
    assert torch.equal(soft_sort(s, 0.3), soft_sort(s.contiguous(), 0.3))


# --------------------------------------------------------------------------- soft_sort


def test_soft_sort_rows_sum_to_one_and_match_the_formula():
    s = torch.randn(3, 6, generator=gen(28), dtype=torch.float64)
    p = soft_sort(s, 0.9, p=2)
    assert torch.allclose(p.sum(-1), torch.ones(3, 6, dtype=torch.float64), atol=1e-12)
    top = s.sort(-1, descending=True).values
    ref = torch.softmax(-((top.unsqueeze(-1) - s.unsqueeze(-2)).abs() ** 2) / 0.9, -1)
    assert torch.allclose(p, ref, atol=1e-12)


def test_soft_sort_small_tau_equals_sorting_permutation():
    s = torch.randn(4, 7, generator=gen(29))
    assert torch.equal(soft_sort(s, tau=1e-6), permutation_matrix(s.argsort(-1, descending=True)))


def test_soft_sort_half_precision_and_tiny_tau():
    s = torch.randn(6, generator=gen(30)).half()
    p = soft_sort(s, tau=1e-30)
    assert p.dtype == torch.float16 and torch.isfinite(p).all()
    p = neural_sort(s, tau=1e-30)
    assert p.dtype == torch.float16 and torch.isfinite(p).all()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: sinkhorn(torch.zeros(3, 4)), gk.GumbelkitValueError, r"sinkhorn: expected a square matrix"),
        (
            lambda: sinkhorn(torch.zeros(3)),
            gk.GumbelkitValueError,
            r"sinkhorn: expected log_alpha with at least two dims",
        ),
        (lambda: sinkhorn(torch.zeros(3, 3, dtype=torch.int64)), gk.GumbelkitTypeError, "sinkhorn: .*floating"),
        (lambda: sinkhorn(torch.tensor([[0.0, math.nan], [0.0, 0.0]])), gk.GumbelkitValueError, "sinkhorn: .*NaN"),
        (lambda: sinkhorn(torch.tensor([[0.0, INF], [0.0, 0.0]])), gk.GumbelkitValueError, r"sinkhorn: .*\+inf"),
        (lambda: sinkhorn(torch.zeros(3, 3), 0), gk.GumbelkitValueError, "sinkhorn: expected n_iters"),
        (lambda: sinkhorn(torch.zeros(3, 3), 2.5), gk.GumbelkitError, "sinkhorn: expected n_iters"),
        (lambda: gumbel_sinkhorn(torch.zeros(3, 3), 0.0), gk.GumbelkitValueError, "gumbel_sinkhorn: expected tau > 0"),
        (lambda: gumbel_sinkhorn(torch.zeros(3, 3), INF), gk.GumbelkitValueError, "gumbel_sinkhorn: expected tau > 0"),
        (
            lambda: gumbel_sinkhorn(torch.zeros(3, 3), torch.tensor(math.nan)),
            gk.GumbelkitValueError,
            "gumbel_sinkhorn: expected tau",
        ),
        (
            lambda: gumbel_sinkhorn(torch.zeros(3, 3), noise=-1.0),
            gk.GumbelkitValueError,
            "gumbel_sinkhorn: expected noise",
        ),
        (
            lambda: gumbel_sinkhorn(torch.zeros(3, 3), generator=1),
            gk.GumbelkitTypeError,
            "gumbel_sinkhorn: expected generator",
        ),
        (
            lambda: neural_sort(torch.tensor(1.0)),
            gk.GumbelkitValueError,
            "neural_sort: expected scores with at least one dim",
        ),
        (lambda: neural_sort(torch.tensor([1, 2])), gk.GumbelkitTypeError, "neural_sort: .*floating"),
        (
            lambda: neural_sort(torch.tensor([0.0, math.nan])),
            gk.GumbelkitValueError,
            "neural_sort: expected scores without NaN",
        ),
        (lambda: neural_sort(torch.tensor([0.0, -INF])), gk.GumbelkitValueError, "neural_sort: expected finite scores"),
        (lambda: neural_sort(torch.zeros(2), -1.0), gk.GumbelkitValueError, "neural_sort: expected tau > 0"),
        (
            lambda: neural_sort(torch.zeros(2, 3), torch.ones(3)),
            gk.GumbelkitValueError,
            "neural_sort: expected tau broadcastable",
        ),
        (lambda: soft_sort(torch.zeros(0)), gk.GumbelkitValueError, "soft_sort: expected at least one"),
        (lambda: soft_sort(torch.zeros(3), p=0.5), gk.GumbelkitValueError, "soft_sort: expected p >= 1"),
        (lambda: soft_sort(torch.zeros(3), tau="1"), gk.GumbelkitTypeError, "soft_sort: expected tau"),
    ],
)
def test_bad_arguments_raise_library_errors_naming_the_function(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
