"""The counter-based Gumbel noise of token sampling, per row: g = counter_gumbel(key_row, index).

The mapping is :func:`gumbelkit.kernels._philox.counter_gumbel`'s, bit for bit (tested): Philox4x32-10
at counter (j lo, j hi, c2, c3), j = index >> 1, key (k0, k1); words (w0, w1) for an even index,
(w2, w3) for an odd one, joined into one 64-bit word and mapped to E ~ Exp(1) exactly in both
tails, g = -log E. Only the way the Philox words are computed differs on the CPU: the reference
builds each 32x32-bit product from 16-bit digits in int32 torch ops (~25 ops per product, so that
Inductor's C++ never overflows), while here NumPy multiplies the 32-bit words as uint64, where the
full product fits and wrapping is defined: 3 ops per product, 5-7x faster on a row's few hundred
noise values (the CPU cost that the hierarchical sampler keeps small). Other devices use the
reference.
"""

from __future__ import annotations

import numpy as np
import torch

from ..kernels._philox import (
    PHILOX_M0,
    PHILOX_M1,
    PHILOX_W0,
    PHILOX_W1,
    counter_gumbel,
    exp_from_word64,
    join64,
)

__all__ = ["gumbel_at", "gumbel_range"]

_MASK = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def _philox_np(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint64 arrays that hold 32-bit words (broadcastable); returns 4 word arrays."""
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    w0, w1 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
    for r in range(10):
        if r:
            k0 = (k0 + w0) & _MASK
            k1 = (k1 + w1) & _MASK
        p0 = c0 * m0  # < 2^64: exact in uint64
        p1 = c2 * m1
        c0, c1, c2, c3 = (p1 >> _S32) ^ c1 ^ k0, p1 & _MASK, (p0 >> _S32) ^ c3 ^ k1, p0 & _MASK
    return c0, c1, c2, c3


def _key_words(keys: torch.Tensor) -> list:
    """The four key words of each row as (R, 1) uint64 arrays."""
    k = keys.to(torch.int64).numpy() & 0xFFFFFFFF
    return [k[:, i : i + 1].astype(np.uint64) for i in range(4)]


def _as_int32(w: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(w.astype(np.uint32)).view(np.int32))


def _gumbel_from_words(hi: torch.Tensor, lo: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # the float part is the reference's own function: the same ops give the same bits
    return exp_from_word64(join64(hi, lo), dtype).log_().neg_()


# Rows of noise per NumPy pass: the ~30 uint64 temporaries of a pass stay in the L2 cache.
_PIECE = 1 << 13


def _pieces(R: int, n: int):
    step = max(1, _PIECE // max(n, 1))
    return [(s, min(s + step, R)) for s in range(0, R, step)]


def _words_at(keys: torch.Tensor, index: torch.Tensor):
    k0, k1, c2, c3 = _key_words(keys)
    i = index.numpy().astype(np.uint64)
    j = i >> np.uint64(1)
    w0, w1, w2, w3 = _philox_np(j & _MASK, j >> _S32, c2, c3, k0, k1)
    odd = (i & np.uint64(1)).astype(bool)
    return np.where(odd, w2, w0), np.where(odd, w3, w1)


def gumbel_at(keys: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """g[r, i] = counter_gumbel(keys[r], index[r, i]): keys (R, 4) int32, index (R, n) int64 >= 0."""
    if keys.device.type != "cpu":
        return counter_gumbel(keys.unsqueeze(1), index, dtype)
    R, n = index.shape
    hi = np.empty((R, n), dtype=np.uint64)
    lo = np.empty((R, n), dtype=np.uint64)
    for s, e in _pieces(R, n):
        hi[s:e], lo[s:e] = _words_at(keys[s:e], index[s:e])
    return _gumbel_from_words(_as_int32(hi), _as_int32(lo), dtype)


def gumbel_range(keys: torch.Tensor, start: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """g[r, i] = counter_gumbel(keys[r], start[r] + i) for i < n: start (R,) int64, even; n even.

    Both elements of a pair share one Philox call: half the work of :func:`gumbel_at`.
    """
    if keys.device.type != "cpu":
        return counter_gumbel(keys.unsqueeze(1), start.unsqueeze(1) + torch.arange(n, device=keys.device), dtype)
    R = keys.shape[0]
    hi = np.empty((R, n // 2, 2), dtype=np.uint64)
    lo = np.empty((R, n // 2, 2), dtype=np.uint64)
    pairs = np.arange(n // 2, dtype=np.uint64)
    first = start.numpy().astype(np.uint64) >> np.uint64(1)
    for s, e in _pieces(R, n):
        k0, k1, c2, c3 = _key_words(keys[s:e])
        j = first[s:e, None] + pairs
        w0, w1, w2, w3 = _philox_np(j & _MASK, j >> _S32, c2, c3, k0, k1)
        hi[s:e, :, 0], hi[s:e, :, 1] = w0, w2
        lo[s:e, :, 0], lo[s:e, :, 1] = w1, w3
    return _gumbel_from_words(_as_int32(hi.reshape(R, n)), _as_int32(lo.reshape(R, n)), dtype)
