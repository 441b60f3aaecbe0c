"""HardConcrete distribution and the L0Gate module (Louizos, Welling, Kingma, ICLR 2018)."""

import math
import pickle

import pytest
import torch
from scipy import integrate

from gumbelkit import GumbelkitError
from gumbelkit._core.noise import logistic_noise
from gumbelkit.distributions import HardConcrete
from gumbelkit.nn import L0Gate

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
LOG_ALPHA = torch.tensor([-2.0, 0.0, 2.0])
# E[z] by quadrature of P(z > t) over (0, 1) (scipy.integrate.quad, abs error < 1e-10): 0.143, 0.500, 0.857
MEAN_Z = [0.1426761030323187, 0.5, 0.8573238969676813]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_prob_nonzero_matches_closed_form():
    p = HardConcrete(LOG_ALPHA).prob_nonzero()
    assert torch.allclose(p, torch.tensor([0.4010, 0.8318, 0.9734]), atol=1e-4)
    # the same from the formula with the limits and temperature spelled out
    for a, pa in zip(LOG_ALPHA.tolist(), p.tolist()):
        assert pa == pytest.approx(_sig(a - BETA * math.log(-GAMMA / ZETA)), abs=1e-6)


def test_sampled_atoms_and_mean_match_closed_forms():
    n = 200_000
    d = HardConcrete(LOG_ALPHA.double())
    z = d.sample((n,), generator=_gen(123))
    assert z.shape == (n, 3)
    assert bool(((z >= 0) & (z <= 1)).all())
    p0 = 1.0 - d.prob_nonzero()
    p1 = d._log_prob_one().exp()
    for j in range(3):
        # atoms: binomial standard error sqrt(p (1 - p) / n); accept 5 standard errors
        for got, want in (((z[:, j] == 0).double().mean(), p0[j]), ((z[:, j] == 1).double().mean(), p1[j])):
            se = math.sqrt(float(want) * (1 - float(want)) / n)
            assert abs(float(got) - float(want)) < 5 * se
        # mean: sample standard error std / sqrt(n); accept 5 standard errors
        se = float(z[:, j].std()) / math.sqrt(n)
        assert abs(float(z[:, j].mean()) - MEAN_Z[j]) < 5 * se
    # symmetric limits: P(z = 0 | a) = P(z = 1 | -a), E[z | -a] = 1 - E[z | a]
    assert float(p0[0]) == pytest.approx(float(p1[2]), rel=1e-12)
    assert MEAN_Z[0] + MEAN_Z[2] == pytest.approx(1.0, abs=1e-12)


def test_deterministic_gate_values():
    got = HardConcrete(torch.tensor([-5.0, -2.0, 0.0, 2.0, 5.0])).deterministic()
    want = [max(0.0, min(1.0, _sig(a) * (ZETA - GAMMA) + GAMMA)) for a in (-5.0, -2.0, 0.0, 2.0, 5.0)]
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    assert got[0] == 0 and got[-1] == 1 and got[2] == 0.5  # exact clamps, exact centre
    # independent of the temperature
    assert torch.equal(HardConcrete(LOG_ALPHA, 0.1).deterministic(), HardConcrete(LOG_ALPHA).deterministic())


def test_gradient_zero_where_clamped_and_float64_autograd_elsewhere():
    shape = (2000, 3)
    logits = LOG_ALPHA.repeat(shape[0], 1).requires_grad_()
    temp = torch.tensor(0.5, requires_grad=True)
    z = HardConcrete(logits, temp).rsample(generator=_gen(7))
    (z * torch.linspace(0.5, 1.5, 3)).sum().backward()

    noise = logistic_noise(shape, generator=_gen(7)).double()  # the same noise, float64 arithmetic
    l64 = LOG_ALPHA.double().repeat(shape[0], 1).requires_grad_()
    t64 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    z64 = (torch.sigmoid((l64 + noise) / t64) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
    (z64 * torch.linspace(0.5, 1.5, 3, dtype=torch.float64)).sum().backward()

    assert torch.allclose(z.double(), z64, atol=1e-6)
    assert logits.grad is not None and l64.grad is not None
    clamped = (z == 0) | (z == 1)
    assert 0.1 < clamped.float().mean() < 0.9  # both cases occur
    assert bool((logits.grad[clamped] == 0).all())
    inside = ~clamped & (z64 > 0) & (z64 < 1)
    assert torch.allclose(logits.grad[inside].double(), l64.grad[inside], rtol=1e-4, atol=1e-6)
    assert temp.grad is not None and t64.grad is not None
    assert float(temp.grad) == pytest.approx(float(t64.grad), rel=1e-4)


def test_log_prob_is_density_plus_atoms_and_cdf_agrees():
    for a in (-2.0, 0.0, 2.0):
        d = HardConcrete(torch.tensor(a, dtype=torch.float64))
        p0 = float(d.log_prob(torch.tensor(0.0, dtype=torch.float64)).exp())
        p1 = float(d.log_prob(torch.tensor(1.0, dtype=torch.float64)).exp())
        assert p0 == pytest.approx(1 - float(d.prob_nonzero()), rel=1e-12)
        mass = integrate.quad(lambda v: float(d.log_prob(torch.tensor(v, dtype=torch.float64)).exp()), 0, 1)[0]
        assert p0 + p1 + mass == pytest.approx(1.0, abs=1e-8)
        for v in (0.0, 0.3, 0.9):
            cdf = float(d.cdf(torch.tensor(v, dtype=torch.float64)))
            want = p0 + integrate.quad(lambda u: float(d.log_prob(torch.tensor(u, dtype=torch.float64)).exp()), 0, v)[0]
            assert cdf == pytest.approx(want, abs=1e-8)
        assert float(d.cdf(torch.tensor(1.0, dtype=torch.float64))) == 1.0
    off = HardConcrete(torch.zeros(2), validate_args=False).log_prob(torch.tensor([-0.5, 1.5]))
    assert bool((off == float("-inf")).all())


def test_batch_shape_broadcasts_logits_and_temperature():
    d = HardConcrete(torch.zeros(4, 1), torch.tensor([0.5, 1.0, 2.0]))
    assert d.batch_shape == (4, 3) and d.event_shape == ()
    assert d.rsample((5,), generator=_gen()).shape == (5, 4, 3)
    assert d.prob_nonzero().shape == (4, 3) and d.deterministic().shape == (4, 3)
    with pytest.raises(GumbelkitError, match="HardConcrete: expected temperature broadcastable"):
        HardConcrete(torch.zeros(4), torch.ones(3))


def test_expand_keeps_class_limits_and_shapes():
    d = HardConcrete(torch.tensor([-1.0, 1.0]), 0.5, limits=(-0.2, 1.3))
    e = d.expand((3, 2))
    assert type(e) is HardConcrete
    assert e.batch_shape == (3, 2) and e.logits.shape == (3, 2) and e.temperature.shape == (3, 2)
    assert e.limits == (-0.2, 1.3)
    assert torch.equal(e.prob_nonzero()[1], d.prob_nonzero())
    assert e.rsample((4,), generator=_gen()).shape == (4, 3, 2)
    with pytest.raises(GumbelkitError, match="HardConcrete.expand"):
        d.expand((3,))


def test_validate_args_on_and_off():
    with pytest.raises(GumbelkitError, match="HardConcrete: expected temperature > 0"):
        HardConcrete(torch.zeros(2), -1.0)
    with pytest.raises(GumbelkitError, match="HardConcrete: expected finite logits"):
        HardConcrete(torch.tensor([0.0, float("inf")]))
    with pytest.raises(GumbelkitError, match=r"HardConcrete.log_prob"):
        HardConcrete(torch.zeros(2)).log_prob(torch.tensor([0.5, 1.5]))
    # off: value checks are skipped (no reduction, no sync)
    HardConcrete(torch.zeros(2), -1.0, validate_args=False)
    HardConcrete(torch.tensor([0.0, float("nan")]), validate_args=False)
    # structural checks and the limits (Python floats) are checked always
    for bad in [(0.0, 1.1), (-0.1, 1.0), (0.2, 0.8), (-float("inf"), 1.1)]:
        with pytest.raises(GumbelkitError, match="HardConcrete: expected limits"):
            HardConcrete(torch.zeros(2), limits=bad, validate_args=False)
    with pytest.raises(TypeError, match="HardConcrete: expected logits with a floating dtype"):
        HardConcrete(torch.zeros(2, dtype=torch.long), validate_args=False)
    assert HardConcrete.support is torch.distributions.constraints.unit_interval


def test_mean_not_implemented():
    with pytest.raises(NotImplementedError):
        _ = HardConcrete(torch.zeros(2)).mean


# --------------------------------------------------------------------------- L0Gate


def test_gate_samples_in_training_and_is_deterministic_in_eval():
    gate = L0Gate(3, init_log_alpha=LOG_ALPHA)
    x = torch.randn(1000, 3, generator=_gen(1))
    y = gate(x, generator=_gen(2))
    want = x * HardConcrete(LOG_ALPHA).rsample((1000,), generator=_gen(2))
    assert torch.allclose(y, want)
    assert torch.equal(y, gate(x, generator=_gen(2)))  # same generator state, same output
    assert not torch.equal(y, gate(x, generator=_gen(3)))
    assert bool((y[:, 0] == 0).any())  # exact zeros in training
    gate.eval()
    ye = gate(x)
    assert torch.equal(ye, gate(x))
    assert torch.allclose(ye, x * HardConcrete(LOG_ALPHA).deterministic())
    with pytest.raises(GumbelkitError, match="L0Gate: expected x with last dimension n = 3"):
        gate(torch.zeros(2, 4))


def test_gate_l0_penalty_and_n_active():
    gate = L0Gate(3, init_log_alpha=LOG_ALPHA)
    assert float(gate.l0_penalty().detach()) == pytest.approx(0.4010 + 0.8318 + 0.9734, abs=3e-4)
    assert gate.n_active() == 3
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-5.0, 0.0, 5.0]))  # eval gates 0, 0.5, 1
    assert gate.n_active() == 2


def test_gate_groups_share_consecutive_units():
    gate = L0Gate(6, group_size=3, init_log_alpha=torch.tensor([-2.0, 2.0]))
    assert gate.log_alpha.shape == (2,) and gate.n_gates == 2
    y = gate(torch.ones(500, 6), generator=_gen(4))
    assert torch.equal(y[:, 0:1].expand(-1, 3), y[:, 0:3]) and torch.equal(y[:, 3:4].expand(-1, 3), y[:, 3:6])
    p = HardConcrete(torch.tensor([-2.0, 2.0])).prob_nonzero()
    assert torch.allclose(gate.l0_penalty(), 3 * p.sum())  # expected non-zero units
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-5.0, 5.0]))
    assert gate.n_active() == 3
    with pytest.raises(GumbelkitError, match="L0Gate: expected group_size to divide n"):
        L0Gate(6, group_size=4)
    with pytest.raises(GumbelkitError, match="L0Gate: expected init_log_alpha broadcastable"):
        L0Gate(6, group_size=3, init_log_alpha=torch.zeros(3))


def test_gate_gradient_reaches_log_alpha_through_task_loss_and_penalty():
    gate = L0Gate(4, group_size=2, init_log_alpha=0.0)
    gate(torch.ones(64, 4), generator=_gen(5)).sum().backward()
    assert gate.log_alpha.grad is not None and bool((gate.log_alpha.grad != 0).all())
    gate.log_alpha.grad = None
    gate.l0_penalty().backward()
    p = HardConcrete(torch.zeros(2)).prob_nonzero()
    assert torch.allclose(gate.log_alpha.grad, 2 * p * (1 - p))  # d/d log alpha of group_size * sigmoid(.)


def test_gate_pickles_and_round_trips_state_dict():
    gate = L0Gate(4, group_size=2, init_log_alpha=torch.tensor([-1.0, 3.0]), temperature=0.5, limits=(-0.2, 1.2))
    x = torch.randn(8, 4, generator=_gen(6))
    clone = pickle.loads(pickle.dumps(gate))
    assert torch.equal(clone(x, generator=_gen(1)), gate(x, generator=_gen(1)))
    assert (clone.temperature, clone.gamma, clone.zeta) == (0.5, -0.2, 1.2)
    fresh = L0Gate(4, group_size=2, temperature=0.5, limits=(-0.2, 1.2))
    assert set(gate.state_dict()) == {"log_alpha"}
    fresh.load_state_dict(gate.state_dict())
    gate.eval()
    fresh.eval()
    assert torch.equal(fresh(x), gate(x))
    assert "group_size=2" in repr(gate)
