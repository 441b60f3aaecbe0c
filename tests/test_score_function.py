"""REINFORCE surrogates: unbiased against the exact gradient by enumeration."""

import pytest
import torch

import gumbelkit as gk

# z-tests at |z| < 3.9 per coordinate (two-sided ~1e-4; < 1e-3 family-wise here) with fixed seeds.
Z_CRIT = 3.9


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


THETA = torch.tensor([0.2, -0.7, 1.1, 0.0], dtype=torch.float64)
COST = torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=torch.float64)
PHI = torch.tensor([0.5, 1.5, -0.2, 0.3], dtype=torch.float64)


def _exact():
    """Exact gradients of E_{z~Cat(softmax theta)}[(c_z + phi_z)^2] by enumerating the 4 outcomes."""
    theta = THETA.clone().requires_grad_()
    phi = PHI.clone().requires_grad_()
    p = torch.softmax(theta, -1)
    (p * (COST + phi) ** 2).sum().backward()
    return theta.grad, phi.grad


def _estimates(baseline, n_samples, rows, seed):
    theta = THETA.expand(rows, -1).clone().requires_grad_()
    phi = PHI.expand(rows, -1).clone().requires_grad_()
    z = gk.gumbel_max(theta.unsqueeze(0).expand(n_samples, -1, -1), generator=_gen(seed))  # (n, rows)
    onehot = torch.nn.functional.one_hot(z, 4).double()
    losses = ((onehot * (COST + phi)).sum(-1)) ** 2  # (n, rows), pathwise in phi
    log_probs = gk.categorical_log_prob(theta.unsqueeze(0).expand(n_samples, -1, -1), z)
    b = baseline(losses) if callable(baseline) else baseline
    surrogate = gk.reinforce_surrogate(losses, log_probs, baseline=b)
    assert surrogate.shape == (rows,)
    assert torch.allclose(surrogate, losses.mean(0))  # its value is the mean loss
    surrogate.sum().backward()
    return theta.grad, phi.grad


@pytest.mark.parametrize(
    "baseline,n",
    [("loo", 2), ("loo", 4), ("none", 1), (torch.tensor(4.0, dtype=torch.float64), 3)],
    ids=["loo2", "loo4", "none", "constant"],
)
def test_reinforce_is_unbiased(baseline, n):
    exact_theta, exact_phi = _exact()
    g_theta, g_phi = _estimates(baseline, n, 100_000, seed=1)
    for est, exact in ((g_theta, exact_theta), (g_phi, exact_phi)):
        z = (est.mean(0) - exact) / (est.std(0) / est.shape[0] ** 0.5)
        assert torch.all(z.abs() < Z_CRIT), z


def test_loo_baseline_reduces_variance():
    g_none, _ = _estimates("none", 4, 20_000, seed=2)
    g_loo, _ = _estimates("loo", 4, 20_000, seed=2)
    assert g_loo.var(0).sum() < 0.8 * g_none.var(0).sum()  # measured: 4.75 vs 6.89


def test_moving_average_baseline():
    base = gk.MovingAverageBaseline(0.5)
    losses = torch.tensor([[1.0, 3.0]])
    assert float(base.value(losses)) == 0.0
    base.update(losses)
    assert base.mean == 2.0
    base.update(torch.tensor([[4.0]]))
    assert base.mean == 3.0
    clone = gk.MovingAverageBaseline()
    clone.load_state_dict(base.state_dict())
    assert clone.mean == 3.0 and clone.decay == 0.5
    with pytest.raises(ValueError, match="decay"):
        gk.MovingAverageBaseline(1.0)


def test_errors():
    with pytest.raises(ValueError, match="at least 2 samples"):
        gk.reinforce_surrogate(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="same shape"):
        gk.reinforce_surrogate(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="expected baseline"):
        gk.reinforce_surrogate(torch.zeros(2, 3), torch.zeros(2, 3), baseline="mean")


def test_categorical_log_prob_handles_masks_and_one_hot():
    logits = torch.tensor([[0.0, float("-inf"), 1.0]], requires_grad=True)
    value = torch.tensor([[0.0, 0.0, 1.0]])
    lp = gk.categorical_log_prob(logits, value)
    assert torch.allclose(lp, torch.log_softmax(logits, -1)[:, 2])
    lp.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 1] == 0
    assert torch.allclose(gk.categorical_log_prob(logits, torch.tensor([2])), lp)


def test_non_finite_losses_raise():
    with pytest.raises(ValueError, match="expected finite losses"):
        gk.reinforce_surrogate(torch.tensor([[1.0], [float("nan")]]), torch.zeros(2, 1))
