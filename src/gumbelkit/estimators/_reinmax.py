"""ReinMax: a second-order (Heun's method) straight-through estimator."""

from __future__ import annotations

import torch

from .._core.autograd import softmax_grad
from .._core.numerics import (
    gumbel_argmax,
    needs_grad,
    one_hot,
    one_hot_like,
    per_class_tau,
    plain_shift,
    prepare_tau,
    theta_shift,
)
from .._core.policy import compute_dtype, lean
from .._core.validation import Tau, check_sample_args_scale, mark_bad_rows
from ._registry import register

__all__ = ["reinmax_estimator"]


class _ReinMax(torch.autograd.Function):
    """Forward one_hot(index) plus pi = softmax(x) and pi1 = (softmax(x / tau) + one_hot) / 2.

    pi and pi1 are returned as (unused) extra outputs rather than kept as hidden intermediates:
    the backward reads them, and only as outputs are they connected to x, which makes the
    backward -- written in differentiable ops -- correct under a second differentiation. Pure
    (no noise inside), so vmap generates its batching rule.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, tau, index, dim: int, m, per_class: bool, lean: bool):
        pi = torch.softmax(x, dim)
        hard = one_hot(pi, index, dim)
        if per_class:
            # no common shift cancels for a per-class tau: clamp overflowed quotients, keep masks at -inf
            fin = torch.finfo(x.dtype)
            s = torch.where(torch.isneginf(x), float("-inf"), (x / tau).clamp(fin.min, fin.max))
        else:
            # x - m has a top of exactly 0, so (x - m) / tau cannot overflow into inf - inf (NaN)
            s = x if m is None else x - m
            s = s / tau if isinstance(tau, torch.Tensor) or tau != 1.0 else s
        q = torch.softmax(s, dim)
        pi1 = q.add_(hard).mul_(0.5) if lean else 0.5 * (q + hard)
        return hard, pi, pi1

    @staticmethod
    def setup_context(ctx, inputs, output):
        _x, tau, _index, dim, _m, _per_class, lean = inputs
        hard, pi, pi1 = output
        ctx.save_for_backward(pi, pi1, hard, tau if isinstance(tau, torch.Tensor) else None)
        ctx.dim, ctx.tau, ctx.lean = dim, tau, lean
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, v, v_pi, v_pi1):
        pi, pi1, hard, tau_t = ctx.saved_tensors
        dim = ctx.dim
        g = None
        if v is not None:
            # J(p)^T v = p * v - p <p, v> is exactly the softmax backward at probabilities p.
            # pi and pi1 are private; overwrite them only when no other gradient reads them.
            private = ctx.lean and v_pi is None and v_pi1 is None
            a = softmax_grad(pi1, v, dim, overwrite_y=private)
            b = softmax_grad(pi, v, dim, overwrite_y=private)
            g = a.mul_(2.0).sub_(b, alpha=0.5) if not torch.is_grad_enabled() else 2.0 * a - 0.5 * b
        if v_pi is not None:  # only in a second differentiation: d pi / d x = J(pi)
            t = softmax_grad(pi, v_pi, dim)
            g = t if g is None else g + t
        if v_pi1 is not None:  # d pi1 / d x = J(q) / (2 tau), q = softmax(x / tau) = 2 pi1 - one_hot
            q = 2.0 * pi1 - hard
            t = 0.5 * softmax_grad(q, v_pi1, dim) / (tau_t if tau_t is not None else ctx.tau)
            g = t if g is None else g + t
        return g, None, None, None, None, None, None


@register(
    "reinmax",
    one_hot=True,
    reference="Liu, Chen, Tan, Ji, Wang, Gao, Bridging Discrete and Backpropagation: Straight-Through and Beyond, NeurIPS 2023",
)
def reinmax_estimator(logits: torch.Tensor, tau: Tau = 1.0, *, dim: int = -1, generator=None) -> torch.Tensor:
    r"""ReinMax: forward one_hot(D), D ~ Cat(pi), pi = softmax(theta); second-order backward.

    Math: with J(p)^T v = p * v - p <p, v> and pi_1 = (softmax(theta / tau) + D) / 2,
    grad_theta = 2 J(pi_1)^T g - 1/2 J(pi)^T g. The paper recommends tau >= 1. A tensor tau gets
    no gradient from this estimator.

    Examples:
        >>> import torch, gumbelkit as gk
        >>> y = gk.sample(torch.randn(4, 6, requires_grad=True), "reinmax", tau=1.0)
        >>> bool(((y == 0) | (y == 1)).all())
        True

    Reference: Liu, Chen, Tan, Ji, Wang, Gao, "Bridging Discrete and Backpropagation:
    Straight-Through and Beyond", NeurIPS 2023.
    """
    dim, tau, row_max, max_abs = check_sample_args_scale(logits, tau, dim, generator, fn="sample")
    cdt = compute_dtype(logits.dtype)
    index = gumbel_argmax(logits, dim, generator, theta_shift(row_max, max_abs, cdt))
    if not needs_grad(logits):
        return mark_bad_rows(one_hot_like(logits, index, dim), logits, row_max, tau)
    x = logits.to(cdt)
    t = prepare_tau(tau.detach() if isinstance(tau, torch.Tensor) else tau, cdt)
    per_class = per_class_tau(t, x.dim(), dim)
    m = plain_shift(row_max, max_abs, t, cdt, per_class)
    out = _ReinMax.apply(x, t, index, dim, m, per_class, lean())[0].to(logits.dtype)
    return mark_bad_rows(out, logits, row_max, tau)
