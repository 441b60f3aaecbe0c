import math

import pytest
import torch

from gumbelkit import schedules


def test_exponential_is_jang_annealing():
    s = schedules.exponential(1.0, 3e-5, 0.5, 1000)
    assert s(0) == 1.0 and s(999) == 1.0
    assert s(1000) == pytest.approx(math.exp(-3e-5 * 1000))
    assert s(1999) == s(1000)
    assert s(10**6) == 0.5
    assert s(23_105) == pytest.approx(max(0.5, math.exp(-3e-5 * 23_000)))
    assert schedules.jang_schedule()(5000) == s(5000)


def test_linear_cosine_constant():
    lin = schedules.linear(2.0, 0.5, 100)
    assert lin(0) == 2.0 and lin(50) == pytest.approx(1.25) and lin(100) == 0.5 and lin(10**5) == 0.5
    cos = schedules.cosine(2.0, 0.5, 100)
    assert cos(0) == pytest.approx(2.0) and cos(50) == pytest.approx(1.25) and cos(100) == pytest.approx(0.5)
    assert schedules.constant(0.3)(12345) == 0.3


def test_schedules_are_pure():
    s = schedules.exponential(1.0, 1e-3, 0.1, 10)
    seq1 = [s(t) for t in range(0, 500, 7)]
    seq2 = [s(t) for t in reversed(range(0, 500, 7))][::-1]
    assert seq1 == seq2


def test_parse_schedule():
    assert schedules.parse_schedule("0.5")(100) == 0.5
    s = schedules.parse_schedule("exp:tau0=2,rate=1e-3,floor=0.25,interval=10")
    assert s(15) == pytest.approx(2 * math.exp(-1e-3 * 10))
    assert schedules.parse_schedule("jang")(2000) == schedules.jang_schedule()(2000)
    assert schedules.parse_schedule("cosine:start=1,end=0.5,steps=10")(10) == pytest.approx(0.5)
    for bad, msg in [("foo", "expected a schedule"), ("exp:rate", "key=value"), ("exp:rate=x", "number"),
                     ("exp:bogus=1", "valid arguments"), ("-1", "tau > 0"), ("exp:floor=0", "floor > 0")]:
        with pytest.raises(ValueError, match=msg):
            schedules.parse_schedule(bad)


def test_argument_and_step_validation():
    with pytest.raises(ValueError, match="interval"):
        schedules.exponential(interval=0)
    with pytest.raises(ValueError, match="rate >= 0"):
        schedules.exponential(rate=-1.0)
    with pytest.raises(ValueError, match="step"):
        schedules.constant(1.0)(-1)


def test_learnable_temperature_positive_and_trainable():
    t = schedules.LearnableTemperature(1.0, floor=0.1)
    assert float(t().detach()) == pytest.approx(1.0)
    opt = torch.optim.SGD(t.parameters(), lr=100.0)
    for _ in range(20):
        opt.zero_grad()
        t().backward()  # push tau down hard
        opt.step()
    assert 0.1 < float(t().detach()) < 1.0
    with pytest.raises(ValueError, match="init > floor"):
        schedules.LearnableTemperature(0.05, floor=0.1)
