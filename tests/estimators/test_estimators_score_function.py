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


def test_reinforce_dim_out_of_range_raises_the_dim_error():
    with pytest.raises(gk.GumbelkitDimError, match=r"expected dim in \[-2, 1\] for losses of shape \(2, 3\), got 5"):
        gk.reinforce_surrogate(torch.zeros(2, 3), torch.zeros(2, 3), dim=5)
    with pytest.raises(IndexError, match="expected dim"):
        gk.reinforce_surrogate(torch.zeros(2, 3), torch.zeros(2, 3), dim=-3)
    assert gk.reinforce_surrogate(torch.zeros(2, 3), torch.zeros(2, 3), dim=-1).shape == (2,)


@pytest.mark.parametrize("bad", [float("nan"), float("-inf"), float("inf")])
def test_non_finite_log_probs_raise(bad):
    lp = torch.zeros(3, 2)
    lp[1, 0] = bad
    with pytest.raises(ValueError, match=r"expected finite log_probs .* in log_probs of shape \(3, 2\)"):
        gk.reinforce_surrogate(torch.ones(3, 2), lp)


@pytest.mark.parametrize(
    "baseline",
    [float("nan"), float("inf"), torch.tensor(float("nan")), torch.tensor([[0.0, float("inf")]])],
    ids=["float_nan", "float_inf", "tensor_nan", "tensor_with_inf"],
)
def test_non_finite_baseline_raises(baseline):
    with pytest.raises(ValueError, match="expected a finite baseline"):
        gk.reinforce_surrogate(torch.ones(3, 2), torch.zeros(3, 2), baseline=baseline)


def test_baseline_that_does_not_broadcast_to_losses_raises():
    with pytest.raises(ValueError, match=r"broadcastable to losses of shape \(3, 2\), got shape \(4, 1, 1\)"):
        gk.reinforce_surrogate(torch.ones(3, 2), torch.zeros(3, 2), baseline=torch.zeros(4, 1, 1))


def test_moving_average_rejects_non_finite_losses_and_keeps_its_state():
    base = gk.MovingAverageBaseline(0.5)
    base.update(torch.tensor([2.0]))
    for bad in (torch.tensor([1.0, float("nan")]), torch.tensor(float("inf")), float("nan"), torch.zeros(0)):
        with pytest.raises(ValueError, match="expected (finite losses|at least one loss)"):
            base.update(bad)
        assert base.mean == 2.0
    base.update(4.0)
    assert base.mean == 3.0


@pytest.mark.parametrize("decay", [float("nan"), float("inf"), -0.1, 1.0])
def test_moving_average_rejects_bad_decay(decay):
    with pytest.raises(ValueError, match="expected 0 <= decay < 1"):
        gk.MovingAverageBaseline(decay)
    with pytest.raises(ValueError, match="expected 0 <= decay < 1"):
        gk.MovingAverageBaseline().load_state_dict({"decay": decay, "mean": None})


LOGITS = torch.tensor([[0.0, 1.0, 2.0], [0.5, -1.0, 0.0]])


@pytest.mark.parametrize(
    "value,err,match",
    [
        (
            torch.tensor([0, 3]),
            ValueError,
            r"expected indices in \[0, 2\] \(K = 3 classes along dim=1\), got values in \[0, 3\]",
        ),
        (torch.tensor([-1, 0]), ValueError, r"expected indices in \[0, 2\].*got values in \[-1, 0\]"),
        (
            torch.tensor([[0], [1]]),
            ValueError,
            r"expected integer indices of shape \(2\) \(logits of shape \(2, 3\) without dim=1\), got \(2, 1\)",
        ),
        (torch.tensor([1.0, 2.0]), ValueError, r"expected a one-hot value of shape \(2, 3\), got \(2\)"),
        (
            torch.tensor([[0.2, 0.8, 0.0], [1.0, 0.0, 0.0]]),
            ValueError,
            r"expected a one-hot value along dim=1 \(entries 0 or 1",
        ),
        (
            torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
            ValueError,
            r"exactly one 1 per row.*row sums in \[1.0, 2.0\]",
        ),
        (
            torch.tensor([True, False]),
            TypeError,
            r"expected value with a floating \(one-hot\) or integer \(index\) dtype, got torch.bool",
        ),
        ([0, 1], TypeError, "expected value to be a torch.Tensor"),
    ],
    ids=["too_large", "negative", "wrong_shape", "float_index", "relaxed", "two_ones", "bool", "list"],
)
def test_categorical_log_prob_rejects_malformed_values(value, err, match):
    with pytest.raises(err, match=match):
        gk.categorical_log_prob(LOGITS, value)


def test_categorical_log_prob_accepts_int32_indices_and_exact_one_hot():
    lp = torch.log_softmax(LOGITS, -1)
    assert torch.allclose(gk.categorical_log_prob(LOGITS, torch.tensor([2, 0], dtype=torch.int32)), lp[[0, 1], [2, 0]])
    one_hot = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float16)
    assert torch.allclose(gk.categorical_log_prob(LOGITS, one_hot), lp[[0, 1], [2, 0]])
