"""ReinMax: a second-order (Heun's method) straight-through estimator."""

from __future__ import annotations

import torch

from .._sampling import _needs_grad, _softmax_grad, gumbel_argmax, one_hot_like
from .._validation import Tau, check_sample_args, compute_dtype
from ._registry import register


class _ReinMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, tau, index: torch.Tensor, dim: int):
        pi = torch.softmax(x, dim)
        hard = one_hot_like(pi, index, dim)
        pi1 = 0.5 * (torch.softmax(x / tau, dim) + hard)
        ctx.dim = dim
        ctx.save_for_backward(pi, pi1)
        return hard

    @staticmethod
    def backward(ctx, v: torch.Tensor):
        pi, pi1 = ctx.saved_tensors
        # J(p)^T v = p * v - p <p, v> is exactly the softmax backward at probabilities p.
        g = 2.0 * _softmax_grad(pi1, v, ctx.dim) - 0.5 * _softmax_grad(pi, v, ctx.dim)
        return g, None, None, None


@register("reinmax", one_hot=True)
def reinmax_estimator(logits: torch.Tensor, tau: Tau = 1.0, *, dim: int = -1, generator=None) -> torch.Tensor:
    r"""ReinMax: forward one_hot(D), D ~ Cat(pi), pi = softmax(theta); second-order backward.

    Math: with J(p)^T v = p * v - p <p, v> and pi_1 = (softmax(theta / tau) + D) / 2,
    grad_theta = 2 J(pi_1)^T g - 1/2 J(pi)^T g. The paper recommends tau >= 1. A tensor tau gets
    no gradient from this estimator.

    Example:
        >>> y = sample(torch.randn(4, 6, requires_grad=True), "reinmax", tau=1.0)

    Reference: Liu, Chen, Tan, Ji, Wang, Gao, "Bridging Discrete and Backpropagation:
    Straight-Through and Beyond", NeurIPS 2023.
    """
    dim, tau = check_sample_args(logits, tau, dim, generator)
    index = gumbel_argmax(logits, dim, generator)
    if not _needs_grad(logits):
        return one_hot_like(logits, index, dim)
    x = logits.to(compute_dtype(logits.dtype))
    t = tau.detach().to(x) if isinstance(tau, torch.Tensor) else tau
    return _ReinMax.apply(x, t, index, dim).to(logits.dtype)
