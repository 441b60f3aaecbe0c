"""Gradient estimators for discrete samples, one function each, behind one typed registry.

Each method is declared once with :func:`register` (its :class:`MethodSpec`: the function, its
family, whether its forward is exactly discrete, whether it uses tau, its options as
:class:`OptionSpec`, the paper). The families: ``"categorical"`` (one-of-K, the methods of
:func:`sample`), ``"bernoulli"`` (:mod:`gumbelkit.binary`), ``"subset"`` (:mod:`gumbelkit.subsets`)
and ``"permutation"`` (:mod:`gumbelkit.permutations`); :func:`methods` and :func:`specs` list
any family and kind. :data:`METHODS` is a live view of the names :func:`sample` accepts;
:data:`SPECS` maps every categorical name (score-function estimators included) to its spec.
Other packages add methods of any family through the entry-point group ``gumbelkit.estimators``
(see :mod:`._registry` and the guide "Writing an estimator").

Score-function methods need the loss: :func:`surrogate` runs any of them on one-of-K samples
(REINFORCE, and REBAR / RELAX, whose learnable controls :class:`RebarControl` and
:class:`RelaxControl` are trained by the same backward).

Writing a new estimator: :func:`one_hot_straight_through` and :func:`softmax_backward` are the
building blocks of the built-in straight-through estimators (see :mod:`._building_blocks` for a
complete example).
"""

from __future__ import annotations

from typing import Any

import torch

from .._core.validation import Tau
from . import _basic, _decoupled, _gapped, _gumbel_rao, _reinmax, _score_function  # noqa: F401  (importing registers the methods)
from ._basic import (
    gumbel_softmax_estimator,
    softmax_estimator,
    st_estimator,
    st_gumbel_estimator,
)
from ._building_blocks import one_hot_straight_through, softmax_backward
from ._decoupled import decoupled_st_gumbel_estimator
from ._gapped import gapped_logits, gapped_st_estimator
from ._gumbel_rao import conditional_gumbel, gumbel_rao_estimator
from ._registry import (
    ENTRY_POINT_GROUP,
    FAMILIES,
    KINDS,
    SPECS,
    MethodSpec,
    MethodsView,
    OptionSpec,
    SpecsView,
    _ValueError,
    families,
    get_estimator,
    get_spec,
    is_one_hot,
    load_plugins,
    methods,
    register,
    registered_methods,
    specs,
    unregister,
)
from ._reinmax import reinmax_estimator
from ._score_function import (
    MovingAverageBaseline,
    categorical_log_prob,
    reinforce_objective,
    reinforce_surrogate,
)

# isort: split
# Imported last, so that the registry lists REBAR and RELAX after REINFORCE.
from ._rebar import ControlNet, RebarControl, RelaxControl, rebar_objective, relax_objective, surrogate

#: The names :func:`sample` accepts: a live view (a method registered later appears in it).
METHODS = MethodsView("sample")


def sample(
    logits: torch.Tensor,
    method: str = "st_gumbel",
    tau: Tau = 1.0,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
    **options: Any,
) -> torch.Tensor:
    r"""Draw a (relaxed or one-hot) sample of Categorical(softmax(logits)) with the chosen estimator.

    Every method returns a tensor shaped and typed like ``logits``; the methods with
    ``is_one_hot(method)`` (``st``, ``st_gumbel``, ``gumbel_rao``, ``reinmax``, ...) return an
    exactly one-hot forward value. The options are checked against the method's declaration
    first: an unknown option is a TypeError listing the valid ones, a value out of range a
    ValueError naming the method, the option, the range and the value.

    Args:
        logits: unnormalised log-probabilities.
        method: one of :data:`METHODS`.
        tau: temperature > 0 (float or tensor broadcastable to ``logits``).
        dim: category dimension.
        generator: optional ``torch.Generator`` (keyword-only).
        **options: method options, e.g. ``k`` for ``gumbel_rao`` (see ``get_spec(method).options``).

    Returns:
        Tensor shaped like ``logits``.

    Examples:
        >>> import torch, gumbelkit as gk
        >>> y = gk.sample(torch.randn(100, 20, 10, requires_grad=True), "gumbel_rao", tau=0.5, k=10)
        >>> y.shape, bool((y.sum(-1) == 1).all())
        (torch.Size([100, 20, 10]), True)
    """
    try:
        spec = get_spec(method)
    except _ValueError as exc:  # the registry's message, named after this function
        raise _ValueError(f"sample: {exc}") from None
    if spec.kind != "sample":
        raise _ValueError(
            f"sample: method {method!r} is a {spec.kind.replace('_', '-')} estimator and needs the loss: use "
            f"gumbelkit.get_spec({method!r}).objective(logits, loss_fn, ...); sample() takes one of {tuple(METHODS)}"
        )
    if options:
        spec.check_options(options, where="sample: ")
    return spec.fn(logits, tau, dim=dim, generator=generator, **options)


__all__ = [
    "ENTRY_POINT_GROUP",
    "FAMILIES",
    "KINDS",
    "METHODS",
    "SPECS",
    "ControlNet",
    "MethodSpec",
    "MethodsView",
    "MovingAverageBaseline",
    "OptionSpec",
    "RebarControl",
    "RelaxControl",
    "SpecsView",
    "categorical_log_prob",
    "conditional_gumbel",
    "decoupled_st_gumbel_estimator",
    "families",
    "gapped_logits",
    "gapped_st_estimator",
    "get_estimator",
    "get_spec",
    "gumbel_rao_estimator",
    "gumbel_softmax_estimator",
    "is_one_hot",
    "load_plugins",
    "methods",
    "one_hot_straight_through",
    "rebar_objective",
    "register",
    "registered_methods",
    "reinforce_objective",
    "reinforce_surrogate",
    "reinmax_estimator",
    "relax_objective",
    "sample",
    "softmax_backward",
    "softmax_estimator",
    "specs",
    "st_estimator",
    "st_gumbel_estimator",
    "surrogate",
    "unregister",
]
