"""The typed method registry: declarations, families, the live METHODS view, option checks and plugins
(a method going through every experiment of the lab: tests/experiments/test_lab_plugins.py)."""

from __future__ import annotations

import operator
import sys
import textwrap
import warnings

import pytest
import torch

import gumbelkit as gk
from gumbelkit.estimators import OptionSpec, _registry, one_hot_straight_through, softmax_backward

# --------------------------------------------------------------------------- a straight-through with a custom backward


class _ScaledSoftmax(torch.autograd.Function):
    """softmax forward; backward: ``scale`` x the softmax gradient, from the saved output alone."""

    @staticmethod
    def forward(ctx, x, scale):
        y = torch.softmax(x, -1)
        ctx.save_for_backward(y)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, v):
        (y,) = ctx.saved_tensors
        return ctx.scale * softmax_backward(y, v, -1), None


def scaled_st(logits, tau=1.0, *, dim=-1, generator=None, scale=1.0):
    """Straight-through with a scaled softmax backward (a test method)."""
    index = gk.gumbel_max(logits, -1, generator=generator).unsqueeze(-1)
    return one_hot_straight_through(_ScaledSoftmax.apply(logits / tau, scale), index, -1)


SCALE = OptionSpec("scale", float, 1.0, minimum=0.0, maximum=10.0, help="backward scale")


@pytest.fixture
def registered():
    """``scaled_st`` registered for the test, removed afterwards (other tests see the built-ins only)."""
    gk.register("scaled_st", one_hot=True, options=(SCALE,), reference="a test")(scaled_st)
    try:
        yield "scaled_st"
    finally:
        gk.estimators.unregister("scaled_st")


# --------------------------------------------------------------------------- declarations and the live view


def test_every_method_has_one_typed_declaration():
    spec = gk.get_spec("gumbel_rao")
    assert isinstance(spec, gk.MethodSpec) and spec.fn is gk.get_estimator("gumbel_rao")
    assert spec.one_hot and spec.uses_tau and spec.kind == "sample" and "Paulus" in spec.reference
    (k,) = spec.options
    assert (k.name, k.type, k.default, k.minimum, k.maximum) == ("k", int, 10, 1, None) and k.help
    assert gk.get_spec("softmax").options == () and not gk.get_spec("softmax").one_hot
    for name in gk.METHODS:
        assert gk.get_spec(name).reference, name
    with pytest.raises(ValueError, match="expected method in"):
        gk.get_spec("nope")
    with dataclasses_frozen():
        spec.one_hot = False


class dataclasses_frozen:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        import dataclasses

        assert kind is dataclasses.FrozenInstanceError
        return True


def test_methods_is_a_live_read_only_view(registered):
    assert registered in gk.METHODS and registered in gk.estimators.METHODS
    builtin = ["softmax", "gumbel_softmax", "st_gumbel", "st", "gumbel_rao", "reinmax", "gapped_st"]
    assert sorted(gk.METHODS) == sorted([*builtin, "decoupled_st_gumbel", "scaled_st"])
    assert (
        len(gk.METHODS) == 9 and gk.METHODS[-1] == "scaled_st" and list(gk.METHODS)[:2] == ["softmax", "gumbel_softmax"]
    )
    # the view itself compares equal to a list or tuple of the names (its __eq__, on the left)
    assert operator.eq(gk.METHODS, list(gk.METHODS)) and operator.eq(gk.METHODS, tuple(gk.METHODS))
    assert gk.is_one_hot(registered) and gk.get_spec(registered).options == (SCALE,)
    gk.estimators.unregister(registered)
    assert registered not in gk.METHODS and len(gk.METHODS) == 8
    gk.register("scaled_st", one_hot=True, options=(SCALE,))(scaled_st)  # the fixture removes it again
    assert not hasattr(gk.METHODS, "append")


def test_the_old_decorator_call_still_works():
    @gk.register("plain_st_test", one_hot=True)
    def plain(logits, tau=1.0, *, dim=-1, generator=None):
        return gk.sample(logits, "st", tau, dim, generator=generator)

    try:
        assert gk.sample(torch.zeros(2, 3), "plain_st_test").sum() == 2
        assert gk.get_spec("plain_st_test").options == () and gk.get_spec("plain_st_test").uses_tau
    finally:
        gk.estimators.unregister("plain_st_test")


def test_registration_mistakes_are_refused_at_once():
    with pytest.raises(ValueError, match="already registered"):
        gk.register("st", one_hot=True)(scaled_st)
    with pytest.raises(ValueError, match="method name"):
        gk.register("bad:name", one_hot=True)(scaled_st)
    with pytest.raises(ValueError, match="not a parameter"):
        gk.register("no_such_option", one_hot=True, options=(OptionSpec("k", int, 1),))(scaled_st)
    with pytest.raises(ValueError, match="expected kind"):
        gk.register("wrong_kind", one_hot=True, kind="pathwise")
    with pytest.raises(ValueError, match="expected k to be an integer >= 1"):
        OptionSpec("k", int, 0, minimum=1)  # a default outside its own range
    with pytest.raises(TypeError, match="expected type"):
        OptionSpec("k", list, [])
    assert "no_such_option" not in gk.METHODS


def test_options_are_checked_when_called_through_sample(registered):
    x = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(TypeError, match=r"unknown option 'scal' for method 'scaled_st'; valid options: scale"):
        gk.sample(x, registered, scal=2.0)
    with pytest.raises(
        ValueError,
        match=r"sample: expected scale to be a finite number with 0 <= scale <= 10 "
        r"for method 'scaled_st', got 11.0",
    ):
        gk.sample(x, registered, scale=11.0)
    with pytest.raises(TypeError, match="expected scale to be a finite number"):
        gk.sample(x, registered, scale="big")
    with pytest.raises(ValueError, match="expected k to be an integer >= 1 for method 'gumbel_rao', got 0"):
        gk.sample(x, "gumbel_rao", k=0)
    with pytest.raises(TypeError, match="st_gumbel takes no options"):
        gk.sample(x, "st_gumbel", k=3)
    y = gk.sample(x, registered, 0.5, scale=2.0, generator=torch.Generator().manual_seed(0))
    (y * torch.tensor([1.0, 0.0, 0.0])).sum().backward()
    # the custom backward: 2 x the gradient of softmax(x / 0.5) at uniform probabilities, times 1 / 0.5
    assert torch.allclose(x.grad[0], 2 * 2 * torch.tensor([2 / 9, -1 / 9, -1 / 9]))


def test_score_function_methods_are_declared_and_refused_by_sample():
    spec = gk.get_spec("reinforce")
    assert spec.kind == "score_function" and not spec.uses_tau and spec.one_hot
    assert spec.defaults() == {"n": 4} and spec.loss_evaluations({"n": 8}) == 8
    assert "reinforce" not in gk.METHODS and "reinforce" in gk.estimators.SPECS
    with pytest.raises(ValueError, match="score-function estimator and needs the loss"):
        gk.sample(torch.zeros(2, 3), "reinforce")
    with pytest.raises(ValueError, match="expected n to be an integer >= 2"):
        spec.objective(torch.zeros(2, 3), lambda z: z.sum(-1), n=1)


def test_reinforce_objective_is_the_leave_one_out_estimator():
    # Replay the draws and rebuild the estimate: (1/n) sum_i (f_i - mean_{j != i} f_j) (onehot(z_i) - p).
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    target = torch.tensor([0.0, 1.0, 0.0, 0.0])

    def loss(z):
        return ((z - target) ** 2).sum(-1)

    surrogate, losses = gk.estimators.reinforce_objective(logits, loss, n=3, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(surrogate.sum(), logits)
    index = gk.gumbel_max(logits.detach().expand(3, 5, 4), generator=torch.Generator().manual_seed(1))
    z = torch.nn.functional.one_hot(index, 4).float()
    f = loss(z)
    baseline = (f.sum(0, keepdim=True) - f) / 2
    manual = ((f - baseline)[..., None] * (z - torch.softmax(logits.detach(), -1))).mean(0)
    assert torch.allclose(grad, manual, atol=1e-6) and torch.equal(losses, f)
    # every kind through one call: the objective of a sample method is f at its sample
    obj, value = gk.get_spec("st").objective(logits, loss, 0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(obj, value) and obj.shape == (5,)


def test_building_blocks_are_public():
    for name in ("one_hot_straight_through", "softmax_backward", "OptionSpec", "MethodSpec", "get_spec", "SPECS"):
        assert name in gk.estimators.__all__ and hasattr(gk.estimators, name)
    for name in ("get_spec", "MethodSpec", "OptionSpec"):
        assert name in gk.__all__ and hasattr(gk, name)
    soft = torch.softmax(torch.randn(3, 4, requires_grad=True), -1)
    y = one_hot_straight_through(soft, soft.argmax(-1, keepdim=True), -1)
    assert torch.equal(y.detach().sum(-1), torch.ones(3)) and y.requires_grad


# --------------------------------------------------------------------------- plugins


PLUGIN = '''
import gumbelkit as gk
from gumbelkit.estimators import OptionSpec

@gk.register("plugin_st", one_hot=True, options=(OptionSpec("scale", float, 1.0, minimum=0.0, help="scale"),),
             reference="a plugin")
def plugin_st(logits, tau=1.0, *, dim=-1, generator=None, scale=1.0):
    """ST from a plugin package."""
    return gk.sample(logits, "st", tau, dim, generator=generator)
'''

BROKEN = """
import gumbelkit as gk

@gk.register("half_registered", one_hot=True)
def half(logits, tau=1.0, *, dim=-1, generator=None):
    return logits

raise RuntimeError("this plugin is broken")
"""


def _install(tmp_path, monkeypatch, modules: dict, entries: dict) -> None:
    """A fake installed distribution: modules on sys.path plus a dist-info with the entry points."""
    for name, code in modules.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
        monkeypatch.delitem(sys.modules, name, raising=False)
    info = tmp_path / "gk_fake_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gk-fake-plugins\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[{gk.estimators.ENTRY_POINT_GROUP}]\n{lines}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # A fresh plugin pass (as in a new process); the registry is restored by the caller.
    monkeypatch.setattr(_registry, "_plugins_loaded", False)
    monkeypatch.setattr(_registry, "_plugin_names", [])


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    _install(
        tmp_path,
        monkeypatch,
        {"gk_plugin_good": PLUGIN, "gk_plugin_broken": BROKEN},
        {"good": "gk_plugin_good", "broken": "gk_plugin_broken", "missing": "gk_plugin_not_there"},
    )
    before = set(_registry._REGISTRY)
    try:
        yield
    finally:
        for key in set(_registry._REGISTRY) - before:
            del _registry._REGISTRY[key]


def test_plugins_load_lazily_once_and_broken_ones_only_warn(plugins):
    assert ("categorical", "plugin_st") not in _registry._REGISTRY  # nothing imported before the registry is read
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert "plugin_st" in gk.METHODS  # the first read loads every plugin
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("'broken'" in m and "this plugin is broken" in m for m in messages), messages
    assert any("'missing'" in m and "ModuleNotFoundError" in m for m in messages), messages
    assert "half_registered" not in gk.estimators.SPECS  # a failed plugin leaves nothing behind
    assert _registry.load_plugins() == ("good",)  # once: later reads do not import again
    assert gk.get_spec("plugin_st").reference == "a plugin"
    assert gk.sample(torch.zeros(2, 3), "plugin_st", scale=2.0).sum() == 2


def test_option_spec_open_minimum_excludes_the_bound_and_says_so():
    closed = gk.OptionSpec("gap", float, 1.0, minimum=0.0)
    open_ = gk.OptionSpec("gap", float, 1.0, minimum=0.0, open_minimum=True)
    assert closed.check(0.0, "m") == 0.0
    with pytest.raises(ValueError, match=r"expected gap to be a finite number > 0 for method 'm', got 0.0"):
        open_.check(0.0, "m")
    assert open_.check(1e-300, "m") == 1e-300
    assert closed.describe() == "a finite number >= 0" and open_.describe() == "a finite number > 0"
    bounded = gk.OptionSpec("t", float, 1.0, minimum=0.0, maximum=2.0, open_minimum=True)
    assert bounded.describe() == "a finite number with 0 < t <= 2"
    with pytest.raises(ValueError, match="0 < t <= 2"):
        bounded.parse("0", "m")
    with pytest.raises(ValueError, match="expected gap"):
        gk.OptionSpec("gap", float, 0.0, minimum=0.0, open_minimum=True)  # a default outside its own range
    # the registered methods whose option must be strictly positive declare it so
    assert gk.get_spec("gapped_st").options[0].open_minimum
    assert gk.get_spec("decoupled_st_gumbel").options[0].open_minimum


# --------------------------------------------------------------------------- families


def test_every_family_is_declared_in_the_one_registry():
    methods = gk.estimators.methods
    assert gk.estimators.FAMILIES == ("categorical", "bernoulli", "subset", "permutation")
    assert set(gk.estimators.families()) == set(gk.estimators.FAMILIES)
    assert methods("subset") == ("relaxed_topk_hard", "relaxed_topk_soft", "simple", "reinforce_loo", "imle")
    assert methods("permutation") == ("gumbel_sinkhorn", "neural_sort", "stochastic_neural_sort", "soft_sort")
    assert methods("categorical", kind="sample") == tuple(gk.METHODS)
    assert methods("categorical") == tuple(gk.estimators.SPECS)
    # names are unique within a family only: st is a categorical and a Bernoulli method
    cat, bern = gk.get_spec("st"), gk.get_spec("st", family="bernoulli")
    assert cat is not bern and (cat.family, bern.family) == ("categorical", "bernoulli")
    assert methods(None).count("st") == 1 and "simple" in methods(None)
    assert all(s.reference for s in gk.estimators.specs())
    with pytest.raises(ValueError, match="expected method in"):
        gk.get_spec("simple")  # not a categorical method
    with pytest.raises(gk.GumbelkitValueError, match=r"^subsets\.x: expected method to be one of"):
        gk.get_spec("reinforce_loo", family="subset", kind="sample", where="subsets.x")


def test_one_function_can_carry_several_declarations():
    hard = gk.get_spec("relaxed_topk_hard", family="subset")
    soft = gk.get_spec("relaxed_topk_soft", family="subset")
    assert hard.fn is soft.fn is gk.subsets.relaxed_topk
    assert (hard.one_hot, soft.one_hot) == (True, False) and dict(hard.fixed) == {"hard": True}
    x = torch.randn(4, 6)
    y_hard = hard.call(x, 2, tau=0.5, generator=torch.Generator().manual_seed(0))
    y_soft = soft.call(x, 2, tau=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y_hard, gk.subsets.relaxed_topk(x, 2, 0.5, True, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(y_soft.sum(-1), torch.full((4,), 2.0)) and not torch.equal(y_hard, y_soft)
    sns = gk.get_spec("stochastic_neural_sort", family="permutation")
    assert sns.fn is gk.permutations.neural_sort and dict(sns.fixed) == {"stochastic": True}
    with pytest.raises(ValueError, match="declares an option twice"):
        gk.register("twice", one_hot=True, options=(SCALE,), fixed={"scale": 1.0})


def test_call_passes_tau_and_generator_only_where_they_are_taken():
    scores = torch.tensor([[0.3, 2.0, -1.0]])
    soft_sort = gk.get_spec("soft_sort", family="permutation")  # deterministic: takes no generator
    out = soft_sort.call(scores, tau=0.1, generator=torch.Generator())
    assert torch.equal(out, gk.permutations.soft_sort(scores, 0.1))
    simple = gk.get_spec("simple", family="subset")  # uses no temperature
    z = simple.call(torch.zeros(3, 5), 2, tau=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z, gk.subsets.simple(torch.zeros(3, 5), 2, generator=torch.Generator().manual_seed(1)))
    hc = gk.get_spec("hard_concrete", family="bernoulli")
    assert hc.default_tau == pytest.approx(2 / 3) and gk.get_spec("st").default_tau is None


def test_a_plugin_family_is_a_family_like_the_others():
    def trees(x, tau=1.0, *, generator=None, depth=2):
        """A plugin's own family."""
        return x

    gk.register("tree_sampler", family="tree", one_hot=False, options=(OptionSpec("depth", int, 2, minimum=1),))(trees)
    try:
        assert gk.estimators.methods("tree") == ("tree_sampler",) and "tree" in gk.estimators.families()
        assert gk.get_spec("tree_sampler", family="tree").summary == "A plugin's own family."
        gk.register("tree_sampler", one_hot=False)(trees)  # the same name in another family
        gk.estimators.unregister("tree_sampler")
        with pytest.raises(ValueError, match="already registered in family 'tree'"):
            gk.register("tree_sampler", family="tree", one_hot=False)(trees)
        with pytest.raises(ValueError, match="family name"):
            gk.register("x", family="no family", one_hot=False)
        with pytest.raises(ValueError, match="default_tau"):
            gk.register("x", one_hot=False, default_tau=0.0)
    finally:
        gk.estimators.unregister("tree_sampler", family="tree")
    assert "tree" not in gk.estimators.families()
