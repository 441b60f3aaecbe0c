"""Concrete distributions: agreement with torch.distributions, normalisation, stability."""

import math

import pytest
import torch
from scipy import integrate
from torch.distributions import RelaxedBernoulli, RelaxedOneHotCategorical, constraints
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from gumbelkit.distributions import BinaryConcrete, Concrete, ExpConcrete, StraightThroughConcrete


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
    assert torch.allclose(ExpConcrete(TEMP, logits=LOGITS).log_prob(x), ExpRelaxedCategorical(TEMP, logits=LOGITS).log_prob(x))

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
    total, _ = integrate.quad(lambda y: math.exp(float(d.log_prob(torch.tensor(y, dtype=torch.float64)))), 0, 1, limit=200)
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
