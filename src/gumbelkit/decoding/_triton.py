"""Token sampling on CUDA in Triton: the law of :mod:`gumbelkit.decoding._torch`, with no host sync.

Three kernels, one program per row, launched with fixed grids from device tensors only (CUDA-graph
capturable; the per-row keys are drawn by a torch RNG op, so a replay draws fresh noise):

* :func:`_stats_kernel` -- one pass: the row max m, NaN / +inf detection, the first index of the
  max (greedy rows) and the tempered mass Z = sum exp((x - m) / T) (online, for top-p).
* window thresholds in torch ops (:func:`_window_thresholds`): the row's 128 largest logits from
  the strided group maxima and two ``topk`` of fixed size, then t_k, t_p and t_min as on the CPU;
  rows whose top-k set or nucleus does not lie inside the window are flagged.
* :func:`_refine_kernel` -- only for flagged rows (the others return at once): exact t_k and t_p
  by radix selection over the order-preserving 31-bit key of y <= 0 (8 passes of 4-bit digits;
  counts for t_k, masses for t_p), the same thresholds the CPU finds by sorting.
* :func:`_draw_kernel` -- the three-stage Gumbel-Max over K = {y >= t*}: every block's log-mass
  M_j + log sum exp(y - M_j) with its counter noise, the best block kept on the fly, then the
  sub-block and the token inside it; the log-mass of K for the log-probability.

Bad rows (NaN, +inf, nothing finite, a bad parameter value) get token -1 and log-probability NaN.

The counter noise (:func:`counter_exponential_tl`) is the mapping of
:func:`gumbelkit.kernels._philox.counter_exponential`: the same Philox4x32-10 words bit for bit and
the same float32 value v; the logarithms are taken in float64 and rounded once (where the torch
reference rounds its float32 logarithms, the two differ by at most an ulp of E).

Triton is imported lazily: importing :mod:`gumbelkit` never needs it.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ._params import RowParams
from ._torch import (
    BLOCK,
    SUB,
    SUB_BASE,
    TOKEN_BASE,
    WINDOW,
    _gather,
    _group_ids,
    _group_max,
    _nucleus,
)

__all__ = ["counter_words_and_exponential", "is_available", "sample_rows_triton"]

_NEG_INF = float("-inf")


def is_available() -> bool:
    """Whether Triton can be imported (the kernels then run on CUDA tensors, or interpreted)."""
    return importlib.util.find_spec("triton") is not None


# Under the interpreter each op costs about the same whatever its size: bigger steps, fewer ops.
_REFINE_CHUNK_INTERPRETED = 2048


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _kernels():
    """The kernels module, imported on first use (Triton is never imported with gumbelkit)."""
    from ..kernels import _triton_decoding_kernels

    return _triton_decoding_kernels


def counter_words_and_exponential(keys: torch.Tensor, index: torch.Tensor):
    """(words (R, n) int64, E (R, n) float32) of the Triton counter noise: keys (R, 4) int32, index (R, n)."""
    R, n = index.shape
    words = torch.empty((R, n), dtype=torch.int64, device=index.device)
    e = torch.empty((R, n), dtype=torch.float32, device=index.device)
    N = max(16, 1 << (n - 1).bit_length())
    _kernels().words_kernel[(R,)](keys.contiguous(), index.contiguous().to(torch.int64), words, e, n, N=N)
    return words, e


def _window_thresholds(x, m, t, k, p, mp, z, window: int):
    """Thresholds from the row's ``window`` largest logits (torch ops, fixed shapes, no host read).

    Returns (thr, tk, z_k, need_k, need_p): need_k where the top-k set does not lie strictly inside
    the window (k >= window, or ties past it), need_p where the nucleus crossing is not in it.
    """
    B, V = x.shape
    groups = _group_max(x).float()
    if groups.shape[1] <= window:
        vals = x.float().topk(min(window, V), dim=1).values
        covers = window >= V
    else:
        rows = torch.arange(B, device=x.device)
        ids = _group_ids(groups.topk(window, dim=1, sorted=False).indices, V)
        vals = _gather(x, rows, ids.clamp(max=V - 1)).float().masked_fill(ids >= V, _NEG_INF)
        vals = vals.topk(window, dim=1).values
        covers = False
    yw = (vals - m.unsqueeze(1)) / t.unsqueeze(1)
    W = yw.shape[1]
    finite = yw > _NEG_INF
    last = yw[:, -1]
    k_on = k > 0
    kth = yw.gather(1, (k - 1).clamp(min=0, max=W - 1).unsqueeze(1)).squeeze(1)
    k_known = k_on & (k < W)
    tk = torch.where(k_known, kth, _NEG_INF)
    k_inside = k_known & (last < tk) if not covers else k_on
    need_k = k_on & ~k_inside
    kept_k = finite & (yw >= tk.unsqueeze(1))
    zw = torch.where(kept_k, yw.double().exp(), 0.0).sum(1)
    zk = torch.where(k_inside, zw, z.double())
    tp, found = _nucleus(yw, kept_k, zk, p)
    if covers:
        tp = torch.where(found, tp, _NEG_INF)
        found = torch.ones_like(found)
    use_p = p < 1
    need_p = use_p & (need_k | ~found)
    tmin = torch.where(mp > 0, mp.log(), _NEG_INF)
    thr = torch.maximum(torch.maximum(tk, torch.where(use_p & ~need_p, tp, _NEG_INF)), tmin)
    return thr.float(), tk.float(), zk.float(), need_k, need_p


def _search_thresholds(kern, x, m, t, rp: RowParams, z, window: int) -> torch.Tensor:
    """t* of every row: the window's thresholds, then the kernel's exact search where they fall short."""
    B, V = x.shape
    thr, tk, zk, need_k, need_p = _window_thresholds(x, m, t, rp.top_k, rp.top_p.float(), rp.min_p.float(), z, window)
    kern.refine_kernel[(B,)](
        x,
        m,
        t,
        rp.top_k.contiguous(),
        rp.top_p.float().contiguous(),
        tk.contiguous(),
        zk.contiguous(),
        need_k.to(torch.int32),
        need_p.to(torch.int32),
        thr,
        V,
        CH=_REFINE_CHUNK_INTERPRETED if _interpreted() else 256,  # a (16, CH) tile per step
    )
    return thr


def sample_rows_triton(x: torch.Tensor, rp: RowParams, keys: torch.Tensor, need_logprobs: bool, window: int = WINDOW):
    """Tokens (B,) int64 and log-probabilities (B,) float32 by the Triton kernels; -1 / NaN for bad rows.

    ``x`` (B, V) float16, bfloat16 or float32 on CUDA (or on the CPU under TRITON_INTERPRET=1).
    ``window`` (a power of two) is the window of the threshold search (smaller in tests, to reach
    the in-kernel search on small rows).
    """
    kern = _kernels()
    x = x.detach()
    if x.dtype == torch.float64:
        x = x.float()
    x = x.contiguous()
    B, V = x.shape
    dev = x.device
    tokens = torch.empty(B, dtype=torch.int64, device=dev)
    logp = torch.empty(B, dtype=torch.float32, device=dev)
    if B == 0:
        return tokens, (logp if need_logprobs else None)
    t = rp.temperature.float().contiguous()
    m = torch.empty(B, dtype=torch.float32, device=dev)
    z = torch.empty(B, dtype=torch.float32, device=dev)
    arg = torch.empty(B, dtype=torch.int64, device=dev)
    bad = torch.empty(B, dtype=torch.int32, device=dev)
    kern.stats_kernel[(B,)](x, t, m, z, arg, bad, V, CH=2048)
    bad = bad | rp.bad.to(torch.int32)
    t_eff = torch.where(t > 0, t, 1.0)
    m_eff = torch.where(torch.isfinite(m), m, 0.0)
    if rp.no_top_k_top_p:  # min-p alone is a threshold on y: no search
        mp = rp.min_p.float()
        thr = torch.where(mp > 0, mp.log(), _NEG_INF)
    else:
        thr = _search_thresholds(kern, x, m_eff, t_eff, rp, z, window)
    nb = -(-V // BLOCK)
    kern.draw_kernel[(B,)](
        x,
        m_eff,
        t,
        thr,
        arg,
        bad,
        keys.contiguous(),
        tokens,
        logp,
        V,
        nb,
        BLK=BLOCK,
        SUBN=SUB,
        NBT=16,
        SUB_BASE_C=SUB_BASE,
        TOKEN_BASE_C=TOKEN_BASE,
    )
    return tokens, (logp if need_logprobs else None)
