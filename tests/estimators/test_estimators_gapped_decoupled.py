"""Exact-gradient checks of gapped_st and decoupled_st_gumbel (the shared harnesses in
test_estimators, test_properties, test_functorch and test_tails cover the library's contract)."""

import pytest
import torch

import gumbelkit as gk
from gumbelkit.estimators import gapped_logits

NEG_INF = float("-inf")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _grad(method, x, tau, w, seed, **opt):
    x = x.detach().clone().requires_grad_()
    tau = tau.detach().clone().requires_grad_() if isinstance(tau, torch.Tensor) else tau
    y = gk.sample(x, method, tau, generator=_gen(seed), **opt)
    (y * w).sum().backward()
    return y.detach(), x.grad, (tau.grad if isinstance(tau, torch.Tensor) else None)


def _reference_mover(theta: torch.Tensor, d: torch.Tensor, gap: float) -> torch.Tensor:
    """The authors' gst_mover in float64, written out again (masked classes handled by where)."""
    theta = theta.double()
    argmax = theta.argmax(-1, keepdim=True)
    max_logits = theta.gather(-1, argmax)
    action = torch.nn.functional.one_hot(d, theta.shape[-1]).double()
    move = torch.where(action.bool(), max_logits - theta, 0.0)
    move2 = (theta + (-max_logits + gap)).clamp(min=0.0)
    move2 = torch.where(action.bool(), 0.0, move2)
    return theta + (move - move2)


def _jt(p, v):
    pv = p * v
    return pv - p * pv.sum(-1, keepdim=True)


# ------------------------------------------------------------------ gapped_st


@pytest.mark.parametrize("gap", [0.5, 1.0, 3.0])
def test_gapped_mover_puts_the_sampled_class_gap_above_the_others_and_keeps_masks(gap):
    theta = torch.randn(200, 6, dtype=torch.float64, generator=_gen(9)) * 2
    theta[::3, 4] = NEG_INF
    d = gk.gumbel_max(theta, generator=_gen(10))
    moved = gapped_logits(theta, d.unsqueeze(-1), gap, -1)
    assert torch.equal(moved, _reference_mover(theta, d, gap))
    lead = moved.gather(-1, d.unsqueeze(-1)).squeeze(-1)
    others = moved.scatter(-1, d.unsqueeze(-1), NEG_INF).amax(-1)
    top = theta.amax(-1)
    assert torch.allclose(lead, top, rtol=0, atol=1e-15)  # the sampled class moves to the row max
    # as the estimator calls it, on logits shifted to a row max of 0: the sampled class is exactly 0
    shifted = gapped_logits(theta - top.unsqueeze(-1), d.unsqueeze(-1), gap, -1)
    assert torch.all(shifted.gather(-1, d.unsqueeze(-1)) == 0)
    not_argmax = d != theta.argmax(-1)
    assert not_argmax.any() and (~not_argmax).any()
    assert torch.allclose(lead[not_argmax] - others[not_argmax], torch.tensor(gap, dtype=torch.float64))
    assert torch.all(lead[~not_argmax] - others[~not_argmax] >= gap - 1e-12)
    assert torch.all(torch.isneginf(moved[::3, 4]))
    # the other classes keep their (weak) order: min(theta_i, top - gap) is monotone
    keep = ~torch.nn.functional.one_hot(d, 6).bool() & torch.isfinite(theta)
    for row in range(0, 200, 17):
        t, m = theta[row][keep[row]], moved[row][keep[row]]
        o = t.argsort()
        assert torch.all(m[o][1:] >= m[o][:-1] - 1e-12)  # clamped ones tie, up to rounding


@pytest.mark.parametrize("gap", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("tensor_tau", [False, True])
def test_gapped_st_gradient_is_the_straight_through_gradient_at_the_reference_moved_logits(gap, tensor_tau):
    x = torch.randn(8, 6, dtype=torch.float64, generator=_gen(11)) * 2
    x[2, 1] = NEG_INF
    w = torch.randn(8, 6, dtype=torch.float64, generator=_gen(12))
    tau = torch.linspace(0.3, 2.0, 8, dtype=torch.float64).view(8, 1) if tensor_tau else 0.6
    y, g, gt = _grad("gapped_st", x, tau, w, 13, gap=gap)
    d = gk.gumbel_max(x, generator=_gen(13))
    assert torch.equal(y, torch.nn.functional.one_hot(d, 6).double())
    moved = torch.where(torch.isneginf(x), -1e4, _reference_mover(x, d, gap))  # -1e4: weight exactly 0
    p = torch.softmax(moved / tau, -1)
    assert torch.allclose(g, _jt(p, w) / tau)  # theta' - theta is detached: d theta' / d theta = I
    assert g[2, 1] == 0
    if tensor_tau:
        tr = tau.clone().requires_grad_()
        (torch.softmax(moved / tr, -1) * w).sum().backward()
        assert torch.allclose(gt, tr.grad)


def test_gapped_st_float32_huge_logits_and_tiny_tau_are_finite():
    x = torch.randn(16, 5, generator=_gen(14)) * 1e30
    x[0, 1] = NEG_INF
    for tau in (1e-30, 1e-45, 1.0):
        y, g, _ = _grad("gapped_st", x, tau, torch.randn(16, 5, generator=_gen(15)), 16)
        assert torch.all(y.sum(-1) == 1) and torch.isfinite(g).all() and g[0, 1] == 0
        assert torch.equal(y.argmax(-1), gk.gumbel_max(x, generator=_gen(16)))


def test_gapped_st_gap_option_is_validated():
    x = torch.zeros(2, 3)
    assert gk.get_spec("gapped_st").defaults() == {"gap": 1.0}
    for bad, err in ((0.0, ValueError), (-1.0, ValueError), (float("inf"), ValueError), ("1", TypeError)):
        with pytest.raises(err, match="sample: expected gap"):
            gk.sample(x, "gapped_st", gap=bad)
    with pytest.raises(ValueError, match="sample: expected gap"):
        gk.estimators.gapped_st_estimator(x, gap=0.0)


def test_gapped_st_in_half_precision_matches_float32():
    x = torch.randn(6, 5, generator=_gen(17))
    w = torch.randn(6, 5, generator=_gen(18))
    for dt in (torch.float16, torch.bfloat16):
        xh = x.to(dt)
        yh, gh, _ = _grad("gapped_st", xh, 0.5, w.to(dt), 19)
        y_ref, g_ref, _ = _grad("gapped_st", xh.float(), 0.5, w.to(dt).float(), 19)
        assert yh.dtype == dt and torch.equal(yh.float(), y_ref)
        assert torch.allclose(gh.float(), g_ref, rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------ decoupled_st_gumbel


def test_decoupled_at_tau_forward_one_is_st_gumbel_to_the_bit():
    x = torch.randn(32, 7, generator=_gen(20))
    x[3, 2] = NEG_INF
    w = torch.randn(32, 7, generator=_gen(21))
    for tau in (0.3, torch.linspace(0.2, 2.0, 32).view(32, 1)):
        y, g, gt = _grad("decoupled_st_gumbel", x, tau, w, 22, tau_forward=1.0)
        y0, g0, gt0 = _grad("st_gumbel", x, tau, w, 22)
        assert torch.equal(y, y0) and torch.equal(g, g0)
        assert gt is None or torch.equal(gt, gt0)


@pytest.mark.parametrize("tau_forward", [0.25, 0.5, 2.0, 4.0])
def test_decoupled_forward_draws_the_tempered_categorical_law(tau_forward):
    # 3 classes, 60,000 draws; each class frequency within 5 standard errors of softmax(theta / tau_f)
    # (two-sided normal tail 5.7e-7 per check: false failure < 1e-5 over this test's 12 checks).
    theta = torch.tensor([1.0, 0.0, -1.5])
    n = 60_000
    y = gk.sample(theta.expand(n, 3), "decoupled_st_gumbel", 1.0, generator=_gen(23), tau_forward=tau_forward)
    assert torch.equal(y.sum(-1), torch.ones(n))
    p = torch.softmax(theta.double() / tau_forward, 0)
    freq = y.double().mean(0)
    se = (p * (1 - p) / n).sqrt()
    assert torch.all((freq - p).abs() < 5 * se), (freq, p)


@pytest.mark.parametrize("tensor_tau", [False, True])
def test_decoupled_backward_is_the_st_gumbel_gradient_with_the_same_noise(tensor_tau):
    x = torch.randn(8, 6, dtype=torch.float64, generator=_gen(24)) * 2
    x[2, 1] = NEG_INF
    w = torch.randn(8, 6, dtype=torch.float64, generator=_gen(25))
    tau = torch.linspace(0.3, 2.0, 8, dtype=torch.float64).view(8, 1) if tensor_tau else 0.6
    tau_f = 0.2
    y, g, gt = _grad("decoupled_st_gumbel", x, tau, w, 26, tau_forward=tau_f)
    # the same noise again: g = -log E from the library's noise stream
    log_e = -gk.gumbel_noise(x.shape, generator=_gen(26), dtype=torch.float64)
    d = ((x - x.amax(-1, keepdim=True)) / tau_f - log_e).argmax(-1)
    assert torch.equal(y, torch.nn.functional.one_hot(d, 6).double())
    p = torch.softmax((x - log_e) / tau, -1)
    assert torch.allclose(g, _jt(p, w) / tau)
    assert g[2, 1] == 0 and y[2, 1] == 0
    if tensor_tau:
        tr = tau.clone().requires_grad_()
        finite = torch.where(torch.isneginf(x), -1e4, x)  # the naive reference gives NaN on a masked class
        (torch.softmax((finite - log_e) / tr, -1) * w).sum().backward()
        assert torch.allclose(gt, tr.grad)


def test_decoupled_extreme_forward_temperatures_and_huge_logits_stay_finite():
    x = torch.randn(64, 5, generator=_gen(27)) * 1e30
    x[0, 1] = NEG_INF
    w = torch.randn(64, 5, generator=_gen(28))
    for tau_f, tau in ((1e-30, 1.0), (1e30, 1e-30), (1e-45, 0.5)):
        y, g, _ = _grad("decoupled_st_gumbel", x, tau, w, 29, tau_forward=tau_f)
        assert torch.all(y.sum(-1) == 1) and torch.isfinite(g).all() and g[0, 1] == 0 and y[0, 1] == 0
    # tau_f -> 0: the deterministic argmax; tau_f huge: uniform over the unmasked classes
    y, _, _ = _grad("decoupled_st_gumbel", x, 1.0, w, 30, tau_forward=1e-30)
    assert torch.equal(y.argmax(-1), x.argmax(-1))
    many = gk.sample(x[:1].expand(40_000, 5), "decoupled_st_gumbel", 1.0, generator=_gen(31), tau_forward=1e38)
    freq = many.mean(0)
    assert freq[1] == 0 and torch.all((freq[[0, 2, 3, 4]] - 0.25).abs() < 0.011)  # 5 s.e. = 0.0108


def test_decoupled_without_grad_draws_the_same_sample():
    x = torch.randn(16, 9, generator=_gen(32))
    y_grad, _, _ = _grad("decoupled_st_gumbel", x, 0.5, torch.ones(16, 9), 33, tau_forward=3.0)
    y = gk.sample(x, "decoupled_st_gumbel", 0.5, generator=_gen(33), tau_forward=3.0)
    assert y.grad_fn is None and torch.equal(y, y_grad)


def test_decoupled_tau_forward_option_is_validated():
    x = torch.zeros(2, 3)
    assert gk.get_spec("decoupled_st_gumbel").defaults() == {"tau_forward": 1.0}
    for bad, err in ((0.0, ValueError), (-1.0, ValueError), (float("inf"), ValueError), (float("nan"), ValueError)):
        with pytest.raises(err, match="sample: expected tau_forward"):
            gk.sample(x, "decoupled_st_gumbel", tau_forward=bad)
    with pytest.raises(TypeError, match="tau_forward"):
        gk.sample(x, "decoupled_st_gumbel", tau_forward="1")
    with pytest.raises(ValueError, match="sample: expected tau_forward"):
        gk.estimators.decoupled_st_gumbel_estimator(x, tau_forward=0.0)
