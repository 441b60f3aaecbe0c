r"""Exact k-subset marginals and samples of independent Bernoullis conditioned on their sum (SIMPLE)."""

from __future__ import annotations

import torch

from .._policy import compute_dtype
from .._validation import check_generator, check_logits
from ..estimators._registry import register
from ..structured import check_subset_size, khot_straight_through

__all__ = ["simple", "topk_marginals"]


def _log_zero(cdt: torch.dtype) -> float:
    """A finite stand-in for log 0 (masked items, empty sums).

    -sqrt(finfo.max) (-1.8e19 in float32): exp of it minus any realistic log e_j underflows to an
    exact 0, sums of up to ~1e19 of them stay finite, and -- unlike -inf -- logaddexp /
    logcumsumexp of two of them have a finite gradient (with -inf it is exp(-inf + inf) = NaN).
    """
    return -(torch.finfo(cdt).max ** 0.5)


def _prefix_tables(lw: torch.Tensor, k: int) -> torch.Tensor:
    r"""log e_j(w_0, ..., w_{i-1}) for j = 0..k and i = 0..n: shape (..., k + 1, n + 1).

    lw: (..., n) log-weights (log odds), masked entries already replaced by the log-zero.
    Recursion: e_j(first i+1) = e_j(first i) + w_i e_{j-1}(first i), which telescopes to
    e_j(first i+1) = sum_{i' <= i} w_{i'} e_{j-1}(first i'): one logcumsumexp per j, O(nk) in all.
    """
    zero = _log_zero(lw.dtype)
    pad = lw.new_full(lw.shape[:-1] + (1,), zero)
    rows = [torch.zeros_like(torch.cat([pad, lw], -1))]  # e_0 = 1 for every prefix
    for _ in range(k):
        prev = rows[-1][..., :-1]  # e_{j-1}(first i'), i' = 0..n-1
        rows.append(torch.cat([pad, torch.logcumsumexp(lw + prev, -1)], -1))
    return torch.stack(rows, -2)


def _prepare(logits: torch.Tensor, k, dim: int, fn: str):
    """Checks; returns (dim, k, log-weights in the compute dtype with dim last, masked)."""
    d = check_logits(logits, dim, fn=fn)
    k = check_subset_size(k, logits, d, fn=fn)
    cdt = compute_dtype(logits.dtype)
    lw = logits.to(cdt).movedim(d, -1)
    masked = lw.detach() == float("-inf")
    return d, k, lw.masked_fill(masked, _log_zero(cdt)), masked


def _marginals(lw: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(marginals, prefix tables) for log-weights lw (..., n), dim last, in the compute dtype."""
    pre = _prefix_tables(lw, k)  # (..., k+1, n+1): log e_j(w_0..w_{i-1})
    suf = _prefix_tables(lw.flip(-1), k - 1).flip(-1)  # (..., k, n+1): log e_j(w_i..w_{n-1})
    n = lw.shape[-1]
    # e_{k-1}(w without i) = sum_{a=0}^{k-1} e_a(w_0..w_{i-1}) e_{k-1-a}(w_{i+1}..w_{n-1})
    left = pre[..., :k, :n]  # a = 0..k-1, items before i
    right = suf[..., :, 1:].flip(-2)  # row a holds j = k-1-a, items after i
    without_i = torch.logsumexp(left + right, -2)
    log_ek = pre[..., k, n : n + 1]
    return (lw + without_i - log_ek).exp(), pre


def topk_marginals(logits: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    r"""Exact inclusion probabilities P(z_i = 1 | sum z = k) of independent Bernoulli(sigmoid(logits)).

    Math: with odds :math:`w_i = e^{\theta_i}` and the elementary symmetric polynomials
    :math:`e_j(w) = \sum_{|S| = j} \prod_{i \in S} w_i`, the conditional law of
    :math:`z_i \sim \mathrm{Bernoulli}(\sigma(\theta_i))` given :math:`\sum_i z_i = k` is
    :math:`P(z) = \prod_{i: z_i = 1} w_i / e_k(w)`, and

    .. math::

        \mu_i = P(z_i = 1 \mid \textstyle\sum z = k) = \frac{w_i \, e_{k-1}(w_{\setminus i})}{e_k(w)}
        = \frac{\partial \log e_k(w)}{\partial \theta_i}.

    The tables :math:`\log e_j` of every prefix and suffix of the items come from the recursion
    :math:`e_j(w_{1..i}) = e_j(w_{1..i-1}) + w_i e_{j-1}(w_{1..i-1})`, in log space
    (logcumsumexp), and
    :math:`e_{k-1}(w_{\setminus i}) = \sum_{a=0}^{k-1} e_a(w_{<i}) \, e_{k-1-a}(w_{>i})`:
    O(nk) work, no subtraction (so no cancellation), stable for logits far beyond [-80, 80]. This
    explicit prefix / suffix form is used rather than autograd of :math:`\log e_k` (which SIMPLE
    uses): it is the same exact quantity, it works under ``torch.no_grad`` / inference mode, and its
    own gradient (which :func:`simple` backpropagates) is ordinary first-order autograd rather than a
    double backward through the recursion.

    The marginals sum to k along ``dim`` (in float32, up to ~1e-5 where the logits reach +-80:
    the log e_j are then of size 80k); masked (-inf) logits get exactly 0 (and zero gradient).
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
    d, k, lw, _ = _prepare(logits, k, dim, "topk_marginals")
    mu, _ = _marginals(lw, k)
    return mu.movedim(-1, d).to(logits.dtype)


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
    d, k, lw, masked = _prepare(logits, k, dim, fn)
    check_generator(generator, logits.device, fn)
    mu, pre = _marginals(lw, k)
    n = lw.shape[-1]
    u = torch.rand(lw.shape, generator=generator, device=lw.device, dtype=lw.dtype)
    with torch.no_grad():
        pre = pre.detach()
        lwd = lw.detach()
        free = (~masked).to(torch.int64)
        free_upto = free.cumsum(-1)  # unmasked items among 0..i
        r = torch.full(lw.shape[:-1] + (1,), k, dtype=torch.int64, device=lw.device)
        take = torch.zeros_like(masked)
        for i in range(n - 1, -1, -1):
            rc = r.clamp_min(1)
            num = lwd[..., i : i + 1] + pre[..., i].gather(-1, rc - 1)  # w_i e_{r-1}(first i)
            den = pre[..., i + 1].gather(-1, rc)  # e_r(first i+1)
            p = (num - den).exp()
            # r > 0 and unmasked; forced when every remaining unmasked item is needed (p is then
            # 1 up to rounding, which must not leave the subset short).
            t = (r > 0) & (free[..., i : i + 1] > 0) & ((u[..., i : i + 1] < p) | (r >= free_upto[..., i : i + 1]))
            take[..., i : i + 1] = t
            r = r - t.to(torch.int64)
        index = take.to(torch.int8).topk(k, -1).indices
    y = khot_straight_through(mu, index, -1)
    return y.movedim(-1, d).to(logits.dtype)
