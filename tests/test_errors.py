"""One library error type: every bad-input error of the public API is a GumbelkitError, is still
the builtin type it always was, and its message names the function and the tensor's shape."""

import pickle
import re

import pytest
import torch

import gumbelkit as gk
from gumbelkit import errors, schedules, structured
from gumbelkit.distributions import (
    BinaryConcrete,
    Concrete,
    ExpConcrete,
    StraightThroughConcrete,
)
from gumbelkit.errors import (
    GumbelkitDimError,
    GumbelkitError,
    GumbelkitTypeError,
    GumbelkitValueError,
)
from gumbelkit.nn import GumbelSoftmax

NAN, INF = float("nan"), float("inf")


def _x(*shape):
    return torch.zeros(*shape)


def _with(value, where=(0, 1), shape=(3, 4)):
    x = torch.zeros(shape)
    x[where] = value
    return x


def _masked_row(shape=(3, 4)):
    x = torch.zeros(shape)
    x[1] = -INF
    return x


def test_hierarchy_and_exports():
    assert issubclass(GumbelkitError, Exception)
    assert issubclass(GumbelkitValueError, (GumbelkitError)) and issubclass(GumbelkitValueError, ValueError)
    assert issubclass(GumbelkitTypeError, GumbelkitError) and issubclass(GumbelkitTypeError, TypeError)
    for base in (GumbelkitError, IndexError, ValueError):
        assert issubclass(GumbelkitDimError, base)
    assert not hasattr(gk, "DimError")  # one name per error type, no aliases
    for name in errors.__all__:
        assert getattr(gk, name) is getattr(errors, name) and name in gk.__all__
    assert "errors" in gk.__all__ and gk.errors is errors
    # picklable (e.g. across DataLoader workers / multiprocessing)
    e = pickle.loads(pickle.dumps(GumbelkitValueError("f: expected x, got y")))
    assert type(e) is GumbelkitValueError and str(e) == "f: expected x, got y"


def test_message_examples_from_the_design():
    with pytest.raises(GumbelkitValueError) as info:
        gk.gumbel_softmax(_x(3, 4), tau=-1.0)
    assert str(info.value) == "gumbel_softmax: expected tau > 0 and finite, got -1.0"
    with pytest.raises(GumbelkitDimError) as info:
        gk.gumbel_max(_x(3, 4), dim=5)
    assert str(info.value) == "gumbel_max: expected dim in [-2, 1] for logits of shape (3, 4), got 5"


# (function name, call, builtin type, shape the message must name or None)
CASES = []


def case(name, call, builtin, shape=None):
    CASES.append(pytest.param(name, call, builtin, shape, id=f"{name}-{len(CASES)}"))


# --- samplers
for fname, f in [
    ("gumbel_max", lambda x, **kw: gk.gumbel_max(x, **kw)),
    ("gumbel_topk", lambda x, **kw: gk.gumbel_topk(x, 1, **kw)),
    ("gumbel_softmax", lambda x, **kw: gk.gumbel_softmax(x, 0.5, **kw)),
    ("tempered_softmax", lambda x, **kw: gk.tempered_softmax(x, 0.5, **kw)),
]:
    case(fname, lambda f=f: f(torch.zeros(3, 4, dtype=torch.long)), TypeError, "(3, 4)")
    case(fname, lambda f=f: f([0.0, 1.0]), TypeError)
    case(fname, lambda f=f: f(_x(3, 4), dim=5), IndexError, "(3, 4)")
    case(fname, lambda f=f: f(_x(3, 4), dim=1.0), TypeError)
    case(fname, lambda f=f: f(torch.tensor(1.0)), IndexError)
    case(fname, lambda f=f: f(_x(3, 0)), ValueError, "(3, 0)")
    case(fname, lambda f=f: f(_with(NAN)), ValueError, "(3, 4)")
    case(fname, lambda f=f: f(_with(INF)), ValueError, "(3, 4)")
    case(fname, lambda f=f: f(_masked_row()), ValueError, "(3, 4)")
    if fname != "tempered_softmax":
        case(fname, lambda f=f: f(_x(3, 4), generator=7), TypeError)
for fname, f in [
    ("gumbel_softmax", lambda x, t: gk.gumbel_softmax(x, t)),
    ("tempered_softmax", lambda x, t: gk.tempered_softmax(x, t)),
]:
    case(fname, lambda f=f: f(_x(3, 4), -1.0), ValueError)
    case(fname, lambda f=f: f(_x(3, 4), NAN), ValueError)
    case(fname, lambda f=f: f(_x(3, 4), "hot"), TypeError)
    case(fname, lambda f=f: f(_x(3, 4), torch.full((3, 1), -1.0)), ValueError, "(3, 1)")
    case(fname, lambda f=f: f(_x(3, 4), torch.ones(2, 1)), ValueError, "(3, 4)")
    case(fname, lambda f=f: f(_x(3, 4), torch.ones(3, 1, dtype=torch.long)), TypeError, "(3, 1)")
case("gumbel_topk", lambda: gk.gumbel_topk(_x(3, 4), 0), ValueError)
case("gumbel_topk", lambda: gk.gumbel_topk(_x(3, 4), 1.5), ValueError)
case("gumbel_topk", lambda: gk.gumbel_topk(_x(3, 4), 5), ValueError, "(3, 4)")
case("gumbel_topk", lambda: gk.gumbel_topk(_with(-INF), 4), ValueError, "(3, 4)")

# --- noise
for fname in ("gumbel_noise", "exponential_noise", "logistic_noise", "uniform_open"):
    f = getattr(gk, fname)
    case(fname, lambda f=f: f((2,), dtype=torch.int64), TypeError)
    case(fname, lambda f=f: f((2,), generator=123), TypeError)
    case(fname, lambda f=f: f(5), TypeError)
    case(fname, lambda f=f: f((2, -1)), ValueError)

# --- kl
case("kl_categorical", lambda: gk.kl_categorical(_x(3, 4), _x(2, 4)), ValueError, "(3, 4)")
case("kl_categorical", lambda: gk.kl_categorical(_x(3, 4).long(), _x(3, 4)), TypeError, "(3, 4)")
case("kl_categorical", lambda: gk.kl_categorical(_x(3, 4), _x(3, 4), dim=2), IndexError, "(3, 4)")
case("kl_categorical", lambda: gk.kl_categorical(_with(NAN), _x(3, 4)), ValueError, "(3, 4)")
case("kl_categorical", lambda: gk.kl_categorical(_x(3, 4), _masked_row()), ValueError, "(3, 4)")

# --- distributions (the class is the function the user called)
T = torch.tensor(0.5)
for cls in (ExpConcrete, Concrete, StraightThroughConcrete, BinaryConcrete):
    n = cls.__name__
    shape = (2, 3) if cls is not BinaryConcrete else (3,)
    case(n, lambda cls=cls: cls(T), ValueError)
    case(
        n,
        lambda cls=cls, s=shape: cls(T, logits=torch.zeros(s, dtype=torch.long)),
        TypeError,
        str(shape).replace(",)", ")") if len(shape) == 1 else str(shape),
    )
    case(n, lambda cls=cls, s=shape: cls(torch.tensor(-1.0), logits=torch.zeros(s)), ValueError, "shape ()")
    case(n, lambda cls=cls, s=shape: cls(torch.ones(5), logits=torch.zeros(s)), ValueError, "(5)")
    case(n, lambda cls=cls, s=shape: cls(T, logits=torch.full(s, NAN)), ValueError, "shape (")
    case(n + ".expand", lambda cls=cls, s=shape: cls(T, logits=torch.zeros(s)).expand((7,)), ValueError, "(7)")
    bad_value = torch.full((2, 3), 0.9) if cls is not BinaryConcrete else torch.full((3,), 1.5)
    if cls is ExpConcrete:
        bad_value = torch.full((2, 3, 2), 0.0)  # wrong event shape
    case(n + ".log_prob", lambda cls=cls, s=shape, v=bad_value: cls(T, logits=torch.zeros(s)).log_prob(v), ValueError)

# HardConcrete (a binary gate: logits of any shape)
HC = gk.distributions.HardConcrete
case("HardConcrete", lambda: HC(torch.zeros(3), temperature=-1.0), ValueError)
case("HardConcrete", lambda: HC(torch.zeros(3, dtype=torch.long)), TypeError, "(3)")
case("HardConcrete", lambda: HC(torch.full((3,), NAN)), ValueError, "shape (")
case("HardConcrete", lambda: HC(torch.zeros(3), limits=(0.1, 1.1)), ValueError)

# --- schedules and modules
case("Constant", lambda: schedules.Constant(-1.0), ValueError)
case("Constant", lambda: schedules.constant(1.0)(-1), ValueError)
case("Exponential", lambda: schedules.exponential(interval=0), ValueError)
case("Exponential", lambda: schedules.exponential(floor=2.0), ValueError)
case("Exponential", lambda: schedules.jang_schedule()(torch.ones(2)), ValueError, "(2)")
case("Linear", lambda: schedules.linear(steps=1.5), ValueError)
case("Cosine", lambda: schedules.cosine(end=INF), ValueError)
case("parse_schedule", lambda: schedules.parse_schedule("foo"), ValueError)
case("parse_schedule", lambda: schedules.parse_schedule("-1"), ValueError)
case("parse_schedule", lambda: schedules.parse_schedule("exp:floor=0"), ValueError)
case("parse_schedule", lambda: schedules.parse_schedule("exp:bogus=1"), ValueError)
case("LearnableTemperature", lambda: schedules.LearnableTemperature(0.05, floor=0.1), ValueError)
case("LearnableTemperature", lambda: schedules.LearnableTemperature(INF), ValueError)
case("GumbelSoftmax", lambda: GumbelSoftmax("nope"), ValueError)
case("GumbelSoftmax", lambda: GumbelSoftmax(tau=0.0), ValueError)
case("GumbelSoftmax", lambda: GumbelSoftmax(tau="hot"), TypeError)

# --- structured
S = structured
case("check_structured", lambda: S.check_structured(_x(3, 3), (0, -2), fn="check_structured"), IndexError, "(3, 3)")
case("topk_indices", lambda: S.topk_indices(_x(3, 4), 5), ValueError)
case("topk_indices", lambda: S.topk_indices(_with(NAN), 2), ValueError, "(3, 4)")
case("topk_indices", lambda: S.topk_indices(_x(3, 4), 2, dim=3), IndexError, "(3, 4)")
case("khot", lambda: S.khot(torch.tensor([[0, 0]]), _x(1, 4)), ValueError, "(1, 2)")
case("khot", lambda: S.khot(torch.tensor([[0, 4]]), _x(1, 4)), ValueError, "(1, 2)")
case("khot", lambda: S.khot(torch.tensor([[0.0, 1.0]]), _x(1, 4)), TypeError, "(1, 2)")
case(
    "khot_straight_through",
    lambda: S.khot_straight_through(_x(2, 4), torch.zeros(3, 1, dtype=torch.long)),
    ValueError,
    "(3, 1)",
)
case(
    "khot_straight_through",
    lambda: S.khot_straight_through(_x(2, 4).long(), torch.zeros(2, 1, dtype=torch.long)),
    TypeError,
    "(2, 4)",
)
case(
    "khot_straight_through",
    lambda: S.khot_straight_through(_x(2, 4), torch.zeros(2, 5, dtype=torch.long)),
    ValueError,
    "(2, 5)",
)
case("permutation_matrix", lambda: S.permutation_matrix(torch.tensor([0, 0, 1])), ValueError, "(3)")
case("permutation_matrix", lambda: S.permutation_matrix(torch.tensor([0, 1]), dtype=torch.long), TypeError)
case(
    "permutation_straight_through",
    lambda: S.permutation_straight_through(_x(3, 4), torch.arange(3)),
    ValueError,
    "(3, 4)",
)
case(
    "permutation_straight_through",
    lambda: S.permutation_straight_through(_x(2, 3, 3), torch.arange(3)),
    ValueError,
    "(3)",
)
case(
    "permutation_straight_through",
    lambda: S.permutation_straight_through(_x(3, 3), torch.tensor([2, 2, 0])),
    ValueError,
    "(3)",
)
case("permutation_straight_through", lambda: S.permutation_straight_through(_x(3), torch.arange(3)), ValueError, "(3)")


@pytest.mark.parametrize("name, call, builtin, shape", CASES)
def test_bad_input_raises_a_gumbelkit_error_named_after_the_function(name, call, builtin, shape):
    with pytest.raises(GumbelkitError) as info:
        call()
    exc = info.value
    assert isinstance(exc, builtin), (type(exc), builtin)
    msg = str(exc)
    assert re.match(rf"{re.escape(name)}(\.\w+)?: ", msg), msg
    if shape is not None:
        assert shape in msg, (shape, msg)


def test_every_public_function_is_covered():
    names = {p.values[0].split(".")[0] for p in CASES}
    public = {
        "gumbel_max",
        "gumbel_topk",
        "gumbel_softmax",
        "tempered_softmax",
        "gumbel_noise",
        "exponential_noise",
        "logistic_noise",
        "uniform_open",
        "kl_categorical",
        "GumbelSoftmax",
        "parse_schedule",
        "LearnableTemperature",
        "Constant",
        "Exponential",
        "Linear",
        "Cosine",
    }
    public |= set(gk.distributions.__all__)
    public |= set(structured.__all__) - {"check_square", "check_subset_size", "check_iterations"}
    assert public <= names, public - names


def test_checks_still_raise_the_builtin_types_existing_handlers_catch():
    with pytest.raises(ValueError, match="NaN"):
        gk.gumbel_softmax(_with(NAN))
    with pytest.raises(IndexError, match="expected dim"):
        gk.gumbel_max(_x(3), dim=1)
    with pytest.raises(ValueError, match="expected dim"):  # a GumbelkitDimError is a ValueError too
        gk.gumbel_max(_x(3), dim=1)
    with pytest.raises(TypeError, match="floating dtype"):
        gk.tempered_softmax(torch.zeros(3, dtype=torch.long))


def test_sample_errors_are_gumbelkit_errors_too():
    # the estimators share the validators: their argument errors are the library's types as well
    with pytest.raises(GumbelkitValueError, match="NaN"):
        gk.sample(_with(NAN), "st_gumbel")
    with pytest.raises(GumbelkitDimError):
        gk.sample(_x(3, 4), "gumbel_rao", dim=4)
