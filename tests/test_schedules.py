import dataclasses
import math
import pickle

import pytest
import torch

from gumbelkit import schedules
from gumbelkit.nn import GumbelSoftmax


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
    for bad, msg in [
        ("foo", "expected a schedule"),
        ("exp:rate", "key=value"),
        ("exp:rate=x", "number"),
        ("exp:bogus=1", "valid arguments"),
        ("-1", "tau > 0"),
        ("exp:floor=0", "floor > 0"),
    ]:
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


ALL_SCHEDULES = [
    schedules.constant(0.3),
    schedules.exponential(1.0, 3e-5, 0.5, 1000),
    schedules.exponential(2.0, 1e-3, 0.25, 10),
    schedules.jang_schedule(),
    schedules.linear(2.0, 0.5, 100),
    schedules.cosine(1.0, 0.5, 10),
    schedules.parse_schedule("0.7"),
]


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=repr)
def test_schedule_pickle_round_trip(s):
    t = pickle.loads(pickle.dumps(s))
    assert t == s and hash(t) == hash(s) and type(t) is type(s)
    assert [t(k) for k in (0, 5, 999, 1000, 10**6)] == [s(k) for k in (0, 5, 999, 1000, 10**6)]


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=repr)
def test_torch_save_module_holding_schedule(s, tmp_path):
    mod = GumbelSoftmax("gumbel_softmax", tau=s)
    plain = torch.nn.Module()
    plain.schedule = s
    torch.save({"gs": mod, "plain": plain}, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert loaded["gs"].tau == s and loaded["plain"].schedule == s
    assert loaded["gs"].current_tau() == s(0)


def test_schedule_repr_is_readable():
    assert repr(schedules.exponential()) == "Exponential(tau0=1.0, rate=3e-05, floor=0.5, interval=1000)"
    assert repr(schedules.constant(0.5)) == "Constant(tau=0.5)"
    assert repr(schedules.linear(2, 0.5, 100)) == "Linear(start=2.0, end=0.5, steps=100)"
    assert repr(schedules.cosine(2, 0.5, 100)) == "Cosine(start=2.0, end=0.5, steps=100)"
    assert "tau=Exponential" not in repr(GumbelSoftmax(tau=schedules.exponential()))  # the module shows the spec


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=repr)
def test_schedule_parse_round_trip(s):
    assert str(s) == s.spec
    assert schedules.parse_schedule(str(s)) == s
    assert schedules.parse_schedule(s) == s  # a schedule object reads as its own spec


def test_schedule_spec_keeps_existing_syntax():
    assert schedules.exponential().spec == "exp:tau0=1.0,rate=3e-05,floor=0.5,interval=1000"
    assert schedules.constant(0.5).spec == "constant:tau=0.5"
    assert schedules.linear(1, 0.5, 5000).spec == "linear:start=1.0,end=0.5,steps=5000"
    assert schedules.cosine(2, 0.5, 5000).spec == "cosine:start=2.0,end=0.5,steps=5000"
    assert schedules.parse_schedule("exp:tau0=1,rate=3e-5,floor=0.5,interval=1000") == schedules.jang_schedule()


def test_schedule_equality_and_hash():
    a = schedules.exponential(1, 3e-5, 0.5, 1000)  # ints normalised to floats
    assert a == schedules.jang_schedule() == schedules.Exponential()
    assert len({a, schedules.jang_schedule(), schedules.exponential(rate=1e-4)}) == 2
    assert schedules.linear(2.0, 0.5, 100) != schedules.cosine(2.0, 0.5, 100)
    assert schedules.constant(0.5) != 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.rate = 1.0
    assert isinstance(a, schedules.Schedule) and callable(a)


_NAN, _INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "make, msg",
    [
        (lambda: schedules.exponential(rate=_NAN), "rate >= 0 and finite"),
        (lambda: schedules.exponential(rate=_INF), "rate >= 0 and finite"),
        (lambda: schedules.exponential(rate=-1e-3), "rate >= 0"),
        (lambda: schedules.exponential(tau0=_NAN), "tau0 > 0 and finite"),
        (lambda: schedules.exponential(tau0=_INF), "tau0 > 0 and finite"),
        (lambda: schedules.exponential(floor=_NAN), "floor > 0 and finite"),
        (lambda: schedules.exponential(tau0=0.3, floor=0.5), "floor <= tau0"),
        (lambda: schedules.exponential(interval=0), "interval to be an integer >= 1"),
        (lambda: schedules.exponential(interval=True), "interval to be an integer >= 1"),
        (lambda: schedules.exponential(interval=10.0), "interval to be an integer >= 1"),
        (lambda: schedules.exponential(tau0=True), "tau0 > 0"),
        (lambda: schedules.constant(_NAN), "tau > 0 and finite"),
        (lambda: schedules.constant(_INF), "tau > 0 and finite"),
        (lambda: schedules.constant(False), "tau > 0"),
        (lambda: schedules.linear(steps=0), "steps to be an integer >= 1"),
        (lambda: schedules.linear(start=_NAN), "start > 0 and finite"),
        (lambda: schedules.linear(end=-0.5), "end > 0"),
        (lambda: schedules.cosine(steps=0), "steps to be an integer >= 1"),
        (lambda: schedules.cosine(end=_INF), "end > 0 and finite"),
        (lambda: schedules.cosine(steps=True), "steps to be an integer >= 1"),
        (lambda: schedules.parse_schedule("nan"), "tau > 0 and finite"),
        (lambda: schedules.parse_schedule("exp:rate=nan"), "rate >= 0 and finite"),
        (lambda: schedules.parse_schedule("linear:steps=0"), "steps"),
    ],
)
def test_schedule_rejects_nan_inf_and_out_of_range_arguments(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=repr)
def test_schedule_negative_or_non_finite_step_raises_never_nan(s):
    for bad in (-1, -1000, torch.tensor(-3), torch.tensor(_NAN), torch.tensor(_INF), 1.5, True):
        with pytest.raises(ValueError, match="step"):
            s(bad)
    for step in (0, 1, 10**6, torch.tensor(7), 10**400):  # huge steps sit at the end value
        assert math.isfinite(s(step)) and s(step) > 0


def test_learnable_temperature_is_picklable(tmp_path):
    t = schedules.LearnableTemperature(0.8, floor=0.1)
    u = pickle.loads(pickle.dumps(t))
    assert float(u().detach()) == pytest.approx(0.8) and u.floor == 0.1
    torch.save(GumbelSoftmax(tau=t), tmp_path / "m.pt")
    assert float(torch.load(tmp_path / "m.pt", weights_only=False).tau().detach()) == pytest.approx(0.8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("floor", [0.05, 0.1, 0.7])
def test_learnable_temperature_is_finite_and_above_floor(dtype, floor):
    t = schedules.LearnableTemperature(1.0, floor=floor).to(dtype)
    for rho in (-1e4, -60.0, -20.0, 0.0, 30.0, 1e4):  # far past where softplus(rho) < ulp(floor)
        with torch.no_grad():
            t.rho.fill_(rho)
        tau = t().detach()
        assert tau.dtype == dtype and torch.isfinite(tau) and float(tau) > floor, (rho, float(tau))
    # the gradient is that of floor + softplus(rho), also where the value was lifted above floor
    with torch.no_grad():
        t.rho.fill_(-20.0)
    t.rho.grad = None
    t().backward()
    assert float(t.rho.grad) == pytest.approx(float(torch.sigmoid(torch.tensor(-20.0, dtype=dtype))), rel=1e-2)
    with pytest.raises(ValueError, match="init - floor representable"):
        schedules.LearnableTemperature(1e300)
    with pytest.raises(ValueError, match="init > 0 and finite"):
        schedules.LearnableTemperature(_INF)
