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

import math

import torch

from . import gpu as _gpu
from .noise import log_exponential_noise
from .policy import compute_dtype, functorch_active, lean
from .validation import Tau

__all__ = [
    "NOISE_BOUND",
    "SHIFT_ABOVE",
    "argmax_index",
    "argmax_index_",
    "argmax_one_hot",
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
    "vertical_softmax_",
    "vertical_softmax_grad",
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
    cancel); that path clamps instead (see :class:`gumbelkit._core.autograd.TemperedSoftmax`).
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

    Under ``torch.vmap(randomness="different")`` the noise module draws it out of place (every
    noise function does), so that each batch element gets its own draw.
    """
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


def argmax_one_hot(z: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """one_hot(argmax(z, dim)) in ``dtype`` (z's by default): 1 at each row's first maximum, 0 elsewhere.

    On the CPU, ATen's argmax is a scalar loop: 2.4 ms for a 2048 x 512 buffer, where amax takes
    0.2 ms, and with the scatter of the one-hot it cost more than the softmax itself. Here the
    one-hot is ``z >= amax(z)`` written as 0/1 straight into the output (one vectorised pass, about
    3x faster than argmax + scatter from K = 10 to K = 32000), then the rows that mark more than one
    class are redone with argmax: a tie of two equal maxima (the noise's cell grid makes this a
    ~1e-3 event per row for thousands of equal logits) goes to the lowest index, as argmax does; a
    row with a NaN (which the public functions reject before this) marks none and gets argmax's
    answer, the NaN's position. Elsewhere (CUDA, torch.func transforms, tracing under compile, empty
    input) it is argmax + scatter: the row fix-up needs a data-dependent host sync.
    """
    out_dtype = dtype or z.dtype
    if z.device.type != "cpu" or z.numel() == 0 or functorch_active() or torch.compiler.is_compiling():
        return one_hot(z, z.argmax(dim, keepdim=True), dim, out_dtype)
    if z.dim() == 1:  # one row: give it a row dim, so that the fix-up below indexes rows
        return argmax_one_hot(z.unsqueeze(0), 1, out_dtype).squeeze(0)
    hot = torch.ge(z, z.amax(dim, keepdim=True), out=torch.empty_like(z, dtype=out_dtype))
    bad = hot.sum(dim, dtype=torch.float32).ne_(1.0)
    if bool(bad.any()):
        rows = bad.nonzero(as_tuple=True)  # the offending rows' coordinates (every dim but ``dim``)
        zr = z.movedim(dim, -1)[rows]  # (T, K): only the offending rows
        fixed = torch.zeros_like(zr, dtype=out_dtype)
        fixed[torch.arange(zr.shape[0], device=z.device), zr.argmax(-1)] = 1.0
        hot.movedim(dim, -1)[rows] = fixed
    return hot


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
    :class:`gumbelkit._core.autograd.TemperedSoftmax` for the same generator state and the same ``m``.
    For CUDA tensors the Triton Gumbel-Max kernel (the same index as the Triton Gumbel-Softmax's
    hard forward for the same generator state); a bad row, which only ``"device"`` validation
    lets through, gets index 0 here (the callers mark its output NaN).
    """
    if _gpu.use_triton(logits):
        return _gpu.gumbel_max_index(logits, dim, generator).clamp_min(0).unsqueeze(dim)
    return argmax_index_(perturbed(logits, generator, m), dim)


_FAST_ARGMAX_MIN = 1 << 15  # 100 x 20 x 10 (20,000 elements): ATen's argmax 1.1-1.25x faster; 4096 x 10 even


def _fast_argmax(z: torch.Tensor, dim: int) -> bool:
    """Whether :func:`argmax_index_` takes its 0/1-marks path for ``z`` along ``dim`` (else ATen's argmax)."""
    if z.dim() == 0:
        return False
    dim = dim % z.dim()
    inner = math.prod(z.shape[dim + 1 :])
    return (
        z.device.type == "cpu"
        # the 0/1 marks are multiplied by 0..K-1 in z's dtype: exact in float32/float64 only
        # (bfloat16 holds integers exactly up to 256, float16 up to 2048)
        and z.dtype in (torch.float32, torch.float64)
        and z.numel() >= _FAST_ARGMAX_MIN  # small: the few small ops cost more than argmax's loop
        and z.is_contiguous()
        and not 1 < inner < 64
        and z.shape[dim] < 2**24
        and lean()
    )


def argmax_index(z: torch.Tensor, dim: int) -> torch.Tensor:
    """argmax(z, dim, keepdim=True) as int64 (ties to the lowest index), z left untouched.

    :func:`argmax_index_` on a copy where its path is faster than ATen's argmax even with the copy
    (0.35 ms to copy 2048 x 512 floats, 1.2 ms saved), else ATen's argmax.
    """
    return argmax_index_(z.detach().clone(), dim) if _fast_argmax(z, dim) else z.argmax(dim, keepdim=True)


def argmax_index_(z: torch.Tensor, dim: int) -> torch.Tensor:
    """argmax(z, dim, keepdim=True) as int64, ties to the lowest index; z (private) may be overwritten.

    On the CPU ATen's argmax is a scalar loop: 2.1 ms for 2048 x 512 along the last dim (amax: 0.2
    ms), 8.1 ms along dim=1 of 4 x 512 x 32 x 32. For a contiguous z viewed as (outer, K, inner) the
    index comes instead from z >= amax(z) along K (vectorised), written over z as 0/1, times the
    vector 0, 1, ..., K - 1 (one matrix product; exact, since each row has one nonzero term and
    indices below 2**24 are exact floats). Rows that mark more than one class (a tie of two equal
    maxima) take their first mark, as argmax does. A row with a NaN (rejected by the public
    functions before this), CUDA, small or strided input, 1 < inner < 64 (ATen's reductions over K
    are slow there) and torch.compile / torch.func keep ATen's argmax.
    """
    if not _fast_argmax(z, dim):
        return z.argmax(dim, keepdim=True)
    dim = dim % z.dim()
    k = z.shape[dim]
    outer, inner = math.prod(z.shape[:dim]), math.prod(z.shape[dim + 1 :])
    z3 = z.view(outer, k, inner)
    top = z3.amax(1, keepdim=True)
    if bool(torch.isnan(top).any()):  # argmax reports a NaN's position; the 0/1 marks would lose it
        return z.argmax(dim, keepdim=True)
    hot = z3.ge_(top)
    ramp = torch.arange(k, dtype=hot.dtype, device=z.device)
    if inner == 1:  # categories last: one matrix-vector product (a batched (1, K) @ (K, 1) is slow)
        index = torch.mv(hot.view(outer, k), ramp).view(outer, 1, 1)
    else:  # (1, K) @ (outer, K, inner): every column's index of its 1, as (outer, 1, inner)
        index = torch.matmul(ramp.view(1, k), hot)
    ties = (hot.sum(1) != 1).nonzero()  # (T, 2): the (outer, inner) coordinates of tied columns
    if ties.numel():
        o, j = ties[:, 0], ties[:, 1]
        index[o, 0, j] = hot[o, :, j].argmax(1).to(index.dtype)  # the first of the tied maxima
    return index.to(torch.int64).view(*z.shape[:dim], 1, *z.shape[dim + 1 :])


# --------------------------------------------------------------------------- softmax along a strided dim
#
# For a contiguous buffer viewed as (outer, K, inner) with inner > 1 -- e.g. B x K x H x W with the
# categories at dim=1 -- ATen's softmax, argmax and softmax backward walk each category column with a
# stride of ``inner`` elements. With ``inner`` a power of two (H x W = 32 x 32: a 4 KiB stride) the
# lines of one column fall into a few cache sets and evict each other between the kernel's passes,
# so these kernels measured 2-4x slower than along the last dim. The functions below instead cut the
# buffer into *contiguous* blocks of about _VBLOCK elements -- whole slabs (K x inner) when a slab
# fits, else runs of category rows of one slab -- and run every pass of a block while it is in the
# L2 cache: reductions over the category dim of a contiguous block are vectorised across ``inner``.
# Blocks are cut by the logical shape only (never by strides), so the result is a function of the
# logical values: the same generator state gives the same sample whatever the input's layout.

_VBLOCK = 1 << 18  # elements per block: 1 MiB of float32, inside a 2 MiB L2 with the block's temporaries
_VBLOCK_GRAD = 1 << 16  # the backward visits y, v, a temporary and the result: four blocks in cache


def _vsplit(t3: torch.Tensor, size: int) -> tuple[bool, list[torch.Tensor]]:
    """(whole, blocks) of a contiguous (outer, k, inner) buffer, about ``size`` elements per block.

    whole: each block is a run of complete slabs (outer index range, all k categories); otherwise
    each block holds a run of category rows of every slab, (outer, rows, inner), which is
    ``outer`` contiguous pieces. One ``split`` call makes all the views.
    """
    outer, k, inner = t3.shape
    if k * inner <= size:
        return True, list(t3.split(max(1, size // (k * inner)), 0))
    return False, list(t3.split(max(1, size // (outer * inner)), 1))


def _first_max_fix(h3: torch.Tensor, count: torch.Tensor) -> None:
    """Make every (outer, inner) column of the 0/1 buffer h3 one-hot at its first 1 where ``count`` != 1.

    Columns with a tie (two equal maxima: the cell grid of the noise makes this a ~1e-3 event per row
    for thousands of equal logits) keep the lowest index, as ``argmax`` does. Columns without a 1 (a
    NaN row, which the public functions reject before getting here) take index 0.
    """
    bad = (count != 1).nonzero()
    if bad.numel() == 0:
        return
    o, j = bad[:, 0], bad[:, 1]
    cols = h3[o, :, j]  # (T, K): the offending columns
    first = cols.argmax(1)
    fixed = torch.zeros_like(cols)
    fixed[torch.arange(cols.shape[0]), first] = 1.0
    h3[o, :, j] = fixed


def vertical_softmax_(z: torch.Tensor, dim: int, tau: float, hard: bool) -> torch.Tensor | None:
    """softmax(z / tau) along ``dim`` written over z (contiguous, private), blocked for the cache.

    Returns the one-hot of argmax(z) along ``dim`` (ties to the lowest index, in z's dtype) when
    ``hard``, else None. z must be contiguous with ``dim`` not its last dim.

    Per block: m = max over the block's category rows, d = z - m (<= 0, exactly 0 at the maximum:
    dividing by tau afterwards can give -inf, never inf - inf), one-hot candidates d >= 0 (1 at
    every maximum, 0 elsewhere, 0 at -inf), e = exp(d / tau) and its sum s. When a slab's categories
    span several blocks the blocks are merged like an online softmax: M = max_b m_b,
    S = sum_b s_b exp((m_b - M) / tau), and the second pass scales each block by exp((m_b - M) / tau) / S
    (a block whose column is all -inf gets factor 0, never exp(nan)) and keeps only the candidates
    of blocks that hold the global maximum.
    """
    shape = z.shape
    k = shape[dim]
    outer = math.prod(shape[:dim])
    inner = math.prod(shape[dim + 1 :])
    z3 = z.view(outer, k, inner)
    h3 = torch.empty_like(z3) if hard else None
    scale = tau != 1.0
    whole, zb = _vsplit(z3, _VBLOCK)
    hb: list[torch.Tensor | None] = list(_vsplit(h3, _VBLOCK)[1]) if h3 is not None else [None] * len(zb)
    counts, stats = [], []
    for c, h in zip(zb, hb):
        m = c.amax(1, keepdim=True)
        # an all-masked column of a block: subtract 0 instead of -inf (its exp is 0 either way)
        c.sub_(m if whole else torch.where(torch.isneginf(m), 0.0, m))
        if h is not None:
            torch.ge(c, 0.0, out=h)  # 1 at every maximum (d = 0), 0 below it and at -inf
        if scale:
            c.div_(tau)
        c.exp_()
        s = c.sum(1, keepdim=True)
        if whole:
            c.div_(s)
            if h is not None:
                counts.append(h.sum(1, keepdim=True))
        else:
            stats.append((m, s))
    if not whole:
        ms = torch.stack([t[0] for t in stats])  # (blocks, outer, 1, inner)
        top = ms.amax(0, keepdim=True)
        factor = torch.where(torch.isneginf(ms), 0.0, torch.exp((ms - top) / tau))
        factor = factor / (torch.stack([t[1] for t in stats]) * factor).sum(0, keepdim=True)
        is_top = (ms == top).to(z.dtype)
        for b, (c, h) in enumerate(zip(zb, hb)):
            c.mul_(factor[b])
            if h is not None:
                counts.append(h.mul_(is_top[b]).sum(1, keepdim=True))
    if h3 is None:
        return None
    count = torch.cat(counts, 0) if whole else torch.stack(counts).sum(0)
    _first_max_fix(h3, count.view(outer, inner))
    return h3.view(shape)


def vertical_softmax_grad(y: torch.Tensor, v: torch.Tensor, dim: int, *, overwrite_y: bool) -> torch.Tensor:
    """y * (v - <y, v>) along ``dim`` for a contiguous y with ``dim`` not last, blocked for the cache.

    Two passes over memory: the per-column <y, v> (accumulated over the blocks of a slab), then
    (v - <y, v>) * y written over y (``overwrite_y``: a private saved softmax) or into a new buffer.
    Not differentiable (in-place): the caller uses it only when no graph is being built.
    """
    shape = y.shape
    k = shape[dim]
    outer = math.prod(shape[:dim])
    inner = math.prod(shape[dim + 1 :])
    y3 = y.view(outer, k, inner)
    v3 = v.reshape(outer, k, inner)
    out3 = y3 if overwrite_y else torch.empty_like(y3)
    whole, yb = _vsplit(y3, _VBLOCK_GRAD)
    vb = _vsplit(v3, _VBLOCK_GRAD)[1]
    ob = _vsplit(out3, _VBLOCK_GRAD)[1]
    tmp = torch.empty(yb[0].numel(), dtype=y.dtype, device=y.device)
    dots: torch.Tensor | None = None
    if not whole:  # a slab spans several blocks: first every column's <y, v>
        dots = torch.zeros(outer, 1, inner, dtype=y.dtype, device=y.device)
        for a, b in zip(yb, vb):
            dots += torch.mul(a, b, out=tmp[: a.numel()].view(a.shape)).sum(1, keepdim=True)
    for a, b, o in zip(yb, vb, ob):
        t = tmp[: a.numel()].view(a.shape)
        # whole slabs: <y, v> and the result in one visit of the block, while it is in cache
        d = torch.mul(a, b, out=t).sum(1, keepdim=True) if dots is None else dots
        if overwrite_y:
            a.mul_(torch.sub(b, d, out=t))
        else:
            torch.sub(b, d, out=o).mul_(a)
    return out3.view(shape)
