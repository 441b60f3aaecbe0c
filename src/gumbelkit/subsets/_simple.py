r"""Exact k-subset marginals and samples of independent Bernoullis conditioned on their sum (SIMPLE)."""

from __future__ import annotations

import torch

from .._core.autograd import log_cumsum_exp
from .._core.policy import compute_dtype
from .._core.validation import check_generator, check_logits
from ..estimators._registry import register
from ..structured import check_subset_size, khot_straight_through

__all__ = ["simple", "topk_marginals"]


def _log_zero(n: int) -> float:
    """A finite stand-in for log 0 in the tables of n items: below every value that matters by > 2000.

    Every table entry that matters is a log-probability-like number >= -(n log 2 + 750) or a
    normalised log e_j in [0, n log 2] (see :func:`_tables`), so entries built from this value
    (which only ever add to it, never subtract it) sit more than 2000 below them: exp of the
    difference is an exact 0 in float32 and float64, in values and in gradients. A true -inf
    would be as exact in the values but gives NaN gradients (-inf - -inf in the logsumexps).
    """
    return -(float(n) + 2048.0)


def _prepare(logits: torch.Tensor, k, dim: int, fn: str):
    """Checks; returns (dim, k, logits in the compute dtype with dim last, masked = -inf)."""
    d = check_logits(logits, dim, fn=fn)
    k = check_subset_size(k, logits, d, fn=fn)
    return d, k, logits.to(compute_dtype(logits.dtype)).movedim(d, -1)


def _tables(lw: torch.Tensor, k: int):
    r"""The inside tables of the sorted items: (order, terms A, normalised prefix tables n, log zero).

    lw: (..., n) logits, dim last, masked = -inf. Items are sorted in decreasing order
    (:math:`t_0 \ge t_1 \ge \dots`, masked last), so the heaviest j-subset of every prefix of
    i >= j items is the first j items, of log-weight :math:`C_j = \sum_{l < j} t_l`. The tables
    hold :math:`n_j(i) = \log e_j(w_{t_0}, \dots, w_{t_{i-1}}) - C_j` for j = 0..k, i = 0..n
    (shape (..., k + 1, n + 1)): 0 for i = j, growing to at most :math:`\log\binom{i}{j}`, whatever
    the spread of the logits. The recursion :math:`e_j(\text{first } i+1) = \sum_{i' \le i} w_{i'}
    e_{j-1}(\text{first } i')` becomes one log-cumsum-exp per j over the terms

    .. math:: A_j(i') = (t_{i'} - t_{j-1}) + n_{j-1}(i'),

    and :math:`t_{i'} - t_{j-1} \le 0` wherever :math:`n_{j-1}(i')` is a real entry (i' >= j - 1):
    a single difference of two logits, never a sum of large numbers, so logits of 1e30 keep the
    weights of items that differ by 1. The difference is clamped to [log zero, 0]: to 0 at the
    entries i' < j - 1 (no (j-1)-subset there: the term must stay negligible), to the log zero for
    masked items (-inf: exactly 0 weight, and the clamp sends them an exact 0 gradient).
    """
    t, order = lw.sort(dim=-1, descending=True, stable=True)
    n = t.shape[-1]
    zero = _log_zero(n)
    pad = t.new_full(t.shape[:-1] + (1,), zero)
    tables = [torch.zeros_like(torch.cat([pad, t], -1))]  # n_0 = log e_0 - C_0 = 0
    terms = []
    for j in range(1, k + 1):
        # t_{j-1} is finite: a row has at least k >= j unmasked items, sorted first
        a = (t - t[..., j - 1 : j]).clamp(zero, 0.0) + tables[-1][..., :n]
        terms.append(a)
        tables.append(torch.cat([pad, log_cumsum_exp(a)], -1))
    return order, torch.stack(terms, -2), torch.stack(tables, -2), zero


def _marginals(lw: torch.Tensor, k: int):
    r"""(marginals, order, terms, tables) for logits lw (..., n), dim last, in the compute dtype.

    The marginals are the inside-outside sums of :func:`_tables`' recursion: with
    :math:`F = n_k(n)` (log e_k up to the constant :math:`C_k`) and :math:`\beta_j(i) = \partial F /
    \partial n_j(i)` (starting from :math:`\beta_k(n) = 1`), the weight of item i' as the j-th chosen
    item (in sorted order) is

    .. math:: \gamma_j(i') = \exp\Bigl(A_j(i') + \log\sum_{i \ge i'} \beta_j(i+1)\,
              e^{-n_j(i+1)}\Bigr), \qquad \beta_{j-1}(i') = \gamma_j(i'),

    and :math:`\mu_{i'} = \sum_j \gamma_j(i')`: each level's weights sum to 1, so the marginals
    sum to k. Every quantity is a log of a probability (<= 0) or a normalised table entry; entries
    of log-tables below the first real one (i + 1 < j) are replaced by the log zero before any
    subtraction, so no two stand-ins are ever subtracted.
    """
    order, terms, tables, zero = _tables(lw, k)
    n = lw.shape[-1]
    pos = torch.arange(1, n + 1, device=lw.device)  # i + 1 for i = 0..n-1
    pad = lw.new_full(lw.shape[:-1] + (1,), zero)
    beta = torch.cat([lw.new_full(lw.shape[:-1] + (n,), zero), torch.zeros_like(pad)], -1)  # log beta_k
    mu = torch.zeros_like(lw)
    for j in range(k, 0, -1):
        term = torch.where(pos >= j, beta[..., 1:] - tables[..., j, 1:], zero)
        log_gamma = terms[..., j - 1, :] + log_cumsum_exp(term.flip(-1)).flip(-1)
        mu = mu + log_gamma.exp()
        beta = torch.cat([log_gamma, pad], -1)
    # back to the items' own order: position l of the sorted row holds item order[l]
    return mu.gather(-1, order.argsort(-1)), order, terms, tables


def topk_marginals(logits: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    r"""Exact inclusion probabilities P(z_i = 1 | sum z = k) of independent Bernoulli(sigmoid(logits)).

    Math: with odds :math:`w_i = e^{\theta_i}` and the elementary symmetric polynomials
    :math:`e_j(w) = \sum_{|S| = j} \prod_{i \in S} w_i`, the conditional law of
    :math:`z_i \sim \mathrm{Bernoulli}(\sigma(\theta_i))` given :math:`\sum_i z_i = k` is
    :math:`P(z) = \prod_{i: z_i = 1} w_i / e_k(w)`, and

    .. math::

        \mu_i = P(z_i = 1 \mid \textstyle\sum z = k) = \frac{w_i \, e_{k-1}(w_{\setminus i})}{e_k(w)}
        = \frac{\partial \log e_k(w)}{\partial \theta_i}.

    The conditional law is unchanged when every logit moves by the same constant, and the
    computation uses only differences of logits: the items are sorted, the tables hold
    :math:`\log e_j` of every prefix divided by its heaviest subset (values in
    :math:`[0, \log\binom{n}{j}]`, whatever the logits), built by the recursion
    :math:`e_j(w_{1..i}) = e_j(w_{1..i-1}) + w_i e_{j-1}(w_{1..i-1})` as one log-cumsum-exp per j,
    and the marginals come from the matching backward (outside) pass, in which every number is the
    log of a probability: O(nk) work, no subtraction of large numbers and no overflow, so the
    result is right for any spread of finite logits (1e30 against 1 included). This explicit form
    is used rather than autograd of :math:`\log e_k` (which SIMPLE uses): it is the same exact
    quantity, it works under ``torch.no_grad`` / inference mode, and its derivatives of every order
    are finite and exact (the log-cumsum-exp is :func:`gumbelkit._core.autograd.log_cumsum_exp`).

    The marginals sum to k along ``dim`` up to rounding; masked (-inf) logits get exactly 0 (and
    zero gradient), and never meet a finite stand-in that a very negative real logit could reach.
    float16 / bfloat16 are computed in float32; the result has the logits' dtype.

    Args:
        logits: the Bernoulli logits :math:`\theta` (log odds), any floating dtype and batch shape.
        k: the subset size, 1 <= k <= the number of unmasked entries in every row.
        dim: the item dim.

    Returns:
        Tensor shaped and typed like ``logits``: the marginals, in [0, 1], summing to k along ``dim``.

    Raises:
        GumbelkitError: a non-floating dtype, a bad ``dim``, NaN / +inf / all-masked rows, or k
            outside [1, the fewest unmasked entries in a row].

    Examples:
        >>> p = torch.tensor([0.3, 0.6, 0.5, 0.2])
        >>> gk.subsets.topk_marginals(torch.log(p / (1 - p)), 2)
        tensor([0.3568, 0.7622, 0.6595, 0.2216])

    Reference: Kareem Ahmed, Zhe Zeng, Mathias Niepert and Guy Van den Broeck, "SIMPLE: A Gradient
    Estimator for k-Subset Sampling", ICLR 2023.
    """
    d, k, lw = _prepare(logits, k, dim, "topk_marginals")
    return _marginals(lw, k)[0].movedim(-1, d).to(logits.dtype)


@register(
    "simple",
    family="subset",
    one_hot=True,
    uses_tau=False,
    traits={"law": "conditional"},
    reference="Ahmed, Zeng, Niepert, Van den Broeck, SIMPLE: A Gradient Estimator for k-Subset Sampling, ICLR 2023",
)
def simple(logits: torch.Tensor, k: int, dim: int = -1, *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""SIMPLE: an exact k-subset sample in the forward pass, the gradient of the exact marginals backward.

    Math: forward, an exact sample :math:`z` of the conditional law
    :math:`P(z \mid \sum_i z_i = k) \propto \prod_i \sigma(\theta_i)^{z_i} (1 - \sigma(\theta_i))^{1 - z_i}`
    (:math:`\propto \prod_{i: z_i = 1} w_i`, :math:`w_i = e^{\theta_i}`), drawn by sequential conditional
    sampling from the last item to the first with :math:`r` items still to choose:

    .. math::

        P(z_i = 1 \mid r) = \frac{w_i \, e_{r-1}(w_1, \dots, w_{i-1})}{e_r(w_1, \dots, w_i)},

    using the same prefix tables as :func:`topk_marginals` (one uniform per item). This is the exact
    conditional law -- not Gumbel-top-k, whose law (Plackett-Luce without replacement) differs.
    Backward: the gradient of the marginals :math:`\mu = ` ``topk_marginals(logits, k)``, i.e. the
    straight-through estimator :math:`y = z + \mu - \operatorname{stopgrad}(\mu)` (one
    :func:`gumbelkit.structured.khot_straight_through` node: the forward is exactly k-hot).

    Args:
        logits: the Bernoulli logits (log odds), any floating dtype and batch shape; -inf masks an item.
        k: the subset size, 1 <= k <= the number of unmasked entries in every row.
        dim: the item dim.
        generator: optional ``torch.Generator`` for the uniforms (keyword-only).

    Returns:
        Tensor shaped and typed like ``logits``, exactly k-hot along ``dim`` (masked items never chosen).

    Raises:
        GumbelkitError: as :func:`topk_marginals`, and a generator on another device.

    Examples:
        >>> logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, float("-inf")]], requires_grad=True)
        >>> y = gk.subsets.simple(logits, 2, generator=torch.Generator().manual_seed(0))
        >>> float(y.detach().sum()), float(y.detach()[0, 4])
        (2.0, 0.0)
        >>> (y * torch.arange(5.0)).sum().backward()
        >>> bool(torch.isfinite(logits.grad).all()), float(logits.grad[0, 4])
        (True, 0.0)

    Reference: Kareem Ahmed, Zhe Zeng, Mathias Niepert and Guy Van den Broeck, "SIMPLE: A Gradient
    Estimator for k-Subset Sampling", ICLR 2023.
    """
    fn = "simple"
    d, k, lw = _prepare(logits, k, dim, fn)
    check_generator(generator, logits.device, fn)
    mu, order, terms, tables = _marginals(lw, k)
    n = lw.shape[-1]
    # one uniform per position of the sorted row (the sort is stable and of the logical values, so
    # the sample does not depend on the memory layout)
    u = torch.rand(lw.shape, generator=generator, device=lw.device, dtype=lw.dtype)
    with torch.no_grad():
        terms, tables = terms.detach(), tables.detach()
        # masked items are sorted last: the unmasked ones among sorted positions 0..i
        n_free = torch.isfinite(lw.detach()).sum(-1, keepdim=True)
        free_upto = torch.minimum(torch.arange(1, n + 1, device=lw.device), n_free)
        r = torch.full(lw.shape[:-1] + (1,), k, dtype=torch.int64, device=lw.device)
        takes = []  # out of place (a list, stacked at the end): under vmap the draws are batched
        for i in range(n - 1, -1, -1):
            rc = r.clamp_min(1).unsqueeze(-1)
            # P(take i | r left) = w_i e_{r-1}(first i) / e_r(first i + 1) = exp(A_r(i) - n_r(i + 1)):
            # both normalised by the same heaviest subset, so the ratio of two moderate numbers
            num = terms[..., i].unsqueeze(-1).gather(-2, rc - 1).squeeze(-1)
            den = tables[..., i + 1].unsqueeze(-1).gather(-2, rc).squeeze(-1)
            p = (num - den).exp()
            # r > 0 and unmasked; forced when every remaining unmasked item is needed (p is then
            # 1 up to rounding, which must not leave the subset short).
            t = (r > 0) & (i < n_free) & ((u[..., i : i + 1] < p) | (r >= free_upto[..., i : i + 1]))
            takes.append(t)
            r = r - t.to(torch.int64)
        take = torch.cat(takes[::-1], -1)
        index = order.gather(-1, take.to(torch.int8).topk(k, -1).indices)
    y = khot_straight_through(mu, index, -1)
    return y.movedim(-1, d).to(logits.dtype)
