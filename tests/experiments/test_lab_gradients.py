"""The gradient lab: exact gradients against closed forms, the estimation machinery, unbiasedness
checked with stated false-failure rates, and the 70/30 demonstration."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
from experiments.config import UserError
from experiments.exact import all_one_hot, exact_expectation, exact_gradient
from experiments.gradients_problems import demo_run, make_problem, tuned_control

import gumbelkit as gk
from experiments import gradients as G
from experiments import methods as M


def _jt(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """J(p)^T v for the softmax Jacobian at probabilities p (last dim)."""
    return p * v - p * (p * v).sum(-1, keepdim=True)


def test_enumeration_lists_every_outcome_once_and_refuses_huge_ones():
    codes = all_one_hot(3, 4)
    assert codes.shape == (64, 3, 4) and len({tuple(r) for r in codes.argmax(-1).tolist()}) == 64
    with pytest.raises(UserError, match="outcomes"):
        all_one_hot(10, 10)


def test_exact_gradients_match_closed_forms():
    gen = torch.Generator().manual_seed(0)
    theta, c = (
        torch.randn(2, 5, generator=gen, dtype=torch.float64),
        torch.randn(2, 5, generator=gen, dtype=torch.float64),
    )
    p = torch.softmax(theta, -1)
    value, grad = exact_gradient(theta, lambda t: t, lambda z: (z * c).sum((-1, -2)))  # linear: J(p)^T c
    assert torch.allclose(value, (c * p).sum()) and torch.allclose(grad, _jt(p, c), atol=1e-14)
    # the 70/30 pair loss: E = p^T A p - 2 p^T b + c, gradient J(p)^T (2 A p - 2 b); 0 at exactly 70/30
    prob = make_problem("70_30", seed=1)
    cb, y, w = (torch.tensor(G.SEVENTY_THIRTY[k], dtype=torch.float64) for k in ("codebook", "data", "weights"))
    s2 = 2 * G.SEVENTY_THIRTY["bandwidth"] ** 2
    a_mat, b = torch.exp(-(torch.cdist(cb, cb) ** 2) / s2), torch.exp(-(torch.cdist(cb, y) ** 2) / s2) @ w
    p = torch.softmax(prob.params, -1)
    value, grad = exact_gradient(prob.params, prob.logits, prob.f)
    kyy = float((w[:, None] * w[None, :] * torch.exp(-(torch.cdist(y, y) ** 2) / s2)).sum())
    assert torch.allclose(value, p @ a_mat @ p - 2 * p @ b + kyy) and torch.allclose(
        grad, _jt(p, 2 * a_mat @ p - 2 * b)
    )
    target = torch.log(torch.tensor([0.7, 0.3, 1e-300, 1e-300], dtype=torch.float64))
    assert abs(float(exact_expectation(target.expand(2, 4), prob.f))) < 1e-12


# Bonferroni over the P coordinates: for an unbiased estimator P(max |z| > c) <= P * 2 (1 - Phi(c))
# = 1e-4 (normal approximation of the mean of 20,000 draws; the seed is fixed).
def _threshold(p: int) -> float:
    return NormalDist().inv_cdf(1 - 1e-4 / (2 * p))


def _z(prob, label: str, tau, samples: int = 20_000) -> torch.Tensor:
    _, truth = exact_gradient(prob.params, prob.logits, prob.f)
    res = G.estimate(prob, M.parse(label, "categorical"), tau, 1.0, generator=torch.Generator().manual_seed(11),
                     samples=samples, chunk=4096)  # fmt: skip
    mom = res["moments"]
    var = ((mom.s2 - mom.s1 * mom.s1 / mom.count) / (mom.count - 1)).clamp_min(1e-300)
    return (mom.mean() - truth.reshape(-1)) / (var / res["samples"]).sqrt()


def test_reinforce_is_unbiased_and_the_test_can_fail():
    prob = make_problem("quadratic", seed=0)
    assert float(_z(prob, "reinforce:n=2", None).abs().max()) < _threshold(prob.params.numel())
    assert float(_z(prob, "st_gumbel", 1.0).abs().max()) > _threshold(prob.params.numel())  # biased: the test's power


def test_softmax_has_zero_variance_and_the_exact_relaxed_gradient():
    prob, tau = make_problem("decoder", seed=0), 0.5
    res = G.estimate(
        prob, M.parse("softmax", "categorical"), tau, 1.0, generator=torch.Generator(), samples=64, chunk=32
    )
    assert res["moments"].variance_trace() == 0.0
    theta = prob.params.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(prob.f(torch.softmax(prob.logits(theta) / tau, -1).unsqueeze(0)).sum(), theta)
    assert torch.allclose(res["moments"].mean(), g.reshape(-1), rtol=1e-4, atol=1e-6)


def test_per_sample_estimates_follow_the_leave_one_out_formula():
    prob, n, batch = make_problem("decoder", seed=0), 3, 8
    grads, losses = G.estimator_gradients(prob, M.parse("reinforce:n=3", "categorical"), None, batch,
                                          generator=torch.Generator().manual_seed(9))  # fmt: skip
    logits = prob.params.float().expand(batch, prob.n, prob.k)
    index = gk.gumbel_max(logits.expand(n, *logits.shape), generator=torch.Generator().manual_seed(9))
    codes = torch.nn.functional.one_hot(index, prob.k).float()
    f = prob.f(codes.reshape(n * batch, prob.n, prob.k)).reshape(n, batch)
    manual = ((f - (f.sum(0) - f) / (n - 1))[..., None, None] * (codes - torch.softmax(logits, -1))).mean(0)
    assert torch.allclose(grads, manual.reshape(batch, -1), rtol=1e-5, atol=1e-6) and torch.allclose(losses, f.mean(0))


def test_moments_and_auto_samples():
    x = 3.0 + torch.randn(500, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mom = G._Moments()
    for chunk in x.split(128):
        mom.add(chunk, chunk[:, 0])
    assert torch.allclose(mom.mean(), x.mean(0)) and math.isclose(
        mom.variance_trace(), float(x.var(0).sum()), rel_tol=1e-10
    )
    assert math.isclose(mom.value_mean_stderr()[1], float(x[:, 0].std() / math.sqrt(500)), rel_tol=1e-10)
    prob = make_problem("70_30", seed=0)
    norm = float(exact_gradient(prob.params, prob.logits, prob.f)[1].norm())
    res = G.estimate(prob, M.parse("reinforce:n=2", "categorical"), None, norm, generator=torch.Generator().manual_seed(0),
                     target_stderr=0.05, min_samples=500, max_samples=50_000, chunk=1000)  # fmt: skip
    assert 500 < res["samples"] < 50_000 and math.sqrt(res["moments"].variance_trace() / res["samples"]) / norm < 0.06


def test_the_demonstration_softmax_collapses_and_gumbel_reproduces_70_30():
    cpu = torch.device("cpu")
    soft = demo_run(M.parse("softmax", "categorical"), 0.5, 0, steps=150, batch=64, device=cpu, n_eval=2000)
    assert soft["as_trained"]["other"] == 1.0  # no noise: every output is the same blend
    gumbel = demo_run(M.parse("st_gumbel", "categorical"), 0.5, 0, steps=150, batch=64, device=cpu, n_eval=2000)
    assert abs(gumbel["as_trained"]["x1"] - 0.7) < 0.1 and abs(gumbel["hard"]["x2"] - 0.3) < 0.1


def test_a_method_with_state_is_measured_with_its_tuned_frozen_control():
    spec = next(s for s in gk.estimators.specs("categorical") if s.has_control)
    method, problem = M.parse(spec.name, "categorical"), make_problem("quadratic", 0, torch.device("cpu"))
    fresh = tuned_control(problem, method, None, 0, 0.01, 8, generator=torch.Generator().manual_seed(1))
    tuned = tuned_control(problem, method, None, 5, 0.01, 8, generator=torch.Generator().manual_seed(1))
    assert not any(p.requires_grad for p in tuned.parameters())  # frozen: one fixed estimator is measured
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), tuned.state_dict().values()))
    stateless = next(s for s in gk.estimators.specs("categorical") if not s.has_control)
    assert tuned_control(problem, M.parse(stateless.name, "categorical"), 0.5, 5, 0.01, 8, generator=None) is None
