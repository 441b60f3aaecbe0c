"""The counter-based noise of gumbelkit as Triton device functions (Philox4x32-10 + the exact Exp(1) map).

Every Triton kernel of the library -- and any kernel outside it that wants the same noise, such as a
token sampler -- computes Exp(1) noise with these functions, which reproduce
:func:`gumbelkit.kernels._philox.counter_exponential` (the op-by-op torch reference, the definition
of the mapping) element for element:

* ``key`` is four 32-bit words (k0, k1, c2, c3) in device memory (an int32 tensor of 4, drawn by a
  torch RNG op, so a CUDA graph replays fresh keys): a 64-bit Philox key (k0, k1) and the upper 64
  bits of the counter (c2, c3), e.g. a stream or a decode step;
* element ``i`` (an int64 logical index >= 0) belongs to the pair j = i >> 1 and takes
  Philox4x32-10 at counter (j mod 2^32, j >> 32, c2, c3) with key (k0, k1): words (w0, w1) for
  even i, (w2, w3) for odd i, joined high:low into one 64-bit word;
* the word maps to E ~ Exp(1) in float32: its sign bit picks the half of the unit interval and the
  other 63 bits m give v = (m + 1/2) 2^-64 in (0, 1/2], E = -log v or E = -log1p(-v). Each tail of
  E is computed from the small number v itself, so E keeps its relative precision down to 2^-65
  and g = -log E reaches 45.06: a class 19 nats below the top of a 65,536-way softmax is drawn at
  its true rate (one 32-bit word could not: E >= 2^-33 caps g at 22.87, and 24-bit uniforms at 16.6).

Stable names for kernels that reuse the noise (call them from inside an ``@triton.jit`` function):

* :func:`load_key` -- the four key words from a pointer, as uint32 scalars;
* :func:`philox4x32_10` -- the four output words for counters (c0, c1, c2, c3) and key (k0, k1);
* :func:`exp_from_words` -- E ~ Exp(1) from the two words of one element (the exact map above);
* :func:`counter_exponential` -- E for a tile of int64 logical indices (one Philox call per element);
* :func:`counter_exponential_pairs` -- (E of element 2j, E of element 2j + 1) for a tile of pair
  indices j: one Philox call serves two elements (half the integer work of the per-element form).

Values agree with the torch reference to float32 rounding (a few ulps: the logs are the device's),
which is what "the same noise" means between the CPU reference and a GPU kernel.

This module imports ``triton`` and defines ``@triton.jit`` functions when it is imported; Triton
reads ``TRITON_INTERPRET`` at that moment, so import it only where the kernels are built (the
library imports it lazily, on first use).

Reference: Salmon, Moraes, Dror, Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3", SC 2011.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = [
    "counter_exponential",
    "counter_exponential_pairs",
    "exp_from_words",
    "exp_from_words_f64",
    "load_key",
    "log1p_neg",
    "philox4x32_10",
]

# Multipliers and Weyl key increments of Philox4x32 (Random123, philox.h); the same constants as
# gumbelkit.kernels._philox. Literals in [2^31, 2^32) are uint32 in Triton.
_M0: tl.constexpr = 0xD2511F53
_M1: tl.constexpr = 0xCD9E8D57
_W0: tl.constexpr = 0x9E3779B9
_W1: tl.constexpr = 0xBB67AE85
# log1p(-v) switches from its series to the log at v = 2^-6 (see log1p_neg).
_SERIES_BELOW: tl.constexpr = 0.015625
_TWO_M64: tl.constexpr = 5.421010862427522e-20  # 2^-64


@triton.jit
def load_key(key_ptr):
    """The key words (k0, k1, c2, c3) at ``key_ptr`` (an int32 tensor of 4) as uint32 scalars."""
    k0 = tl.load(key_ptr).to(tl.uint32, bitcast=True)
    k1 = tl.load(key_ptr + 1).to(tl.uint32, bitcast=True)
    c2 = tl.load(key_ptr + 2).to(tl.uint32, bitcast=True)
    c3 = tl.load(key_ptr + 3).to(tl.uint32, bitcast=True)
    return k0, k1, c2, c3


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10: counters (c0, c1, c2, c3) and key (k0, k1), all uint32, to four uint32 words.

    Each round: (hi0, lo0) = M0 * c0, (hi1, lo1) = M1 * c2 (64-bit products split into words);
    c <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0); the key is bumped by the Weyl constants between
    rounds. Bit for bit :func:`gumbelkit.kernels._philox.philox4x32` (the Random123 reference).
    """
    for _ in tl.static_range(10):
        a0 = c0
        a2 = c2
        c0 = tl.umulhi(a2, _M1) ^ c1 ^ k0
        c2 = tl.umulhi(a0, _M0) ^ c3 ^ k1
        c1 = a2 * _M1
        c3 = a0 * _M0
        k0 = k0 + _W0
        k1 = k1 + _W1
    return c0, c1, c2, c3


@triton.jit
def log1p_neg(v):
    """log1p(-v) for float32 v in (0, 1/2], to a few ulps, from ``tl.log`` alone.

    Why not log(1 - v): 1 - v rounds to 24 bits, which erases a small v (E would stop near 6e-8,
    g at 16.6 -- the very tail this noise exists for). Below 2^-6 a five-term series is exact to
    float32 precision (the next term is below 2^-30 relative) and uses no log at all, so the upper
    tail of g does not depend on the accuracy of the device's log near 1. Above it,
    u = 1 - v is formed and log(u) is corrected by the rounding error of u: log1p(-v) =
    log(u) - ((u - 1) + v) / u, where u - 1 is exact (Sterbenz) and so is the correction's
    numerator to first order.
    """
    series = -v * (1.0 + v * (0.5 + v * (0.3333333333333333 + v * (0.25 + v * 0.2))))
    u = 1.0 - v
    corrected = tl.log(u) - ((u - 1.0) + v) / u
    return tl.where(v < _SERIES_BELOW, series, corrected)


@triton.jit
def exp_from_words(hi, lo):
    """E ~ Exp(1) in float32 from the two uint32 words (high, low) of one element: the exact map.

    The 64-bit word w = hi 2^32 + lo; its sign bit picks the half of the unit interval, the other
    63 bits m give v = (m + 1/2) 2^-64 (m converted to float32 with round-to-nearest, v's own
    float32 resolution; small m is exact), and E = -log v (upper half: E in [log 2, 65 log 2 = 45.05]) or
    E = -log1p(-v) (lower half: E in [2^-65, log 2)). No branch: both halves are computed.
    """
    m = ((hi & 0x7FFFFFFF).to(tl.uint64) << 32) | lo.to(tl.uint64)
    v = (m.to(tl.int64).to(tl.float32) + 0.5) * _TWO_M64
    upper = (hi >> 31) != 0
    return tl.where(upper, -tl.log(v), -log1p_neg(v))


@triton.jit
def exp_from_words_f64(hi, lo):
    """:func:`exp_from_words` in float64 (``counter_exponential(..., dtype=torch.float64)``).

    v = (m + 1/2) 2^-64 is formed in float64 (53 significant bits of m) and
    log1p(-v) = log(u) - ((u - 1) + v) / u with u = 1 - v, as in :func:`log1p_neg` (float64 logs
    are the accurate library ones, so no series is needed): E in [2^-65, 65 log 2].
    """
    m = ((hi & 0x7FFFFFFF).to(tl.uint64) << 32) | lo.to(tl.uint64)
    v = (m.to(tl.int64).to(tl.float64) + 0.5) * _TWO_M64
    u = 1.0 - v
    lower = tl.log(u) - ((u - 1.0) + v) / u
    upper = (hi >> 31) != 0
    return tl.where(upper, -tl.log(v), -lower)


@triton.jit
def counter_exponential(k0, k1, c2, c3, index):
    """E ~ Exp(1) (float32) of each element of ``index`` (int64 logical indices) under the key.

    One Philox call per element (the pair's call, of which the element takes its two words); see
    :func:`counter_exponential_pairs` for the form that shares each call between its two elements.
    """
    j = index >> 1
    w0, w1, w2, w3 = philox4x32_10((j & 0xFFFFFFFF).to(tl.uint32), (j >> 32).to(tl.uint32), c2, c3, k0, k1)
    odd = (index & 1) != 0
    return exp_from_words(tl.where(odd, w2, w0), tl.where(odd, w3, w1))


@triton.jit
def counter_exponential_pairs(k0, k1, c2, c3, pair):
    """(E of element 2j, E of element 2j + 1) for each pair index j of ``pair`` (int64), float32.

    One Philox call per pair: words (w0, w1) make the even element, (w2, w3) the odd one. To lay
    them out as consecutive elements, ``tl.join(even, odd).reshape(...)`` interleaves them along a
    new last axis.
    """
    w0, w1, w2, w3 = philox4x32_10((pair & 0xFFFFFFFF).to(tl.uint32), (pair >> 32).to(tl.uint32), c2, c3, k0, k1)
    return exp_from_words(w0, w1), exp_from_words(w2, w3)
