"""``gumbelkit subsets``: schema, the histogram TV bound, exact gradients against finite
differences, and REINFORCE's bias inside its standard-error band (small sample counts)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gumbelkit.experiments import subsets as S
from gumbelkit.experiments._defaults import SUBSET_ESTIMATORS

HARD, SOFT, SIMPLE, LOO = SUBSET_ESTIMATORS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("subsets")
    cfg = {
        "out": str(out),
        "hist_samples": 10_000,
        "hist_taus": [1.0],
        "grad_taus": [0.5],
        "grad_samples": 400,
        "plots": False,
        "progress": False,
        "threads": 1,
    }
    return S.main(cfg), out


def test_schema(tiny):
    results, out = tiny
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["histogram"]["rows"] == results["histogram"]["rows"]
    assert (out / "results.md").read_text().startswith("# gumbelkit subsets")
    hist = results["histogram"]
    assert len(hist["subsets"]) == 6 and set(hist["exact"]) == {S.PL, S.COND}
    for p in hist["exact"].values():
        assert math.isclose(sum(p), 1.0, rel_tol=1e-12)
    assert [(r["estimator"], r["tau"]) for r in hist["rows"]] == [(HARD, 1.0), (SOFT, 1.0), (SIMPLE, None)]
    for r in hist["rows"]:
        assert {"tv_target", "tv_gumbel_topk", "tv_conditional", "tv_noise", "differs_from_hard"} <= set(r)
    grads = results["gradients"]
    assert [(r["estimator"], r["tau"]) for r in grads["rows"]] == [
        (HARD, 0.5),
        (SOFT, 0.5),
        (SIMPLE, None),
        (LOO, None),
    ]
    assert {r["target"] for r in grads["rows"]} == {S.PL, S.COND}
    for r in grads["rows"]:
        assert {"bias", "rel_var", "rel_err", "stderr", "bias_other_law"} <= set(r)
        assert r["rel_var"] >= 0 and 0 <= r["bias"] <= 2


def test_hard_relaxed_topk_matches_the_gumbel_topk_law(tiny):
    # The TV of the empirical law of n exact draws over 6 cells has mean
    # 0.5 * sum_c sqrt(2 p_c (1 - p_c) / (pi n)) ~ 0.008 at n = 10^4 (~0.01), with a standard
    # deviation well under 0.005, so 0.03 is several standard deviations away for an exact sampler
    # while a wrong law (the conditional one is 0.033 away) would fail.
    row = next(r for r in tiny[0]["histogram"]["rows"] if r["estimator"] == HARD)
    assert row["tv_noise"] < 0.01
    assert row["tv_target"] < 0.03


def test_simple_matches_the_conditional_law(tiny):
    row = next(r for r in tiny[0]["histogram"]["rows"] if r["estimator"] == SIMPLE)
    assert row["tv_conditional"] < 0.03


def test_exact_laws_match_brute_force():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    z = S.enumerate_subsets(4, 2)
    pl = S.plackett_luce_log_probs(w.log(), z).exp()
    cond = S.conditional_log_probs(w.log(), z).exp()
    for row, s in enumerate(z):
        i, j = (int(t) for t in s.nonzero().flatten())
        W = float(w.sum())
        assert math.isclose(float(pl[row]), w[i] / W * w[j] / (W - w[i]) + w[j] / W * w[i] / (W - w[j]), rel_tol=1e-12)
        e2 = sum(float(w[a] * w[b]) for a in range(4) for b in range(a + 1, 4))
        assert math.isclose(float(cond[row]), float(w[i] * w[j]) / e2, rel_tol=1e-12)


@pytest.mark.parametrize("law", [S.PL, S.COND])
def test_exact_gradient_matches_finite_differences(law):
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn(6, generator=gen, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64).abs()
    grad, _ = S.exact_gradient(theta, b, 3, law)
    h = 1e-6
    for i in range(6):
        e = torch.zeros(6, dtype=torch.float64)
        e[i] = h
        fd = (S.exact_gradient(theta + e, b, 3, law)[1] - S.exact_gradient(theta - e, b, 3, law)[1]) / (2 * h)
        assert math.isclose(float(grad[i]), fd, rel_tol=1e-6, abs_tol=1e-8)


def test_conditional_gradient_equals_marginals_identity():
    # E_cond[z] = topk_marginals, so the gradient of E[theta-independent linear f] checks both.
    from gumbelkit.subsets import topk_marginals

    theta = torch.randn(7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = S.enumerate_subsets(7, 3)
    mu = (S.conditional_log_probs(theta, z).exp()[:, None] * z).sum(0)
    torch.testing.assert_close(mu, topk_marginals(theta, 3))


def test_reinforce_is_unbiased_within_its_standard_error(tiny):
    # E||mean - g||^2 = tr Cov / S, so an unbiased estimator has rel_err ~ stderr; 4 standard
    # errors leaves a false-failure probability far below 1e-3 in 10 dimensions.
    row = next(r for r in tiny[0]["gradients"]["rows"] if r["estimator"] == LOO)
    assert row["rel_err"] < 4 * row["stderr"]
