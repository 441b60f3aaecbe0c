"""Philox4x32-10 in plain int32 torch ops: one code path for eager, Inductor C++ and Triton.

Philox (Salmon, Moraes, Dror, Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3", SC 2011) is a
counter-based generator: ``bits = philox(counter, key)`` is a pure function, so the i-th random
number of a tensor is computed where it is needed -- inside a fused kernel -- from its position,
with no generator state to thread through and no B x K noise tensor to read back.

Why int32 and small pieces: Philox needs the high and low 32-bit words of a 32x32-bit product. On
CPU, Inductor emulates int64 vector multiplication element by element (AVX2 has no instruction for
it), which measured 10x slower, while int32 multiplication is a native vector instruction. Signed
int32 overflow is undefined behaviour in the C++ that Inductor generates (observed: GCC dropped a
mask in the scalar code for a 0-d tensor and the high word came out wrong by 2^16), so no
intermediate here ever leaves [-2^31, 2^31): the product is assembled from 16-bit digits whose
partial products are formed in signed form (see :func:`_digit_product`). Values are 32-bit patterns stored in int32
(two's complement); ``>>`` on int32 is arithmetic, so every logical shift is followed by a mask.

Words to Gumbel noise: :func:`gumbel_float32` (one word per value) and :func:`gumbel_float64` (two
words per value) use the exact Exp(1) construction of :mod:`gumbelkit._core.noise`, so both tails are
right down to the dtype's limits: g in [-3.13, 22.87] in float32 and [-3.81, 45.05] in float64
(the 23-bit uniforms of :func:`uniform_float32` would stop at 16.6).
"""

from __future__ import annotations

import torch

from .._core.noise import exp_from_words32, exp_from_words64

__all__ = [
    "PHILOX_M0",
    "PHILOX_M1",
    "PHILOX_W0",
    "PHILOX_W1",
    "add32",
    "as_int32",
    "as_uint32",
    "counter_exponential",
    "counter_gumbel",
    "exp_from_word64",
    "gumbel_float32",
    "gumbel_float64",
    "join64",
    "mulhilo32",
    "philox4x32",
    "uniform_float32",
    "uniform_float64",
]

# Multipliers and Weyl key increments of Philox4x32 (Random123, philox.h).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9  # golden ratio
PHILOX_W1 = 0xBB67AE85  # sqrt(3) - 1


def as_int32(v: int) -> int:
    """The int32 value with the same 32-bit pattern as the unsigned integer ``v`` (mod 2^32)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def as_uint32(t: torch.Tensor) -> list:
    """Python ints in [0, 2^32) from an int32 tensor of bit patterns (for tests and display)."""
    return [int(v) & 0xFFFFFFFF for v in t.reshape(-1).tolist()]


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    # Logical right shift of a 32-bit pattern held in int32: arithmetic shift, then clear the
    # copies of the sign bit that it shifted in.
    return (x >> s) & ((1 << (32 - s)) - 1)


def _digit_product(x: torch.Tensor, y: int):
    """(low, high) 16-bit digits of x * y for x < 2^16 (tensor) and a constant y < 2^16, no overflow.

    For y >= 2^15 the int32 product could reach 2^32, so it is taken as x * (y - 2^16), which lies
    in (-2^31, 0], plus x * 2^16: the low digit is unchanged and the high digit gains x.
    """
    if y >= 1 << 15:
        p = x * (y - (1 << 16))
        return p & 0xFFFF, (p >> 16) + x  # >> floors, so (p >> 16) + x = floor(x y / 2^16)
    p = x * y
    return p & 0xFFFF, p >> 16


def mulhilo32(a: torch.Tensor, m: int):
    """(hi, lo) 32-bit words of the 64-bit product a * m; a an int32 bit pattern, m < 2^32 a constant.

    Schoolbook multiplication in base 2^16: a = al + ah 2^16, m = ml + mh 2^16. Each of the four
    16x16-bit digit products is formed without overflow (:func:`_digit_product`), the column sums
    stay below 2^19, and the carries are propagated explicitly. Left shifts only move values below
    2^16 by 16 bits (defined behaviour in C++).
    """
    ml, mh = m & 0xFFFF, (m >> 16) & 0xFFFF
    al = a & 0xFFFF
    ah = _srl(a, 16)
    ll0, ll1 = _digit_product(al, ml)
    lh0, lh1 = _digit_product(al, mh)
    hl0, hl1 = _digit_product(ah, ml)
    hh0, hh1 = _digit_product(ah, mh)
    col1 = ll1 + lh0 + hl0
    col2 = lh1 + hl1 + hh0 + (col1 >> 16)
    col3 = hh1 + (col2 >> 16)  # < 2^16: the product is < 2^64
    lo = ll0 | ((col1 & 0xFFFF) << 16)
    hi = (col2 & 0xFFFF) | (col3 << 16)
    return hi, lo


def add32(a: torch.Tensor, c: int) -> torch.Tensor:
    """(a + c) mod 2^32 as an int32 pattern, computed in int64 so that nothing overflows."""
    v = ((a.to(torch.int64) & 0xFFFFFFFF) + (c & 0xFFFFFFFF)) & 0xFFFFFFFF
    return (v - ((v >> 31) * 2**32)).to(torch.int32)


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """Philox4x32-R: 4 counter words and 2 key words (int32 bit patterns) -> 4 random 32-bit words.

    ``c*`` are int32 tensors (broadcastable); ``k*`` are int32 tensors or Python ints. Each round:
    (hi0, lo0) = M0 * c0, (hi1, lo1) = M1 * c2; c <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0), and
    the key is bumped by the Weyl constants between rounds. Matches the Random123 reference
    (``philox4x32_R``) bit for bit: see the known-answer tests.
    """
    for r in range(rounds):
        if r:
            if isinstance(k0, int):
                k0, k1 = as_int32(k0 + PHILOX_W0), as_int32(k1 + PHILOX_W1)
            else:
                k0, k1 = add32(k0, PHILOX_W0), add32(k1, PHILOX_W1)
        hi0, lo0 = mulhilo32(c0, PHILOX_M0)
        hi1, lo1 = mulhilo32(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uniform_float32(w: torch.Tensor) -> torch.Tensor:
    """Uniform on the open interval (0, 1) from a 32-bit word: u = (2 k + 1) 2^-24, k = top 23 bits.

    Every value is exact in float32 and lies in [2^-24, 1 - 2^-24] -- the same values as the
    eager :func:`gumbelkit.uniform_open` on CPU. Not used for the Gumbel noise any more:
    -log(-log u) would stop at 16.6 (and -2.8), see :func:`gumbel_float32`.
    """
    k = _srl(w, 9)
    return (k.to(torch.float32) * 2.0 + 1.0) * (2.0**-24)


def uniform_float64(w_hi: torch.Tensor, w_lo: torch.Tensor) -> torch.Tensor:
    """Uniform on (0, 1) in float64 from two words: u = (2 k + 1) 2^-43, k = 21 + 21 top bits (exact).

    Not used for the Gumbel noise any more (see :func:`gumbel_float64`).
    """
    k = _srl(w_hi, 11).to(torch.float64) * (2.0**21) + _srl(w_lo, 11).to(torch.float64)
    return (k * 2.0 + 1.0) * (2.0**-43)


def join64(w_hi: torch.Tensor, w_lo: torch.Tensor) -> torch.Tensor:
    """The int64 word w_hi 2^32 + (w_lo mod 2^32): the bit pattern (w_hi << 32) | (w_lo & 0xFFFFFFFF).

    Written as a product and a sum, which never leave the int64 range (|w_hi 2^32| <= 2^63 and the
    low word is added to a multiple of 2^32), where a left shift of a negative w_hi would be
    undefined behaviour in the C++ that Inductor generates.
    """
    return w_hi.to(torch.int64) * (1 << 32) + (w_lo.to(torch.int64) & 0xFFFFFFFF)


def gumbel_float32(w: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) in float32 from one 32-bit word: g = -log E, E ~ Exp(1) exact in both tails.

    E comes from :func:`gumbelkit._core.noise.exp_from_words32`: the sign bit of ``w`` picks the half
    of the unit interval, the other 31 bits m give v = (m + 1/2) 2^-32 in (0, 1/2], and
    E = -log v or E = -log1p(-v), so E lies in [2^-33, 33 log 2] and g in [-3.13, 22.87]
    (-log(33 log 2) and 33 log 2). Small m -- either tail -- is exact; pure torch ops (Inductor, Triton).
    """
    return exp_from_words32(w, log=True).neg_()


def gumbel_float64(w_hi: torch.Tensor, w_lo: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) in float64 from two 32-bit words joined into one 64-bit word (:func:`join64`).

    As :func:`gumbel_float32` with v = (m + 1/2) 2^-64 from the 63 low bits of the joined word
    (its sign bit is the sign bit of ``w_hi``): E in [2^-65, 65 log 2], g in [-3.81, 45.05].
    """
    return exp_from_words64(join64(w_hi, w_lo), log=True).neg_()


# --------------------------------------------------------------------------- counter-based noise
#
# The one element-to-noise mapping of the counter-based paths (the Triton kernels on CUDA, per-request
# seeds in token sampling, and their op-by-op references on the CPU). Two Philox words per element,
# because one 32-bit word cannot give float32 noise both tails (E >= 2^-33 caps g at 22.87), and a
# pair of elements shares one Philox call, so each call's four words are all used.


def exp_from_word64(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """E ~ Exp(1) in ``dtype`` from one 64-bit random word (int64 bit pattern), exact in both tails.

    The construction of :func:`gumbelkit._core.noise.exp_from_words64` (the sign bit picks the half of
    the unit interval, v = (m + 1/2) 2^-64 from the other 63 bits, E = -log v or -log1p(-v)) with v
    and the logs evaluated in ``dtype``: float32 keeps v's relative precision (the conversion of m
    rounds to 24 significant bits, the float32 resolution of v itself, and small m is exact), so
    E lies in [2^-65, 64.5 log 2] and g = -log E in about [-3.80, 45.06] for float32 too.
    """
    upper = w < 0
    v = (w & 0x7FFFFFFFFFFFFFFF).to(dtype).add_(0.5).mul_(2.0**-64)
    return torch.where(upper, -torch.log(v), -torch.log1p(-v))


def counter_exponential(
    key: torch.Tensor | tuple, index: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """E ~ Exp(1), a pure function of (``key``, ``index``): the counter-based noise of gumbelkit.

    Mapping (fixed; the Triton kernels compute exactly this): ``key`` holds four 32-bit words
    (k0, k1, c2, c3) -- a 64-bit Philox key and the upper 64 bits of the counter (a stream, e.g. a
    decode step). Element ``i`` (an int64 logical index >= 0) belongs to pair j = i >> 1 and takes
    Philox4x32-10 at counter (j mod 2^32, j >> 32, c2, c3) with key (k0, k1): words (w0, w1) for
    even i, (w2, w3) for odd i, joined high:low into one 64-bit word (:func:`join64`) and mapped to
    E by :func:`exp_from_word64` in ``dtype`` (float32 or float64).

    Args:
        key: an int32 tensor whose last dim holds the 4 words (a (4,) key for all, or (..., 4)
            per-row keys broadcastable against ``index``), or a tuple of 4 int32 tensors/ints.
        index: int64 (or int32) tensor of logical element indices.
        dtype: float32 or float64.

    Returns:
        Tensor shaped like ``index`` (broadcast with the key words), values in (0, inf).

    Examples:
        >>> key = torch.tensor([1, 2, 3, 4], dtype=torch.int32)
        >>> e = counter_exponential(key, torch.arange(6))
        >>> bool((e > 0).all()), bool(torch.equal(e[2:3], counter_exponential(key, torch.tensor([2]))))
        (True, True)
    """
    if isinstance(key, torch.Tensor):
        k0, k1, c2, c3 = key.unbind(-1)
    else:
        k0, k1, c2, c3 = key
    i = index.to(torch.int64)
    j = i >> 1
    # the low word as an int32 bit pattern: subtracting 2^32 where bit 31 is set stays in int64
    lo32 = j & 0xFFFFFFFF
    c0 = (lo32 - ((lo32 >> 31) << 32)).to(torch.int32)
    c1 = (j >> 32).to(torch.int32)
    w0, w1, w2, w3 = philox4x32(c0, c1, c2, c3, k0, k1)
    odd = (i & 1).bool()
    hi = torch.where(odd, w2, w0)
    lo = torch.where(odd, w3, w1)
    return exp_from_word64(join64(hi, lo), dtype)


def counter_gumbel(key: torch.Tensor | tuple, index: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gumbel(0, 1) noise g = -log E with E from :func:`counter_exponential` (same key, same index).

    Examples:
        >>> g = counter_gumbel(torch.tensor([1, 2, 3, 4], dtype=torch.int32), torch.arange(4))
        >>> bool(torch.isfinite(g).all())
        True
    """
    return counter_exponential(key, index, dtype).log_().neg_()
