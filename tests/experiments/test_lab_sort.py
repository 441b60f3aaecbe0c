"""Number sorting: the metrics by hand, each method's orientation (log alpha and scores both give the
ascending sort), and the evaluation of models whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

import gumbelkit as gk
from experiments import methods as M
from experiments import sort as S


def _methods(input_: str) -> list[M.Method]:
    return [M.parse(s.name, "permutation") for s in gk.estimators.specs("permutation") if s.traits["input"] == input_]


def test_the_metrics_by_hand():
    t = torch.arange(5)
    assert float(S.kendall_tau(t, t)) == 1.0 and float(S.kendall_tau(t.flip(0), t)) == -1.0
    assert math.isclose(float(S.kendall_tau(torch.tensor([1, 0, 2, 3]), torch.arange(4))), 4 / 6)  # 1 of 6 pairs
    truth = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3], [3, 2, 1, 0]])
    pred = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3], [0, 1, 2, 3]])
    assert S.wrong_fraction(pred, truth) == 6 / 12 and S.any_wrong_fraction(pred, truth) == 2 / 3
    assert S.ascending_ranks(torch.tensor([[0.5, 0.1, 0.9, 0.3]])).tolist() == [[2, 0, 3, 1]]
    with pytest.raises(ValueError, match="expected integer positions and truth of one shape"):
        S.kendall_tau(t, torch.arange(4))
    with pytest.raises(ValueError, match="length n >= 2"):
        S.kendall_tau(torch.tensor([0]), torch.tensor([0]))


def test_a_perfect_log_alpha_and_increasing_scores_sort_ascending():
    cfg = S.SortConfig.make(noise=0.0, sinkhorn_iters=50, neuralsort_tau=1e-3, softsort_tau=1e-3, samples=2)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 9, generator=gen)
    ranks = S.ascending_ranks(x)
    for method in _methods("log_alpha"):  # row i = number i, column j = position j
        log_alpha = 10.0 * torch.nn.functional.one_hot(ranks, 9).float()
        assert torch.equal(S._positions(method, log_alpha, cfg), ranks)
        pred = S._relaxed(method, log_alpha, x, cfg, gen)
        torch.testing.assert_close(pred, x.sort(-1).values.repeat(cfg.samples, 1), atol=1e-3, rtol=0)
    for method in _methods("scores"):  # scores increasing in x
        out = 10 * x.unsqueeze(-1)
        assert torch.equal(S._positions(method, out, cfg), ranks)
        if not method.spec.traits["stochastic"]:
            torch.testing.assert_close(S._relaxed(method, out, x, cfg, gen), x.sort(-1).values, atol=1e-4, rtol=0)


def test_evaluation_of_models_with_a_known_answer():
    # log alpha[i, j] = c j x_i: by the rearrangement inequality the best assignment sorts ascending (c > 0)
    cfg, n = S.SortConfig.make(test_sequences=60), 6
    for method in _methods("log_alpha"):
        for c in (1.0, -1.0):
            params = [torch.ones(1, 1), torch.zeros(1), c * torch.arange(float(n)).view(1, n), torch.zeros(n)]
            assert S.evaluate(method, params, n, 0, cfg)["kendall_tau"] == c
    for method in _methods("scores"):  # relu(x) = x on [0, 1]: a monotone scorer, no error
        params = [torch.ones(1, 1), torch.zeros(1), torch.ones(1, 1), torch.zeros(1)]
        assert S.evaluate(method, params, n, 0, cfg) == {"wrong": 0.0, "any_wrong": 0.0, "kendall_tau": 1.0}


def test_the_temperature_and_legacy_flags_reach_the_methods_that_declare_them():
    cfg = S.SortConfig.make(sinkhorn_tau=0.3, neuralsort_tau=0.4, softsort_tau=0.5, sinkhorn_iters=7, noise=0.2)
    by = {m.name: m for m in cfg.choices}
    assert [cfg.tau(m) for m in cfg.choices] == [0.3, 0.4, 0.4, 0.5]
    assert cfg.options(by["gumbel_sinkhorn"]) == {"n_iters": 7, "hard": False, "noise": 0.2}
    assert cfg.options(M.parse("gumbel_sinkhorn:n_iters=3", "permutation")) == {
        "n_iters": 3,
        "hard": False,
        "noise": 0.2,
    }
    assert cfg.options(by["soft_sort"]) == {"p": 1.0}
