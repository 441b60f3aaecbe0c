"""Shared argument checks of the permutation relaxations."""

from __future__ import annotations

import torch

from .._core.policy import skip_value_checks
from .._core.validation import Tau, check_tau, prefixed, shape_str
from ..errors import GumbelkitValueError

__all__ = ["check_batch_tau", "check_finite"]


def check_finite(x: torch.Tensor, name: str, fn: str) -> None:
    """Raise on NaN or +-inf (scores that are compared with each other: -inf - -inf would be NaN)."""
    if skip_value_checks() or x.numel() == 0:
        return
    x = x.detach()
    if bool(torch.isfinite(x).all()):
        return
    where = f"({name} of shape {shape_str(x.shape)})"
    n_nan = int(torch.isnan(x).sum())
    if n_nan:
        raise GumbelkitValueError(prefixed(fn, f"expected {name} without NaN, got {n_nan} NaN entries {where}"))
    n_inf = int(torch.isinf(x).sum())
    raise GumbelkitValueError(prefixed(fn, f"expected finite {name}, got {n_inf} infinite entries {where}"))


def check_batch_tau(tau: Tau, want: torch.Size, name: str, shape: torch.Size, fn: str) -> Tau:
    """tau > 0 and finite; a tensor tau must broadcast to ``want`` (the batch shape with singleton dims).

    A temperature that varies inside one matrix (or one row of a sort) would break the shift
    invariances the stable computations rely on, so a tensor tau is one value per matrix / row.
    """
    tau = check_tau(tau, None, fn=fn)
    if isinstance(tau, torch.Tensor):
        try:
            ok = torch.broadcast_shapes(tau.shape, want) == want
        except RuntimeError:
            ok = False
        if not ok:
            raise GumbelkitValueError(
                prefixed(
                    fn,
                    f"expected tau broadcastable to {shape_str(want)} (one temperature per matrix of {name} "
                    f"of shape {shape_str(shape)}), got tau of shape {shape_str(tau.shape)}",
                )
            )
    return tau
