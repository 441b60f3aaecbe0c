"""Argument checks for structured relaxations, built on the library's single-dim policies.

Each check takes ``fn``, the name of the public function being called, and raises the
:mod:`gumbelkit.errors` types with the library's message style
(``"<fn>: expected <argument> <what>, got <value> (<shapes>)"``). Value checks (NaN, +inf,
fully masked rows, masked-class counts) read the data and follow the library's rule: they are
skipped while compiling and under ``torch.vmap``.
"""

from __future__ import annotations

import torch

from .._core.policy import skip_value_checks
from .._core.validation import (
    check_dtype,
    check_int,
    check_values,
    is_int,
    normalize_dim,
    prefixed,
    shape_str,
)
from ..errors import GumbelkitDimError, GumbelkitTypeError, GumbelkitValueError

__all__ = ["check_iterations", "check_square", "check_structured", "check_subset_size"]


def check_structured(
    logits: torch.Tensor,
    dims=(-2, -1),
    *,
    fn: str | None = None,
    name: str = "logits",
    values: bool = True,
) -> tuple[int, ...]:
    r"""Check a tensor whose discrete object spans several category dims; return the dims normalised.

    A structured object (an n x n permutation, a grid of K-way choices) has its categories along
    several dims at once. The checks are the library's single-dim checks applied to each of
    ``dims``: a floating dtype, every dim existing and distinct, at least one entry along each,
    and (``values=True``) no NaN, no +inf and no slice along any of ``dims`` that is entirely
    -inf (masked). The value checks cost one reduction per dim and one host sync.

    Args:
        logits: the scores, any floating dtype.
        dims: an int or a non-empty sequence of distinct ints (negative ones count from the end).
        fn: the public function's name, for the messages.
        name: the argument's name, for the messages.
        values: also run the data-dependent checks (skipped anyway while compiling / under vmap).

    Returns:
        The dims as non-negative ints, in the order given.

    Raises:
        GumbelkitTypeError: ``logits`` is not a floating tensor, or a dim is not an int.
        GumbelkitDimError: a dim out of range, or the same dim twice.
        GumbelkitValueError: an empty dim, NaN, +inf or an all-masked slice.

    Examples:
        >>> check_structured(torch.zeros(2, 3, 3), dims=(-2, -1))
        (1, 2)
        >>> check_structured(torch.zeros(3, 3), dims=(0, -2), fn="sinkhorn")
        Traceback (most recent call last):
        ...
        gumbelkit.errors.GumbelkitDimError: sinkhorn: expected distinct dims, got (0, -2) (both dim 0) for logits of shape (3, 3)
    """
    check_dtype(logits, name, fn)
    given = (dims,) if is_int(dims) else dims
    try:
        given = tuple(given)
    except TypeError:
        raise GumbelkitTypeError(
            prefixed(fn, f"expected dims to be an int or a sequence of ints, got {type(dims).__name__}")
        ) from None
    if not given:
        raise GumbelkitValueError(prefixed(fn, "expected at least one dim, got dims=()"))
    out: list[int] = []
    for d in given:
        nd = normalize_dim(logits, d, name, fn)
        if nd in out:
            raise GumbelkitDimError(
                prefixed(
                    fn,
                    f"expected distinct dims, got {given} (both dim {nd}) for {name} of shape {shape_str(logits.shape)}",
                )
            )
        out.append(nd)
    if values:
        for d in out:
            check_values(logits, d, name, fn)
    return tuple(out)


def check_square(
    logits: torch.Tensor,
    dims=(-2, -1),
    *,
    fn: str | None = None,
    name: str = "logits",
    values: bool = True,
) -> tuple[int, int]:
    r""":func:`check_structured` for two dims of equal size, e.g. the n x n scores of a permutation.

    Args:
        logits: the scores, any floating dtype, with the square matrix along ``dims``.
        dims: the two dims (default the last two).
        fn, name, values: as in :func:`check_structured`.

    Returns:
        The two dims, normalised.

    Raises:
        GumbelkitValueError: the two sizes differ (and everything :func:`check_structured` raises).

    Examples:
        >>> check_square(torch.zeros(5, 4, 4))
        (1, 2)
        >>> check_square(torch.zeros(4, 3), fn="gumbel_sinkhorn")
        Traceback (most recent call last):
        ...
        gumbelkit.errors.GumbelkitValueError: gumbel_sinkhorn: expected a square matrix along dims (0, 1), got sizes 4 x 3 for logits of shape (4, 3)
    """
    out = check_structured(logits, dims, fn=fn, name=name, values=values)
    if len(out) != 2:
        raise GumbelkitValueError(
            prefixed(fn, f"expected exactly two dims for a square matrix, got {len(out)}: {tuple(out)}")
        )
    a, b = out
    if logits.shape[a] != logits.shape[b]:
        raise GumbelkitValueError(
            prefixed(
                fn,
                f"expected a square matrix along dims ({a}, {b}), got sizes {logits.shape[a]} x {logits.shape[b]} "
                f"for {name} of shape {shape_str(logits.shape)}",
            )
        )
    return a, b


def check_subset_size(
    k,
    logits: torch.Tensor,
    dim: int = -1,
    *,
    fn: str | None = None,
    name: str = "logits",
    values: bool = True,
) -> int:
    r"""A subset size k with 1 <= k <= K (the size of ``dim``) and at most the unmasked count of every row.

    The rule :func:`gumbelkit.gumbel_topk` applies: a row with fewer than k finite scores has no
    k-subset of unmasked items. That count (``values=True``) costs one pass and one host sync and
    is skipped while compiling and under vmap.

    Args:
        k: the subset size, an integer.
        logits: the scores (already checked, e.g. by :func:`check_structured`).
        dim: the item dim.
        fn, name, values: as in :func:`check_structured`.

    Returns:
        k as a Python int.

    Raises:
        GumbelkitValueError: k not an integer in [1, K], or larger than a row's unmasked count.

    Examples:
        >>> check_subset_size(2, torch.zeros(3, 5))
        2
        >>> x = torch.tensor([[0.0, float("-inf"), 1.0]])
        >>> check_subset_size(3, x, fn="relaxed_topk")
        Traceback (most recent call last):
        ...
        gumbelkit.errors.GumbelkitValueError: relaxed_topk: expected k <= 2 (the fewest unmasked entries in a row along dim=1 of logits of shape (1, 3)), got 3
    """
    d = normalize_dim(logits, dim, name, fn)
    k = check_int(k, "k", min=1, max=logits.shape[d], fn=fn)
    if values and not skip_value_checks() and logits.numel():
        n_free = int(torch.isfinite(logits.detach()).sum(d).min())
        if k > n_free:
            raise GumbelkitValueError(
                prefixed(
                    fn,
                    f"expected k <= {n_free} (the fewest unmasked entries in a row along dim={d} of {name} "
                    f"of shape {shape_str(logits.shape)}), got {k}",
                )
            )
    return k


def check_iterations(n_iters, *, fn: str | None = None, name: str = "n_iters", max: int | None = None) -> int:
    r"""An iteration count (Sinkhorn normalisations, refinement steps): an integer >= 1 (and <= max).

    Args:
        n_iters: the count.
        fn: the public function's name, for the messages.
        name: the argument's name.
        max: an optional upper bound.

    Returns:
        The count as a Python int.

    Examples:
        >>> check_iterations(20)
        20
        >>> check_iterations(0, fn="gumbel_sinkhorn")
        Traceback (most recent call last):
        ...
        gumbelkit.errors.GumbelkitValueError: gumbel_sinkhorn: expected n_iters to be an integer >= 1, got 0
    """
    return check_int(n_iters, name, min=1, max=max, fn=fn)
