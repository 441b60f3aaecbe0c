"""Triton kernels of the Gumbel samplers: Gumbel-Softmax forward and backward, Gumbel-Max, Gumbel-top-k.

Imported lazily by :mod:`gumbelkit.kernels._triton_ops` (the host side: argument checks, layouts,
launch configuration, autograd), never by ``import gumbelkit``.

**Layout.** A logits tensor with its category dim ``dim`` is seen as (outer, K, inner): ``outer``
the dims before ``dim``, ``inner`` those after it, each collapsed to one stride when the memory
allows (the host makes a contiguous copy otherwise). A *column* is one (outer, inner) position --
one row of categories. A program handles a tile of BN columns and walks the K categories in
blocks of BK. The tile is oriented by ``RAX``, the axis that holds the categories:

* ``RAX = 1`` (inner == 1: categories last, or a transposed 2-d input): tile [BN, BK], the
  categories along the tile's last axis;
* ``RAX = 0`` (inner > 1: dim=1 of B x K x H x W and the like): tile [BK, BN], the columns --
  consecutive ``inner`` positions, contiguous in memory -- along the last axis, so that every load
  of one category row is coalesced and the category dim is read at its stride, with no
  transposed copy.

**Noise.** Element (column, k) has the logical index ``(o K + k) inner + i`` (row-major order of
the logical shape, whatever the memory layout) and its Exp(1) noise is
:func:`gumbelkit.kernels._triton_noise.counter_exponential` of that index under the call's key,
exactly the torch reference :func:`gumbelkit.kernels._philox.counter_exponential`. When the
logical indices along the tile's last axis come in (even, odd) pairs (K even for ``RAX = 1``,
inner even for ``RAX = 0``: ``PAIRED``), one Philox call serves both elements of a pair.

**The perturbed logits** s = x + g, g = -log E, are formed in float64: the sum of two float32
numbers is exact there, so the argmax (the sample) and the row maximum do not depend on how a row
is cut into blocks or chunks, and logits of any size keep their noise (1e7 + g in float32 would
round g to a multiple of 1). Everything else is float32: d = s - max (rounded once, <= 0),
exp(d / tau), sums.

**Long rows** (K > BK) are cut into ``NCHUNK`` chunks of ``CHUNK`` categories, each its own program,
so that a few long rows still fill the GPU: ``PHASE = 1`` writes each chunk's (max, sum of exp,
argmax, bad count) to small partial buffers, ``PHASE = 2`` combines a column's partials (an online
softmax across chunks) and writes its chunk of the output, regenerating the noise rather than
reading it back. ``PHASE = 0`` is the single pass of rows that fit one block.

**Bad rows.** A row with a NaN or +inf logit, no finite logit, or (tensor tau) a temperature not
in (0, inf) comes out all NaN -- index -1 for the index kernels -- at no extra cost: the row
maximum and a count of bad entries are computed anyway. The host decides whether to raise before
the launch (``"raise"`` validation mode) or to let the kernel mark the row (``"device"``).

Backward of y = softmax(s / tau): dx = y (v - <y, v>) / tau from the saved y and the incoming v
(one pass for rows that fit a block; partial dots then the write for long rows), and for a
per-row tensor tau, dtau = -sum_k y_k (v_k - <y, v>) log y_k / tau (0 where y_k = 0: masked
classes give exactly 0 to both gradients).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_noise import (
    counter_exponential,
    counter_exponential_pairs,
    exp_from_words,
    exp_from_words_f64,
    load_key,
    philox4x32_10,
)

__all__ = ["gs_backward", "gs_forward", "noise_fill", "topk_candidates"]

_TINY: tl.constexpr = 1.1754943508222875e-38  # float32's smallest normal: tau is raised to it (see prepare_tau)


@triton.jit
def _columns(pid_n, N, INNER, BN: tl.constexpr, RAX: tl.constexpr):
    """This program's columns (int64, keepdim-oriented), their mask, and (outer, inner) coordinates."""
    cols = pid_n.to(tl.int64) * BN + tl.arange(0, BN)
    if RAX == 1:
        cols = cols[:, None]
    else:
        cols = cols[None, :]
    o = cols // INNER
    return cols, cols < N, o, cols - o * INNER


@triton.jit
def _gumbel_tile(
    k0,
    k1,
    c2,
    c3,
    pid_n,
    kb,
    K,
    INNER,
    lbase,
    kk,
    BN: tl.constexpr,
    BK: tl.constexpr,
    RAX: tl.constexpr,
    PAIRED: tl.constexpr,
):
    """-log E (float32) for the tile of categories kb + [0, BK) of this program's BN columns."""
    if PAIRED:
        if RAX == 1:
            # categories along the last axis, K even: element (c, kb + 2t) is the even element of
            # pair (lbase_c + kb) / 2 + t
            t = tl.arange(0, BK // 2)[None, :]
            pair = (lbase >> 1) + (kb >> 1) + t
            e0, e1 = counter_exponential_pairs(k0, k1, c2, c3, pair)
            e = tl.join(e0, e1).reshape([BN, BK])
        else:
            # columns along the last axis, inner even: columns (n0 + 2t, n0 + 2t + 1) share a pair
            c = pid_n.to(tl.int64) * BN + 2 * tl.arange(0, BN // 2)[None, :]
            oc = c // INNER
            lb = oc * K * INNER + (c - oc * INNER)
            pair = (lb + kk * INNER) >> 1
            e0, e1 = counter_exponential_pairs(k0, k1, c2, c3, pair)
            e = tl.join(e0, e1).reshape([BK, BN])
    else:
        e = counter_exponential(k0, k1, c2, c3, lbase + kk * INNER)
    return -tl.log(e)


@triton.jit
def _tau_columns(tau_ptr, tau_val, cols, cmask, TAU_T: tl.constexpr):
    """(1 / tau, tau invalid) per column: a per-column tensor tau, or the scalar ``tau_val``."""
    if TAU_T:
        t = tl.load(tau_ptr + cols, mask=cmask, other=1.0)
        bad = ~((t > 0) & (t < float("inf")))
        return 1.0 / tl.maximum(t, _TINY), bad
    else:
        return 1.0 / tau_val + tl.zeros(cols.shape, tl.float32), cols < 0


@triton.jit
def _categories(ks, RAX: tl.constexpr):
    """Category indices ``ks`` (a vector) oriented as the tile's category axis: [1, BK] or [BK, 1].

    int64: offsets k * stride and logical indices k * inner may pass 2^31 in a large tensor.
    """
    if RAX == 1:
        return ks.to(tl.int64)[None, :]
    else:
        return ks.to(tl.int64)[:, None]


@triton.jit
def _partials(cols, cmask, NCHUNK, CB: tl.constexpr, RAX: tl.constexpr):
    """(offsets, mask) of every chunk's partial of this program's columns in a [columns, NCHUNK] buffer."""
    ch = _categories(tl.arange(0, CB), RAX)
    return cols * NCHUNK + ch, cmask & (ch < NCHUNK)


@triton.jit
def _block(
    x_ptr,
    sxk,
    xcol,
    cmask,
    kb,
    kend,
    k0,
    k1,
    c2,
    c3,
    pid_n,
    K,
    INNER,
    lbase,
    BN: tl.constexpr,
    BK: tl.constexpr,
    RAX: tl.constexpr,
    PAIRED: tl.constexpr,
):
    """One block: (s = x + g in float64, -inf outside the row; the block's count of NaN / +inf; k)."""
    kk = _categories(kb + tl.arange(0, BK), RAX)
    mask = cmask & (kk < kend)
    x = tl.load(x_ptr + xcol + kk * sxk, mask=mask, other=float("-inf")).to(tl.float32)
    nbad = tl.sum(((x != x) | (x == float("inf"))).to(tl.int32), axis=RAX, keep_dims=True)
    g = _gumbel_tile(k0, k1, c2, c3, pid_n, kb, K, INNER, lbase, kk, BN, BK, RAX, PAIRED)
    s = tl.where(mask, x.to(tl.float64) + g.to(tl.float64), float("-inf"))
    return s, nbad, kk


@triton.jit
def _reciprocal(ssum):
    """1 / (sum of exp) per row. The sum is >= 1 for a valid row (its maximum gives exp(0)); it is 0
    only for a row without a finite value (bad, marked NaN anyway) or a masked-out column of the
    tile, which get 1 instead of 0 * inf."""
    return 1.0 / tl.where(ssum > 0, ssum, 1.0)


@triton.jit
def _store_outputs(out_ptr, y_ptr, ooff, mask, y, hot, bad, MODE: tl.constexpr, SAVE_Y: tl.constexpr):
    nan = float("nan")
    if MODE == 0:
        tl.store(out_ptr + ooff, tl.where(bad, nan, y).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + ooff, tl.where(bad, nan, hot).to(out_ptr.dtype.element_ty), mask=mask)
        if SAVE_Y:
            tl.store(y_ptr + ooff, tl.where(bad, nan, y).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gs_forward(
    x_ptr, out_ptr, y_ptr, key_ptr, tau_ptr, pm_ptr, ps_ptr, pi_ptr, pb_ptr,
    N, K, INNER, sxo, sxk, sxi, soo, sok, soi, tau_val, CHUNK, NCHUNK,
    BN: tl.constexpr, BK: tl.constexpr, CB: tl.constexpr, RAX: tl.constexpr, PAIRED: tl.constexpr,
    PHASE: tl.constexpr, MODE: tl.constexpr, SAVE_Y: tl.constexpr, TAU_T: tl.constexpr,
):  # fmt: skip
    """Gumbel-Softmax forward (MODE 0: soft y; 1: one-hot, and y when SAVE_Y) or Gumbel-Max (MODE 2).

    MODE 2 writes one int64 index per column (out_ptr, contiguous over columns), -1 for a bad row.
    See the module notes for the layout, the phases and the bad rows.
    """
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    k0, k1, c2, c3 = load_key(key_ptr)
    cols, cmask, o, ii = _columns(pid_n, N, INNER, BN, RAX)
    xcol = o * sxo + ii * sxi
    ocol = o * soo + ii * soi
    lbase = o * K * INNER + ii
    inv, tau_bad = _tau_columns(tau_ptr, tau_val, cols, cmask, TAU_T)
    if PHASE == 0:
        s, nbad, kk = _block(x_ptr, sxk, xcol, cmask, 0, K, k0, k1, c2, c3, pid_n, K, INNER, lbase, BN, BK, RAX, PAIRED)
        m = tl.max(s, axis=RAX, keep_dims=True)
        idx = tl.argmax(s, axis=RAX, keep_dims=True)  # the first maximum: ties go to the lowest index
        bad = (nbad > 0) | (m == float("-inf")) | tau_bad
        if MODE == 2:
            tl.store(out_ptr + cols, tl.where(bad, -1, idx.to(tl.int64)), mask=cmask)
        else:
            # m = -inf only for an all-masked row (bad anyway); 0 keeps -inf - -inf out of it
            mref = tl.where(m == float("-inf"), 0.0, m)
            e = tl.exp((s - mref).to(tl.float32) * inv)  # d <= 0 and finite 1/tau: no overflow, no NaN
            y = e * _reciprocal(tl.sum(e, axis=RAX, keep_dims=True))
            hot = (kk == idx).to(tl.float32)
            _store_outputs(out_ptr, y_ptr, ocol + kk * sok, cmask & (kk < K), y, hot, bad, MODE, SAVE_Y)
    elif PHASE == 1:
        # this chunk's online (max, sum of exp((s - max) / tau), first argmax, bad count)
        kstart = pid_c * CHUNK
        kend = tl.minimum(kstart + CHUNK, K)
        m = tl.full(cols.shape, float("-inf"), tl.float64)
        ssum = tl.zeros(cols.shape, tl.float32)
        idx = tl.zeros(cols.shape, tl.int32)
        nbad = tl.zeros(cols.shape, tl.int32)
        for kb in range(kstart, kend, BK):
            s, nb, kk = _block(
                x_ptr, sxk, xcol, cmask, kb, kend, k0, k1, c2, c3, pid_n, K, INNER, lbase, BN, BK, RAX, PAIRED
            )
            nbad += nb
            bm = tl.max(s, axis=RAX, keep_dims=True)
            bi = tl.argmax(s, axis=RAX, keep_dims=True) + kb
            mnew = tl.maximum(m, bm)
            mref = tl.where(mnew == float("-inf"), 0.0, mnew)
            e = tl.exp((s - mref).to(tl.float32) * inv)
            ssum = ssum * tl.exp((m - mref).to(tl.float32) * inv) + tl.sum(e, axis=RAX, keep_dims=True)
            idx = tl.where(bm > m, bi, idx)  # strictly greater: an earlier block keeps a tie
            m = mnew
        p = cols * NCHUNK + pid_c
        tl.store(pm_ptr + p, m, mask=cmask)
        tl.store(ps_ptr + p, ssum, mask=cmask)
        tl.store(pi_ptr + p, idx, mask=cmask)
        tl.store(pb_ptr + p, nbad, mask=cmask)
    else:
        # combine the column's chunk partials, then write this program's chunk
        p, pmask = _partials(cols, cmask, NCHUNK, CB, RAX)
        pm = tl.load(pm_ptr + p, mask=pmask, other=float("-inf"))
        m = tl.max(pm, axis=RAX, keep_dims=True)
        mref = tl.where(m == float("-inf"), 0.0, m)
        ssum = tl.sum(
            tl.load(ps_ptr + p, mask=pmask, other=0.0) * tl.exp((pm - mref).to(tl.float32) * inv),
            axis=RAX,
            keep_dims=True,
        )
        rs = _reciprocal(ssum)
        pi = tl.load(pi_ptr + p, mask=pmask, other=0)
        idx = tl.min(tl.where(pmask & (pm == m), pi, 2147483647), axis=RAX, keep_dims=True)
        nbad = tl.sum(tl.load(pb_ptr + p, mask=pmask, other=0), axis=RAX, keep_dims=True)
        bad = (nbad > 0) | (m == float("-inf")) | tau_bad
        if MODE == 2:
            tl.store(out_ptr + cols, tl.where(bad, -1, idx.to(tl.int64)), mask=cmask)
        else:
            kstart = pid_c * CHUNK
            kend = tl.minimum(kstart + CHUNK, K)
            for kb in range(kstart, kend, BK):
                s, nb, kk = _block(
                    x_ptr, sxk, xcol, cmask, kb, kend, k0, k1, c2, c3, pid_n, K, INNER, lbase, BN, BK, RAX, PAIRED
                )
                y = tl.exp((s - mref).to(tl.float32) * inv) * rs
                hot = (kk == idx).to(tl.float32)
                _store_outputs(out_ptr, y_ptr, ocol + kk * sok, cmask & (kk < kend), y, hot, bad, MODE, SAVE_Y)


@triton.jit
def gs_backward(
    y_ptr, v_ptr, dx_ptr, tau_ptr, gt_ptr, pd_ptr, pa_ptr, pb_ptr,
    N, K, INNER, syo, syk, syi, svo, svk, svi, sdo, sdk, sdi, tau_val, CHUNK, NCHUNK,
    BN: tl.constexpr, BK: tl.constexpr, CB: tl.constexpr, RAX: tl.constexpr, PHASE: tl.constexpr,
    TAU_T: tl.constexpr, GRAD_TAU: tl.constexpr,
):  # fmt: skip
    """dx = y (v - <y, v>) / tau along the categories; with GRAD_TAU, dtau per column (gt_ptr, float32).

    PHASE 0: rows that fit one block, one pass. PHASE 1: per chunk, <y, v> (and with GRAD_TAU
    sum y v log y and sum y log y, from which dtau = -(sum y v log y - <y, v> sum y log y) / tau).
    PHASE 2: the column's sums from its partials, then this chunk of dx (and dtau, by chunk 0).
    """
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    cols, cmask, o, ii = _columns(pid_n, N, INNER, BN, RAX)
    ycol = o * syo + ii * syi
    vcol = o * svo + ii * svi
    dcol = o * sdo + ii * sdi
    inv, _ = _tau_columns(tau_ptr, tau_val, cols, cmask, TAU_T)
    if PHASE == 0:
        kk = _categories(tl.arange(0, BK), RAX)
        mask = cmask & (kk < K)
        y = tl.load(y_ptr + ycol + kk * syk, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + vcol + kk * svk, mask=mask, other=0.0).to(tl.float32)
        g = y * (v - tl.sum(y * v, axis=RAX, keep_dims=True))
        tl.store(dx_ptr + dcol + kk * sdk, (g * inv).to(dx_ptr.dtype.element_ty), mask=mask)
        if GRAD_TAU:
            # log y only where y > 0 (g is exactly 0 elsewhere): masked classes give 0, not 0 * -inf
            logy = tl.log(tl.where(y > 0, y, 1.0))
            tl.store(gt_ptr + cols, -tl.sum(g * logy, axis=RAX, keep_dims=True) * inv, mask=cmask)
    elif PHASE == 1:
        kstart = pid_c * CHUNK
        kend = tl.minimum(kstart + CHUNK, K)
        dot = tl.zeros(cols.shape, tl.float32)
        a = tl.zeros(cols.shape, tl.float32)
        b = tl.zeros(cols.shape, tl.float32)
        for kb in range(kstart, kend, BK):
            kk = _categories(kb + tl.arange(0, BK), RAX)
            mask = cmask & (kk < kend)
            y = tl.load(y_ptr + ycol + kk * syk, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + vcol + kk * svk, mask=mask, other=0.0).to(tl.float32)
            dot += tl.sum(y * v, axis=RAX, keep_dims=True)
            if GRAD_TAU:
                ylogy = y * tl.log(tl.where(y > 0, y, 1.0))
                a += tl.sum(ylogy * v, axis=RAX, keep_dims=True)
                b += tl.sum(ylogy, axis=RAX, keep_dims=True)
        p = cols * NCHUNK + pid_c
        tl.store(pd_ptr + p, dot, mask=cmask)
        if GRAD_TAU:
            tl.store(pa_ptr + p, a, mask=cmask)
            tl.store(pb_ptr + p, b, mask=cmask)
    else:
        p, pmask = _partials(cols, cmask, NCHUNK, CB, RAX)
        dot = tl.sum(tl.load(pd_ptr + p, mask=pmask, other=0.0), axis=RAX, keep_dims=True)
        if GRAD_TAU:  # noqa: SIM102 (a compile-time branch around a run-time one)
            if pid_c == 0:
                a = tl.sum(tl.load(pa_ptr + p, mask=pmask, other=0.0), axis=RAX, keep_dims=True)
                b = tl.sum(tl.load(pb_ptr + p, mask=pmask, other=0.0), axis=RAX, keep_dims=True)
                tl.store(gt_ptr + cols, -(a - dot * b) * inv, mask=cmask)
        kstart = pid_c * CHUNK
        kend = tl.minimum(kstart + CHUNK, K)
        for kb in range(kstart, kend, BK):
            kk = _categories(kb + tl.arange(0, BK), RAX)
            mask = cmask & (kk < kend)
            y = tl.load(y_ptr + ycol + kk * syk, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + vcol + kk * svk, mask=mask, other=0.0).to(tl.float32)
            tl.store(dx_ptr + dcol + kk * sdk, (y * (v - dot) * inv).to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def topk_candidates(
    x_ptr, cv_ptr, ci_ptr, pb_ptr, key_ptr, N, K, INNER, sxo, sxk, sxi, NCHUNK,
    KTOP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, RAX: tl.constexpr, PAIRED: tl.constexpr,
):  # fmt: skip
    """The KTOP largest s = x + g of each (column, block of BK categories), in decreasing order.

    Writes their values (float64, cv_ptr) and category indices (int64, ci_ptr) at
    [column, block * KTOP + j], and the block's count of NaN / +inf (pb_ptr, [column, block]). The
    top k of a row is among its blocks' top k, so the noise never leaves the registers; with one
    block per row the candidates are the answer.
    """
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    k0, k1, c2, c3 = load_key(key_ptr)
    cols, cmask, o, ii = _columns(pid_n, N, INNER, BN, RAX)
    xcol = o * sxo + ii * sxi
    lbase = o * K * INNER + ii
    kb = pid_c * BK
    s, nbad, kk = _block(x_ptr, sxk, xcol, cmask, kb, K, k0, k1, c2, c3, pid_n, K, INNER, lbase, BN, BK, RAX, PAIRED)
    tl.store(pb_ptr + cols * NCHUNK + pid_c, nbad, mask=cmask)
    for j in tl.static_range(KTOP):
        m = tl.max(s, axis=RAX, keep_dims=True)
        i = tl.argmax(s, axis=RAX, keep_dims=True)  # the first of equal values
        p = cols * (NCHUNK * KTOP) + pid_c * KTOP + j
        tl.store(cv_ptr + p, m, mask=cmask)
        tl.store(ci_ptr + p, (i + kb).to(tl.int64), mask=cmask)
        s = tl.where(kk - kb == i, float("-inf"), s)


@triton.jit(do_not_specialize=["stream"])
def noise_fill(out_ptr, key_ptr, n, stream, BLOCK: tl.constexpr, LOG: tl.constexpr, FP64: tl.constexpr):
    """out[i] = E_i (or log E_i) for i < n under the key with its last word c3 + ``stream`` (mod 2^32).

    The counter noise of :func:`gumbelkit.kernels._philox.counter_exponential` in the output's
    dtype (float32, or float64 computed in float64), one Philox call per pair of elements.
    """
    pid = tl.program_id(0)
    k0, k1, c2, c3 = load_key(key_ptr)
    c3 = c3 + stream.to(tl.uint32)
    pair = pid.to(tl.int64) * (BLOCK // 2) + tl.arange(0, BLOCK // 2)
    w0, w1, w2, w3 = philox4x32_10((pair & 0xFFFFFFFF).to(tl.uint32), (pair >> 32).to(tl.uint32), c2, c3, k0, k1)
    if FP64:
        e = tl.join(exp_from_words_f64(w0, w1), exp_from_words_f64(w2, w3)).reshape([BLOCK])
    else:
        e = tl.join(exp_from_words(w0, w1), exp_from_words(w2, w3)).reshape([BLOCK])
    if LOG:
        e = tl.log(e)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, e.to(out_ptr.dtype.element_ty), mask=offs < n)
