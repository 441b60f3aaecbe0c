r"""REINFORCE for k-subsets: exact samples of the conditional law, a leave-one-out baseline."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from .._core.policy import compute_dtype
from .._core.validation import check_generator, check_int, check_logits, shape_str
from ..errors import GumbelkitTypeError, GumbelkitValueError
from ..estimators._registry import OptionSpec, register
from ..estimators._score_function import reinforce_surrogate
from ..structured import check_subset_size
from ._simple import _tables, simple

__all__ = ["log_subset_normalizer", "reinforce_loo"]

_FN = "subsets.reinforce_loo"


def log_subset_normalizer(logits: torch.Tensor, k: int) -> torch.Tensor:
    r"""log e_k(exp(theta)) along the last dim: the log normaliser of the conditional k-subset law.

    Math: :math:`e_k(w) = \sum_{|S| = k} \prod_{i \in S} w_i`, so that
    :math:`\log P(z \mid \sum_i z_i = k) = \theta \cdot z - \log e_k(e^\theta)` for independent
    :math:`z_i \sim \mathrm{Bernoulli}(\sigma(\theta_i))`. The recursion
    :math:`e_j(w_{1..i}) = e_j(w_{1..i-1}) + w_i e_{j-1}(w_{1..i-1})` runs in log space over the
    items sorted in decreasing order, on tables normalised by the heaviest subset of each prefix
    (:func:`gumbelkit.subsets.topk_marginals`' tables), and the result is
    :math:`C_k + \log(e_k / e^{C_k})` with :math:`C_k` the sum of the k largest logits: only
    differences of logits enter the recursion, so no sum of large numbers can cancel a stand-in
    for log 0 and any spread of finite logits (1e30 against 1 included) gives the right value.
    O(nk), differentiable to any order; its gradient is the vector of exact marginals
    (:func:`gumbelkit.subsets.topk_marginals`). A masked (-inf) logit adds nothing and gets a
    zero gradient. float16 / bfloat16 are computed in float32; the result has the logits' dtype
    (it may overflow to inf there: log e_k is about the sum of the k largest logits).

    Args:
        logits: (..., n) log-weights, any floating dtype; -inf masks an item.
        k: subset size, 0 <= k <= the number of unmasked items of every row (k = 0: log e_0 = 0).

    Returns:
        Tensor of shape ``logits.shape[:-1]``.

    Raises:
        GumbelkitError: a non-tensor or non-floating ``logits``, a 0-d tensor, NaN / +inf
            logits, all-masked rows, k not an integer in [0, n] or larger than a row's unmasked
            count.

    Examples:
        >>> theta = torch.zeros(4)  # every weight 1: e_2 = C(4, 2) = 6
        >>> round(float(gk.subsets.log_subset_normalizer(theta, 2).exp()), 4)
        6.0
        >>> x = torch.tensor([100.0, 0.0, float("-inf")])  # one 2-subset of unmasked items: weight e^100
        >>> float(gk.subsets.log_subset_normalizer(x, 2))
        100.0
    """
    fn = "log_subset_normalizer"
    check_logits(logits, -1, fn=fn)
    k = check_int(k, "k", min=0, max=logits.shape[-1], fn=fn)
    lw = logits.to(compute_dtype(logits.dtype))
    if k == 0:  # the empty subset, of weight 1: log e_0 = 0 whatever the logits (and no gradient)
        return torch.zeros_like(lw[..., 0]).to(logits.dtype)
    check_subset_size(k, logits, -1, fn=fn)
    order, _, tables, _ = _tables(lw, k)
    # C_k: the k largest logits, finite since every row has at least k unmasked items
    heaviest = lw.gather(-1, order[..., :k]).sum(-1)
    return (heaviest + tables[..., k, -1]).to(logits.dtype)


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
    d = check_logits(logits, dim, fn=_FN)
    k = check_subset_size(k, logits, d, fn=_FN)
    if not callable(loss_fn):
        raise GumbelkitTypeError(f"{_FN}: expected loss_fn to be callable, got {type(loss_fn).__name__}")
    check_generator(generator, logits.device, _FN)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise GumbelkitTypeError(f"{_FN}: expected n to be an integer >= 2, got {n!r}")
    if n < 2:
        raise GumbelkitValueError(f"{_FN}: expected n to be an integer >= 2, got {n!r}")
    with torch.no_grad():  # the samples carry no gradient: the estimate flows through log P alone
        z = torch.stack([simple(logits, k, dim, generator=generator) for _ in range(int(n))])
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
