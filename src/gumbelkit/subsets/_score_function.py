r"""REINFORCE for k-subsets: exact samples of the conditional law, a leave-one-out baseline."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from .._core.policy import compute_dtype
from .._core.validation import shape_str
from ..errors import GumbelkitTypeError, GumbelkitValueError
from ..estimators._registry import OptionSpec, register
from ..estimators._score_function import reinforce_surrogate
from ._simple import simple

__all__ = ["log_subset_normalizer", "reinforce_loo"]

_FN = "subsets.reinforce_loo"


def log_subset_normalizer(logits: torch.Tensor, k: int) -> torch.Tensor:
    r"""log e_k(exp(theta)) along the last dim: the log normaliser of the conditional k-subset law.

    Math: :math:`e_k(w) = \sum_{|S| = k} \prod_{i \in S} w_i`, so that
    :math:`\log P(z \mid \sum_i z_i = k) = \theta \cdot z - \log e_k(e^\theta)` for independent
    :math:`z_i \sim \mathrm{Bernoulli}(\sigma(\theta_i))`. The recursion
    :math:`e_j(w_{1..i}) = e_j(w_{1..i-1}) + w_i e_{j-1}(w_{1..i-1})` runs in log space (O(nk)),
    differentiable to any order; its gradient is the vector of exact marginals
    (:func:`gumbelkit.subsets.topk_marginals`). Empty sums start at the finite -1e30 rather than
    -inf: logaddexp of two -inf has a NaN gradient, and exp(-1e30 - x) is an exact 0 for any
    realistic x. A masked (-inf) logit adds nothing and gets a zero gradient.

    Args:
        logits: (..., n) log-weights.
        k: subset size, 0 <= k <= n.

    Returns:
        Tensor of shape ``logits.shape[:-1]``.

    Examples:
        >>> theta = torch.zeros(4)  # every weight 1: e_2 = C(4, 2) = 6
        >>> round(float(gk.subsets.log_subset_normalizer(theta, 2).exp()), 4)
        6.0
    """
    empty = torch.full_like(logits[..., 0], -1e30)
    e = [torch.zeros_like(logits[..., 0])] + [empty] * k
    for i in range(logits.shape[-1]):
        t = logits[..., i]
        e = [e[0]] + [torch.logaddexp(e[j], e[j - 1] + t) for j in range(1, k + 1)]
    return e[k]


@register(
    "reinforce_loo",
    family="subset",
    kind="score_function",
    one_hot=True,
    uses_tau=False,
    options=(OptionSpec("n", int, 2, minimum=2, help="samples per estimate, for the leave-one-out baseline"),),
    evaluations_option="n",
    traits={"law": "conditional"},
    reference="Williams, 1992; Kool, van Hoof, Welling, Buy 4 REINFORCE Samples, Get a Baseline for Free!, 2019",
)
def reinforce_loo(
    logits: torch.Tensor,
    k: int,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    dim: int = -1,
    generator: torch.Generator | None = None,
    n: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""REINFORCE over exact k-subset samples with the leave-one-out baseline, as a surrogate objective.

    Math: :math:`z_1..z_n` are exact samples of the conditional law
    :math:`P(z \mid \sum_i z_i = k) \propto \prod_i e^{\theta_i z_i}` (:func:`simple`'s forward),
    :math:`f_i` = ``loss_fn`` :math:`(z_i)`, :math:`\log P(z_i) = \theta \cdot z_i - \log e_k(e^\theta)`
    (:func:`log_subset_normalizer`); the surrogate is
    :func:`gumbelkit.reinforce_surrogate` with the leave-one-out baseline: its value is the mean
    loss, its gradient the unbiased estimate
    :math:`\frac1n \sum_i (f_i - b_i) \nabla \log P(z_i)`, :math:`b_i` the mean of the other losses.

    Args:
        logits: (..., n_items, ...) logits :math:`\theta` of the items along ``dim``.
        k: subset size.
        loss_fn: maps the k-hot samples, shape (n, *logits.shape), to losses of shape
            (n, *batch), ``batch`` = ``logits.shape`` without ``dim``.
        dim: the item dimension.
        generator: optional ``torch.Generator`` of the samples.
        n: how many subsets one estimate draws (at least 2, for the leave-one-out baseline).

    Returns:
        The surrogate (shape ``batch``) and the n losses (shape (n, *batch)).

    Raises:
        GumbelkitError: what :func:`simple` refuses (logits, k, dim, generator), a bad ``n``, or
            losses of the wrong shape.

    Examples:
        >>> logits = torch.zeros(3, 5, requires_grad=True)
        >>> target = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
        >>> surrogate, losses = gk.subsets.reinforce_loo(logits, 2, lambda z: ((z - target) ** 2).sum(-1), n=4)
        >>> surrogate.shape, losses.shape
        (torch.Size([3]), torch.Size([4, 3]))
        >>> surrogate.sum().backward()

    Reference: Williams, 1992; Kool, van Hoof, Welling, ICLR 2019 workshop; the conditional law
    of Ahmed et al., "SIMPLE", ICLR 2023.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise GumbelkitTypeError(f"{_FN}: expected n to be an integer >= 2, got {n!r}")
    if n < 2:
        raise GumbelkitValueError(f"{_FN}: expected n to be an integer >= 2, got {n!r}")
    with torch.no_grad():  # the samples carry no gradient: the estimate flows through log P alone
        z = torch.stack([simple(logits, k, dim, generator=generator) for _ in range(int(n))])
    d = dim % logits.dim()
    losses = loss_fn(z)
    batch = (n, *logits.shape[:d], *logits.shape[d + 1 :])
    if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != batch:
        got = shape_str(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise GumbelkitValueError(f"{_FN}: expected loss_fn to return losses of shape {shape_str(batch)}, got {got}")
    theta = logits.to(compute_dtype(logits.dtype)).movedim(d, -1)
    # 0 * -inf would be NaN: a masked item is never in z, so its logit is left out of theta . z
    weights = theta.masked_fill(theta.detach() == float("-inf"), 0.0)
    log_p = (z.movedim(d + 1, -1).to(theta.dtype) * weights).sum(-1) - log_subset_normalizer(theta, k)
    return reinforce_surrogate(losses, log_p.to(losses.dtype), baseline="loo", dim=0), losses
