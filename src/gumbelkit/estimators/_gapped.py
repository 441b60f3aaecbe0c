"""Gapped straight-through (GST): the straight-through gradient at logits moved to lead with the sample."""

from __future__ import annotations

import torch

from .._core.autograd import one_hot_straight_through, tempered_core
from .._core.numerics import gumbel_argmax, needs_grad, one_hot, one_hot_like, per_class_tau, prepare_tau, theta_shift
from .._core.policy import compute_dtype
from .._core.validation import Tau, check_sample_args_scale, mark_bad_rows
from ._registry import OptionSpec, register

__all__ = ["gapped_logits", "gapped_st_estimator"]

_GAP = OptionSpec(
    "gap",
    float,
    1.0,
    minimum=0.0,
    open_minimum=True,
    help="the margin (> 0) by which the moved logit of the sampled class leads the others in the backward",
)


def _check_gap(gap) -> float:
    return float(_GAP.check(gap, "gapped_st", where="sample: "))


def gapped_logits(logits: torch.Tensor, index: torch.Tensor, gap: float = 1.0, dim: int = -1) -> torch.Tensor:
    r"""The GST mover: theta' = theta + stopgrad(delta), the sampled class moved to lead the others by ``gap``.

    Math (the authors' ``gst_mover``, with A = argmax theta, D the sampled class):
    move = (theta_A - theta) * one_hot(D); move2 = max(theta - theta_A + gap, 0), set to 0 at D;
    theta' = theta + stopgrad(move - move2). So theta'_D = theta_A (the row max) and every other
    class goes to min(theta_i, theta_A - gap): their order is kept (ties may appear), D leads the
    rest by at least ``gap`` -- by exactly ``gap`` when D != A, since A itself moves to
    theta_A - gap. Masked classes (-inf) stay -inf (their move2 is max(-inf, 0) = 0). The
    gradient of theta' with respect to theta is the identity.

    Args:
        logits: unnormalised log-probabilities (no validation here).
        index: the sampled class in keepdim layout along ``dim`` (e.g. from ``argmax(dim, keepdim=True)``).
        gap: the margin > 0.
        dim: the category dimension.

    Returns:
        theta', shaped and typed like ``logits``.

    Examples:
        >>> import torch
        >>> from gumbelkit.estimators import gapped_logits
        >>> gapped_logits(torch.tensor([2.0, 1.5, 0.0, float("-inf")]), torch.tensor([2]), gap=1.0, dim=0)
        tensor([1., 1., 2., -inf])
    """
    xd = logits.detach()
    top = xd.amax(dim, keepdim=True)  # theta_A, the value at the reference's argmax
    is_d = one_hot(xd, index, dim).bool()
    move = torch.where(is_d, top - xd, 0.0)
    move2 = torch.where(is_d, 0.0, (xd + (gap - top)).clamp(min=0.0))
    return logits + (move - move2)


@register(
    "gapped_st",
    one_hot=True,
    options=(_GAP,),
    reference="Fan, Tan, Liu, Yang, Training Discrete Deep Generative Models via Gapped Straight-Through "
    "Estimator, ICML 2022",
)
def gapped_st_estimator(
    logits: torch.Tensor, tau: Tau = 1.0, *, dim: int = -1, generator: torch.Generator | None = None, gap: float = 1.0
) -> torch.Tensor:
    r"""Gapped straight-through: forward one_hot(D), D ~ Cat(softmax theta); backward grad of softmax(theta' / tau).

    Math: D = argmax(theta + g) (Gumbel-Max, the same sample as :func:`gumbelkit.gumbel_max` for
    the same generator state). theta' = theta + stopgrad(delta) is :func:`gapped_logits`, the
    authors' deterministic mover: the sampled class goes to the row max theta_A, every other class
    to min(theta_i, theta_A - gap) (order kept, masked classes stay -inf). The backward is the
    straight-through gradient of softmax(theta' / tau), J(softmax(theta'/tau))^T v / tau, which
    flows to theta unchanged through the detached move (and to a tensor tau).

    Followed from the reference ``gst_mover(logits, temperature=1.0, hard=True, gap=1.0,
    detach=True)`` (github.com/chijames/GST, model/basic.py; the same code in
    github.com/microsoft/ReinMax): ``move = (max_logits - logits_cpy) * action``,
    ``move2 = (logits_cpy + (-max_logits + gap)).clamp(min=0.0); move2[action_bool] = 0.0``,
    ``logits = logits + (move - move2)``, ``prob = softmax(logits / temperature)``,
    ``action - prob.detach() + prob``. Differences, none of which changes a value or a gradient:
    the reference's ``logits - logits.mean(-1)`` before the softmax is left out (a softmax ignores
    a per-row constant, its vector-Jacobian product sums to 0 so the centring passes it
    unchanged, and the mean of a row with a masked -inf class would be NaN); the logits are first
    shifted to a row max of 0 (same reason), which makes the moved top exactly 0 so that a tiny
    tau cannot overflow; the sample is drawn by Gumbel-Max instead of ``OneHotCategorical``
    (the same law); the forward is built from the index (exactly one-hot). The reference's
    adaptive gap (``gap='p'``: -log(1 - p_D) / p_D) is not offered; ``gap`` is a float > 0,
    default 1.0 as in the reference.

    Args:
        logits: unnormalised log-probabilities.
        tau: temperature > 0 of the backward softmax (float or tensor broadcastable to ``logits``).
        dim: the category dimension.
        generator: optional ``torch.Generator``.
        gap: the margin > 0 by which the moved logit of the sampled class leads the others (default 1.0).

    Examples:
        >>> import torch, gumbelkit as gk
        >>> y = gk.sample(torch.randn(4, 6, requires_grad=True), "gapped_st", tau=0.5, gap=2.0)
        >>> y.sum(-1)
        tensor([1., 1., 1., 1.], grad_fn=<SumBackward1>)

    Reference: Fan, Tan, Liu, Yang, "Training Discrete Deep Generative Models via Gapped
    Straight-Through Estimator", ICML 2022.
    """
    dim, tau, row_max, max_abs = check_sample_args_scale(logits, tau, dim, generator, fn="sample")
    gap = _check_gap(gap)
    cdt = compute_dtype(logits.dtype)
    index = gumbel_argmax(logits, dim, generator, theta_shift(row_max, max_abs, cdt))
    if not needs_grad(logits, tau):
        return mark_bad_rows(one_hot_like(logits, index, dim), logits, row_max, tau)
    # Shift to a row max of exactly 0 (the gradient is unchanged: softmax ignores a per-row
    # constant); the moved logits then have a top of exactly 0 (x_D + (0 - x_D)) and every other
    # class <= -gap, so (theta' / tau) never overflows into inf - inf, whatever tau is.
    x = logits.to(cdt) - row_max.to(cdt)
    moved = gapped_logits(x, index, gap, dim)
    per_class = per_class_tau(tau, moved.dim(), dim)
    soft = tempered_core(moved, prepare_tau(tau, cdt), dim, per_class=per_class)
    return mark_bad_rows(one_hot_straight_through(soft, index, dim).to(logits.dtype), logits, row_max, tau)
