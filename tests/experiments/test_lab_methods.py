"""Method lists read from the registry by family: labels, options, temperatures, duplicates, defaults."""

from __future__ import annotations

import pytest
from experiments.config import UserError

import gumbelkit as gk
from experiments import methods as M


def test_labels_tags_and_options():
    m = M.parse("gumbel_rao:k=100", "categorical")
    assert (m.label, m.tag, m.options, m.spec.family) == (
        "gumbel_rao:k=100",
        "gumbel_rao_k100",
        {"k": 100},
        "categorical",
    )
    assert M.parse("reinforce", "categorical").options == {"n": 4}
    assert M.parse("gumbel_rao_k10", "categorical").label == "gumbel_rao:k=10"  # the older syntax
    items = M.choices("decoupled_st_gumbel:tau_forward=0.5,st", "categorical")
    assert [c.label for c in items] == ["decoupled_st_gumbel:tau_forward=0.5", "st"]


def test_the_family_decides_which_names_exist():
    assert M.parse("st", "bernoulli").spec is gk.get_spec("st", family="bernoulli")
    assert M.parse("reinforce_loo:n=3", "subset").spec.kind == "score_function"
    with pytest.raises(UserError, match="unknown --methods 'simple'; expected some of softmax"):
        M.parse("simple", "categorical")
    with pytest.raises(UserError, match="unknown --methods 'reinforce'"):
        M.parse("reinforce", "categorical", kind="sample")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gumbel_rao:k=0", "expected k to be an integer with 1 <= k <= 1000 for method 'gumbel_rao', got 0"),
        ("gumbel_rao:k=2,k=3", "option 'k' is given twice"),
        ("gumbel_rao:x=1", "unknown option 'x' for method 'gumbel_rao'"),
        ("st:", "expected --methods items like NAME or NAME:OPTION=VALUE"),
        ("gumbel_rao:k=5000", "expected k to be an integer with 1 <= k <= 1000"),
    ],
)
def test_bad_items_are_one_line_errors(text, message):
    with pytest.raises(UserError, match=message):
        M.parse(text, "categorical", cap=1000)


def test_temperatures_of_a_method_list():  # 23/18: a finite temperature, one @ per item
    st, hc, arm = M.choices("st@0.5,hard_concrete,arm:n=1", "bernoulli", taus=True, flag="--binary-methods")
    assert (st.label, st.tau, hc.tau, arm.tau, arm.label) == ("st@0.5", 0.5, 2 / 3, None, "arm:n=1")
    assert M.parse("softmax", "categorical", taus=True).tau == 1.0
    for text, message in (("st@nan", "expected a finite temperature in --m 'st@nan'"),
                          ("st@1@2", "--m 'st@1@2': expected one @TAU at the end of an item, got a second '@'"),
                          ("st@0", "expected temperature in --m 'st@0' > 0"), ("arm@1", "uses no temperature; drop @1")):  # fmt: skip
        with pytest.raises(UserError) as info:
            M.parse(text, "bernoulli", taus=True, flag="--m")
        assert message in str(info.value), (text, str(info.value))


def test_duplicates_are_dropped_after_options_are_resolved():  # 23/16
    assert [c.label for c in M.choices("gumbel_rao,gumbel_rao:k=10,st,st,gumbel_rao:k=3", "categorical")] == [
        "gumbel_rao", "st", "gumbel_rao:k=3"]  # fmt: skip
    assert len(M.choices("st@1,st@1.0,st", "bernoulli", taus=True)) == 1


def test_the_default_of_a_method_option_is_every_method_of_its_family():
    from experiments.gradients import GradientsConfig
    from experiments.sort import SortConfig
    from experiments.subsets import SubsetsConfig

    assert GradientsConfig.make().methods == list(gk.estimators.methods("categorical"))
    assert GradientsConfig.make().demo_methods == list(gk.estimators.methods("categorical", "sample"))
    assert SortConfig.make().methods == list(gk.estimators.methods("permutation"))
    assert SubsetsConfig.make().methods == list(gk.estimators.methods("subset"))
    assert "every one" in M.describe("subset") or "relaxed_topk_hard" in M.describe("subset")
