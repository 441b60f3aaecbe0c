"""Gradient estimators for discrete (one-hot) samples, one function each, behind one registry."""

from __future__ import annotations

import torch

from .._validation import Tau
from . import _basic, _gumbel_rao, _reinmax  # noqa: F401  (importing registers the methods)
from ._basic import (
    gumbel_softmax_estimator,
    softmax_estimator,
    st_estimator,
    st_gumbel_estimator,
)
from ._gumbel_rao import conditional_gumbel, gumbel_rao_estimator
from ._registry import get_estimator, is_one_hot, register, registered_methods
from ._reinmax import reinmax_estimator
from ._score_function import (
    MovingAverageBaseline,
    categorical_log_prob,
    reinforce_surrogate,
)

METHODS = registered_methods()


def sample(
    logits: torch.Tensor,
    method: str = "st_gumbel",
    tau: Tau = 1.0,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
    **options,
) -> torch.Tensor:
    r"""Draw a (relaxed or one-hot) sample of Categorical(softmax(logits)) with the chosen estimator.

    Every method returns a tensor shaped and typed like ``logits``; the methods in
    ``("st", "st_gumbel", "gumbel_rao", "reinmax")`` return an exactly one-hot forward value.

    Args:
        logits: unnormalised log-probabilities.
        method: one of :data:`METHODS`.
        tau: temperature > 0 (float or tensor broadcastable to ``logits``).
        dim: category dimension.
        generator: optional ``torch.Generator`` (keyword-only).
        **options: method options, e.g. ``k`` for ``gumbel_rao``.

    Returns:
        Tensor shaped like ``logits``.

    Example:
        >>> y = sample(torch.randn(100, 20, 10, requires_grad=True), "gumbel_rao", tau=0.5, k=10)
    """
    return get_estimator(method)(logits, tau, dim=dim, generator=generator, **options)


__all__ = [
    "METHODS",
    "MovingAverageBaseline",
    "categorical_log_prob",
    "conditional_gumbel",
    "get_estimator",
    "gumbel_rao_estimator",
    "gumbel_softmax_estimator",
    "is_one_hot",
    "register",
    "registered_methods",
    "reinforce_surrogate",
    "reinmax_estimator",
    "sample",
    "softmax_estimator",
    "st_estimator",
    "st_gumbel_estimator",
]
