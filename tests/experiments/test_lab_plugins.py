"""A method from a plugin (the package of docs/plugins.md, installed through its entry point) runs in
every experiment of its family, by default and by name, with no change to the lab; methods of the
other families registered at run time do the same in binary, subsets and sort."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from experiments.gradients import GradientsConfig
from lab_helpers import results, run

import gumbelkit as gk
from gumbelkit.estimators import _registry

_spec = importlib.util.spec_from_file_location(
    "plugins_doc", Path(__file__).resolve().parents[1] / "test_plugins_doc.py"
)
assert _spec is not None and _spec.loader is not None
plugins_doc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugins_doc)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    before = set(_registry._REGISTRY)
    plugins_doc.install_plugin(tmp_path / "plugin", monkeypatch)
    try:
        yield
    finally:
        for key in set(_registry._REGISTRY) - before:
            del _registry._REGISTRY[key]


def _ok(argv, capsys) -> None:
    rc, _, err = run([*argv, "--threads", "1", "--no-progress", "--no-plots"], capsys)
    assert rc == 0, err


def test_the_plugin_method_runs_in_every_categorical_experiment(plugin, tmp_path, capsys):
    assert "scaled_st" in GradientsConfig.make().methods  # in the default list: every method of the family
    _ok(["gradients", "--problems", "quadratic", "--methods", "st,scaled_st:scale=2", "--taus", "0.5", "--samples",
         "8", "--chunk", "8", "--demo-methods", "scaled_st", "--demo-steps", "2", "--demo-seeds", "1", "--demo-batch",
         "4", "--out", tmp_path / "g"], capsys)  # fmt: skip
    rows = results(tmp_path / "g")["rows"]
    assert [r["method"] for r in rows] == ["st", "scaled_st:scale=2.0"] and rows[1]["options"] == {"scale": 2.0}
    assert set(results(tmp_path / "g")["demo"]["summary"]) == {"scaled_st"}
    _ok(["vae", "--data", "digits", "--latent", "2x3", "--steps", "2", "--hidden", "8", "--batch-size", "20",
         "--eval-samples", "2", "--methods", "st,scaled_st:scale=0.5", "--out", tmp_path / "v"], capsys)  # fmt: skip
    assert [r["method"] for r in results(tmp_path / "v")["runs"]] == ["st", "scaled_st:scale=0.5"]
    _ok(["dvae", "--data", "digits", "--steps", "1", "--eval-every", "1", "--batch-size", "4", "--channels", "2",
         "--codes", "8", "--embedding-dim", "2", "--eval-images", "10", "--seeds", "1", "--methods", "scaled_st",
         "--out", tmp_path / "d"], capsys)  # fmt: skip
    assert [r["method"] for r in results(tmp_path / "d")["rows"]] == ["scaled_st"]
    _ok(["bench", "--shapes", "8x5", "--impls", "builtin", "--methods", "scaled_st", "--repeats", "3", "--min-time",
         "0.0001", "--no-vae", "--no-memory", "--out", tmp_path / "b"], capsys)  # fmt: skip
    assert {r["impl"] for r in results(tmp_path / "b")["shapes"][0]["rows"]} == {"builtin", "sample:scaled_st"}
    _ok(["binary", "--binary-methods", "none", "--methods", "scaled_st@0.5", "--parts", "toy", "--toy-thetas", "0",
         "--toy-samples", "10", "--out", tmp_path / "n"], capsys)  # fmt: skip
    assert {r["method"] for r in results(tmp_path / "n")["toy"]} == {"scaled_st@0.5"}


def _register_others() -> list[tuple[str, str]]:
    """One method of each other family, declared at run time like a plugin's."""

    def bits(theta, tau, noise, *, shift=0.0):
        """ST with a shifted threshold."""
        b = (theta.detach() + noise > shift).to(theta.dtype)
        return b + (torch.sigmoid(theta / tau) - torch.sigmoid(theta / tau).detach())

    gk.register("shifted_st", family="bernoulli", one_hot=True, default_tau=1.0,
                options=(gk.OptionSpec("shift", float, 0.0),))(bits)  # fmt: skip
    gk.register("topk_again", family="subset", one_hot=True, fixed={"hard": True}, traits={"law": "gumbel_topk"})(
        gk.subsets.relaxed_topk
    )
    gk.register(
        "soft_sort_again", family="permutation", one_hot=False, traits={"input": "scores", "stochastic": False}
    )(gk.permutations.soft_sort)
    return [("bernoulli", "shifted_st"), ("subset", "topk_again"), ("permutation", "soft_sort_again")]


def test_methods_of_every_family_run_in_their_experiments(tmp_path, capsys):
    added = _register_others()
    try:
        _ok(["binary", "--binary-methods", "shifted_st:shift=0.5", "--methods", "none", "--parts", "toy", "--toy-thetas",
             "0", "--toy-samples", "10", "--out", tmp_path / "n"], capsys)  # fmt: skip
        assert {r["method"] for r in results(tmp_path / "n")["toy"]} == {"shifted_st:shift=0.5@1"}
        _ok(["subsets", "--hist-samples", "20", "--hist-taus", "1", "--grad-taus", "1", "--grad-samples", "4",
             "--out", tmp_path / "s"], capsys)  # default: every subset method, the new one included  # fmt: skip
        assert "topk_again" in {r["estimator"] for r in results(tmp_path / "s")["gradients"]["rows"]}
        _ok(["sort", "--methods", "soft_sort_again,neural_sort", "--sizes", "3", "--steps", "2", "--batch-size", "2",
             "--test-sequences", "4", "--seeds", "1", "--out", tmp_path / "o"], capsys)  # fmt: skip
        assert [e["method"] for e in results(tmp_path / "o")["summary"]] == ["soft_sort_again", "neural_sort"]
    finally:
        for family, name in added:
            gk.estimators.unregister(name, family)
