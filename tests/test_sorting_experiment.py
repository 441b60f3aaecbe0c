"""``gumbelkit sort``: the metrics on hand cases, the orientation of every relaxation (a perfect model
sorts ascending with zero error), config validation, a tiny run through ``main``, its resume and its
determinism."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gumbelkit.errors import GumbelkitDimError, GumbelkitValueError
from gumbelkit.experiments import sorting as S
from gumbelkit.experiments._common import UserError
from gumbelkit.experiments._defaults import SORTING_METHODS

pytest.importorskip("scipy")

GS, NS, SNS, SS = SORTING_METHODS
TINY = {
    "sizes": [4, 7],
    "steps": 15,
    "batch_size": 4,
    "samples": 2,
    "test_sequences": 40,
    "seeds": 2,
    "plots": False,
    "progress": False,
}


# --------------------------------------------------------------------------- metrics


def test_kendall_tau_hand_cases():
    t = torch.arange(5)
    assert float(S.kendall_tau(t, t)) == 1.0
    assert float(S.kendall_tau(t.flip(0), t)) == -1.0
    # one adjacent swap out of 4 items: 5 concordant and 1 discordant of 6 pairs -> 4/6
    swapped = torch.tensor([1, 0, 2, 3])
    assert math.isclose(float(S.kendall_tau(swapped, torch.arange(4))), 4 / 6)
    # batched: one value per sequence
    batch = torch.stack([t, t.flip(0)])
    assert S.kendall_tau(batch, torch.stack([t, t])).tolist() == [1.0, -1.0]


def test_wrong_and_any_wrong_fractions_hand_cases():
    truth = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3], [3, 2, 1, 0]])
    pred = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3], [0, 1, 2, 3]])
    assert S.wrong_fraction(pred, truth) == (0 + 2 + 4) / 12
    assert S.any_wrong_fraction(pred, truth) == 2 / 3
    assert S.wrong_fraction(truth, truth) == 0.0 and S.any_wrong_fraction(truth, truth) == 0.0


def test_ascending_ranks():
    x = torch.tensor([[0.5, 0.1, 0.9, 0.3]])
    assert S.ascending_ranks(x).tolist() == [[2, 0, 3, 1]]
    assert torch.equal(x[0, x[0].argsort()], x[0].sort().values)


def test_metrics_reject_bad_input():
    t = torch.arange(4)
    with pytest.raises(GumbelkitDimError, match=r"kendall_tau: expected positions and truth of the same shape"):
        S.kendall_tau(t, torch.arange(5))
    with pytest.raises(GumbelkitValueError, match=r"kendall_tau: expected sequences of length n >= 2, got n = 1"):
        S.kendall_tau(torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(GumbelkitValueError, match=r"wrong_fraction: expected integer positions"):
        S.wrong_fraction(t.float(), t)


# --------------------------------------------------------------------------- orientation


def _cfg(**kw):
    return S.resolve_config({**TINY, "out": "unused", **kw})


def test_perfect_log_alpha_sorts_ascending():
    # Row i of log alpha is number i, column j position j: a large entry at (i, rank(x_i)).
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 9, generator=gen)
    ranks = S.ascending_ranks(x)
    log_alpha = 10.0 * torch.nn.functional.one_hot(ranks, 9).float()
    cfg = _cfg(noise=0.0, sinkhorn_iters=50)
    spec = S.METHODS[GS]
    assert torch.equal(spec.positions(log_alpha, cfg), ranks)
    pred = spec.relaxed(log_alpha, x, cfg, gen)  # samples copies, noise 0: all equal
    torch.testing.assert_close(pred, x.sort(-1).values.repeat(cfg.samples, 1), atol=1e-3, rtol=0)
    # the transpose would not sort: the orientation matters for a non-symmetric assignment
    wrong = torch.einsum("bij,bj->bi", torch.softmax(log_alpha, -1), x)
    assert (wrong - x.sort(-1).values).abs().max() > 0.1


@pytest.mark.parametrize("method", [NS, SNS, SS])
def test_scores_equal_to_x_sort_ascending(method):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(5, 8, generator=gen)
    cfg = _cfg(neuralsort_tau=1e-3, softsort_tau=1e-3)
    spec = S.METHODS[method]
    out = 10 * x.unsqueeze(-1)  # scores increasing in x (scaled: sharper at the smallest tau allowed)
    assert torch.equal(spec.positions(out, cfg), S.ascending_ranks(x))
    if method != SNS:  # the stochastic one sorts the perturbed scores
        torch.testing.assert_close(spec.relaxed(out, x, cfg, gen), x.sort(-1).values, atol=1e-4, rtol=0)


def test_evaluate_perfect_and_reversed_models():
    # A 1 -> 1 -> n MLP with log alpha[i, j] = c * j * x_i: by the rearrangement inequality the
    # assignment maximising sum_i c * pi(i) * x_i is the ascending sort (c > 0), the descending one (c < 0).
    cfg = _cfg(test_sequences=60)
    n = 6
    for c, tau in ((1.0, 1.0), (-1.0, -1.0)):
        params = [torch.ones(1, 1), torch.zeros(1), c * torch.arange(float(n)).view(1, n), torch.zeros(n)]
        res = S.evaluate(GS, params, n, 0, cfg)
        assert res["kendall_tau"] == tau
        assert res["any_wrong"] == (0.0 if c > 0 else 1.0)
    # a scorer relu(x) = x for x in [0, 1] is monotone: zero error
    params = [torch.ones(1, 1), torch.zeros(1), torch.ones(1, 1), torch.zeros(1)]
    for method in (NS, SNS, SS):
        res = S.evaluate(method, params, n, 0, cfg)
        assert res == {"wrong": 0.0, "any_wrong": 0.0, "kendall_tau": 1.0}
    # decreasing scorer: every sequence reversed
    params[2] = -params[2]
    assert S.evaluate(NS, params, n, 0, cfg)["kendall_tau"] == -1.0


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"sizes": "5,1"}, "expected each --sizes entry >= 2, got 1"),
        ({"sizes": "5,x"}, "expected each --sizes entry to be an integer from 2 to 1000, got 'x'"),
        ({"methods": "bogus"}, "unknown method 'bogus'"),
        ({"steps": 0}, "expected --steps >= 1, got 0"),
        ({"sinkhorn_tau": 0}, "expected --sinkhorn-tau > 0, got 0.0"),
        ({"lr": float("nan")}, "expected a finite --lr"),
        ({"seeds": 0}, "expected --seeds >= 1, got 0"),
        ({"noise": -1}, "expected --noise >= 0 (the supported range), got -1"),
        ({"batch_size": 10**6, "samples": 10, "sizes": [1000]}, "expected --batch-size x --samples x N^2 <= 1e+09"),
        ({"colour": 1}, "unknown sort option 'colour'"),
    ],
)
def test_config_validation(bad, message):
    with pytest.raises(UserError) as info:
        S.resolve_config({**TINY, **bad})
    assert message in str(info.value)


def test_config_defaults_are_the_authors():
    cfg = S.resolve_config({})
    assert cfg.sizes == [5, 10, 15, 50, 80, 100, 120]
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.hidden, cfg.samples, cfg.sinkhorn_iters) == (500, 10, 0.1, 32, 5, 10)
    assert (cfg.sinkhorn_tau, cfg.noise, cfg.seeds, cfg.threads) == (1.0, 1.0, 3, 1)
    assert cfg.methods == list(SORTING_METHODS)


# --------------------------------------------------------------------------- main: schema, resume, determinism


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("sort")
    return S.main({**TINY, "out": str(out)}), out


def test_schema(tiny):
    results, out = tiny
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    assert (out / "results.md").read_text().startswith("# gumbelkit sort")
    assert (out / "checkpoint.json").exists()
    assert len(results["rows"]) == len(SORTING_METHODS) * 2 * 2
    assert [(e["method"], e["n"]) for e in results["summary"]] == [(m, n) for m in SORTING_METHODS for n in (4, 7)]
    for e in results["summary"]:
        assert e["seeds"] == 2
        assert 0 <= e["wrong"] <= 1 and 0 <= e["any_wrong"] <= 1 and -1 <= e["kendall_tau"] <= 1
        assert e["wrong"] <= e["any_wrong"]  # a wrong position implies a wrong sequence
        assert e["final_loss"] > 0 and e["ms_per_step"] > 0
    assert results["cells_computed"] == 16 and results["cells_resumed"] == 0


def test_resume_reuses_every_cell(tiny):
    results, out = tiny
    again = S.main({**TINY, "out": str(out)})
    assert again["cells_computed"] == 0 and again["cells_resumed"] == 16
    assert again["rows"] == results["rows"]
    # one more seed: only the new cells are trained
    more = S.main({**TINY, "out": str(out), "seeds": 3, "methods": [NS]})
    assert more["cells_computed"] == 2 and more["cells_resumed"] == 4


def test_same_seed_same_numbers_other_seed_other_numbers(tiny, tmp_path):
    results, _ = tiny
    strip = ("train_s", "eval_s", "ms_per_step")

    def numbers(rows):
        return [{k: v for k, v in r.items() if k not in strip} for r in rows]

    cfg = {**TINY, "methods": [GS, SNS], "sizes": [7]}
    first = S.main({**cfg, "out": str(tmp_path / "a")})
    assert numbers(first["rows"]) == numbers([r for r in results["rows"] if r["method"] in (GS, SNS) and r["n"] == 7])
    other = S.main({**cfg, "out": str(tmp_path / "b"), "seed": 1})
    assert [r["final_loss"] for r in other["rows"]] != [r["final_loss"] for r in first["rows"]]


def test_a_changed_setting_does_not_reuse_the_checkpoint(tmp_path):
    cfg = {**TINY, "methods": [SS], "sizes": [4], "seeds": 1, "out": str(tmp_path)}
    assert S.main(cfg)["cells_computed"] == 1
    changed = S.main({**cfg, "softsort_tau": 0.5})
    assert changed["cells_computed"] == 1 and changed["cells_resumed"] == 0


def test_damaged_checkpoint_is_refused(tmp_path):
    cfg = {**TINY, "methods": [SS], "sizes": [4], "seeds": 1, "out": str(tmp_path)}
    S.main(cfg)
    path = tmp_path / "checkpoint.json"
    path.write_text(path.read_text().replace('"wrong"', '"wronk"'))
    with pytest.raises(UserError, match="checkpoint"):
        S.main(cfg)
    assert S.main({**cfg, "fresh": True})["cells_computed"] == 1
