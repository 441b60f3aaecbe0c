"""The straight-through building blocks a new estimator is made of, as public functions.

A straight-through estimator has an exactly one-hot forward value and some chosen backward.
Two pieces do the work in gumbelkit's own estimators:

- :func:`one_hot_straight_through`: the one-hot forward at a given index whose gradient is
  handed unchanged to a "soft" tensor (any differentiable surrogate: a softmax, a mean of
  softmaxes, ...). The forward is built from the index, so it is one-hot to the last bit, which
  ``hard - soft.detach() + soft`` is not (its entries are 1 - s + s, off by rounding).
- :func:`softmax_backward`: ``y * (v - <y, v>)``, the vector-Jacobian product of a softmax from
  its output alone, in one fused pass; the block for backward formulas written by hand
  (ReinMax's, or a custom one in a ``torch.autograd.Function``).

Example: a straight-through estimator whose backward is the softmax gradient scaled by an
option, written with both blocks and registered (so ``gumbelkit.sample`` and every command
accept it)::

    >>> import torch, gumbelkit as gk
    >>> from gumbelkit.estimators import OptionSpec, one_hot_straight_through, softmax_backward
    >>> class _ScaledSoftmax(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x, scale):
    ...         y = torch.softmax(x, -1)
    ...         ctx.save_for_backward(y)
    ...         ctx.scale = scale
    ...         return y
    ...     @staticmethod
    ...     def backward(ctx, v):
    ...         (y,) = ctx.saved_tensors
    ...         return ctx.scale * softmax_backward(y, v, -1), None
    >>> @gk.register("doc_scaled_st", one_hot=True,
    ...              options=(OptionSpec("scale", float, 1.0, minimum=0.0, help="backward scale"),))
    ... def scaled_st(logits, tau=1.0, *, dim=-1, generator=None, scale=1.0):
    ...     index = gk.gumbel_max(logits, -1, generator=generator).unsqueeze(-1)
    ...     return one_hot_straight_through(_ScaledSoftmax.apply(logits / tau, scale), index, -1)
    >>> x = torch.zeros(2, 3, requires_grad=True)
    >>> y = gk.sample(x, "doc_scaled_st", scale=2.0, generator=torch.Generator().manual_seed(0))
    >>> y.sum(-1).tolist()
    [1.0, 1.0]
    >>> (y * torch.tensor([1.0, 0.0, 0.0])).sum().backward()
    >>> x.grad[0]
    tensor([ 0.4444, -0.2222, -0.2222])
    >>> gk.estimators.unregister("doc_scaled_st")
"""

from __future__ import annotations

import torch

# one_hot_straight_through is the core's own function (the one straight-through every estimator,
# k-subset and permutation uses), exported here as it is.
from .._core.autograd import one_hot_straight_through, softmax_grad

__all__ = ["one_hot_straight_through", "softmax_backward"]


def softmax_backward(y: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """The gradient through a softmax from its output: ``y * (v - <y, v>)`` along ``dim``.

    ATen's fused softmax backward (one pass over the data instead of four). It is differentiable
    (it has a double backward), so a backward written with it supports ``create_graph=True``.

    Args:
        y: the softmax output.
        v: the incoming gradient, shaped like ``y`` (cast to ``y``'s dtype).
        dim: the dimension the softmax was taken over.

    Returns:
        The gradient with respect to the softmax's input, shaped like ``y``.

    Examples:
        >>> import torch
        >>> from gumbelkit.estimators import softmax_backward
        >>> x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
        >>> y = torch.softmax(x, -1)
        >>> v = torch.randn(4, 5, dtype=torch.float64)
        >>> (g,) = torch.autograd.grad(y, x, v)
        >>> torch.allclose(softmax_backward(y.detach(), v, -1), g)
        True
    """
    return softmax_grad(y, v, dim)
