"""The k-subset lab: the exact laws against brute force, their gradients against finite differences,
and each method's sampled law and gradient against them (bands with stated false-failure rates)."""

from __future__ import annotations

import math

import pytest
import torch

import gumbelkit as gk
from experiments import methods as M
from experiments import subsets as S


def test_the_exact_laws_match_brute_force():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    z = S.enumerate_subsets(4, 2)
    pl, cond = (S.law_log_probs(law, w.log(), z).exp() for law in S.LAWS)
    e2, total = sum(float(w[a] * w[b]) for a in range(4) for b in range(a + 1, 4)), float(w.sum())
    for row, s in enumerate(z):
        i, j = (int(t) for t in s.nonzero().flatten())
        assert math.isclose(float(pl[row]), w[i] / total * w[j] / (total - w[i]) + w[j] / total * w[i] / (total - w[j]))
        assert math.isclose(float(cond[row]), float(w[i] * w[j]) / e2, rel_tol=1e-12)
    theta = torch.randn(7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = S.enumerate_subsets(7, 3)  # the conditional law's mean is the library's exact marginals
    torch.testing.assert_close(
        (S.law_log_probs("conditional", theta, z).exp()[:, None] * z).sum(0), gk.subsets.topk_marginals(theta, 3)
    )


@pytest.mark.parametrize("law", S.LAWS)
def test_the_exact_gradient_matches_finite_differences(law):
    gen = torch.Generator().manual_seed(3)
    theta, b = (
        torch.randn(6, generator=gen, dtype=torch.float64),
        torch.randn(6, generator=gen, dtype=torch.float64).abs(),
    )
    grad, _ = S.exact_gradient(theta, b, 3, law)
    for i in range(6):
        e = torch.zeros(6, dtype=torch.float64)
        e[i] = 1e-6
        fd = (S.exact_gradient(theta + e, b, 3, law)[1] - S.exact_gradient(theta - e, b, 3, law)[1]) / 2e-6
        assert math.isclose(float(grad[i]), fd, rel_tol=1e-6, abs_tol=1e-8)


def test_every_method_samples_its_declared_law_and_its_unbiased_gradient_is_unbiased(tmp_path):
    # TV of 10^4 exact draws over 6 cells: mean ~0.008, sd < 0.005; 0.03 is > 4 sd away for an exact
    # sampler (false failure < 1e-4 per row, fixed seeds) while the other law is 0.033 away.
    # An unbiased gradient's rel_err ~ stderr (E||mean - g||^2 = tr Cov / S): 4 stderr in 10 dimensions.
    res = S.main(
        S.SubsetsConfig.make(out=str(tmp_path), hist_taus=[0.1], grad_taus=[0.5], grad_samples=4000, plots=False)
    )
    for row in res["histogram"]["rows"]:
        spec = gk.get_spec(row["estimator"], family="subset")
        law = spec.traits["law"]
        assert row["target"] == spec.traits.get("target", law)
        if spec.one_hot and law in S.LAWS:  # an exact forward of a closed-form law draws it exactly
            assert row["tv_target"] < 0.03, row
    for row in res["gradients"]["rows"]:
        if gk.get_spec(row["estimator"], family="subset").kind == "score_function":
            assert row["rel_err"] < 4 * row["stderr"], row
    assert {r["estimator"] for r in res["gradients"]["rows"]} == set(gk.estimators.methods("subset"))
    relaxed = [M.parse(s.name, "subset") for s in gk.estimators.specs("subset", "sample") if not s.one_hot]
    assert relaxed and all(S._counterpart(m) is not None for m in relaxed)  # each compared with its exact twin
