"""gumbelkit.binary: pathwise Bernoulli samples and unbiased score-function surrogates."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import gumbelkit as gk
from gumbelkit import binary


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- sample


@pytest.mark.parametrize("method", ["st", "st_binary_concrete"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_hard_methods_forward_exactly_zero_one_with_a_gradient(method, dtype):
    logits = (torch.randn(64, 8, generator=gen(1)) * 3).to(dtype).requires_grad_()
    b = binary.sample(logits, method, tau=0.7, generator=gen())
    assert b.dtype == dtype and b.shape == logits.shape
    assert bool(((b == 0) | (b == 1)).all())
    assert binary.METHODS[method].one_hot
    (b * torch.arange(8.0).to(dtype)).sum().backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    assert float(logits.grad.abs().sum()) > 0


def test_hard_methods_sample_bernoulli_sigmoid_frequencies():
    theta = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.5])
    m = 40_000
    b = binary.sample(theta.expand(m, 5).contiguous(), "st", generator=gen(3))
    p = torch.sigmoid(theta.double())
    se = (p * (1 - p) / m).sqrt()
    assert bool(((b.double().mean(0) - p).abs() < 4 * se).all())


def test_st_backward_is_the_gradient_of_sigmoid_theta_over_tau():
    logits = torch.randn(10, generator=gen(2), dtype=torch.float64, requires_grad=True)
    w = torch.randn(10, generator=gen(4), dtype=torch.float64)
    (binary.sample(logits, "st", tau=0.3, generator=gen()) * w).sum().backward()
    ref = logits.detach().clone().requires_grad_()
    (torch.sigmoid(ref / 0.3) * w).sum().backward()
    torch.testing.assert_close(logits.grad, ref.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("tau", [0.25, 1.0, 3.0])
def test_binary_concrete_gradient_equals_float64_autograd_of_the_formula_with_the_same_noise(tau):
    logits = torch.randn(5, 7, generator=gen(5), requires_grad=True)
    w = torch.randn(5, 7, generator=gen(6))
    y = binary.sample(logits, "binary_concrete", tau=tau, generator=gen(9))
    (y * w).sum().backward()
    noise = gk.logistic_noise(logits.shape, generator=gen(9))  # the same draw, float32
    ref = logits.detach().double().requires_grad_()
    y_ref = torch.sigmoid((ref + noise.double()) / tau)
    (y_ref * w.double()).sum().backward()
    torch.testing.assert_close(y.detach().double(), y_ref.detach(), rtol=2e-6, atol=0)
    # float32 against float64: a few ulps relative, in the saturated tails too
    torch.testing.assert_close(logits.grad.double(), ref.grad, rtol=5e-6, atol=0)


def test_st_binary_concrete_forward_is_the_rounding_of_binary_concrete_with_the_same_generator():
    logits = torch.randn(100, 20, generator=gen(7), requires_grad=True)
    y = binary.sample(logits, "binary_concrete", tau=0.5, generator=gen(11))
    b = binary.sample(logits, "st_binary_concrete", tau=0.5, generator=gen(11))
    assert torch.equal(b.detach(), (y.detach() > 0.5).float())
    # the backward is binary_concrete's gradient with the same noise
    w = torch.randn(100, 20, generator=gen(8))
    (ga,) = torch.autograd.grad((y * w).sum(), logits)
    (gb,) = torch.autograd.grad((b * w).sum(), logits)
    torch.testing.assert_close(ga, gb)


def _hard_concrete_closed_form(log_alpha: float, beta=2 / 3, gamma=-0.1, zeta=1.1):
    sig = lambda x: 1 / (1 + math.exp(-x))
    p_nonzero = sig(log_alpha - beta * math.log(-gamma / zeta))
    p_one = sig(log_alpha - beta * math.log((1 - gamma) / (zeta - 1)))
    # E[z] by the midpoint rule over u ~ U(0, 1), L = logit(u): 2e6 cells, error << 1e-4
    u = (torch.arange(2_000_000, dtype=torch.float64) + 0.5) / 2_000_000
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    mean = float((s * (zeta - gamma) + gamma).clamp(0, 1).mean())
    return 1 - p_nonzero, p_one, mean


@pytest.mark.parametrize(
    ("log_alpha", "mean", "p_nonzero"), [(-2.0, 0.143, 0.4010), (0.0, 0.500, 0.8318), (2.0, 0.857, 0.9734)]
)
def test_hard_concrete_point_masses_and_mean_match_the_closed_form(log_alpha, mean, p_nonzero):
    p0, p1, ez = _hard_concrete_closed_form(log_alpha)
    assert abs(1 - p0 - p_nonzero) < 5e-5 and abs(ez - mean) < 5e-4  # the quoted values
    m = 200_000
    z = binary.sample(torch.full((m,), log_alpha), "hard_concrete", generator=gen(13)).double()
    # 4.5 binomial standard errors (sqrt(p(1-p)/m) <= 1.2e-3); E[z]: 4.5 standard errors of z's mean.
    for observed, p in ((float((z == 0).double().mean()), p0), (float((z == 1).double().mean()), p1)):
        assert abs(observed - p) < 4.5 * math.sqrt(p * (1 - p) / m)
    assert abs(float(z.mean()) - ez) < 4.5 * float(z.std()) / math.sqrt(m)
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0


def test_hard_concrete_gradient_flows_through_the_clamp_and_is_zero_where_clamped():
    logits = torch.zeros(1000, requires_grad=True)
    z = binary.sample(logits, "hard_concrete", generator=gen(14), gamma=-0.2, zeta=1.3)
    z.sum().backward()
    clamped = (z.detach() == 0) | (z.detach() == 1)
    assert clamped.any() and (~clamped).any()
    assert bool((logits.grad[clamped] == 0).all()) and bool((logits.grad[~clamped] > 0).all())
    assert binary.METHODS["hard_concrete"].default_tau == pytest.approx(2 / 3)


@pytest.mark.parametrize("method", ["st", "binary_concrete", "st_binary_concrete", "hard_concrete"])
def test_infinite_logits_give_deterministic_bits_with_zero_gradient(method):
    logits = torch.tensor([float("inf"), float("-inf"), 0.3], requires_grad=True)
    y = binary.sample(logits, method, generator=gen())
    assert y[0].item() == 1.0 and y[1].item() == 0.0
    y.sum().backward()
    assert logits.grad[0].item() == 0.0 and logits.grad[1].item() == 0.0
    assert bool(torch.isfinite(logits.grad).all())


@pytest.mark.parametrize("method", ["st", "binary_concrete", "st_binary_concrete", "hard_concrete"])
def test_same_generator_state_gives_the_same_sample_whatever_the_memory_layout(method):
    base = torch.randn(6, 9, generator=gen(15))
    a = binary.sample(base, method, generator=gen(16))
    b = binary.sample(base.t().contiguous().t(), method, generator=gen(16))
    assert torch.equal(a, b)
    c = binary.sample(base, method, generator=gen(17))
    assert not torch.equal(a, c) or binary.METHODS[method].one_hot


def test_half_precision_is_computed_in_float32():
    logits = torch.randn(50, generator=gen(18))
    y16 = binary.sample(logits.half(), "binary_concrete", generator=gen(19))
    y32 = binary.sample(logits.half().float(), "binary_concrete", generator=gen(19))
    assert y16.dtype == torch.float16
    assert torch.equal(y16, y32.half())


def test_tensor_tau_broadcasts():
    logits = torch.randn(4, 3, generator=gen(20))
    tau = torch.tensor([0.5, 1.0, 2.0])
    y = binary.sample(logits, "binary_concrete", tau=tau, generator=gen(21))
    noise = gk.logistic_noise((4, 3), generator=gen(21))
    torch.testing.assert_close(y, torch.sigmoid((logits + noise) / tau))


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        ({"logits": torch.tensor([0.0, float("nan")])}, gk.GumbelkitValueError, "NaN"),
        ({"tau": 0.0}, gk.GumbelkitValueError, "tau > 0"),
        ({"tau": float("inf")}, gk.GumbelkitValueError, "tau > 0"),
        ({"tau": -1.0}, gk.GumbelkitValueError, "tau > 0"),
        ({"logits": torch.zeros(3, dtype=torch.int64)}, gk.GumbelkitTypeError, "floating"),
        ({"method": "gumbel"}, gk.GumbelkitValueError, "expected method"),
        ({"method": "arm"}, gk.GumbelkitValueError, "expected method"),
        ({"method": 3}, gk.GumbelkitTypeError, "expected method"),
        ({"bogus": 1.0}, gk.GumbelkitTypeError, "unknown option"),
        ({"method": "hard_concrete", "gamma": 0.5}, gk.GumbelkitValueError, "gamma"),
        ({"method": "hard_concrete", "zeta": "x"}, gk.GumbelkitTypeError, "zeta"),
        ({"generator": 1}, gk.GumbelkitTypeError, "generator"),
    ],
)
def test_sample_errors_name_binary_sample(kwargs, exc, text):
    args = {"logits": torch.zeros(3), "method": "st", **kwargs}
    with pytest.raises(exc, match=text) as info:
        binary.sample(**args)
    assert str(info.value).startswith("binary.sample: ")


# --------------------------------------------------------------------------- surrogate

TARGET = torch.tensor([0.45, 0.9, 0.1], dtype=torch.float64)
PHI = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)


def nonlinear_f(b: torch.Tensor) -> torch.Tensor:
    t = TARGET.to(b.dtype)
    return ((b - t) ** 2).sum(-1) + (b[..., 0] * b[..., 1] - 0.5 * b[..., 2]) ** 2 + torch.cos(b.sum(-1))


def exact_gradient(phi: torch.Tensor) -> torch.Tensor:
    phi = phi.detach().clone().requires_grad_()
    p = torch.sigmoid(phi)
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=3):
        b = torch.tensor(bits, dtype=torch.float64)
        total = total + torch.prod(torch.where(b == 1, p, 1 - p)) * nonlinear_f(b)
    (g,) = torch.autograd.grad(total, phi)
    return g


def estimates(method: str, rows: int, n: int = 2, seed: int = 0):
    logits = PHI.expand(rows, 3).clone().requires_grad_()
    s = binary.surrogate(logits, nonlinear_f, method, n=n, generator=gen(seed))
    s.sum().backward()
    return s.detach(), logits.grad


@pytest.mark.parametrize(("method", "n"), [("reinforce_loo", 2), ("reinforce_loo", 4), ("arm", 1), ("disarm", 1)])
def test_surrogate_estimators_are_unbiased_against_the_exact_gradient_by_enumeration(method, n):
    rows = 100_000
    values, g = estimates(method, rows, n=n, seed=23)
    exact = exact_gradient(PHI)
    se = g.std(0) / math.sqrt(rows)
    assert bool(((g.mean(0) - exact).abs() < 4 * se).all()), (g.mean(0), exact, se)
    # the value: a Monte-Carlo estimate of E[f]
    p = torch.sigmoid(PHI)
    ef = sum(
        float(torch.prod(torch.where(torch.tensor(bits) == 1, p, 1 - p)) * nonlinear_f(torch.tensor(bits)))
        for bits in itertools.product([0.0, 1.0], repeat=3)
    )
    assert abs(float(values.mean()) - ef) < 4 * float(values.std()) / math.sqrt(rows)


def test_disarm_variance_is_at_most_arms():
    _, g_arm = estimates("arm", 50_000, n=1, seed=29)
    _, g_dis = estimates("disarm", 50_000, n=1, seed=29)
    v_arm, v_dis = g_arm.var(0), g_dis.var(0)
    assert bool((v_dis <= v_arm).all()), (v_dis, v_arm)


@pytest.mark.parametrize("method", ["reinforce_loo", "arm", "disarm"])
def test_surrogate_shapes_each_row_gets_its_own_estimate(method):
    logits = torch.randn(2, 5, 4, generator=gen(31), requires_grad=True)
    t = torch.randn(4, generator=gen(32))
    s = binary.surrogate(logits, lambda b: ((b - t) ** 2).sum(-1), method, n=3, generator=gen(33))
    assert s.shape == (2, 5)
    s.sum().backward()
    g_all = logits.grad.clone()
    # the gradient of one row's surrogate touches only that row
    logits.grad = None
    s2 = binary.surrogate(logits, lambda b: ((b - t) ** 2).sum(-1), method, n=3, generator=gen(33))
    s2[1, 2].backward()
    mask = torch.zeros(2, 5, 1, dtype=torch.bool)
    mask[1, 2] = True
    assert bool((logits.grad.masked_select(~mask.expand_as(logits.grad)) == 0).all())
    torch.testing.assert_close(logits.grad[1, 2], g_all[1, 2])


@pytest.mark.parametrize("method", ["reinforce_loo", "arm", "disarm"])
def test_surrogate_infinite_logits_have_zero_gradient_and_f_parameters_get_gradients(method):
    logits = torch.tensor([[float("inf"), float("-inf"), 0.0]], requires_grad=True)
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    s = binary.surrogate(logits, lambda b: (b * w).sum(-1) ** 2, method, generator=gen(34))
    assert bool(torch.isfinite(s).all())
    s.sum().backward()
    assert logits.grad[0, 0].item() == 0.0 and logits.grad[0, 1].item() == 0.0
    assert w.grad is not None and bool(torch.isfinite(w.grad).all())


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        ({"logits": torch.tensor([0.0, float("nan")])}, gk.GumbelkitValueError, "NaN"),
        ({"logits": torch.zeros(3, dtype=torch.int32)}, gk.GumbelkitTypeError, "floating"),
        ({"logits": torch.tensor(0.0)}, gk.GumbelkitDimError, "at least one dimension"),
        ({"method": "st"}, gk.GumbelkitValueError, "expected method"),
        ({"method": "reinforce_loo", "n": 1}, gk.GumbelkitValueError, "n"),
        ({"n": 0}, gk.GumbelkitValueError, "n"),
        ({"n": 2.5}, gk.GumbelkitTypeError, "n"),
        ({"f": 3}, gk.GumbelkitTypeError, "callable"),
        ({"f": lambda b: b}, gk.GumbelkitValueError, "shape"),
    ],
)
def test_surrogate_errors_name_binary_surrogate(kwargs, exc, text):
    args = {"logits": torch.zeros(3), "f": lambda b: b.sum(-1), "method": "arm", **kwargs}
    with pytest.raises(exc, match=text) as info:
        binary.surrogate(**args)
    assert str(info.value).startswith("binary.surrogate: ")


def test_methods_registry_declares_each_method_once():
    assert set(binary.METHODS) == {
        "st",
        "binary_concrete",
        "st_binary_concrete",
        "hard_concrete",
        "reinforce_loo",
        "arm",
        "disarm",
        "rebar",
        "relax",
    }
    assert [o.name for o in binary.METHODS["hard_concrete"].options] == ["gamma", "zeta"]
    assert all(m.reference and m.family == "bernoulli" for m in binary.METHODS.values())
    # the one registry: the same declarations, read by family
    assert list(binary.METHODS) == list(gk.estimators.methods("bernoulli"))
    assert binary.METHODS["arm"] is gk.get_spec("arm", family="bernoulli")
    assert gk.estimators.methods("bernoulli", kind="score_function") == (
        "reinforce_loo",
        "arm",
        "disarm",
        "rebar",
        "relax",
    )
