"""The binary lab: exact toy gradient and poly loss, unbiasedness and bias detection with stated
false-failure rates, the categorical latent's law, and stacked seeds being independent runs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import gumbelkit as gk
from experiments import binary as B
from experiments import methods as M


def _first(family: str, unbiased: bool) -> M.Method:
    """The first method of a family that is a score-function estimator (or a relaxed pathwise one)."""
    return next(M.parse(s.name, family, taus=True) for s in gk.estimators.specs(family)
                if (s.kind == "score_function") == unbiased and (unbiased or not s.one_hot))  # fmt: skip


@pytest.mark.parametrize("t", [0.45, 0.499, 0.8])
def test_the_exact_toy_gradient_is_the_autograd_of_the_closed_form(t):
    theta = torch.linspace(-8, 8, 33, dtype=torch.float64).requires_grad_(True)
    (auto,) = torch.autograd.grad(B.toy_loss(theta, t).sum(), theta)
    torch.testing.assert_close(B.toy_gradient(theta.detach(), t), auto, rtol=1e-10, atol=0.0)
    tails = torch.tensor([-40.0, 40.0], dtype=torch.float64)  # sigma'(x) = e^-|x| / (1 + e^-|x|)^2 exactly
    e = torch.exp(-tails.abs())
    torch.testing.assert_close(B.toy_gradient(tails, t), e / (1 + e) ** 2 * ((1 - t) ** 2 - t**2), rtol=1e-14, atol=0.0)


def test_the_poly_closed_form_matches_enumeration():
    theta = torch.tensor([-1.3, 0.2, 2.1], dtype=torch.float64)
    q = torch.sigmoid(theta)
    for p in (1.5, 3.0):
        total = sum(float(torch.where(b == 1, q, 1 - q).prod()) * float(((b - 0.45).abs() ** p).mean())
                    for b in (torch.tensor(x, dtype=torch.float64) for x in itertools.product((0.0, 1.0), repeat=3)))  # fmt: skip
        assert math.isclose(float(B.poly_loss(theta, p)), total, rel_tol=1e-12)


def test_an_unbiased_estimator_passes_and_a_relaxed_one_is_caught():
    # An unbiased estimator leaves a 5-standard-error band with probability 5.7e-7 per check (normal
    # approximation of the mean of 40,000 estimates); 4 checks: about 2.3e-6 in all (fixed seeds).
    cfg = B.BinaryConfig.make(toy_samples=40_000, seed=1)
    for t, theta in itertools.product((0.45, 0.499), (-1.0, 1.5)):
        row = B._toy_row("bernoulli", _first("bernoulli", True), t, theta, cfg)
        assert abs(row["z"]) < 5 and row["p_wrong_sign"] < 0.5, row
    row = B._toy_row("bernoulli", _first("bernoulli", False), 0.499, 2.0, B.BinaryConfig.make(toy_samples=20_000))
    assert abs(row["z"]) > 10 and row["p_wrong_sign"] > 0.05, row  # the power of the same check


def test_the_categorical_latent_has_the_bernoulli_law():
    # |freq - p| < 5 standard errors: a false failure has probability 5.7e-7 (fixed seed).
    theta = torch.full((200_000,), 0.7)
    z = gk.gumbel_max(torch.stack([torch.zeros_like(theta), theta], -1), generator=torch.Generator().manual_seed(0))
    p = float(torch.sigmoid(torch.tensor(0.7)))
    assert abs(float(z.double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / theta.numel())


def test_stacked_rows_train_as_separate_runs_and_two_logits_double_the_step():
    method = M.parse("softmax", "categorical", taus=True)

    def f(b: torch.Tensor) -> torch.Tensor:
        return ((b - 0.45).abs() ** 2).mean(-1)

    start = torch.randn(3, 5, generator=torch.Generator().manual_seed(3))
    kw = {"batch": 2, "steps": 20, "gen": torch.Generator().manual_seed(0), "record": lambda s, t: None}
    full = B.train("categorical", method, start, f, lr=1e-2, **kw)
    one = B.train("categorical", method, start[:1], f, lr=1e-2, **kw)
    torch.testing.assert_close(full[:1], one, rtol=1e-6, atol=1e-7)
    # l0, l1 get gradients (-g, g) and Adam normalises each coordinate: theta = l1 - l0 moves twice as fast
    two = B.train("categorical", method, start, f, lr=1e-2, two_logits=True, **kw)
    torch.testing.assert_close(two, B.train("categorical", method, start, f, lr=2e-2, **kw), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["bernoulli", "categorical"])
def test_a_method_with_state_trains_its_own_control_per_seed(family):
    spec = next(s for s in gk.estimators.specs(family) if s.has_control)
    method = M.parse(spec.name, family, taus=True)

    def make_f(rows: slice):
        return lambda b: ((b - 0.499) ** 2).sum(-1)

    rng = torch.get_rng_state()
    kw = {"parts": ("t",), "control_lr": 1.0, "batch": 1, "steps": 5, "lr": 0.01}
    final, controls = B.fit(family, method, torch.zeros(2, 1), make_f, lambda step, th, rows: None, **kw)
    assert torch.equal(torch.get_rng_state(), rng)  # the controls are initialised from their own streams
    assert len(controls) == 2 and controls[0] is not controls[1]
    fresh = B.new_control(family, method, 1, "t", "control", 0)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), controls[0].state_dict().values()))
    alone, _ = B.fit(family, method, torch.zeros(1, 1), make_f, lambda step, th, rows: None, **kw)
    assert torch.equal(alone, final[:1])  # a seed's run does not depend on the other seeds
