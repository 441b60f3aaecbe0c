"""Exact expectations over N categorical variables by enumerating all K^N outcomes.

For z = (z_1, ..., z_N), z_n ~ Categorical(softmax(theta_n)) independent, and a loss f of the
one-hot codes, E[f(z)] = sum_z p(z) f(z) with p(z) = prod_n softmax(theta_n)[z_n]. This is a
differentiable function of theta, so autograd gives the *true* gradient that every estimator
in the gradient lab is compared with (and the VAE enumerates its codes with).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import UserError

__all__ = ["MAX_OUTCOMES", "all_one_hot", "exact_expectation", "exact_gradient"]

# Enumeration cost grows as K^N; above this the lab would spend its time enumerating.
MAX_OUTCOMES = 100_000


def all_one_hot(n: int, k: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """All K^N joint outcomes as one-hot codes, shape (K^N, N, K), in lexicographic order.

    Examples:
        >>> from experiments.exact import all_one_hot
        >>> all_one_hot(2, 3).shape
        torch.Size([9, 2, 3])
    """
    if n < 1 or k < 1:
        raise UserError(f"expected n >= 1 and k >= 1, got n={n}, k={k}")
    if k**n > MAX_OUTCOMES:
        raise UserError(f"expected at most {MAX_OUTCOMES} outcomes to enumerate, got K^N = {k}^{n} = {k**n}")
    grids = torch.cartesian_prod(*[torch.arange(k, device=device) for _ in range(n)])
    index = grids.reshape(-1, n)  # cartesian_prod of one tensor returns a 1-d tensor
    return torch.nn.functional.one_hot(index, k).to(dtype)


def exact_expectation(
    logits: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor], *, chunk: int = 8192
) -> torch.Tensor:
    r"""E_{z ~ prod_n Cat(softmax(logits_n))}[f(z)], exactly, differentiable in ``logits``.

    Math: sum_z exp(sum_n log_softmax(theta_n)[z_n]) f(z). log p(z) is a gather-free dot
    product of the one-hot code with log_softmax, so a masked class (-inf) would give
    0 * -inf = NaN; the lab never masks, and finite logits are checked here.

    Args:
        logits: (N, K) logits (may be an expanded view of tied parameters).
        f: maps one-hot codes (M, N, K) to losses (M,); evaluated on all K^N outcomes in chunks.
        chunk: outcomes per call of ``f`` (bounds memory).

    Returns:
        0-d tensor in ``logits``' dtype.

    Examples:
        >>> import torch
        >>> from experiments.exact import exact_expectation
        >>> theta = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
        >>> round(exact_expectation(theta, lambda z: z[:, 0, 0]).item(), 4)
        0.3333
    """
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape (N, K), got {tuple(logits.shape)}")
    if not bool(torch.isfinite(logits.detach()).all()):
        raise ValueError("expected finite logits for exact enumeration")
    n, k = logits.shape
    codes = all_one_hot(n, k, dtype=logits.dtype, device=logits.device)
    logp_table = torch.log_softmax(logits, -1)
    total = logits.new_zeros(())
    for start in range(0, codes.shape[0], chunk):
        z = codes[start : start + chunk]
        log_p = (z * logp_table).sum((-1, -2))
        values = f(z)
        if values.shape != log_p.shape:
            raise ValueError(f"expected f to return shape {tuple(log_p.shape)}, got {tuple(values.shape)}")
        total = total + (log_p.exp() * values.to(log_p.dtype)).sum()
    return total


def exact_gradient(
    params: torch.Tensor,
    to_logits: Callable[[torch.Tensor], torch.Tensor],
    f: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Value and gradient of ``exact_expectation(to_logits(params), f)`` with respect to ``params``.

    ``to_logits`` maps the free parameters to (N, K) logits, e.g. an ``expand`` for variables
    that share one set of logits; the gradient then sums over the tied copies, as autograd does.

    Returns:
        (value, gradient), gradient shaped like ``params``, both detached.
    """
    p = params.detach().clone().requires_grad_(True)
    value = exact_expectation(to_logits(p), f)
    (grad,) = torch.autograd.grad(value, p)
    return value.detach(), grad.detach()
