"""Unchecked building blocks of the samplers: the numerical plan, noise buffers, one-hot helpers.

Nothing here validates its arguments: the public samplers (:mod:`gumbelkit._sampling`) and the
estimators check their inputs once, at the boundary, and then call these with normalised
arguments (a non-negative ``dim``, a validated ``tau``, the row maxima of the validation's
reduction).

Numerical plan. theta + g is formed as (theta - m) + g with m the row max only when some
|row max| exceeds :data:`SHIFT_ABOVE`. Above it the rounding of theta + g eats the noise
(theta = 1e7 has a float32 ulp of 1, so [1e7, 1e7] would be drawn 62/38 instead of 50/50); at or
below it theta + g and (theta - m) + g both stay under ~50 in magnitude (ulp <= 4e-6), so the
shift could not change the sampled law and would only cost a B x K pass. The row max comes from
the validation's reduction (no extra pass), and its |max| from the same host sync.
:data:`NOISE_BOUND` bounds |log E| for every noise source (the widest, float64, reaches 45.1),
kept generous: with theta shifted, |(theta - m) - log E| <= NOISE_BOUND, so (theta + g) / tau
cannot overflow unless tau < ~4 * NOISE_BOUND / finfo.max (about 1e-35 in float32). Only then do
the samplers also subtract the perturbed row max, making the top of every row exactly 0 before
dividing.
"""

from __future__ import annotations

import torch

from ._noise import log_exponential_noise
from ._policy import compute_dtype, functorch_active, in_vmap, lean
from ._validation import Tau

__all__ = [
    "NOISE_BOUND",
    "SHIFT_ABOVE",
    "gumbel_argmax",
    "log_exp_noise",
    "needs_grad",
    "noise_plan",
    "one_hot",
    "one_hot_like",
    "overflows",
    "per_class_tau",
    "perturbed",
    "plain_shift",
    "prepare_tau",
    "theta_shift",
]

SHIFT_ABOVE = 16.0
NOISE_BOUND = 1024.0


def overflows(bound: float, tau: float, cdt: torch.dtype) -> bool:
    """Whether |values| <= bound divided by a float tau could reach inf (a margin of 4 for rounding)."""
    return bound / tau > torch.finfo(cdt).max / 4


def prepare_tau(tau: Tau, cdt: torch.dtype) -> Tau:
    """tau in the compute dtype, raised to the dtype's smallest normal number.

    A float tau below the dtype's range (1e-50 in float32) rounds to 0 inside the kernel, and a
    subnormal one is read as 0 under denormals-are-zero: either turns (z - zmax) / tau into
    0 / 0 = NaN at the row's top. At the smallest normal (1.2e-38 in float32) the softmax is
    already one-hot except between values closer than ~1e-38, so the result is unchanged there.
    A tensor tau keeps its gradient (clamp passes it through where tau is not raised).
    """
    tiny = torch.finfo(cdt).tiny
    if isinstance(tau, torch.Tensor):
        return tau.to(cdt).clamp_min(tiny)
    return max(float(tau), tiny)


def per_class_tau(tau: Tau, ndim: int, dim: int) -> bool:
    """Whether a tensor tau varies along the category dim (then no per-row shift is exact)."""
    if not isinstance(tau, torch.Tensor) or tau.dim() == 0:
        return False
    i = dim - (ndim - tau.dim())
    return i >= 0 and tau.shape[i] != 1


def theta_shift(row_max: torch.Tensor, max_abs: float | None, cdt: torch.dtype) -> torch.Tensor | None:
    """The row max to subtract before adding noise (see SHIFT_ABOVE), or None when it cannot matter.

    ``max_abs`` is None under torch.compile / vmap (unknown on the host): shift, which Inductor
    fuses for free.
    """
    if max_abs is not None and max_abs <= SHIFT_ABOVE:
        return None
    return row_max.to(cdt)


def noise_plan(row_max, max_abs, tau: Tau, cdt: torch.dtype, per_class: bool):
    """(m, post) for softmax((theta + g) / tau): the theta shift, and whether to shift again after the noise.

    A tensor tau is not known on the host, so its rows are always brought to a top of exactly 0
    (post): then (z - zmax) / tau lies in [-inf, 0] with a 0 in every row, and the softmax never
    sees inf - inf whatever tau is. A per-class tau cannot be shifted at all (the shift would not
    cancel); that path clamps instead (see :class:`gumbelkit._autograd.TemperedSoftmax`).
    """
    m = theta_shift(row_max, max_abs, cdt) if row_max is not None else None
    if isinstance(tau, torch.Tensor):
        return m, not per_class
    bound = (max_abs if m is None else 0.0) + NOISE_BOUND
    return m, overflows(bound, tau, cdt)


def plain_shift(row_max, max_abs, tau: Tau, cdt: torch.dtype, per_class: bool) -> torch.Tensor | None:
    """The row max to subtract before theta / tau (no noise), or None when theta / tau cannot overflow.

    Without noise, theta - m has a top of exactly 0, which is all the stability the division needs.
    """
    if per_class:
        return None
    if isinstance(tau, torch.Tensor) or max_abs is None or overflows(max_abs, tau, cdt):
        return row_max.to(cdt)
    return None


# --------------------------------------------------------------------------- noise and one-hot helpers


def log_exp_noise(shape, generator, device, cdt: torch.dtype) -> torch.Tensor:
    """log E, E ~ Exp(1), in the compute dtype: a fresh buffer the caller may overwrite.

    Under ``torch.vmap(randomness="different")`` only out-of-place random ops are batched; the
    library's noise is built in place on fresh, unbatched buffers (which vmap refuses, or would
    repeat across the batch), so there the noise comes from one ``torch.rand`` in float64 (53-bit
    uniforms clamped to the smallest normal: E = -log u in [1.1e-16, 708], log E finite).
    """
    if in_vmap():
        u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
        return u.clamp_min_(torch.finfo(torch.float64).tiny).log_().neg_().log_().to(cdt)
    return log_exponential_noise(shape, generator=generator, device=device, dtype=cdt)


def one_hot(ref: torch.Tensor, index: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Zeros shaped like ``ref`` (``dtype`` or ref's) with 1 at ``index`` along ``dim`` (keepdim layout).

    ``index`` may hold several positions per row along ``dim`` (a k-hot result); under torch.func
    transforms the scatter is out of place, so a batched index works with unbatched zeros.
    """
    out = torch.zeros_like(ref, dtype=dtype)
    if functorch_active():
        # Under vmap the index may be batched while the zeros are not: only the out-of-place
        # scatter batches both.
        return out.scatter(dim, index, 1.0)
    return out.scatter_(dim, index, 1.0)


def one_hot_like(ref: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`one_hot` in ref's dtype."""
    return one_hot(ref, index, dim)


def needs_grad(*tensors) -> bool:
    """Whether autograd will record a graph through any of ``tensors`` (non-tensors are ignored)."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def perturbed(logits: torch.Tensor, generator, m: torch.Tensor | None) -> torch.Tensor:
    """(theta [- m]) + g in the compute dtype, no gradient, a fresh buffer. Masked entries stay -inf."""
    cdt = compute_dtype(logits.dtype)
    z = log_exp_noise(logits.shape, generator, logits.device, cdt)
    x = logits.detach()
    if m is not None:
        x = torch.sub(x, m)
    # theta + g = theta - log E, written over the noise buffer in the lean mode
    return torch.sub(x, z, out=z) if lean() else x - z


def gumbel_argmax(logits: torch.Tensor, dim: int, generator=None, m: torch.Tensor | None = None) -> torch.Tensor:
    """argmax(theta + g) along dim, keepdim layout: the index of an exact categorical sample.

    Same noise, same arithmetic and so the same index as the hard forward of
    :class:`gumbelkit._autograd.TemperedSoftmax` for the same generator state and the same ``m``.
    """
    return perturbed(logits, generator, m).argmax(dim, keepdim=True)
