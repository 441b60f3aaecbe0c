"""The four simple estimators: softmax, gumbel_softmax, st, st_gumbel."""

from __future__ import annotations

import torch

from .._core.autograd import tempered_core
from .._core.numerics import (
    gumbel_argmax,
    needs_grad,
    one_hot_like,
    per_class_tau,
    plain_shift,
    prepare_tau,
    theta_shift,
)
from .._core.policy import compute_dtype
from .._core.validation import Tau, check_sample_args_scale, mark_bad_rows
from .._sampling import checked_gumbel_softmax
from ._registry import register

__all__ = ["gumbel_softmax_estimator", "softmax_estimator", "st_estimator", "st_gumbel_estimator"]


@register("softmax", one_hot=False, reference="Hinton, Vinyals, Dean, 2015 (the no-noise baseline)")
def softmax_estimator(logits: torch.Tensor, tau: Tau = 1.0, *, dim: int = -1, generator=None) -> torch.Tensor:
    r"""Tempered softmax, softmax(theta / tau): deterministic, not a sample (``generator`` unused).

    Backward: the exact gradient of softmax(theta / tau).

    Examples:
        >>> import torch, gumbelkit as gk
        >>> gk.sample(torch.zeros(3), "softmax")
        tensor([0.3333, 0.3333, 0.3333])

    Reference: the common "no noise" baseline (Hinton et al., 2015).
    """
    # the checks name sample(), the function the user called (generator: checked, then unused)
    dim, tau, row_max, max_abs = check_sample_args_scale(logits, tau, dim, generator, fn="sample")
    cdt = compute_dtype(logits.dtype)
    per_class = per_class_tau(tau, logits.dim(), dim)
    return tempered_core(
        logits, prepare_tau(tau, cdt), dim, m=plain_shift(row_max, max_abs, tau, cdt, per_class), per_class=per_class
    )


@register(
    "gumbel_softmax",
    one_hot=False,
    relaxed=True,
    reference="Jang, Gu, Poole, ICLR 2017; Maddison, Mnih, Teh, ICLR 2017",
)
def gumbel_softmax_estimator(logits: torch.Tensor, tau: Tau = 1.0, *, dim: int = -1, generator=None) -> torch.Tensor:
    r"""Relaxed sample y = softmax((theta + g) / tau), backward its exact gradient.

    Reference: Jang, Gu, Poole, ICLR 2017; Maddison, Mnih, Teh, ICLR 2017.
    """
    return checked_gumbel_softmax(logits, tau, False, dim, generator=generator, fn="sample")


@register(
    "st_gumbel",
    one_hot=True,
    relaxed=True,
    reference="Jang, Gu, Poole, Categorical Reparameterization with Gumbel-Softmax, ICLR 2017",
)
def st_gumbel_estimator(logits: torch.Tensor, tau: Tau = 1.0, *, dim: int = -1, generator=None) -> torch.Tensor:
    r"""Straight-through Gumbel-Softmax: forward one_hot(argmax(theta + g)), backward grad of softmax((theta + g)/tau).

    Reference: Jang, Gu, Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    """
    return checked_gumbel_softmax(logits, tau, True, dim, generator=generator, fn="sample")


@register("st", one_hot=True, reference="Bengio, Leonard, Courville, 2013; Chung, Ahn, Bengio, ICLR 2017")
def st_estimator(logits: torch.Tensor, tau: Tau = 1.0, *, dim: int = -1, generator=None) -> torch.Tensor:
    r"""Straight-through without Gumbel noise in the backward.

    Forward: one_hot(z), z ~ Categorical(softmax(theta)) (drawn by Gumbel-Max).
    Backward: the gradient of softmax(theta / tau).

    Reference: Bengio, Leonard, Courville, 2013; Chung, Ahn, Bengio, ICLR 2017 (slope-annealed ST).
    """
    dim, tau, row_max, max_abs = check_sample_args_scale(logits, tau, dim, generator, fn="sample")
    cdt = compute_dtype(logits.dtype)
    index = gumbel_argmax(logits, dim, generator, theta_shift(row_max, max_abs, cdt))
    if not needs_grad(logits, tau):
        out = one_hot_like(logits, index, dim)
    else:
        per_class = per_class_tau(tau, logits.dim(), dim)
        m = plain_shift(row_max, max_abs, tau, cdt, per_class)
        out = tempered_core(logits, prepare_tau(tau, cdt), dim, m=m, index=index, per_class=per_class)
    return mark_bad_rows(out, logits, row_max, tau)
