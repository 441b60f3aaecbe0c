"""Masked classes with a tensor temperature, huge logits, tiny temperatures, non-finite temperatures."""

import pytest
import torch
from scipy import stats

import gumbelkit as gk

NEG_INF = float("-inf")
ALL = list(gk.METHODS)
ONE_HOT = [m for m in ALL if gk.is_one_hot(m)]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# Every tau-taking entry point, as fn(x, tau, generator) -> tensor shaped like x.
SAMPLERS = {
    "gumbel_softmax_soft": lambda x, t, g: gk.gumbel_softmax(x, t, generator=g),
    "gumbel_softmax_hard": lambda x, t, g: gk.gumbel_softmax(x, t, hard=True, generator=g),
    "tempered_softmax": lambda x, t, g: gk.tempered_softmax(x, t),
    **{f"sample_{m}": (lambda x, t, g, m=m: gk.sample(x, m, t, generator=g)) for m in ALL},
}


# ------------------------------------------------------------------ 1. masked class + tensor tau


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("tau_shape", [(), (3, 1)], ids=["scalar_tau", "row_tau"])
def test_masked_class_gives_finite_tau_grad_and_zero_logit_grad(name, tau_shape):
    x = torch.randn(3, 5, generator=_gen(1))
    x[:, 1] = NEG_INF
    x[0, 3] = NEG_INF
    x.requires_grad_()
    tau = torch.full(tau_shape, 0.7, requires_grad=True)
    y = SAMPLERS[name](x, tau, _gen(2))
    assert torch.all(y[:, 1] == 0) and y[0, 3] == 0
    (y * torch.randn(3, 5, generator=_gen(3))).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.all(x.grad[:, 1] == 0) and x.grad[0, 3] == 0
    if name == "sample_reinmax":  # documented: ReinMax passes no gradient to tau
        assert tau.grad is None
    else:
        assert tau.grad is not None and torch.isfinite(tau.grad).all() and tau.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["tempered_softmax", "sample_softmax", "sample_st"])
def test_masked_class_tau_grad_equals_grad_without_that_class(name):
    # A masked class has weight exactly 0: dropping the column must give the same gradients.
    x = torch.randn(4, 6, dtype=torch.float64, generator=_gen(4))
    x[:, 2] = NEG_INF
    w = torch.randn(4, 6, dtype=torch.float64, generator=_gen(5))
    keep = [0, 1, 3, 4, 5]
    grads = []
    for logits, weights in ((x, w), (x[:, keep], w[:, keep])):
        xx = logits.clone().requires_grad_()
        tau = torch.tensor([[0.4], [0.9], [1.5], [3.0]], dtype=torch.float64, requires_grad=True)
        (SAMPLERS[name](xx, tau, _gen(6)) * weights).sum().backward()
        grads.append((xx.grad, tau.grad))
    assert torch.allclose(grads[0][0][:, keep], grads[1][0])
    assert torch.all(grads[0][0][:, 2] == 0)
    assert torch.allclose(grads[0][1], grads[1][1])


def test_learnable_tau_matches_autograd_of_the_formula_with_same_noise():
    x = torch.randn(5, 7, dtype=torch.float64, generator=_gen(7))
    x[1, 4] = NEG_INF
    w = torch.randn(5, 7, dtype=torch.float64, generator=_gen(8))
    tau = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    (gk.gumbel_softmax(x, tau, generator=_gen(9)) * w).sum().backward()
    g = gk.gumbel_noise(x.shape, generator=_gen(9), dtype=torch.float64)
    # reference without the masked entry: give it a huge negative finite logit instead (weight 0)
    xr = torch.where(torch.isneginf(x), -1e4, x)
    tr = tau.detach().clone().requires_grad_()
    (torch.softmax((xr + g) / tr, -1) * w).sum().backward()
    assert torch.allclose(tau.grad, tr.grad)


# ------------------------------------------------------------------ 2. huge logits keep their noise

# Each check below is a two-sided binomial test at level 1e-4 with a fixed seed; a correct sampler
# fails one of the <= 14 checks of a test with probability < 1.4e-3 over random seeds.
LEVEL = 1e-4


def _binom_ok(count, n, p):
    return stats.binomtest(int(count), n, p).pvalue > LEVEL


@pytest.mark.parametrize(
    "row,dtype",
    [
        ([1e7, 1e7], torch.float32),
        ([1e7, 1e7 + 1], torch.float32),
        ([3e38, 3e38], torch.float32),
        ([1e16, 1e16], torch.float64),
    ],
    ids=["equal_1e7", "1e7_vs_1e7+1", "equal_3e38", "equal_1e16_float64"],
)
def test_huge_logits_are_sampled_with_softmax_probabilities(row, dtype):
    n = 20_000
    logits = torch.tensor(row, dtype=dtype)
    p1 = float(torch.softmax(logits.double() - logits.double().max(), -1)[1])
    x = logits.expand(n, 2)
    draws = {
        "gumbel_max": gk.gumbel_max(x, generator=_gen(12)),
        "gumbel_topk": gk.gumbel_topk(x, 1, generator=_gen(13))[:, 0],
        "gumbel_softmax_hard": gk.gumbel_softmax(x, 0.5, hard=True, generator=_gen(14)).argmax(-1),
        "gumbel_softmax_soft": gk.gumbel_softmax(x, 0.5, generator=_gen(15)).argmax(-1),
    }
    xg = x.clone().requires_grad_()  # the gradient paths draw through the autograd functions
    for i, m in enumerate(ONE_HOT):
        draws[m] = gk.sample(xg, m, 0.5, generator=_gen(16 + i)).argmax(-1)
    draws["gumbel_softmax_hard_grad"] = gk.gumbel_softmax(xg, 0.5, hard=True, generator=_gen(30)).argmax(-1)
    for name, z in draws.items():
        assert _binom_ok((z == 1).sum(), n, p1), (name, float((z == 1).float().mean()), p1)


def test_gumbel_topk_pairs_of_huge_equal_logits_are_uniform():
    n = 20_000
    x = torch.full((n, 3), 1e7)
    idx = gk.gumbel_topk(x, 2, generator=_gen(31))
    counts = torch.bincount(idx[:, 0] * 3 + idx[:, 1], minlength=9)[[1, 2, 3, 5, 6, 7]]
    assert stats.chisquare(counts.numpy()).pvalue > LEVEL


# ------------------------------------------------------------------ 3. tiny tau, extreme logits

EXTREME = torch.tensor(
    [
        [3e38, -3e38, 1.0, -2.0],
        [-3e38, 3e38, 2.9e38, 0.0],
        [-3e38, -2.9e38, 0.5, NEG_INF],
        [3.4e38, 3.4e38, 0.0, -3.4e38],
    ]
)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize(
    "tau", [1e-38, 1e-40, 1e-8, 1e-50, 1.0], ids=["1e-38", "1e-40_subnormal", "1e-8", "1e-50_below_range", "1"]
)
@pytest.mark.parametrize("tensor_tau", [False, True], ids=["float_tau", "tensor_tau"])
def test_tiny_tau_and_extreme_logits_give_finite_outputs_and_grads(name, tau, tensor_tau):
    if name == "tempered_softmax" or name in ("sample_softmax", "sample_st"):
        x = EXTREME[:3].clone()  # no noise in these backwards: keep rows free of exact ties
    else:
        x = EXTREME.clone()
    x.requires_grad_()
    # a float32 tensor cannot hold 1e-50 (it would be 0, rightly refused): that one is float64
    t = (
        torch.tensor(tau, dtype=torch.float64 if tau < 1e-45 else torch.float32, requires_grad=True)
        if tensor_tau
        else tau
    )
    y = SAMPLERS[name](x, t, _gen(32))
    assert torch.isfinite(y).all(), y
    assert torch.allclose(y.sum(-1), torch.ones(x.shape[0]))
    assert torch.all(y[2, 3] == 0)
    (y * torch.randn(x.shape, generator=_gen(33))).sum().backward()
    assert torch.isfinite(x.grad).all(), x.grad
    if tensor_tau and t.grad is not None:
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize("tau", [1e-38, 1e-40, 1e-8])
def test_tiny_tau_softmax_is_the_argmax(tau):
    x = EXTREME[:3]
    y = gk.tempered_softmax(x, tau)
    assert torch.equal(y, torch.nn.functional.one_hot(x.argmax(-1), 4).float())
    y = gk.gumbel_softmax(x, tau, generator=_gen(34))
    h = gk.gumbel_softmax(x, tau, hard=True, generator=_gen(34))
    assert torch.equal(y, h)  # the relaxed sample collapses onto the exact one


def test_float64_logits_near_the_float64_range_are_finite():
    x = torch.tensor([[1.7e308, -1.7e308, 0.0], [-1.7e308, 1.7e308, 1.6e308]], dtype=torch.float64, requires_grad=True)
    for name, fn in SAMPLERS.items():
        x.grad = None
        y = fn(x, 1e-300, _gen(35))
        (y * torch.arange(3.0, dtype=torch.float64)).sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all(), name


# ------------------------------------------------------------------ 4. non-finite tensor tau


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize(
    "tau",
    [torch.tensor(float("inf")), torch.tensor(float("nan")), torch.tensor([[0.5], [float("inf")]])],
    ids=["inf", "nan", "contains_inf"],
)
def test_non_finite_tensor_tau_is_rejected(name, tau):
    with pytest.raises(ValueError, match=r"expected tau > 0 and finite, got a tensor of shape"):
        SAMPLERS[name](torch.zeros(2, 3), tau, None)
