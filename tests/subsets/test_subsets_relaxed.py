"""gumbelkit.subsets: relaxed top-k (Xie & Ermon), exact conditional k-subset marginals, SIMPLE."""

import itertools
import math

import pytest
import torch

import gumbelkit as gk
from gumbelkit.errors import GumbelkitDimError, GumbelkitTypeError, GumbelkitValueError
from gumbelkit.subsets import relaxed_topk, simple, topk_marginals

NAN, INF = float("nan"), float("inf")
# chi-square critical value, 5 degrees of freedom (6 subsets of 4 items, k = 2), level 1e-3: with
# a fixed seed the tests are deterministic; a correct sampler fails a fresh seed 1 time in 1000.
CHI2_DF5_1E3 = 20.515


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _chi2(counts: dict, probs: dict, n: int) -> float:
    return sum((counts.get(s, 0) - n * p) ** 2 / (n * p) for s, p in probs.items())


def _subset_counts(y: torch.Tensor) -> dict:
    counts: dict = {}
    for row in y.nonzero()[:, 1].view(-1, int(y[0].sum())).tolist():
        key = tuple(sorted(row))
        counts[key] = counts.get(key, 0) + 1
    return counts


def _enum_marginals(logits: torch.Tensor, k: int) -> torch.Tensor:
    """P(z_i = 1 | sum z = k) by enumerating the k-subsets, float64, in log space."""
    n = logits.shape[-1]
    subsets = list(itertools.combinations(range(n), k))
    logw = torch.stack([logits[..., list(s)].sum(-1) for s in subsets], -1)  # (..., S)
    post = torch.softmax(logw, -1)
    out = torch.zeros_like(logits)
    for j, s in enumerate(subsets):
        out[..., list(s)] += post[..., j : j + 1]
    return out


# --------------------------------------------------------------------------- relaxed_topk


@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0, 5.0])
def test_relaxed_topk_sums_to_k_and_is_nonnegative(tau):
    x = torch.randn(6, 9, generator=_gen(1))
    for k in (1, 3, 9):
        y = relaxed_topk(x, k, tau=tau, generator=_gen(2))
        assert y.shape == x.shape and y.dtype == x.dtype
        assert (y >= 0).all()
        torch.testing.assert_close(y.sum(-1), torch.full((6,), float(k)), atol=1e-5, rtol=0)


def test_relaxed_topk_entries_can_exceed_one_in_exact_arithmetic():
    # two items, k = 2: a1 = softmax(r) = (0.6, 0.4); a2 = softmax(r + log(1 - a1)) = (0.5, 0.5),
    # so y = (1.1, 0.9): the Xie-Ermon relaxation is not bounded by 1 (not a rounding effect).
    # Reproduce it through the noise: the keys are logits - log E, so compare with the formula.
    x = torch.tensor([[0.7, -0.3]], dtype=torch.float64)
    y = relaxed_topk(x, 2, tau=1.0, generator=_gen(0))
    e = gk.exponential_noise(x.shape, generator=_gen(0), dtype=torch.float64)
    a1 = torch.softmax(x - e.log(), -1)
    want = a1 + torch.softmax(x - e.log() + torch.log1p(-a1), -1)
    torch.testing.assert_close(y, want, atol=1e-12, rtol=0)
    # for two items and k = 2, a2 = (1/2, 1/2) whatever a1 is, so y = a1 + 1/2 exceeds 1 at the top
    torch.testing.assert_close(y, a1 + 0.5, atol=1e-12, rtol=0)
    assert float(y.max()) > 1.01


def test_relaxed_topk_small_tau_tends_to_the_gumbel_topk_khot():
    x = torch.randn(5, 7, generator=_gen(3))
    y = relaxed_topk(x, 3, tau=1e-4, generator=_gen(4))
    idx = gk.gumbel_topk(x, 3, generator=_gen(4))
    torch.testing.assert_close(y, gk.structured.khot(idx, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_relaxed_topk_hard_forward_is_exactly_khot_at_gumbel_topk_indices(dtype):
    x = (torch.randn(8, 10, generator=_gen(5)) * 3).to(dtype)
    for k in (1, 4):
        y = relaxed_topk(x, k, tau=0.5, hard=True, generator=_gen(6))
        idx = gk.gumbel_topk(x, k, generator=_gen(6))
        assert y.dtype == dtype
        assert torch.equal(y, gk.structured.khot(idx, x))
    # the shifted path (|logits| > 16) draws the same sample too
    big = x.double() * 1e3
    assert torch.equal(
        relaxed_topk(big, 3, hard=True, generator=_gen(7)),
        gk.structured.khot(gk.gumbel_topk(big, 3, generator=_gen(7)), big),
    )


def test_relaxed_topk_half_precision_is_computed_in_float32():
    x = torch.randn(4, 6, generator=_gen(8)).to(torch.float16)
    y16 = relaxed_topk(x, 2, tau=0.7, generator=_gen(9))
    y32 = relaxed_topk(x.float(), 2, tau=0.7, generator=_gen(9))
    assert y16.dtype == torch.float16
    torch.testing.assert_close(y16, y32.half())


def test_relaxed_topk_hard_backward_equals_the_relaxed_gradient():
    x = torch.randn(4, 7, generator=_gen(10), dtype=torch.float64)
    c = torch.randn(4, 7, generator=_gen(11), dtype=torch.float64)
    grads = []
    for hard in (False, True):
        xx = x.clone().requires_grad_()
        (relaxed_topk(xx, 3, tau=0.8, hard=hard, generator=_gen(12)) * c).sum().backward()
        grads.append(xx.grad)
    assert torch.equal(grads[0], grads[1])


def test_relaxed_topk_gradcheck_float64():
    x = torch.randn(3, 6, generator=_gen(13), dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, t: relaxed_topk(a, 3, tau=t, generator=_gen(14)), (x, tau))
    assert torch.autograd.gradgradcheck(lambda a: relaxed_topk(a, 2, tau=0.5, generator=_gen(15)), (x,))


def test_relaxed_topk_masks_get_zero_weight_zero_gradient_and_are_never_chosen():
    x = torch.randn(50, 6, generator=_gen(16))
    x[:, 1] = -INF
    x[::2, 4] = -INF
    x.requires_grad_()
    y = relaxed_topk(x, 4, tau=0.3, generator=_gen(17))
    assert torch.equal(y[:, 1], torch.zeros(50)) and torch.equal(y[::2, 4], torch.zeros(25))
    torch.testing.assert_close(y.sum(-1), torch.full((50,), 4.0))
    (y * torch.randn(50, 6, generator=_gen(18))).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[:, 1], torch.zeros(50)) and torch.equal(x.grad[::2, 4], torch.zeros(25))
    h = relaxed_topk(x, 4, hard=True, generator=_gen(19))
    assert torch.equal(h[:, 1], torch.zeros(50)) and torch.equal(h.sum(-1), torch.full((50,), 4.0))
    with pytest.raises(GumbelkitValueError, match="relaxed_topk: expected k <= 4"):
        relaxed_topk(x, 5)


@pytest.mark.parametrize("tau", [1e-30, 1e-6, 1e3])
def test_relaxed_topk_extreme_tau_and_logits_stay_finite(tau):
    x = torch.tensor([[300.0, 0.0, -300.0, 1.0, 2.0], [1e6, -1e6, 0.0, 5.0, 5.0]], requires_grad=True)
    y = relaxed_topk(x, 3, tau=tau, generator=_gen(20))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.detach().sum(-1), torch.full((2,), 3.0))
    y[:, 0].sum().backward()
    assert torch.isfinite(x.grad).all()


def test_relaxed_topk_is_layout_invariant():
    x = torch.randn(4, 7, generator=_gen(21))
    y = relaxed_topk(x, 3, tau=0.6, generator=_gen(22))
    strided = x.t().contiguous().t()  # same values, column-major memory
    assert not strided.is_contiguous()
    assert torch.equal(relaxed_topk(strided, 3, tau=0.6, generator=_gen(22)), y)
    # the item dim need not be the last: noise is drawn in the logits' logical shape (as
    # gumbel_topk does), so (4, 7, 1) with dim=1 draws the same noise as (4, 7) with dim=-1
    for d in (1, -2):
        assert torch.equal(relaxed_topk(x.unsqueeze(-1), 3, tau=0.6, dim=d, generator=_gen(22)).squeeze(-1), y)
    # a transposed view with dim=0 agrees with its own contiguous copy, and with gumbel_topk
    xt = x.t()
    yt = relaxed_topk(xt, 3, tau=0.6, dim=0, generator=_gen(23))
    assert torch.equal(yt, relaxed_topk(xt.contiguous(), 3, tau=0.6, dim=0, generator=_gen(23)))
    torch.testing.assert_close(yt.sum(0), torch.full((4,), 3.0))
    ht = relaxed_topk(xt, 3, hard=True, dim=0, generator=_gen(24))
    assert torch.equal(ht, gk.structured.khot(gk.gumbel_topk(xt, 3, dim=0, generator=_gen(24)), xt, dim=0))


def test_relaxed_topk_tensor_tau_broadcasts():
    x = torch.randn(3, 5, generator=_gen(25))
    tau = torch.tensor([[0.5], [1.0], [2.0]])
    y = relaxed_topk(x, 2, tau=tau, generator=_gen(26))
    for i in range(3):
        row = relaxed_topk(x, 2, tau=float(tau[i]), generator=_gen(26))[i]
        torch.testing.assert_close(y[i], row)


def test_relaxed_topk_errors():
    x = torch.zeros(2, 4)
    with pytest.raises(GumbelkitValueError, match=r"relaxed_topk: expected k to be an integer in \[1, 4\], got 0"):
        relaxed_topk(x, 0)
    for k in (5, 2.0, True):
        with pytest.raises(GumbelkitValueError, match="relaxed_topk: expected k"):
            relaxed_topk(x, k)
    for tau in (0.0, -1.0, INF, NAN):
        with pytest.raises(GumbelkitValueError, match="relaxed_topk: expected tau > 0 and finite"):
            relaxed_topk(x, 2, tau=tau)
    with pytest.raises(GumbelkitValueError, match="relaxed_topk: expected tau > 0"):
        relaxed_topk(x, 2, tau=torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(GumbelkitValueError, match="relaxed_topk: expected logits without NaN"):
        relaxed_topk(torch.tensor([0.0, NAN, 1.0]), 1)
    with pytest.raises(GumbelkitValueError, match="all-masked"):
        relaxed_topk(torch.full((2, 3), -INF), 1)
    with pytest.raises(GumbelkitTypeError, match="relaxed_topk: expected logits with a floating dtype"):
        relaxed_topk(torch.zeros(2, 4, dtype=torch.int64), 1)
    with pytest.raises(GumbelkitDimError, match=r"relaxed_topk: expected dim in \[-2, 1\]"):
        relaxed_topk(x, 1, dim=2)
    with pytest.raises(GumbelkitTypeError, match="relaxed_topk: expected generator"):
        relaxed_topk(x, 1, generator=0)


def test_relaxed_topk_hard_law_is_plackett_luce_subsets():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    p = (w / w.sum()).tolist()
    probs = {
        (a, b): p[a] * p[b] / (1 - p[a]) + p[a] * p[b] / (1 - p[b]) for a, b in itertools.combinations(range(4), 2)
    }
    assert math.isclose(sum(probs.values()), 1.0)
    n = 20_000
    y = relaxed_topk(w.log().expand(n, 4), 2, tau=0.5, hard=True, generator=_gen(27))
    assert _chi2(_subset_counts(y), probs, n) < CHI2_DF5_1E3


# --------------------------------------------------------------------------- topk_marginals


def test_topk_marginals_check_values():
    p = torch.tensor([0.3, 0.6, 0.5, 0.2])
    mu = topk_marginals(torch.log(p / (1 - p)), 2)
    torch.testing.assert_close(mu, torch.tensor([0.3568, 0.7622, 0.6595, 0.2216]), atol=1e-4, rtol=0)


def test_topk_marginals_match_enumeration_float64():
    g = _gen(28)
    for n in range(1, 9):
        x = torch.randn(3, n, generator=g, dtype=torch.float64) * 2
        for k in range(1, n + 1):
            mu = topk_marginals(x, k)
            torch.testing.assert_close(mu, _enum_marginals(x, k), atol=1e-10, rtol=0)
            torch.testing.assert_close(mu.sum(-1), torch.full((3,), float(k), dtype=torch.float64), atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_marginals_stable_for_large_logits(dtype):
    x = (torch.rand(20, 8, generator=_gen(29), dtype=torch.float64) * 160 - 80).to(dtype)
    x[0] = torch.tensor([80.0, 80.0, -80.0, -80.0, 79.0, -79.0, 0.0, 1.0])
    # float32: the log e_j reach k * 80 in magnitude, so exp of their differences carries ~1e-5
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    for k in (1, 3, 6):
        mu = topk_marginals(x, k)
        assert torch.isfinite(mu).all() and (mu >= 0).all() and (mu <= 1 + atol).all()
        want = _enum_marginals(x.double(), k)
        assert torch.isfinite(want).all()
        torch.testing.assert_close(mu.double(), want, atol=atol, rtol=0)


def test_topk_marginals_masks_dims_and_layout():
    x = torch.randn(5, 6, generator=_gen(30), dtype=torch.float64)
    x[:, 2] = -INF
    x.requires_grad_()
    mu = topk_marginals(x, 3)
    assert torch.equal(mu[:, 2], torch.zeros(5, dtype=torch.float64))
    keep = [0, 1, 3, 4, 5]
    torch.testing.assert_close(mu[:, keep], _enum_marginals(x.detach()[:, keep], 3), atol=1e-10, rtol=0)
    (mu * torch.randn(5, 6, generator=_gen(31), dtype=torch.float64)).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[:, 2], torch.zeros(5, dtype=torch.float64))
    y = x.detach().t()  # (6, 5) view, items along dim 0
    torch.testing.assert_close(topk_marginals(y, 3, dim=0), mu.detach().t(), atol=1e-12, rtol=0)
    torch.testing.assert_close(topk_marginals(y.contiguous(), 3, dim=0), mu.detach().t(), atol=1e-12, rtol=0)
    z = torch.randn(2, 4, 3, generator=_gen(32))
    torch.testing.assert_close(topk_marginals(z, 2, dim=1), topk_marginals(z.transpose(1, 2), 2).transpose(1, 2))
    assert topk_marginals(z.half(), 2, dim=1).dtype == torch.float16


def test_topk_marginals_gradcheck_float64():
    x = torch.randn(2, 5, generator=_gen(33), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: topk_marginals(a, 2), (x,))
    # the marginals are the gradient of log e_k (mu_i = d log e_k / d theta_i)
    subsets = list(itertools.combinations(range(5), 2))
    log_ek = torch.logsumexp(torch.stack([x[:, list(s)].sum(-1) for s in subsets], -1), -1)
    (g,) = torch.autograd.grad(log_ek.sum(), x)
    torch.testing.assert_close(topk_marginals(x, 2).detach(), g, atol=1e-12, rtol=0)


def test_topk_marginals_errors():
    x = torch.zeros(2, 4)
    with pytest.raises(GumbelkitValueError, match="topk_marginals: expected k"):
        topk_marginals(x, 5)
    with pytest.raises(GumbelkitValueError, match="topk_marginals: expected k <= 2"):
        topk_marginals(torch.tensor([0.0, -INF, -INF, 1.0]), 3)
    with pytest.raises(GumbelkitValueError, match="topk_marginals: expected logits without NaN"):
        topk_marginals(torch.tensor([0.0, NAN]), 1)
    with pytest.raises(GumbelkitTypeError, match="topk_marginals: expected logits with a floating dtype"):
        topk_marginals(torch.zeros(3, dtype=torch.int32), 1)
    with pytest.raises(GumbelkitDimError, match="topk_marginals: expected dim"):
        topk_marginals(x, 1, dim=-3)


# --------------------------------------------------------------------------- simple


def test_simple_forward_is_exactly_khot_and_respects_masks():
    x = torch.randn(200, 7, generator=_gen(34)) * 4
    x[:, 3] = -INF
    x[:100, 0] = -INF
    for k in (1, 3, 5):
        y = simple(x, k, generator=_gen(35))
        assert torch.equal(y.sum(-1), torch.full((200,), float(k)))
        assert set(y.unique().tolist()) <= {0.0, 1.0}
        assert not y[:, 3].any() and not y[:100, 0].any()
    with pytest.raises(GumbelkitValueError, match="simple: expected k <= 5"):
        simple(x, 6)


def test_simple_backward_is_the_gradient_of_the_marginals():
    x = torch.randn(3, 6, generator=_gen(36), dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 6, generator=_gen(37), dtype=torch.float64)
    (simple(x, 2, generator=_gen(38)) * c).sum().backward()
    (want,) = torch.autograd.grad((topk_marginals(x, 2) * c).sum(), x)
    torch.testing.assert_close(x.grad, want, atol=1e-12, rtol=0)


def test_simple_law_is_the_exact_conditional_distribution():
    logits = torch.tensor([0.3, -0.5, 1.0, -1.2], dtype=torch.float64)
    p = torch.sigmoid(logits).tolist()
    weight = {s: math.prod(p[i] if i in s else 1 - p[i] for i in range(4)) for s in itertools.combinations(range(4), 2)}
    total = sum(weight.values())
    probs = {s: v / total for s, v in weight.items()}
    n = 20_000
    y = simple(logits.expand(n, 4), 2, generator=_gen(39))
    assert _chi2(_subset_counts(y), probs, n) < CHI2_DF5_1E3
    # the same law along another dim, from a transposed layout
    yt = simple(logits.expand(n, 4).t(), 2, dim=0, generator=_gen(39))
    assert torch.equal(yt.t(), y)


def test_simple_errors():
    with pytest.raises(GumbelkitTypeError, match="simple: expected logits with a floating dtype"):
        simple(torch.zeros(3, dtype=torch.int64), 1)
    with pytest.raises(GumbelkitValueError, match="simple: expected k"):
        simple(torch.zeros(3), 0)
    with pytest.raises(GumbelkitDimError, match="simple: expected dim"):
        simple(torch.zeros(3), 1, dim=1)
