"""I-MLE for k-subsets: exactly k-hot forwards, the implicit-MLE finite difference backwards, the
Sum-of-Gamma noise, its (biased) gradient and its forward law, bad input.

Statistical tests state their false-failure rate; every seed is fixed.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import gumbelkit as gk
from gumbelkit.subsets import imle, sum_of_gamma_noise

SPEC = gk.get_spec("imle", family="subset")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_declared_in_the_subset_family_with_its_options_and_its_law():
    assert SPEC.fn is imle and SPEC.one_hot and SPEC.uses_tau and SPEC.default_tau == 1.0 and SPEC.kind == "sample"
    assert [(o.name, o.default) for o in SPEC.options] == [("lam", 1.0), ("s", 10)]
    # its forward law is neither Gumbel-top-k nor the conditional law (see the law test below)
    assert SPEC.traits["law"] == "sum_of_gamma" and SPEC.traits["target"] == "conditional"
    assert "Niepert" in SPEC.reference and not SPEC.has_control


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_forward_is_exactly_k_hot_and_masked_items_are_never_chosen_nor_get_a_gradient(k, dtype):
    logits = (torch.randn(300, 8, generator=gen(0)) * 3).to(dtype)
    logits[:, 3] = float("-inf")
    logits.requires_grad_()
    z = SPEC.call(logits, k, tau=0.7, generator=gen(1))
    assert z.dtype == dtype and z.shape == logits.shape
    assert bool(((z == 0) | (z == 1)).all()) and bool((z.sum(-1) == k).all()) and float(z.detach()[:, 3].max()) == 0.0
    (z * torch.randn(300, 8, generator=gen(2)).to(dtype)).sum().backward()
    assert bool((logits.grad[:, 3] == 0).all()) and bool(torch.isfinite(logits.grad).all())


def test_backward_is_the_finite_difference_towards_the_target_with_the_same_noise():
    theta = torch.randn(5, 7, generator=gen(3), dtype=torch.float64)
    dy = torch.randn(5, 7, generator=gen(4), dtype=torch.float64)
    k, tau, lam, s = 3, 0.5, 2.5, 20
    x = theta.clone().requires_grad_()
    z = imle(x, k, tau, generator=gen(5), lam=lam, s=s)
    z.backward(dy)
    shifted = theta - theta.amax(-1, keepdim=True)  # the row shift does not change any MAP state
    noise = tau * sum_of_gamma_noise((5, 7), k, s, generator=gen(5), dtype=torch.float64)

    def map_state(scores):
        return torch.zeros_like(scores).scatter(-1, scores.topk(k, -1).indices, 1.0)

    assert torch.equal(z.detach(), map_state(shifted + noise))
    torch.testing.assert_close(x.grad, (map_state(shifted + noise) - map_state(shifted - lam * dy + noise)) / lam)


def test_any_dim_and_memory_layout_give_the_same_draw():
    base = torch.randn(6, 9, generator=gen(6))
    a = imle(base, 2, generator=gen(7))
    b = imle(base.t().contiguous(), 2, dim=0, generator=gen(7)).t()
    c = imle(base.t().contiguous().t(), 2, generator=gen(7))
    assert torch.equal(a, b) and torch.equal(a, c)
    state = torch.random.get_rng_state()
    imle(base, 2, generator=gen(8))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG untouched


def test_k_sums_of_sum_of_gamma_noise_are_exactly_the_max_of_s_exponentials_minus_log_s():
    """Sum over k copies = sum_i E_i / i - log s, whose CDF is (1 - exp(-(x + log s)))^s exactly.
    Kolmogorov-Smirnov at n = 20,000 with the 1e-4 critical value 2.13 / sqrt(n): false-failure rate 1e-4 each."""
    n = 20_000
    for k, s in ((1, 10), (3, 10), (4, 200)):
        total = sum_of_gamma_noise((k, n), k, s, generator=gen(10 + k), dtype=torch.float64).sum(0)
        x = total.sort().values
        cdf = (1 - torch.exp(-(x + math.log(s)))).clamp_min(0) ** s
        i = torch.arange(1, n + 1, dtype=torch.float64)
        d = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max()
        assert float(d) < 2.13 / math.sqrt(n), (k, s, float(d))


def test_the_forward_law_is_not_claimed_to_be_gumbel_top_k_nor_the_conditional_law():
    """Subset histogram of Xie & Ermon (n = 4, k = 2, weights 1..4): the empirical law of 40,000
    draws is far from both exact laws (measured TV 0.13 and 0.17; the sampling noise of a TV over
    6 cells at this n is about 0.005, so a false failure needs a > 10 sigma deviation)."""
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    subsets = list(itertools.combinations(range(4), 2))
    conditional = torch.tensor([w[i] * w[j] for i, j in subsets])
    conditional = conditional / conditional.sum()
    p = w / w.sum()
    gumbel_topk = torch.tensor([p[i] * w[j] / (w.sum() - w[i]) + p[j] * w[i] / (w.sum() - w[j]) for i, j in subsets])
    n = 40_000
    z = imle(w.log().expand(n, 4), 2, generator=gen(20))
    code = (z * torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)).sum(-1).long()
    counts = torch.bincount(code, minlength=16).double()
    empirical = torch.stack([counts[(1 << i) + (1 << j)] for i, j in subsets]) / n
    tv_pl = 0.5 * float((empirical - gumbel_topk).abs().sum())
    tv_cond = 0.5 * float((empirical - conditional).abs().sum())
    assert tv_pl > 0.08 and tv_cond > 0.08, (tv_pl, tv_cond)


def test_one_of_k_with_many_terms_tends_to_the_softmax_law():
    """k = 1: the perturbation is the max of s exponentials minus log s, Gumbel as s grows. At
    s = 100, 20,000 draws over 5 classes: TV to softmax below 0.025 (sampling noise ~0.005, the
    bias of a finite s below 0.005)."""
    theta = torch.tensor([1.0, 0.0, -0.5, 2.0, 0.3], dtype=torch.float64)
    z = imle(theta.expand(20_000, 5), 1, generator=gen(21), s=100)
    tv = 0.5 * float((z.mean(0) - torch.softmax(theta, 0)).abs().sum())
    assert tv < 0.025, tv


def test_the_gradient_is_biased_on_the_k_subset_toy():
    """The exact-gradient toy (n = 10, k = 5, theta ~ N(0, 1), b = |N(0, 1)|, loss ||z - b||^2, exact
    gradient of the exponential family by enumerating the 252 subsets). I-MLE's mean estimate over
    20,000 draws is many standard errors away from it (bias, not noise: the largest |z| is > 10,
    where a false failure of an unbiased estimator has probability < 1e-20), and 1 - cos = 0.33 (lambda = 1)."""
    g = gen(0)  # the toy's draw in the subsets benchmark (seed 0)
    theta = torch.randn(10, generator=g, dtype=torch.float64)
    b = torch.randn(10, generator=g, dtype=torch.float64).abs()
    subsets = torch.tensor(
        [[1.0 if i in c else 0.0 for i in range(10)] for c in itertools.combinations(range(10), 5)], dtype=torch.float64
    )
    th = theta.clone().requires_grad_()
    log_p = torch.log_softmax(subsets @ th, 0)
    (exact,) = torch.autograd.grad((log_p.exp() * ((subsets - b) ** 2).sum(-1)).sum(), th)
    rows = 20_000
    x = theta.expand(rows, 10).clone().requires_grad_()
    z = imle(x, 5, generator=gen(31))
    ((z - b) ** 2).sum().backward()
    mean, se = x.grad.mean(0), x.grad.std(0) / math.sqrt(rows)
    assert float(((mean - exact) / se).abs().max()) > 10
    bias = 1 - float(torch.nn.functional.cosine_similarity(mean, exact, dim=0))
    assert 0.25 < bias < 0.42, bias


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        ({"lam": 0.0}, gk.GumbelkitValueError, "lam"),
        ({"lam": float("nan")}, gk.GumbelkitValueError, "lam"),
        ({"s": 0}, gk.GumbelkitValueError, "s to be an integer >= 1"),
        ({"tau": 0.0}, gk.GumbelkitValueError, "tau > 0"),
        ({"tau": torch.ones(1)}, gk.GumbelkitTypeError, "tau to be a float"),
        ({"k": 4}, gk.GumbelkitValueError, "k <= 3"),
        ({"k": 0}, gk.GumbelkitValueError, "k"),
        ({"logits": torch.tensor([[0.0, float("nan"), 1.0, 2.0]])}, gk.GumbelkitValueError, "NaN"),
        ({"logits": torch.zeros(2, 4, dtype=torch.int64)}, gk.GumbelkitTypeError, "floating"),
        ({"dim": 3}, gk.GumbelkitDimError, "dim"),
        ({"generator": 3}, gk.GumbelkitTypeError, "generator"),
    ],
)
def test_bad_input_raises_naming_imle(kwargs, exc, text):
    logits = torch.tensor([[0.0, float("-inf"), 1.0, 2.0], [1.0, 0.5, 0.0, 3.0]])
    args = {"logits": logits, "k": 2, **kwargs}
    with pytest.raises(exc, match=text) as info:
        imle(**args)
    assert str(info.value).startswith("imle: ")


def test_options_through_the_registry_name_the_option_and_the_range():
    with pytest.raises(ValueError, match=r"expected lam to be a finite number > 0 for method 'imle', got -1.0"):
        SPEC.check_options({"lam": -1.0})
    with pytest.raises(ValueError, match=r"expected s to be an integer >= 1 for method 'imle', got 0"):
        SPEC.check_options({"s": 0})
