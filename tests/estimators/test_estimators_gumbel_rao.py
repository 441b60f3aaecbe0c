"""Gumbel-Rao's draw-by-draw backward: same draws as the batched formula, memory flat in k.

The backward regenerates the k conditional draws one at a time from one 64-bit key; these tests
check it against the batched formula softmax((theta + g_j) / tau).mean over
:func:`conditional_gumbel`'s draws (the path ``torch.func`` and a tensor tau take), that draw j
does not depend on how many draws are made at once, and that its peak memory does not grow with k.
"""

import pytest
import torch

import gumbelkit as gk
from gumbelkit.estimators import conditional_gumbel

NEG_INF = float("-inf")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _batched_gradient(x, w, tau, k, dim, seed):
    """The gradient of the batched formula with the estimator's draws (index first, then the key)."""
    gen = _gen(seed)
    xd = x.detach()
    index = (xd + gk.gumbel_noise(x.shape, generator=gen, dtype=x.dtype)).argmax(dim, keepdim=True)
    cond = conditional_gumbel(xd, index, k, dim, generator=gen)
    masked = torch.isneginf(xd)
    noise = torch.where(masked, 0.0, cond - torch.where(masked, 0.0, xd))
    xr = xd.clone().requires_grad_()
    soft = torch.softmax((xr + noise) / tau, dim + 1).mean(0)
    (soft * w).sum().backward()
    return index, xr.grad


@pytest.mark.parametrize("shape,dim", [((6, 9), 1), ((2, 7, 4, 3), 1), ((3, 5, 70), 1)])
@pytest.mark.parametrize("tau", [1.0, 0.4])
def test_draw_by_draw_backward_matches_the_batched_formula(shape, dim, tau):
    x = torch.randn(shape, dtype=torch.float64, generator=_gen(1))
    x.view(-1)[3] = NEG_INF
    x.requires_grad_()
    w = torch.randn(shape, dtype=torch.float64, generator=_gen(2))
    y = gk.sample(x, "gumbel_rao", tau, dim=dim, generator=_gen(3), k=6)
    (y * w).sum().backward()
    index, expected = _batched_gradient(x, w, tau, 6, dim, 3)
    assert torch.equal(y.detach(), torch.zeros_like(y).scatter_(dim, index, 1.0))
    assert torch.allclose(x.grad, expected, rtol=1e-9, atol=1e-12)
    assert x.grad.view(-1)[3] == 0


def test_draw_j_does_not_depend_on_how_many_draws_are_made():
    theta = torch.randn(4, 6, generator=_gen(4))
    index = theta.argmax(1, keepdim=True)
    five = conditional_gumbel(theta, index, 5, 1, generator=_gen(5))
    two = conditional_gumbel(theta, index, 2, 1, generator=_gen(5))
    assert torch.equal(five[:2], two)
    assert not torch.equal(five[2], five[3])  # independent draws


def test_same_generator_state_same_gradient_and_k_changes_only_the_average():
    x = torch.randn(5, 8, generator=_gen(6)).requires_grad_()
    w = torch.randn(5, 8, generator=_gen(7))
    grads = []
    for k in (4, 4, 8):
        y = gk.sample(x, "gumbel_rao", 0.5, generator=_gen(8), k=k)
        (y * w).sum().backward()
        grads.append((y.detach(), x.grad.clone()))
        x.grad = None
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert torch.equal(grads[0][0], grads[2][0])  # the forward sample does not depend on k
    # the first 4 of 8 draws are the k=4 draws: 8 * mean8 - 4 * mean4 is the last four's sum
    _, g4 = _batched_gradient(x, w, 0.5, 4, 1, 8)
    _, g8 = _batched_gradient(x, w, 0.5, 8, 1, 8)
    assert torch.allclose(grads[0][1], g4, atol=1e-6) and torch.allclose(grads[2][1], g8, atol=1e-6)


def _peak_bytes(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def test_peak_memory_does_not_grow_with_k():
    x = torch.randn(32, 256, generator=_gen(9)).requires_grad_()
    w = torch.randn(32, 256, generator=_gen(10))

    def run(k):
        def step():
            (gk.sample(x, "gumbel_rao", 0.5, generator=_gen(11), k=k) * w).sum().backward()
            x.grad = None

        return step

    buf = x.numel() * 4
    small, large = _peak_bytes(run(2)), _peak_bytes(run(16))
    assert large <= small + 0.5 * buf, (small / buf, large / buf)
    assert large < 8 * buf


def test_tiny_tau_and_half_precision_stay_finite():
    x = torch.randn(4, 10, generator=_gen(12))
    x[0, 3] = NEG_INF
    for dtype, tau in ((torch.float32, 1e-30), (torch.float16, 0.5), (torch.bfloat16, 2.0)):
        xl = x.to(dtype).detach().clone().requires_grad_()
        y = gk.sample(xl, "gumbel_rao", tau, generator=_gen(13), k=3)
        (y * torch.randn(4, 10).to(dtype)).sum().backward()
        assert y.dtype == dtype and torch.isfinite(xl.grad).all() and xl.grad[0, 3] == 0
