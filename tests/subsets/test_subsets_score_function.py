"""REINFORCE over exact k-subset samples (``gk.subsets.reinforce_loo``): unbiased against the
gradient by enumeration, its log normaliser exact, masks and bad input handled."""

from __future__ import annotations

import itertools

import pytest
import torch

import gumbelkit as gk


def _subsets(n: int, k: int) -> torch.Tensor:
    """Every k-subset of n items as k-hot float64 rows."""
    index = torch.tensor(list(itertools.combinations(range(n), k)))
    return torch.zeros(len(index), n, dtype=torch.float64).scatter_(1, index, 1.0)


def test_log_normalizer_is_the_elementary_symmetric_polynomial():
    theta = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    z = _subsets(7, 3)
    exact = torch.logsumexp(z @ theta, 0)
    value = gk.subsets.log_subset_normalizer(theta, 3)
    assert torch.allclose(value, exact)
    (g,) = torch.autograd.grad(value, theta)
    assert torch.allclose(g, gk.subsets.topk_marginals(theta.detach(), 3))  # its gradient: the marginals


def test_log_normalizer_edge_cases():
    f = gk.subsets.log_subset_normalizer
    # a spread of 1e30: the items that differ by 1 keep their weights (a sum of logits never
    # cancels the stand-in for log 0 of an empty sum)
    theta = torch.tensor([1e30, 1e30 - 1e14, 0.0, -1.0, -1e30], dtype=torch.float64, requires_grad=True)
    exact = torch.logsumexp(_subsets(5, 3) @ theta.detach(), 0)
    value = f(theta, 3)
    assert torch.allclose(value, exact, rtol=1e-15)
    (g,) = torch.autograd.grad(value, theta)
    assert torch.isfinite(g).all() and torch.allclose(g, gk.subsets.topk_marginals(theta.detach(), 3))
    # a subset of weight e^-3e30 is still more than an empty sum (a finite stand-in like -1e30 is not)
    theta = torch.tensor([-1e30, -1e30, -1e30, 0.0], dtype=torch.float64)
    assert torch.allclose(f(theta, 4), torch.tensor(-3e30, dtype=torch.float64), rtol=1e-15)
    # masks add nothing and get a zero gradient; float16 is computed in float32, returned in float16
    x = torch.tensor([[0.5, float("-inf"), 1.0, -2.0]], dtype=torch.float16, requires_grad=True)
    y = f(x, 2)
    assert y.dtype == torch.float16
    exact = torch.logsumexp(_subsets(3, 2) @ torch.tensor([0.5, 1.0, -2.0]).double(), 0)
    assert torch.allclose(y.double(), exact, rtol=1e-3)  # float16 rounding of the result
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g[0, 1] == 0 and torch.isfinite(g).all()
    assert f(torch.randn(3, 4), 0).eq(0).all()  # e_0 = 1
    with pytest.raises(gk.GumbelkitValueError, match=r"^log_subset_normalizer: expected k <= 3"):
        f(x.detach(), 4)  # a row has no 4-subset of unmasked items
    with pytest.raises(gk.GumbelkitValueError, match=r"^log_subset_normalizer: .*k"):
        f(torch.zeros(4), -1)


def test_reinforce_loo_is_unbiased():
    # E[f(z)] with f(z) = ||z - b||^2 under the conditional law, gradient by enumeration (float64).
    # The mean of 20,000 estimates (n = 2) is compared coordinatewise at 5 standard errors:
    # with 8 coordinates the test fails by chance with probability < 1e-5 (fixed seeds).
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(8, dtype=torch.float64, generator=gen)
    b = torch.rand(8, dtype=torch.float64, generator=gen)
    z = _subsets(8, 3)
    th = theta.clone().requires_grad_(True)
    logp = z @ th - torch.logsumexp(z @ th, 0)
    (exact,) = torch.autograd.grad((logp.exp() * ((z - b) ** 2).sum(-1)).sum(), th)
    batch = theta.expand(20_000, 8).clone().requires_grad_(True)
    surrogate, losses = gk.subsets.reinforce_loo(
        batch, 3, lambda s: ((s - b) ** 2).sum(-1), generator=torch.Generator().manual_seed(2)
    )
    (g,) = torch.autograd.grad(surrogate.sum(), batch)
    se = g.std(0) / 20_000**0.5
    assert bool(((g.mean(0) - exact).abs() < 5 * se).all()), (g.mean(0), exact, se)
    assert losses.shape == (2, 20_000) and torch.allclose(surrogate, losses.mean(0))


def test_a_masked_item_is_never_chosen_and_gets_no_gradient():
    logits = torch.tensor([[0.0, float("-inf"), 1.0, -0.5]], requires_grad=True)
    surrogate, _ = gk.subsets.reinforce_loo(
        logits, 2, lambda z: z[..., 0] - z[..., 3], n=4, generator=torch.Generator().manual_seed(0)
    )
    surrogate.sum().backward()
    assert logits.grad[0, 1] == 0 and bool(torch.isfinite(logits.grad).all())


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        ({"n": 1}, gk.GumbelkitValueError, "expected n to be an integer >= 2"),
        ({"n": 2.5}, gk.GumbelkitTypeError, "expected n"),
        (
            {"loss_fn": lambda z: z.sum()},
            gk.GumbelkitValueError,
            r"expected loss_fn to return losses of shape \(2, 3\)",
        ),
        ({"k": 9}, ValueError, "k"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, exc, text):
    args = {"logits": torch.zeros(3, 5), "k": 2, "loss_fn": lambda z: z.sum(-1), **kwargs}
    with pytest.raises(exc, match=text):
        gk.subsets.reinforce_loo(**args)


def test_it_is_the_subset_familys_score_function_method():
    spec = gk.get_spec("reinforce_loo", family="subset")
    assert spec.fn is gk.subsets.reinforce_loo and spec.kind == "score_function" and not spec.uses_tau
    assert spec.traits["law"] == "conditional" and spec.loss_evaluations({"n": 5}) == 5
