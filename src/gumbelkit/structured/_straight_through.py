r"""Exact discrete forwards for structured relaxations, with the relaxation's gradient.

The straight-through estimator for a discrete object z(theta) with a differentiable relaxation
s(theta) of the same shape returns

.. math::

    y = z + (s - \operatorname{stopgrad}(s)),

whose value is exactly z and whose gradient is that of s. Here it is one autograd node,
:class:`gumbelkit._core.autograd.ScatterStraightThrough` (forward: zeros with ones at given indices;
backward: the identity into ``soft``), shared with the categorical one-hot straight-through:
the forward is exact (no ``s - s`` rounding), the backward is one pass, and it works under
double backward and ``torch.vmap``.
"""

from __future__ import annotations

import torch

from .._core.autograd import one_hot_straight_through
from .._core.numerics import one_hot
from .._core.policy import skip_value_checks
from .._core.validation import (
    check_dtype,
    check_float_dtype,
    normalize_dim,
    prefixed,
    shape_str,
)
from ..errors import GumbelkitTypeError, GumbelkitValueError
from ._checks import check_structured, check_subset_size

__all__ = ["khot", "khot_straight_through", "permutation_matrix", "permutation_straight_through", "topk_indices"]


# --------------------------------------------------------------------------- index checks


def _index_tensor(index, fn: str, name: str) -> torch.Tensor:
    """An integer tensor as int64 (the dtype scatter takes; a copy only for other integer dtypes)."""
    if not isinstance(index, torch.Tensor):
        raise GumbelkitTypeError(prefixed(fn, f"expected {name} to be a torch.Tensor, got {type(index).__name__}"))
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise GumbelkitTypeError(
            prefixed(
                fn,
                f"expected {name} with an integer dtype, got {index.dtype} ({name} of shape {shape_str(index.shape)})",
            )
        )
    return index if index.dtype == torch.int64 else index.to(torch.int64)


def _check_khot_index(soft: torch.Tensor, index: torch.Tensor, dim: int, fn: str) -> None:
    """index: soft's shape with k in [1, K] along dim, entries in [0, K), distinct along dim."""
    K = soft.shape[dim]
    want = f"soft's shape {shape_str(soft.shape)} with 1 <= k <= {K} along dim={dim}"
    ok = index.dim() == soft.dim() and 1 <= index.shape[dim] <= K
    ok = ok and all(index.shape[d] == soft.shape[d] for d in range(soft.dim()) if d != dim)
    if not ok:
        raise GumbelkitValueError(
            prefixed(fn, f"expected index of {want}, got index of shape {shape_str(index.shape)}")
        )
    if skip_value_checks() or index.numel() == 0:
        return
    lo, hi = torch.aminmax(index)
    if int(lo) < 0 or int(hi) >= K:
        raise GumbelkitValueError(
            prefixed(
                fn,
                f"expected index entries in [0, {K - 1}], got values in [{int(lo)}, {int(hi)}] "
                f"(index of shape {shape_str(index.shape)})",
            )
        )
    if index.shape[dim] > 1:
        s = index.sort(dim).values
        n_dup = int((s.narrow(dim, 1, s.shape[dim] - 1) == s.narrow(dim, 0, s.shape[dim] - 1)).sum())
        if n_dup:
            raise GumbelkitValueError(
                prefixed(
                    fn,
                    f"expected distinct indices along dim={dim} (a k-hot), got {n_dup} repeated "
                    f"(index of shape {shape_str(index.shape)})",
                )
            )


def _check_perm(perm: torch.Tensor, n: int, batch: torch.Size, fn: str, what: str) -> None:
    """perm: shape batch + (n,), each row a permutation of 0..n-1."""
    if perm.shape != batch + (n,):
        raise GumbelkitValueError(
            prefixed(
                fn,
                f"expected perm of shape {shape_str(batch + (n,))} ({what}), got perm of shape {shape_str(perm.shape)}",
            )
        )
    if skip_value_checks() or perm.numel() == 0:
        return
    ok = perm.sort(-1).values == torch.arange(n, device=perm.device)
    if not bool(ok.all()):
        n_bad = int((~ok.all(-1)).sum())
        raise GumbelkitValueError(
            prefixed(
                fn,
                f"expected each row of perm to be a permutation of 0..{n - 1}, got {n_bad} row(s) that are not "
                f"(perm of shape {shape_str(perm.shape)})",
            )
        )


# --------------------------------------------------------------------------- index and mask builders


def topk_indices(scores: torch.Tensor, k: int, dim: int = -1, *, sorted: bool = True) -> torch.Tensor:
    r"""The indices of the k largest ``scores`` along ``dim`` (no gradient): the support of a k-hot.

    Math: the set :math:`\{i_1, \dots, i_k\}` with :math:`s_{i_1} \ge \dots \ge s_{i_k} \ge s_j` for every
    other j. With perturbed scores :math:`s = \theta + g`, g i.i.d. Gumbel, it is an exact sample of
    k draws without replacement (use :func:`gumbelkit.gumbel_topk` to draw one directly). Ties go to
    the lower index as in ``torch.topk`` on the CPU.

    Args:
        scores: floating scores; -inf marks an item that can never be chosen.
        k: the subset size, 1 <= k <= the number of finite scores in every row.
        dim: the item dim.
        sorted: return the indices in decreasing order of score (else in an unspecified order).

    Returns:
        int64 tensor shaped like ``scores`` with ``dim`` of size k.

    Raises:
        GumbelkitError: a non-floating ``scores``, a bad ``dim``, NaN / +inf / all-masked rows, or
            k outside [1, unmasked count].

    Examples:
        >>> topk_indices(torch.tensor([[0.1, 3.0, -1.0, 2.0]]), 2)
        tensor([[1, 3]])
    """
    fn = "topk_indices"
    (d,) = check_structured(scores, (dim,), fn=fn, name="scores")
    k = check_subset_size(k, scores, d, fn=fn, name="scores")
    return scores.detach().topk(k, d, sorted=bool(sorted)).indices


def khot(index: torch.Tensor, like: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""The exact k-hot tensor: zeros shaped and typed like ``like``, with 1 at ``index`` along ``dim``.

    Math: :math:`z_i = 1` if i is one of the k indices of its row, else 0, so :math:`\sum_i z_i = k`.

    Args:
        like: a floating tensor giving the shape, dtype and device (e.g. the logits).
        index: int tensor shaped like ``like`` with ``dim`` of size k, distinct indices in [0, K)
            per row (e.g. from :func:`topk_indices` or :func:`gumbelkit.gumbel_topk`).
        dim: the item dim.

    Returns:
        Tensor shaped and typed like ``like``, exactly 0/1, no gradient.

    Examples:
        >>> khot(torch.tensor([[2, 0]]), torch.zeros(1, 4))
        tensor([[1., 0., 1., 0.]])
    """
    fn = "khot"
    check_dtype(like, "like", fn)
    d = normalize_dim(like, dim, "like", fn)
    index = _index_tensor(index, fn, "index")
    _check_khot_index(like, index, d, fn)
    return one_hot(like.detach(), index, d)


def khot_straight_through(soft: torch.Tensor, index: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""Exact k-hot forward at ``index``, with the gradient passed to ``soft`` unchanged.

    Math: forward :math:`y = \mathrm{khot}(\text{index})`, backward
    :math:`\partial L / \partial \text{soft} = \partial L / \partial y` (the straight-through
    estimator of a relaxed top-k: ``soft`` is the relaxation, e.g. a relaxed k-hot summing to k).
    One autograd node; differentiable again (double backward) and batched by ``torch.vmap``.

    Args:
        soft: the relaxation, a floating tensor (any shape); its gradient is the output's.
        index: int tensor shaped like ``soft`` with ``dim`` of size k (1 <= k <= K), distinct
            indices in [0, K) along ``dim`` -- typically ``gumbel_topk(logits, k)``.
        dim: the item dim.

    Returns:
        Tensor shaped and typed like ``soft``: exactly 1 at the k indices of each row, 0 elsewhere.

    Raises:
        GumbelkitError: a non-floating ``soft``, a non-integer ``index``, a shape mismatch, indices
            out of range or repeated in a row (the value checks are skipped under compile / vmap).

    Examples:
        >>> soft = torch.tensor([[0.7, 0.2, 0.9, 0.2]], requires_grad=True)
        >>> y = khot_straight_through(soft, torch.tensor([[2, 0]]), dim=-1)
        >>> y
        tensor([[1., 0., 1., 0.]], grad_fn=<ScatterStraightThroughBackward>)
        >>> (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
        >>> soft.grad
        tensor([[1., 2., 3., 4.]])
    """
    fn = "khot_straight_through"
    check_dtype(soft, "soft", fn)
    d = normalize_dim(soft, dim, "soft", fn)
    index = _index_tensor(index, fn, "index")
    _check_khot_index(soft, index, d, fn)
    return one_hot_straight_through(soft, index, d)


def permutation_matrix(perm: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""The permutation matrix of an index permutation along the last dim: :math:`P_{i, \pi(i)} = 1`.

    Math: with :math:`\pi` = ``perm``, :math:`(P x)_i = x_{\pi(i)}`, i.e. ``P @ x == x[perm]``.

    Args:
        perm: int tensor (..., n), each row a permutation of 0..n-1 (e.g. ``argsort`` of scores).
        dtype: the floating dtype of the result.

    Returns:
        Tensor (..., n, n) of ``dtype`` on perm's device, exactly 0/1, one 1 per row and column.

    Examples:
        >>> permutation_matrix(torch.tensor([2, 0, 1]))
        tensor([[0., 0., 1.],
                [1., 0., 0.],
                [0., 1., 0.]])
    """
    fn = "permutation_matrix"
    perm = _index_tensor(perm, fn, "perm")
    check_float_dtype(dtype, "dtype", fn)
    if perm.dim() == 0:
        raise GumbelkitValueError(prefixed(fn, "expected perm with at least one dimension, got a 0-d tensor"))
    n = perm.shape[-1]
    _check_perm(perm, n, perm.shape[:-1], fn, "any batch shape")
    out = torch.zeros(perm.shape + (n,), dtype=dtype, device=perm.device)
    return out.scatter_(-1, perm.unsqueeze(-1), 1.0)


def permutation_straight_through(soft: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    r"""Exact permutation-matrix forward from ``perm``, with the gradient passed to ``soft`` unchanged.

    Math: forward :math:`y = P_\pi` with :math:`(P_\pi)_{i, \pi(i)} = 1` (see
    :func:`permutation_matrix`), backward :math:`\partial L / \partial \text{soft} = \partial L / \partial y`:
    the straight-through estimator of a relaxed permutation, where ``soft`` is e.g. a doubly
    stochastic Sinkhorn matrix and ``perm`` its rounding (the Hungarian assignment, or the argsort
    of perturbed scores). One autograd node; double backward and ``torch.vmap`` work.

    Args:
        soft: the relaxation, a floating tensor (..., n, n).
        perm: int tensor (...,  n) with soft's batch shape, each row a permutation of 0..n-1.

    Returns:
        Tensor shaped and typed like ``soft``: exactly the permutation matrix of ``perm``.

    Raises:
        GumbelkitError: a non-floating or non-square ``soft``, a non-integer ``perm``, a shape
            mismatch, or a row of ``perm`` that is not a permutation (skipped under compile / vmap).

    Examples:
        >>> soft = torch.full((3, 3), 1.0 / 3, requires_grad=True)
        >>> y = permutation_straight_through(soft, torch.tensor([1, 2, 0]))
        >>> bool(torch.equal(y.detach(), permutation_matrix(torch.tensor([1, 2, 0]))))
        True
        >>> (y * torch.arange(9.0).view(3, 3)).sum().backward()
        >>> bool(torch.equal(soft.grad, torch.arange(9.0).view(3, 3)))
        True
    """
    fn = "permutation_straight_through"
    check_dtype(soft, "soft", fn)
    if soft.dim() < 2:
        raise GumbelkitValueError(
            prefixed(fn, f"expected soft with at least two dims (..., n, n), got soft of shape {shape_str(soft.shape)}")
        )
    check_structured(soft, (-2, -1), fn=fn, name="soft", values=False)
    if soft.shape[-1] != soft.shape[-2]:
        raise GumbelkitValueError(
            prefixed(
                fn, f"expected soft square in its last two dims (..., n, n), got soft of shape {shape_str(soft.shape)}"
            )
        )
    perm = _index_tensor(perm, fn, "perm")
    n = soft.shape[-1]
    _check_perm(perm, n, soft.shape[:-2], fn, f"soft's shape {shape_str(soft.shape)} without its last dim")
    return one_hot_straight_through(soft, perm.unsqueeze(-1), soft.dim() - 1)
