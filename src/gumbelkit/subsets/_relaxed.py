r"""The relaxed top-k of Xie & Ermon (IJCAI 2019): k successive softmaxes over Gumbel keys."""

from __future__ import annotations

import torch

from .._core.autograd import divide_by_tau
from .._core.numerics import log_exp_noise, prepare_tau, theta_shift
from .._core.policy import compute_dtype
from .._core.validation import Tau, check_generator, check_logits_scale, check_tau
from ..estimators._registry import register
from ..structured import check_subset_size, khot_straight_through

__all__ = ["relaxed_topk"]


_XIE_ERMON = "Xie, Ermon, Reparameterizable Subset Sampling via Continuous Relaxations, IJCAI 2019"


_TOPK: dict = {"family": "subset", "traits": {"law": "gumbel_topk"}, "reference": _XIE_ERMON}


@register("relaxed_topk_soft", one_hot=False, fixed={"hard": False}, **_TOPK)
@register("relaxed_topk_hard", one_hot=True, fixed={"hard": True}, **_TOPK)
def relaxed_topk(
    logits: torch.Tensor,
    k: int,
    tau: Tau = 1.0,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""A relaxed k-hot subset sample: the continuous relaxation of Gumbel-top-k of Xie & Ermon.

    Math: with Gumbel keys :math:`r^{(1)}_i = \theta_i + g_i` (the library's exact-tail noise,
    drawn exactly as :func:`gumbelkit.gumbel_topk` draws it) and :math:`a^{(0)} = 0`,

    .. math::

        r^{(j)} = r^{(j-1)} + \log\bigl(1 - a^{(j-1)}\bigr), \qquad
        a^{(j)} = \operatorname{softmax}\bigl(r^{(j)} / \tau\bigr), \qquad j = 1, \dots, k,

    and the output is :math:`y = \sum_{j=1}^k a^{(j)}`, which sums to k along ``dim``. As
    :math:`\tau \to 0`, y tends to the k-hot of the k largest keys, i.e. an exact Gumbel-top-k
    sample. For :math:`\tau` of order 1 or larger an entry *can* exceed 1 (exactly, not only by
    rounding: for two items and k = 2, :math:`a^{(1)} = (0.6, 0.4)` gives
    :math:`y = (1.1, 0.9)` at :math:`\tau = 1`); y is a relaxation of the k-hot, not a vector of
    inclusion probabilities.

    :math:`\log(1 - a_i)` is computed in log space, as
    :math:`\operatorname{LSE}_{l \ne i}(s_l) - \operatorname{LSE}_l(s_l)` for the largest entry
    of :math:`s = r / \tau` (where :math:`1 - a_i` cancels) and :math:`\log(1 - e^{\log a_i})` for the
    others (:math:`a_i \le 1/2` there), so a saturated softmax (:math:`a_i` rounding to 1) never
    produces :math:`\log 0 = -\infty` (and from it NaN forwards or gradients); see the comments.

    With ``hard=True`` the forward value is exactly the k-hot of the k largest keys -- the same
    indices as ``gumbel_topk(logits, k, dim, generator=...)`` for the same generator state -- and
    the backward is the gradient of the relaxed y (straight-through, through
    :func:`gumbelkit.structured.khot_straight_through`).

    Masked (-inf) logits get exactly zero weight and zero gradient. float16 / bfloat16 logits are
    computed in float32 (float64 stays float64); the result has the logits' dtype.

    Args:
        logits: unnormalised log-probabilities (any floating dtype, any batch shape).
        k: the subset size, 1 <= k <= the number of unmasked entries in every row.
        tau: temperature > 0 and finite, a float or a tensor broadcastable to ``logits``.
        hard: exact k-hot forward with the relaxed gradient.
        dim: the item dim (any axis; the memory layout does not change the result).
        generator: optional ``torch.Generator`` for the noise (keyword-only).

    Returns:
        Tensor shaped and typed like ``logits``, summing to k along ``dim``.

    Raises:
        GumbelkitError: a non-floating dtype, a bad ``dim``, NaN / +inf / all-masked rows,
            tau <= 0 / inf / NaN, or k outside [1, the fewest unmasked entries in a row].

    Examples:
        >>> logits = torch.tensor([[1.0, 2.0, 0.5, -1.0, 0.0]], requires_grad=True)
        >>> y = gk.subsets.relaxed_topk(logits, 2, tau=0.5, generator=torch.Generator().manual_seed(0))
        >>> round(float(y.detach().sum()), 4)
        2.0
        >>> g = torch.Generator().manual_seed(1)
        >>> h = gk.subsets.relaxed_topk(logits, 2, hard=True, generator=g)
        >>> idx = gk.gumbel_topk(logits, 2, generator=torch.Generator().manual_seed(1))
        >>> bool(torch.equal(h.detach(), gk.structured.khot(idx, logits)))
        True
        >>> (h * torch.arange(5.0)).sum().backward()
        >>> logits.grad.shape
        torch.Size([1, 5])

    Reference: Sang Michael Xie and Stefano Ermon, "Reparameterizable Subset Sampling via
    Continuous Relaxations", IJCAI 2019.
    """
    fn = "relaxed_topk"
    d, row_max, max_abs = check_logits_scale(logits, dim, fn=fn)
    tau = check_tau(tau, logits, fn=fn)
    check_generator(generator, logits.device, fn)
    k = check_subset_size(k, logits, d, fn=fn)
    cdt = compute_dtype(logits.dtype)

    # Keys r = theta + g with the arithmetic of gumbel_topk (same noise buffer shape, same shift,
    # same operations), so that their top-k are bitwise the indices gumbel_topk returns.
    m = theta_shift(row_max, max_abs, cdt)
    z = log_exp_noise(logits.shape, generator, logits.device, cdt)
    x = logits.to(cdt)
    if m is not None:
        x = x - m
    keys = x - z

    t = prepare_tau(tau, cdt)
    if isinstance(t, torch.Tensor):
        t = t.expand(logits.shape).movedim(d, -1)
    r = keys.movedim(d, -1)
    masked = r.detach() == float("-inf")
    # A very negative but finite floor for the scaled keys of unmasked items: (r - max) / tau can
    # overflow to -inf for a tiny tau, and a logsumexp over only -inf entries has a NaN gradient.
    floor = -torch.finfo(cdt).max / 8
    y = torch.zeros_like(r)
    for j in range(k):
        top = r.detach().amax(-1, keepdim=True)  # finite: every row has an unmasked item
        # divide_by_tau: a tensor tau's gradient is exactly 0 from the masked (-inf) and the
        # overflowed (clamped) entries, which do not depend on tau, instead of 0 * inf = NaN
        s = divide_by_tau(r - top, t).clamp_min(floor).masked_fill(masked, float("-inf"))
        lse = torch.logsumexp(s, -1, keepdim=True)
        log_a = s - lse
        y = y + log_a.exp()
        if j == k - 1:
            break
        # log(1 - a) without log(0): a plain log1p(-a) is -inf where the softmax saturates
        # (a rounds to 1 at the row's top), which sends that key to -inf; its gradient is then
        # 0 * inf = NaN, and later rows can become -inf - -inf. Exactly: at the row's top,
        # 1 - a_i = sum of the others, log(1 - a_i) = LSE_{l != i} s_l - LSE s -- finite, because
        # k >= 2 here means at least one other unmasked item, whose s is >= floor. Elsewhere
        # a_i <= 1/2 and log1p(-a_i) is accurate (and 0 with zero gradient for masked items).
        is_top = torch.zeros_like(masked).scatter_(-1, s.detach().argmax(-1, keepdim=True), True)
        others = torch.logsumexp(s.masked_fill(is_top, float("-inf")), -1, keepdim=True) - lse
        rest = torch.log1p(-log_a.masked_fill(is_top, -1.0).exp())
        r = r + torch.where(is_top, others, rest)
    y = y.movedim(-1, d).to(logits.dtype)
    if not hard:
        return y
    index = keys.detach().topk(k, d, sorted=True).indices
    return khot_straight_through(y, index, d)
