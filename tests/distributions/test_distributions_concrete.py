"""Concrete distributions: agreement with torch.distributions, normalisation, stability."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from torch.distributions import RelaxedBernoulli, RelaxedOneHotCategorical, constraints
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from gumbelkit.distributions import (
    BinaryConcrete,
    Concrete,
    ExpConcrete,
    StraightThroughConcrete,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


LOGITS = torch.tensor([[0.3, -1.0, 1.2], [2.0, 0.0, -0.5]], dtype=torch.float64)
TEMP = torch.tensor(0.7, dtype=torch.float64)


def test_arg_constraints_and_exactly_one_parameter():
    for cls in (Concrete, ExpConcrete, BinaryConcrete):
        assert cls.arg_constraints["temperature"] is constraints.positive
        assert "logits" in cls.arg_constraints and "probs" in cls.arg_constraints
        with pytest.raises(ValueError, match="exactly one of logits or probs"):
            cls(TEMP)
        with pytest.raises(ValueError, match="exactly one of logits or probs"):
            cls(TEMP, probs=torch.tensor([0.5, 0.5]), logits=torch.zeros(2))
        with pytest.raises(ValueError, match="expected temperature > 0"):
            cls(torch.tensor(-1.0), logits=torch.zeros(2))
    d = Concrete(TEMP, probs=torch.tensor([0.2, 0.8], dtype=torch.float64))
    assert torch.allclose(d.probs, torch.tensor([0.2, 0.8], dtype=torch.float64))
    assert torch.allclose(d.logits.exp(), d.probs)


def test_log_prob_agrees_with_torch():
    ours = Concrete(TEMP, logits=LOGITS)
    ref = RelaxedOneHotCategorical(TEMP, logits=LOGITS)
    y = ours.rsample((500,), generator=_gen(1))
    assert y.shape == (500, 2, 3)
    lp_ref = ref.log_prob(y)
    ok = torch.isfinite(lp_ref)
    assert ok.float().mean() > 0.9
    assert torch.allclose(ours.log_prob(y)[ok], lp_ref[ok], rtol=1e-8, atol=1e-8)

    x = ExpConcrete(TEMP, logits=LOGITS).rsample((500,), generator=_gen(2))
    assert torch.allclose(
        ExpConcrete(TEMP, logits=LOGITS).log_prob(x), ExpRelaxedCategorical(TEMP, logits=LOGITS).log_prob(x)
    )

    b_logits = torch.tensor([0.3, -2.0, 4.0], dtype=torch.float64)
    yb = BinaryConcrete(TEMP, logits=b_logits).rsample((500,), generator=_gen(3))
    ref_b = RelaxedBernoulli(TEMP, logits=b_logits).log_prob(yb)
    ok = torch.isfinite(ref_b)
    assert torch.allclose(BinaryConcrete(TEMP, logits=b_logits).log_prob(yb)[ok], ref_b[ok], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_k2_density_integrates_to_one(lam):
    d = Concrete(torch.tensor(lam, dtype=torch.float64), logits=torch.tensor([0.4, -0.8], dtype=torch.float64))

    def pdf(y1):
        y = torch.tensor([y1, 1.0 - y1], dtype=torch.float64)
        return math.exp(float(d.log_prob(y)))

    total, err = integrate.quad(pdf, 0.0, 1.0, limit=200, points=[0.5])
    assert abs(total - 1.0) < 2e-3, (total, err)


@pytest.mark.parametrize("lam", [1.0, 2.0])
def test_k3_density_integrates_to_one(lam):
    d = Concrete(torch.tensor(lam, dtype=torch.float64), logits=torch.tensor([0.4, -0.8, 0.2], dtype=torch.float64))

    def pdf(y2, y1):
        y = torch.tensor([y1, y2, max(1.0 - y1 - y2, 0.0)], dtype=torch.float64)
        return math.exp(float(d.log_prob(y)))

    total, _ = integrate.dblquad(pdf, 0.0, 1.0, lambda y1: 0.0, lambda y1: 1.0 - y1, epsabs=1e-5, epsrel=1e-5)
    assert abs(total - 1.0) < 2e-3, total


def test_binary_density_integrates_to_one():
    d = BinaryConcrete(torch.tensor(0.8, dtype=torch.float64), logits=torch.tensor(0.7, dtype=torch.float64))
    total, _ = integrate.quad(
        lambda y: math.exp(float(d.log_prob(torch.tensor(y, dtype=torch.float64)))), 0, 1, limit=200
    )
    assert abs(total - 1.0) < 2e-3


@pytest.mark.parametrize("cls", [Concrete, ExpConcrete, BinaryConcrete])
def test_finite_at_small_temperature_and_extreme_logits(cls):
    logits = torch.tensor([[200.0, -200.0, 0.0], [-200.0, -200.0, 200.0]], requires_grad=True)
    if cls is BinaryConcrete:
        logits = torch.tensor([200.0, -200.0, 0.0], requires_grad=True)
    temp = torch.tensor(0.05, requires_grad=True)
    d = cls(temp, logits=logits)
    x = d.rsample((64,), generator=_gen(4))
    assert torch.isfinite(x).all()
    lp = d.log_prob(x)
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(temp.grad).all()


def test_gradcheck_log_prob_float64():
    logits = LOGITS.clone().requires_grad_()
    temp = TEMP.clone().requires_grad_()
    y = Concrete(TEMP, logits=LOGITS).sample((4,), generator=_gen(5))
    assert torch.autograd.gradcheck(lambda l, t: Concrete(t, logits=l).log_prob(y), (logits, temp))
    x = ExpConcrete(TEMP, logits=LOGITS).sample((4,), generator=_gen(6))
    assert torch.autograd.gradcheck(lambda l, t: ExpConcrete(t, logits=l).log_prob(x), (logits, temp))
    bl = torch.tensor([0.3, -1.0], dtype=torch.float64, requires_grad=True)
    yb = BinaryConcrete(TEMP, logits=bl.detach()).sample((4,), generator=_gen(7))
    assert torch.autograd.gradcheck(lambda l, t: BinaryConcrete(t, logits=l).log_prob(yb), (bl, temp))
    # rsample is differentiable too
    assert torch.autograd.gradcheck(lambda l: Concrete(TEMP, logits=l).rsample(generator=_gen(8)), (logits,))


def test_generator_determinism_and_expand():
    d = Concrete(TEMP, logits=LOGITS)
    assert torch.equal(d.sample((3,), generator=_gen(9)), d.sample((3,), generator=_gen(9)))
    e = d.expand((5, 2))
    assert e.batch_shape == (5, 2) and e.sample().shape == (5, 2, 3)
    b = BinaryConcrete(TEMP, logits=torch.zeros(2, dtype=torch.float64)).expand((4, 2))
    assert b.sample().shape == (4, 2)


def test_straight_through_concrete():
    logits = torch.randn(200, 4, generator=_gen(10), requires_grad=True)
    d = StraightThroughConcrete(torch.tensor(0.5), logits=logits)
    y = d.rsample(generator=_gen(11))
    assert torch.all((y == 0) | (y == 1)) and torch.all(y.sum(-1) == 1)
    # log_prob depends on the value alone: a fresh copy without any autograd history gives the same
    lp = d.log_prob(y)
    assert torch.equal(lp, d.log_prob(y.detach().clone()))
    assert torch.allclose(lp, torch.log_softmax(logits, -1).gather(-1, y.argmax(-1, keepdim=True)).squeeze(-1))
    (y * torch.arange(4.0)).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert d.support is constraints.one_hot


# --------------------------------------------------------------------------- expand

ALL_CLASSES = [ExpConcrete, Concrete, StraightThroughConcrete, BinaryConcrete]


def _make(cls, temperature, validate_args=None):
    shape = (2, 3) if cls is not BinaryConcrete else (2,)
    logits = torch.randn(shape, generator=_gen(20), dtype=torch.float64)
    return cls(temperature, logits=logits, validate_args=validate_args)


def test_expand_straight_through_concrete():
    d = StraightThroughConcrete(TEMP, logits=LOGITS)
    e = d.expand((5, 2))
    assert type(e) is StraightThroughConcrete and e.batch_shape == (5, 2) and e.event_shape == (3,)
    y = e.rsample(generator=_gen(21))
    assert y.shape == (5, 2, 3) and torch.all(y.sum(-1) == 1)
    assert torch.equal(e.log_prob(y), d.log_prob(y))


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_expand_keeps_class_batch_shape_and_temperature(cls):
    temp = torch.tensor([0.5, 2.0], dtype=torch.float64)  # one temperature per batch element
    d = _make(cls, temp)
    e = d.expand((4, 2))
    assert type(e) is cls and e.batch_shape == (4, 2) and e.event_shape == d.event_shape
    assert e._validate_args == d._validate_args
    assert e.temperature.shape == (4, 2) and torch.equal(e.temperature, temp.expand(4, 2))
    x = e.rsample((3,), generator=_gen(22))
    assert x.shape == (3, 4, 2) + d.event_shape
    lp = e.log_prob(x)
    assert lp.shape == (3, 4, 2)
    assert torch.allclose(lp, d.log_prob(x), rtol=1e-12, atol=1e-12)
    # a distribution built from probs expands too
    if cls is not BinaryConcrete:
        p = cls(temp, probs=torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)).expand((4, 2))
        assert type(p) is cls and p.sample().shape == (4, 2, 3)
    with pytest.raises(ValueError, match=r"expand: expected a batch_shape that \(2\) expands to, got \(3\)"):
        d.expand((3,))


# --------------------------------------------------------------------------- validate_args


_BAD_PARAMS = [
    ({"temperature": -1.0}, "temperature > 0"),
    ({"temperature": float("nan")}, "temperature > 0"),
    ({"temperature": float("inf")}, "temperature > 0 and finite"),
    ({"logits": [[0.0, float("nan"), 1.0]]}, "NaN"),
    ({"logits": [[0.0, float("inf"), 1.0]]}, r"\+inf"),
    ({"logits": [[float("-inf")] * 3]}, "all-masked"),
    ({"probs": [[0.5, -0.1, 0.6]]}, "probs >= 0"),
    ({"probs": [[0.0, 0.0, 0.0]]}, "positive sum"),
]
_BAD_BINARY = [
    ({"temperature": -1.0}, "temperature > 0"),
    ({"logits": [float("nan")]}, "finite logits"),
    ({"logits": [float("inf")]}, "finite logits"),
    ({"logits": [float("-inf")]}, "finite logits"),
    ({"probs": [1.5]}, r"probs in \[0, 1\]"),
]
_CASES = [(cls, *case) for cls in (ExpConcrete, Concrete, StraightThroughConcrete) for case in _BAD_PARAMS]
_CASES += [(BinaryConcrete, *case) for case in _BAD_BINARY]


def _bad_kwargs(cls, bad):
    kw = {"temperature": 0.5, "logits": [[0.1, 0.2, 0.3]] if cls is not BinaryConcrete else [0.1]}
    kw.update(bad)
    if "probs" in bad:
        del kw["logits"]
    t = kw.pop("temperature")
    return torch.tensor(t, dtype=torch.float64), {k: torch.tensor(v, dtype=torch.float64) for k, v in kw.items()}


@pytest.mark.parametrize("cls, bad, msg", _CASES)
def test_validate_args_false_skips_value_checks(cls, bad, msg):
    temp, kw = _bad_kwargs(cls, bad)
    cls(temp, validate_args=False, **kw)  # no value check: no raise, no host sync
    old = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        d = cls(temp, **kw)  # the default follows torch's global setting
        assert not d._validate_args
    finally:
        torch.distributions.Distribution.set_default_validate_args(old)


@pytest.mark.parametrize("cls, bad, msg", _CASES)
def test_validate_args_true_raises_clear_value_error(cls, bad, msg):
    temp, kw = _bad_kwargs(cls, bad)
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: expected .*{msg}") as info:
        cls(temp, validate_args=True, **kw)
    assert "shape (" in str(info.value)  # the message names the argument's shape


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_structural_checks_run_without_validate_args(cls):
    logits = torch.zeros(2, 3) if cls is not BinaryConcrete else torch.zeros(2)
    with pytest.raises(ValueError, match="exactly one of logits or probs, got both"):
        cls(0.5, logits=logits, probs=logits, validate_args=False)
    with pytest.raises(TypeError, match="floating dtype"):
        cls(0.5, logits=logits.long(), validate_args=False)
    with pytest.raises(TypeError, match="temperature"):
        cls(torch.tensor(1), logits=logits, validate_args=False)
    with pytest.raises(
        ValueError, match=r"temperature broadcastable with the batch shape .* = \(2\), got temperature of shape \(3\)"
    ):
        cls(torch.ones(3), logits=logits, validate_args=False)


# --------------------------------------------------------------------------- masked classes


MASKED = torch.tensor(
    [[0.3, float("-inf"), 1.2, -0.4], [2.0, 0.0, -0.5, 0.7], [float("-inf"), 0.9, float("-inf"), -1.1]],
    dtype=torch.float64,
)


@pytest.mark.parametrize("cls", [ExpConcrete, Concrete])
def test_masked_class_log_prob_matches_reduced_distribution(cls):
    logits = MASKED.clone().requires_grad_()
    temp = TEMP.clone().requires_grad_()
    d = cls(temp, logits=logits)
    x = d.rsample((50,), generator=_gen(30))
    masked = float("-inf") == MASKED
    zero = float("-inf") if cls is ExpConcrete else 0.0
    assert torch.all(x[:, masked] == zero)
    lp = d.log_prob(x)
    assert lp.shape == (50, 3) and torch.isfinite(lp).all()
    for row in range(3):
        keep = ~masked[row]
        reduced = cls(TEMP, logits=MASKED[row, keep])
        assert torch.allclose(lp[:, row], reduced.log_prob(x[:, row, keep]), rtol=1e-10, atol=1e-10)
    (lp.sum() + x.exp().sum() if cls is ExpConcrete else lp.sum() + x.pow(2).sum()).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(temp.grad)
    # A value with mass on a masked class is off the (reduced) support: density 0.
    bad = x.detach().clone()
    bad[:, 0, 1] = -1.0 if cls is ExpConcrete else 0.1
    if cls is Concrete:
        bad[:, 0] /= bad[:, 0].sum(-1, keepdim=True)  # stay on the simplex
    assert torch.all(d.log_prob(bad)[:, 0] == float("-inf")) and torch.isfinite(d.log_prob(bad)[:, 1:]).all()


# --------------------------------------------------------------------------- temperature shapes


@pytest.mark.parametrize("cls", ALL_CLASSES)
@pytest.mark.parametrize("tshape", [(), (1,), (2,), (2, 1), (3, 1, 1)])
def test_temperature_broadcasts_against_batch_shape(cls, tshape):
    temp = torch.rand(tshape, generator=_gen(40), dtype=torch.float64) + 0.3
    d = _make(cls, temp)
    param_batch = (2,)
    assert d.batch_shape == torch.broadcast_shapes(tshape, param_batch)
    assert d.temperature.shape == d.batch_shape
    x = d.rsample((4,), generator=_gen(41))
    assert x.shape == (4,) + d.batch_shape + d.event_shape
    lp = d.log_prob(x)
    assert lp.shape == (4,) + d.batch_shape
    # each batch element is the distribution with that element's scalar temperature and logits
    t_full, p_full = d.temperature, d.logits
    for idx in np.ndindex(*d.batch_shape):
        single = cls(t_full[idx], logits=p_full[idx])
        assert torch.allclose(
            lp[(slice(None),) + idx], single.log_prob(x[(slice(None),) + idx]), rtol=1e-10, atol=1e-10
        )


# --------------------------------------------------------------------------- agreement with torch


def _scalar_temps():
    return [torch.tensor(t, dtype=torch.float64) for t in (0.3, 1.0, 2.5)]


def _same_law(ours, ref, points, tol=1e-10):
    """Same shapes, the same support object and the same log-density at every point."""
    assert ours.batch_shape == ref.batch_shape and ours.event_shape == ref.event_shape
    assert ours.support is ref.support
    for y in points:
        assert torch.allclose(ours.log_prob(y), ref.log_prob(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("temp", _scalar_temps())
def test_concrete_matches_torch_relaxed_one_hot_categorical(temp):
    logits = torch.randn(4, 5, generator=_gen(50), dtype=torch.float64)
    y = torch.distributions.Dirichlet(torch.ones(5, dtype=torch.float64)).sample((200, 4))  # random simplex points
    _same_law(Concrete(temp, logits=logits), RelaxedOneHotCategorical(temp, logits=logits), [y])
    probs = torch.softmax(logits, -1)
    _same_law(Concrete(temp, probs=probs), RelaxedOneHotCategorical(temp, probs=probs), [y])


@pytest.mark.parametrize("temp", _scalar_temps())
def test_exp_concrete_matches_torch_exp_relaxed_categorical(temp):
    logits = torch.randn(4, 5, generator=_gen(51), dtype=torch.float64)
    x = torch.randn(200, 4, 5, generator=_gen(52), dtype=torch.float64) * 3  # random real vectors
    # and random points of the support's log-simplex
    _same_law(ExpConcrete(temp, logits=logits), ExpRelaxedCategorical(temp, logits=logits), [x, x.log_softmax(-1)])


@pytest.mark.parametrize("temp", _scalar_temps())
def test_binary_concrete_matches_torch_relaxed_bernoulli(temp):
    logits = torch.randn(6, generator=_gen(53), dtype=torch.float64) * 2
    y = torch.rand(300, 6, generator=_gen(54), dtype=torch.float64).clamp(1e-6, 1 - 1e-6)  # random points of (0, 1)
    _same_law(BinaryConcrete(temp, logits=logits), RelaxedBernoulli(temp, logits=logits), [y], tol=1e-9)
    probs = torch.sigmoid(logits)
    _same_law(BinaryConcrete(temp, probs=probs), RelaxedBernoulli(temp, probs=probs), [y], tol=1e-8)


# --------------------------------------------------------------------------- composition, error types


def test_concrete_is_a_transformed_exp_concrete():
    from torch.distributions import TransformedDistribution
    from torch.distributions.transforms import ExpTransform

    from gumbelkit.errors import GumbelkitValueError

    for cls in (Concrete, StraightThroughConcrete):
        d = cls(TEMP, logits=MASKED)
        assert isinstance(d, TransformedDistribution) and type(d.base_dist) is ExpConcrete
        assert len(d.transforms) == 1 and isinstance(d.transforms[0], ExpTransform)
        assert d.batch_shape == (3,) and d.event_shape == (4,) and d.has_rsample
        assert repr(d).startswith(cls.__name__ + "(")
        e = d.expand((2, 3))
        assert type(e) is cls and type(e.base_dist) is ExpConcrete and e.base_dist.batch_shape == (2, 3)
    d = Concrete(TEMP, logits=MASKED)
    # rsample is exp of the base's sample, bit for bit, masked classes exactly 0
    y = d.rsample((4,), generator=_gen(30))
    assert torch.equal(y, d.base_dist.rsample((4,), generator=_gen(30)).exp())
    assert torch.all(y[..., torch.isinf(MASKED)] == 0)
    # torch's support check (validate_args) raises the library's error type, named after the class
    with pytest.raises(GumbelkitValueError, match=r"^Concrete\.log_prob: .*support"):
        Concrete(TEMP, logits=LOGITS, validate_args=True).log_prob(torch.full((2, 3), 0.9, dtype=torch.float64))
    with pytest.raises(GumbelkitValueError, match=r"^BinaryConcrete\.log_prob: "):
        BinaryConcrete(TEMP, logits=torch.zeros(2, dtype=torch.float64), validate_args=True).log_prob(
            torch.full((2,), 1.5, dtype=torch.float64)
        )
    # without validate_args no check runs
    Concrete(TEMP, logits=LOGITS, validate_args=False).log_prob(torch.full((2, 3), 0.9, dtype=torch.float64))


@pytest.mark.parametrize(
    "cls, msg", [(c, m) for c, _, m in _CASES[:1]] + [(ExpConcrete, "NaN"), (BinaryConcrete, "finite logits")]
)
def test_value_errors_are_gumbelkit_errors(cls, msg):
    from gumbelkit.errors import GumbelkitError

    bad = {"logits": [[0.0, float("nan"), 1.0]] if cls is not BinaryConcrete else [float("nan")]}
    if msg.startswith("temperature"):
        bad = {"temperature": -1.0}
    temp, kw = _bad_kwargs(cls, bad)
    with pytest.raises(GumbelkitError) as info:
        cls(temp, validate_args=True, **kw)
    assert isinstance(info.value, ValueError) and str(info.value).startswith(cls.__name__ + ": ")
