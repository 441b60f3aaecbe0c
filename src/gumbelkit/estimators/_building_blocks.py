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

# The implementations live in the core sampling module (whose internal names may change: only
# these two imports would need to follow).
from .._sampling import _softmax_grad
from .._sampling import one_hot_straight_through as _one_hot_straight_through

__all__ = ["one_hot_straight_through", "softmax_backward"]


def one_hot_straight_through(soft: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Exactly one-hot forward at ``index``; the backward passes the incoming gradient to ``soft`` unchanged.

    Args:
        soft: the differentiable surrogate whose gradient the estimator uses (any shape).
        index: int64 indices of the one-hot positions in keepdim layout: ``soft``'s shape with
            size 1 along ``dim`` (e.g. ``argmax(dim, keepdim=True)``).
        dim: the category dimension.

    Returns:
        A tensor shaped and typed like ``soft``: 1 at ``index`` and 0 elsewhere, exactly, whose
        gradient with respect to ``soft`` is the identity.

    Examples:
        >>> import torch
        >>> from gumbelkit.estimators import one_hot_straight_through
        >>> x = torch.tensor([[1.0, 2.0, 0.5]], requires_grad=True)
        >>> soft = torch.softmax(x, -1)
        >>> y = one_hot_straight_through(soft, soft.argmax(-1, keepdim=True), -1)
        >>> y.detach()
        tensor([[0., 1., 0.]])
        >>> v = torch.tensor([[1.0, 0.0, 0.0]])
        >>> (y * v).sum().backward()
        >>> torch.allclose(x.grad, torch.autograd.functional.vjp(lambda t: torch.softmax(t, -1), x.detach(), v)[1])
        True
    """
    return _one_hot_straight_through(soft, index, dim)


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
    return _softmax_grad(y, v, dim)
