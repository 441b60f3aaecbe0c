"""Analytic KL divergence between categorical distributions given by logits."""

from __future__ import annotations

import torch

from ._core.policy import check_mode
from ._core.validation import check_dtype, check_values, normalize_dim, shape_str
from .errors import GumbelkitValueError

__all__ = ["kl_categorical"]


def kl_categorical(q_logits: torch.Tensor, p_logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""KL(q || p) = sum_k q_k (log q_k - log p_k) for q = softmax(q_logits), p = softmax(p_logits).

    Masked classes of q (logit -inf, q_k = 0) contribute exactly 0 with a zero gradient; a class
    masked in p but not in q gives +inf, the true value, with a finite gradient (that of the row's
    finite terms; 0 for masked classes) instead of NaN. The result is clamped at 0 against
    rounding and is exactly 0 when the two logits are equal.

    Args:
        q_logits: logits of q, any floating dtype.
        p_logits: logits of p, broadcastable to ``q_logits``.
        dim: category dimension.

    Returns:
        KL per row: the broadcast shape without ``dim``. NaN logits or an all-masked row raise; in
        ``"device"`` validation mode (see :func:`gumbelkit.set_validation`) that row's KL is NaN.

    Examples:
        >>> kl_categorical(torch.zeros(10), torch.zeros(10))
        tensor(0.)

    Reference: Kullback & Leibler (1951); used as the analytic KL term of Jang et al. (2017).
    """
    fn = "kl_categorical"
    check_dtype(q_logits, "q_logits", fn)
    check_dtype(p_logits, "p_logits", fn)
    try:
        shape = torch.broadcast_shapes(q_logits.shape, p_logits.shape)
    except RuntimeError:
        raise GumbelkitValueError(
            f"{fn}: expected q_logits and p_logits to broadcast, "
            f"got shapes {shape_str(q_logits.shape)} and {shape_str(p_logits.shape)}"
        ) from None
    q_logits = q_logits.expand(shape)
    dim = normalize_dim(q_logits, dim, "q_logits", fn)
    # p keeps its own (smaller) shape except along dim: a prior of K logits broadcast over every
    # position is checked and normalised once, not once per position, and enters the arithmetic
    # below by broadcasting.
    p_logits = p_logits.reshape((1,) * (len(shape) - p_logits.dim()) + tuple(p_logits.shape))
    if p_logits.shape[dim] != shape[dim]:
        p_logits = p_logits.expand(*(shape[dim] if i == dim else n for i, n in enumerate(p_logits.shape)))
    # NaN or an all-masked row would turn log_softmax into NaN silently: refuse them here (in
    # "device" validation mode such a row's KL comes out NaN instead, through the formulas below).
    check_values(q_logits, dim, "q_logits", fn)
    check_values(p_logits, dim, "p_logits", fn)
    log_q = torch.log_softmax(q_logits, dim)
    log_p = torch.log_softmax(p_logits, dim)
    q = log_q.exp()
    # the fast path needs a host read to choose it: only where the checks raise (sync) anyway
    raising = check_mode(q_logits) == "raise"
    if raising and not bool(torch.isneginf(log_q).any() | torch.isneginf(log_p).any()):
        # No -inf log-probability on either side (no masked class, no logit range beyond the
        # dtype's): every term q_k (log q_k - log p_k) is finite, 0 where q_k underflowed, and so
        # is its gradient; the plain formula is exact. Bit-identical to the general path below,
        # whose where()s and inf term are no-ops then (four full-size passes fewer).
        return (q * (log_q - log_p)).sum(dim).clamp_min(0.0)
    # Where q_k = 0 replace both logs by 0 *before* the product: a where() after it would still
    # send 0 * -inf = NaN into the backward.
    zero_q = q == 0
    # Where q_k > 0 but p_k = 0 the term is +inf, the true value, but its gradient is inf (and
    # log_softmax's backward spreads it as 0 * inf = NaN to every class of q, masked ones too).
    # Those terms are left out of the differentiated sum and added back as a constant +inf: the
    # row's value stays exact (+inf) and every gradient stays finite, 0 for masked classes.
    inf_term = ~zero_q & torch.isneginf(log_p)
    drop = zero_q | inf_term
    diff = torch.where(drop, 0.0, log_q) - torch.where(drop, 0.0, log_p)
    kl = (q * diff).sum(dim)
    # + 0 leaves the finite rows bit-identical; + inf passes the finite terms' gradient through
    kl = kl + torch.where(inf_term.any(dim), float("inf"), 0.0)
    return kl.clamp_min(0.0)
