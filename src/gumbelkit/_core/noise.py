"""Uniform, exponential and Gumbel noise: always finite, drawn in float32 or better."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import GumbelkitTypeError
from .policy import compiling, compute_dtype, in_vmap
from .validation import check_float_dtype, check_generator, check_shape, prefixed

# Public (re-exported by gumbelkit): exponential_noise, gumbel_noise, logistic_noise, uniform_open.
# Building blocks of the samplers and the fused kernels: exp_from_words32/64, log_exponential_noise.
__all__ = [
    "exp_from_words32",
    "exp_from_words64",
    "exponential_noise",
    "gumbel_noise",
    "log_exponential_noise",
    "logistic_noise",
    "uniform_open",
]


def _noise_dtype(dtype: torch.dtype, fn: str | None = None) -> torch.dtype:
    # Half-precision uniforms have ~11 bits: the Gumbel tail would stop near 7.6 (fp16) or
    # 5.5 (bf16) instead of ~16.6. Draw in the compute dtype (the library's dtype rule:
    # float32, float64 on request) and cast at the end.
    return compute_dtype(check_float_dtype(dtype, "dtype", fn))


def _resolve_device(generator, device, fn: str | None = None) -> torch.device:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise GumbelkitTypeError(
            prefixed(fn, f"expected generator to be a torch.Generator, got {type(generator).__name__}")
        )
    if device is None:
        return torch.device(generator.device) if generator is not None else torch.device("cpu")
    return torch.device(device)


# Below this many words the torch generator itself is cheaper than setting up a NumPy one
# (~70 us, measured); above it NumPy's SFC64 produces the bits about 1.8x faster.
_NUMPY_MIN_WORDS = 1 << 15


class _WordStream:
    """Independent 32-bit random words (int32 bit patterns) on the CPU, all from one ``generator``.

    Small draws: full-range int64 values from the torch generator itself, two words each; one
    ``random_`` on int64 costs about half of ``torch.rand`` per 32 bits (3.2 vs 6.0 ns, measured).

    Large draws: the torch generator supplies only a 128-bit key (so the same generator state
    still gives the same words, and no other RNG is read or advanced); NumPy's SFC64, seeded
    from that key through ``SeedSequence``, fills the buffer at ~1.2-1.8 ns per word against
    ~3.2 ns for ``random_`` (``benchmarks/noise_sources.py``, one thread). SFC64 is Chris
    Doty-Humphrey's Small Fast Chaotic generator (the author of PractRand): a 64-bit counter in
    its state guarantees a cycle of at least 2^64 per seed (expected ~2^255), and NumPy
    guarantees that a fixed seed always gives the same stream.

    :meth:`take` may be called again for more words (the rare tail refinements below): they
    continue the same stream, so the result stays a pure function of the generator state.
    """

    def __init__(self, n_hint: int, generator, device) -> None:
        self.generator = generator
        self.device = device
        self.bitgen: np.random.SFC64 | None = None
        if n_hint >= _NUMPY_MIN_WORDS:
            key = torch.empty(2, dtype=torch.int64).random_(-(2**63), None, generator=generator)
            seed = np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in key.tolist()])
            self.bitgen = np.random.SFC64(seed)

    def take(self, n: int) -> torch.Tensor:
        if self.bitgen is not None:
            raw = self.bitgen.random_raw((n + 1) // 2)
            return torch.from_numpy(raw.view(np.int32))[:n]
        bits = torch.empty((n + 1) // 2, dtype=torch.int64, device=self.device)
        bits.random_(-(2**63), None, generator=self.generator)  # the full 64-bit range: every bit uniform
        return bits.view(torch.int32)[:n]


def _random_words(n: int, generator, device) -> torch.Tensor:
    """n independent 32-bit random words (int32 bit patterns) on a CPU ``device`` (see :class:`_WordStream`)."""
    return _WordStream(n, generator, device).take(n)


def _uniform_float32_from_words(w: torch.Tensor) -> torch.Tensor:
    """u = (2 m + 1) 2^-24 from the low 23 bits m of each word, in place (w is consumed).

    The words become the float32 bit patterns of 1 + m 2^-23 in [1, 2) (exponent of 1.0, m as
    the mantissa), and subtracting 1 - 2^-24 is exact (Sterbenz), giving the midpoints of 2^23
    equal cells: every value lies in [2^-24, 1 - 2^-24], so log(u) and log(-log u) are finite
    without a clamp. The same values as the fused Philox path's uniforms.
    """
    w.bitwise_and_(0x007FFFFF).bitwise_or_(0x3F800000)
    return w.view(torch.float32).sub_(1.0 - 2.0**-24)


def uniform_open(
    shape: Sequence[int] | torch.Size,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """I.i.d. Uniform on the *open* interval (0, 1).

    float32 on CPU: u = (2 m + 1) 2^-24 with m uniform on 23 random bits, i.e. the midpoints of
    2^23 equal cells, in [2^-24, 1 - 2^-24]; built from random 32-bit words (see
    ``_random_words``) in place, 2.6x as fast as ``torch.rand`` (measured, one thread).
    Otherwise (float64, other devices) ``torch.rand``, which draws from [0, 1):
    an exact 0 would make ``log(u)`` infinite, so it is raised to the smallest positive normal
    number (a probability-2^-24 event in float32, 2^-53 in float64).

    Args:
        shape: output shape.
        generator: optional ``torch.Generator`` (keyword-only); the global RNG is untouched when given.
        device: output device (default: the generator's device, else CPU).
        dtype: output dtype; the draw itself is float32 or float64.

    Returns:
        Tensor of ``shape`` with values in (0, 1).

    Examples:
        >>> u = uniform_open((2, 3), generator=torch.Generator().manual_seed(0))
        >>> bool(((u > 0) & (u < 1)).all())
        True
    """
    shape = check_shape(shape, "uniform_open")
    device = _resolve_device(generator, device, "uniform_open")
    check_generator(generator, device, "uniform_open")
    ndt = _noise_dtype(dtype, "uniform_open")
    # Under torch.compile, Dynamo cannot trace random_ and Inductor generates its own uniforms;
    # under vmap only out-of-place random ops are batched (see _exp_vmap).
    if ndt == torch.float32 and device.type == "cpu" and not compiling() and not in_vmap():
        n = math.prod(int(s) for s in shape)
        u = _uniform_float32_from_words(_random_words(n, generator, device)).view(shape)
    else:
        # On CUDA torch.rand is a vectorised Philox and already cheap; the guard is one pass.
        u = torch.rand(shape, generator=generator, device=device, dtype=ndt)
        u.clamp_min_(torch.finfo(ndt).tiny)  # clamp_min_ has a vmap batching rule, clamp_ has not
    if ndt == dtype:
        return u
    # Rounding to a narrower dtype can reach the ends: 1 - 2^-24 rounds to exactly 1.0 in float16
    # and bfloat16 (their last value below 1 is 1 - 2^-11 / 1 - 2^-8). Keep the cast inside (0, 1).
    lo = torch.nextafter(torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype))
    hi = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype))
    return u.to(dtype).clamp_(min=float(lo), max=float(hi))


# --------------------------------------------------------------------------- exact Exp(1) noise
#
# Every sampler draws E ~ Exp(1) and uses g = -log E (Gumbel) or log E. The tails of g are the
# tails of E: g > t  <=>  E < exp(-t), and g < t  <=>  E > exp(-t). A class 19 nats below the
# top of a 65,536-way softmax is drawn only when its g exceeds the others' by ~19, i.e. through
# E ~ 1e-9, so E must keep its *relative* precision near 0 (upper tail of g) and its absolute
# precision up to ~20 (lower tail). -log(U) with U = (2m + 1) 2^-24 (23 random bits) cannot:
# near U = 1 the grid step 2^-24 caps E >= 6e-8 and g <= 16.6; near U = 0 it caps E <= 16.6 and
# g >= -2.8. Two constructions below keep both tails exact:
#
# * exp_from_words32 / exp_from_words64 (pure torch ops: torch.compile and the fused kernel):
#   one bit of the word picks the half of the unit interval, the other bits give v in (0, 1/2]
#   on a 2^-32 (2^-64) grid, and E = -log(v) on one half, -log1p(-v) on the other, so each tail
#   is computed from the small number v itself, never from 1 - v rounded.
# * _exp_cuda (CUDA, eager): CUDA's float64 exponential_ (53-bit uniforms, float64 log) in one
#   launch, then a cast: its float32 version stops at g = 16.6, the float64 one does not.
# * _exp_from_rand64 (CPU float64 and other devices, eager): a 53-bit float64 uniform u and
#   -log1p(-u), exact at both ends.
# * _exp_cpu32 (the eager CPU float32 path, the library default): the 23-bit construction
#   above is exact in the body, where the grid step is far below float32 resolution relative
#   to E, and cheap (three integer/float passes and one log). Only the rare elements that fall
#   in the outermost _TAIL_CELLS cells at either end (probability 2 * 2^-19 per element) are
#   redrawn from the exact conditional law on fresh random words, in float64. The check costs a
#   min and a max over rows of _ROW values (two vectorised reductions) and one host sync per call;
#   the search then reads only the rows holding a tail (about 4 rows per 2^20 draws).

_TWO_M32 = 2.0**-32
_TWO_M64 = 2.0**-64
_TAIL_CELLS = 16  # cells of width 2^-23 refined at each end: P(tail) = 2^-19 per end
_TAIL_P = _TAIL_CELLS * 2.0**-23
_BLOCK = 1 << 20  # elements per block (4 MiB): its passes run in the last-level cache
_ROW = 1024  # values per row of the tail search


def exp_from_words32(w: torch.Tensor, log: bool) -> torch.Tensor:
    """E ~ Exp(1) (or log E) in float32 from int32 random words, exact in both tails.

    The sign bit picks the half: U = v (E = -log v, large) or U = 1 - v (E = -log1p(-v), small),
    v = (m + 1/2) 2^-32 from the other 31 bits m, so E lies in [2^-33, 33 log 2] and
    g = -log E in [-3.13, 22.87]. The float conversion of m rounds to 24 significant bits, the
    float32 resolution of v itself; small v (the tails) is exact.
    """
    upper = w < 0
    v = (w & 0x7FFFFFFF).to(torch.float32).add_(0.5).mul_(_TWO_M32)
    e = torch.where(upper, -torch.log(v), -torch.log1p(-v))
    return e.log_() if log else e


def exp_from_words64(w: torch.Tensor, log: bool) -> torch.Tensor:
    """As :func:`exp_from_words32` for float64 from int64 words: E in [2^-65, 65 log 2], g in [-3.81, 45.05]."""
    upper = w < 0
    v = (w & 0x7FFFFFFFFFFFFFFF).to(torch.float64).add_(0.5).mul_(_TWO_M64)
    e = torch.where(upper, -torch.log(v), -torch.log1p(-v))
    return e.log_() if log else e


def _exp_tail(cells: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """Exact E (float64) for elements whose 23-bit cell index is in a tail (see :func:`_exp_cpu32`).

    Given the cell, U is uniform on the whole tail interval: U = p V in the low tail and
    1 - U = p V in the high one, p = _TAIL_P, V = (W + 1/2) 2^-32 from a fresh 32-bit word W
    (exact in float64). Low tail: E = -log p - log V (large E, g down to -3.58); high tail:
    E = -log1p(-p V) (small E, down to 2^-52: g up to 36.04).
    """
    v = fresh.to(torch.float64).add_(2.0**31 + 0.5).mul_(_TWO_M32)
    pv = v * _TAIL_P
    return torch.where(cells < _TAIL_CELLS, -torch.log(pv), -torch.log1p(-pv))


# The tail cells, told apart from the body by the value of E itself: cell m has u = (2m + 1) 2^-24,
# so the low cells m < 16 give E >= -log(31 2^-24) = 13.20 and the body E <= -log(33 2^-24) = 13.14;
# the high cells m >= 2^23 - 16 give E <= 1.85e-6 and the body E >= 1.97e-6. The cuts sit at the
# cell boundaries in between (u = 32 2^-24 and 1 - 32 2^-24), where float32 separates them.
_E_LOW_TAIL = -math.log(2 * _TAIL_CELLS * 2.0**-24)  # E above it: a low-tail cell (13.17)
_E_HIGH_TAIL = -math.log1p(-2 * _TAIL_CELLS * 2.0**-24)  # E below it: a high-tail cell (1.91e-6)


def _exp_cpu32(n: int, generator, log: bool) -> torch.Tensor:
    """n values of E ~ Exp(1) (or log E) in float32 on the CPU, exact in both tails, 1-d.

    Body: u = (2m + 1) 2^-24 from the low 23 bits m of a word, built in place (the word becomes
    the float32 pattern of 1 + m 2^-23, and subtracting 1 - 2^-24 is exact), then E = -log u.
    Tails: the cells m < 16 and m >= 2^23 - 16 are redrawn by :func:`_exp_tail`.

    Cost. Each in-place op is one pass of a vectorised kernel, and a call costs several
    microseconds besides: the passes run over blocks of _BLOCK elements (the whole draw up to
    there), large enough that the per-call costs vanish and small enough to stay in the last-level
    cache. (Blocks of 2^16 with a min/max, two host reads and a row search per block measured
    1.2x the time of the same passes over 2^20 elements: the logs cost the same per element in
    any cache level, so small blocks only added calls.) The tails are found without reading the cells again and without a host sync per
    block: the tail cells are exactly the values past the cuts above, so each block records the
    min and max of its rows of _ROW values (two vectorised reductions), and after the loop one
    read of those extremes names the few rows that hold a tail (about 4 per 2^20 draws); only
    those are searched. The values, the order of the fresh words and so the result are those of
    the element-by-element definition, whatever the block size or the number of threads.
    """
    if n == 0:
        return torch.empty(0, dtype=torch.float32)
    stream = _WordStream(n, generator, "cpu")
    w = stream.take(n)
    vals = w.view(torch.float32)
    lo_cut, hi_cut = (math.log(_E_HIGH_TAIL), math.log(_E_LOW_TAIL)) if log else (_E_HIGH_TAIL, _E_LOW_TAIL)
    # equal blocks of whole rows: the rows of all blocks then tile the buffer, row r at r * _ROW
    nblocks = max(1, -(-n // _BLOCK))
    block = -(-n // (nblocks * _ROW)) * _ROW
    lows, highs = [], []
    for s in range(0, n, block):
        u = w[s : s + block].bitwise_and_(0x007FFFFF).bitwise_or_(0x3F800000).view(torch.float32)
        v = u.sub_(1.0 - 2.0**-24).log_().neg_()
        if log:
            v.log_()
        k = v.numel() // _ROW * _ROW
        rows = v[:k].view(-1, _ROW)
        lows.append(rows.amin(1))
        highs.append(rows.amax(1))
        if k < v.numel():  # the last few values of a block: a row of their own
            lows.append(v[k:].amin().view(1))
            highs.append(v[k:].amax().view(1))
    # one host sync: the rows holding a tail, then the positions in them
    hit = ((torch.cat(lows) < lo_cut) | (torch.cat(highs) > hi_cut)).nonzero().flatten().tolist()
    if hit:
        spans = [vals[r * _ROW : (r + 1) * _ROW] for r in hit]
        idx = torch.cat([r * _ROW + ((sp < lo_cut) | (sp > hi_cut)).nonzero().flatten() for r, sp in zip(hit, spans)])
        low_tail = vals[idx] > hi_cut  # a large E (or log E): a low cell, u near 0
        cells = torch.where(low_tail, 0, (1 << 23) - 1).to(torch.int32)
        e = _exp_tail(cells, stream.take(idx.numel()))
        vals[idx] = (e.log() if log else e).to(torch.float32)
    return vals


def _words(n: int, bits: int, generator, device: torch.device) -> torch.Tensor:
    """n random words of ``bits`` (32: int32, 64: int64) for the generic exact construction."""
    if bits == 64:
        if compiling():
            # Dynamo cannot trace the in-place random_; two 32-bit randint draws make one word.
            hi = torch.randint(-(2**31), 2**31, (n,), dtype=torch.int64, device=device)
            lo = torch.randint(0, 2**32, (n,), dtype=torch.int64, device=device)
            return (hi << 32) | lo
        return torch.empty(n, dtype=torch.int64, device=device).random_(-(2**63), None, generator=generator)
    if compiling():
        return torch.randint(-(2**31), 2**31, (n,), dtype=torch.int64, device=device).to(torch.int32)
    return (
        torch.empty((n + 1) // 2, dtype=torch.int64, device=device)
        .random_(-(2**63), None, generator=generator)
        .view(torch.int32)[:n]
    )


def _exp_from_rand64(shape, generator, device, ndt: torch.dtype, log: bool) -> torch.Tensor:
    """E ~ Exp(1) (or log E) from one float64 ``torch.rand``: exact tails in a few vectorised passes.

    torch.rand's float64 uniforms are u = k 2^-53 (53 random bits), exact, and 1 - u is exact too,
    so E = -log1p(-u) is right to float64 precision at both ends: small u gives small E (g up to
    37.43, with u = 0 raised to 2^-54) and u next to 1 gives E up to 53 log 2 (g down to -3.60),
    with grid steps far below float32 resolution in both tails. On a GPU this is 5 elementwise
    launches against ~12 for the word construction, and reads no int64 temporaries.
    """
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64).clamp_min_(2.0**-54)
    e = u.neg_().log1p_().neg_()
    if ndt != torch.float64:
        e = e.to(ndt)  # E keeps its relative precision in float32; the outer log is float32
    return e.log_() if log else e


def _exp_cuda(shape, generator, device, ndt: torch.dtype, log: bool) -> torch.Tensor:
    """E ~ Exp(1) (or log E) on a CUDA device: one float64 ``exponential_`` launch, then cast and log.

    CUDA's float64 ``exponential_`` is -log u with u = (z + 1/2) 2^-53 from 53 Philox bits and a
    float64 log, so E is right in both tails (down to ~1.1e-16: g up to 36.7; up to 53 log 2:
    g down to -3.60). Its float32 version is not: u has 24 bits and E stops at 6e-8 (g <= 16.6).
    One launch writing 8 bytes per element, against five passes for :func:`_exp_from_rand64`.
    """
    e = torch.empty(shape, device=device, dtype=torch.float64).exponential_(generator=generator)
    if ndt != torch.float64:
        e = e.to(ndt)  # E keeps its relative precision in float32; the outer log is float32
    return e.log_() if log else e


def _exp_vmap(shape, generator, device, ndt: torch.dtype, log: bool) -> torch.Tensor:
    """E ~ Exp(1) (or log E) under ``torch.vmap``: one out-of-place float64 ``torch.rand``.

    Under ``vmap(randomness="different")`` only out-of-place random ops are batched; the other
    constructions draw in place into fresh, unbatched buffers, which vmap refuses (or, with
    ``randomness="same"``, would repeat). 53-bit uniforms clamped to the smallest normal give
    E = -log u in [1.1e-16, 708] (log E finite), computed in float64 and then cast.
    """
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    e = u.clamp_min_(torch.finfo(torch.float64).tiny).log_().neg_()
    return (e.log_() if log else e).to(ndt)


def _exponential(shape, generator, device, dtype, *, log: bool, fn: str | None = None) -> torch.Tensor:
    """E ~ Exp(1), or log E, in the noise dtype (float32 / float64), exact tails, fresh buffer.

    Five constructions, one law: the CPU float32 default (:func:`_exp_cpu32`, the fastest there),
    the word construction under torch.compile (Dynamo traces ``randint`` but not in-place draws;
    Inductor fuses the passes), one out-of-place draw under vmap (:func:`_exp_vmap`), CUDA's
    float64 ``exponential_`` on CUDA, and float64 ``torch.rand`` everywhere else (CPU float64,
    other devices).
    """
    shape = check_shape(shape, fn)
    device = _resolve_device(generator, device, fn)
    check_generator(generator, device, fn)
    ndt = _noise_dtype(dtype, fn)
    n = math.prod(shape)
    if in_vmap():
        return _exp_vmap(shape, generator, device, ndt, log)
    if compiling():
        if ndt == torch.float64:
            return exp_from_words64(_words(n, 64, generator, device), log).view(shape)
        return exp_from_words32(_words(n, 32, generator, device), log).view(shape)
    if ndt == torch.float32 and device.type == "cpu":
        return _exp_cpu32(n, generator, log).view(shape)
    if device.type == "cuda":
        return _exp_cuda(shape, generator, device, ndt, log)
    return _exp_from_rand64(shape, generator, device, ndt, log)


def exponential_noise(
    shape: Sequence[int] | torch.Size,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""I.i.d. Exp(1) noise, finite and > 0, exact in both tails.

    Math: E = -log U, U ~ Uniform(0, 1), built so that E keeps its relative precision near 0 and
    its absolute precision up to its largest values (see the notes in this module). Values lie in
    [2^-52, 36.04] for float32 on the CPU, about [1e-16, 36.74] for float64 and on other devices (CUDA), and
    [2^-33, 22.87] (float32) or [2^-65, 45.05] (float64) under ``torch.compile``.

    Args:
        shape: output shape.
        generator: optional ``torch.Generator`` (keyword-only). Same state, same noise.
        device: output device (default: the generator's device, else CPU).
        dtype: output dtype; the draw itself is float32 (float64 if asked).

    Returns:
        Tensor of ``shape`` with values in (0, inf).

    Examples:
        >>> e = exponential_noise((3,), generator=torch.Generator().manual_seed(0))
        >>> bool((e > 0).all())
        True
    """
    ndt = _noise_dtype(dtype, "exponential_noise")
    e = _exponential(shape, generator, device, ndt, log=False, fn="exponential_noise")
    return e if ndt == dtype else e.to(dtype)


def gumbel_noise(
    shape: Sequence[int] | torch.Size,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""I.i.d. standard Gumbel noise, g = -log E with E ~ Exp(1), always finite, exact tails.

    Math: if E ~ Exp(1) then -log E ~ Gumbel(0, 1), and ``argmax(theta + g) ~
    Categorical(softmax(theta))`` (the Gumbel-Max trick). P(g > t) = 1 - exp(-exp(-t)) is right
    for every t the dtype can reach: a class 19 nats below the row's top still wins with its
    probability (~5.6e-9 per draw against one rival).

    Args:
        shape: output shape.
        generator: optional ``torch.Generator`` (keyword-only). Same state, same noise.
        device: output device (default: the generator's device, else CPU).
        dtype: output dtype. The noise is always drawn in float32 (float64 if asked) and only
            cast at the end, so fp16/bf16 noise keeps the full tail.

    Returns:
        Tensor of ``shape``. Representable range: [-3.58, 36.04] for float32 on the CPU;
        about [-3.60, 36.7] for float64 and on other devices (CUDA); under ``torch.compile``
        [-3.13, 22.87] (float32) or [-3.81, 45.05] (float64). Every t inside the range has the
        right P(g > t); for comparison P(g > 20) = 2.1e-9 and P(g < -3) = 1.9e-9.

    Examples:
        >>> g = gumbel_noise((4, 10), generator=torch.Generator().manual_seed(0))
        >>> bool(torch.isfinite(g).all())
        True

    Reference: Gumbel (1954); Maddison, Tarlow, Minka, "A* Sampling", NeurIPS 2014.
    """
    ndt = _noise_dtype(dtype, "gumbel_noise")
    g = _exponential(shape, generator, device, ndt, log=True, fn="gumbel_noise").neg_()
    return g if ndt == dtype else g.to(dtype)


def log_exponential_noise(
    shape: Sequence[int] | torch.Size,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """log E with E ~ Exp(1), i.e. *minus* a standard Gumbel: exactly ``-gumbel_noise(...)``.

    Internal building block of the samplers: theta + g is computed as ``theta - log E`` straight
    into this fresh buffer, which saves the final negation pass of :func:`gumbel_noise`. The
    result is in float32 (float64 if asked), whatever ``dtype`` says otherwise.
    """
    return _exponential(shape, generator, device, _noise_dtype(dtype), log=True)


def logistic_noise(
    shape: Sequence[int] | torch.Size,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""I.i.d. standard Logistic noise, L = log U - log(1 - U), exact in both tails.

    Math: with U = exp(-E), E ~ Exp(1): L = -E - log(-expm1(-E)). expm1 keeps 1 - U exact for
    small E (L large), and E itself is exact in both tails, so L is too (|L| up to ~36 in float32).

    Examples:
        >>> lo = logistic_noise((3,), generator=torch.Generator().manual_seed(0))
        >>> bool(torch.isfinite(lo).all())
        True
    """
    ndt = _noise_dtype(dtype, "logistic_noise")
    e = _exponential(shape, generator, device, ndt, log=False, fn="logistic_noise")
    out = torch.neg(e).expm1_().neg_().log_().add_(e).neg_()
    return out if ndt == dtype else out.to(dtype)
