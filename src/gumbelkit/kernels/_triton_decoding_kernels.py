"""The Triton kernels of :mod:`gumbelkit.kernels._triton_decoding` (imported only when they are needed).

``triton.jit`` reads TRITON_INTERPRET when it decorates, i.e. when this module is imported: the
tests import it under the interpreter (and reload it afterwards).
"""

import triton
import triton.language as tl

from ._triton_noise import counter_exponential, exp_from_words, load_key, philox4x32_10

__all__ = ["counter_words", "draw_kernel", "gumbel", "radix_select", "refine_kernel", "stats_kernel", "words_kernel"]


@triton.jit
def counter_words(k0, k1, c2, c3, index):
    """The (high, low) uint32 words of element ``index`` (int64 >= 0) under key (k0, k1, c2, c3).

    The mapping of :func:`gumbelkit.kernels._philox.counter_exponential`: pair j = index >> 1,
    words (w0, w1) for even elements, (w2, w3) for odd ones. Used by the test kernel below; the
    samplers call :func:`counter_exponential` directly.
    """
    j = index >> 1
    zero = tl.zeros(j.shape, tl.uint32)
    w0, w1, w2, w3 = philox4x32_10(
        (j & 0xFFFFFFFF).to(tl.uint32), (j >> 32).to(tl.uint32), zero + c2, zero + c3, k0, k1
    )
    odd = (index & 1) == 1
    return tl.where(odd, w2, w0), tl.where(odd, w3, w1)


@triton.jit
def gumbel(k0, k1, c2, c3, index):
    """g = -log E (float32) of each element of ``index`` under the key: the shared counter noise."""
    return -tl.log(counter_exponential(k0, k1, c2, c3, index))


@triton.jit
def words_kernel(keys_ptr, index_ptr, words_ptr, e_ptr, n, N: tl.constexpr):
    """Test kernel: the counter words and E of index[row, :n] for key[row]."""
    row = tl.program_id(0)
    k0, k1, c2, c3 = load_key(keys_ptr + row * 4)
    offs = tl.arange(0, N)
    mask = offs < n
    idx = tl.load(index_ptr + row * n + offs, mask=mask, other=0)
    hi, lo = counter_words(k0, k1, c2, c3, idx)
    w = ((hi.to(tl.uint64) << 32) | lo.to(tl.uint64)).to(tl.int64, bitcast=True)
    tl.store(words_ptr + row * n + offs, w, mask=mask)
    tl.store(e_ptr + row * n + offs, exp_from_words(hi, lo), mask=mask)


@triton.jit
def stats_kernel(x_ptr, t_ptr, m_ptr, z_ptr, arg_ptr, bad_ptr, V, CH: tl.constexpr):
    """Row max, NaN / +inf flag, first index of the max, and Z = sum exp((x - m) / T) (online)."""
    row = tl.program_id(0)
    base = x_ptr + row.to(tl.int64) * V
    t = tl.load(t_ptr + row)
    t = tl.where(t > 0, t, 1.0)
    m = tl.full([], float("-inf"), tl.float32)
    z = tl.zeros([], tl.float32)
    arg = tl.zeros([], tl.int64)
    bad = tl.zeros([], tl.int32)
    for start in range(0, V, CH):
        offs = start + tl.arange(0, CH)
        x = tl.load(base + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        bad = bad | tl.max(((x != x) | (x == float("inf"))).to(tl.int32), 0)
        x = tl.where(x != x, float("-inf"), x)
        cm = tl.max(x, 0)
        ci = tl.argmax(x, 0)
        new_m = tl.maximum(m, cm)
        safe = tl.where(new_m > float("-inf"), new_m, 0.0)
        z = z * tl.exp((m - safe) / t) + tl.sum(tl.exp((x - safe) / t), 0)
        arg = tl.where(cm > m, start + ci.to(tl.int64), arg)
        m = new_m
    bad = bad | (m == float("-inf")).to(tl.int32)
    tl.store(m_ptr + row, m)
    tl.store(z_ptr + row, z)
    tl.store(arg_ptr + row, arg)
    tl.store(bad_ptr + row, bad)


@triton.jit
def radix_select(base, V, m, t, u_lim, target, by_mass: tl.constexpr, CH: tl.constexpr):
    """The smallest key U with (count or mass of keys <= U, among keys <= u_lim) >= target.

    Keys: u = bits(y) & 0x7FFFFFFF for y = (x - m) / T <= 0, so a smaller key is a larger y.
    Eight passes of 4-bit digits from the top; each pass weighs the tokens that match the
    prefix found so far into 16 digit bins. Returns (U, found): found is False when the
    whole weight stays below ``target`` (rounding in a nucleus of p close to 1).
    """
    prefix = tl.zeros([], tl.int64)
    before = tl.zeros([], tl.float32)
    found = tl.full([], 1, tl.int32)
    digits = tl.arange(0, 16)
    for level in tl.static_range(8):
        shift = 28 - 4 * level  # a compile-time constant: level runs over a static range
        acc = tl.zeros([16], tl.float32)
        for start in range(0, V, CH):
            offs = start + tl.arange(0, CH)
            x = tl.load(base + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
            y = (x - m) / t
            u = (y.to(tl.int32, bitcast=True) & 0x7FFFFFFF).to(tl.int64)
            ok = (offs < V) & (u <= u_lim) & ((u >> (shift + 4)) == (prefix >> (shift + 4)))
            if by_mass:
                w = tl.where(ok, tl.exp(y), 0.0)
            else:
                w = ok.to(tl.float32)
            d = (u >> shift) & 15
            acc += tl.sum(tl.where(d[None, :] == digits[:, None], w[None, :], 0.0), 1)
        cum = before + tl.cumsum(acc, 0)
        if level == 0:
            found = (tl.max(cum, 0) >= target).to(tl.int32)
        pick = tl.min(tl.where(cum >= target, digits, 15), 0)
        before = before + tl.sum(tl.where(digits < pick, acc, 0.0), 0)
        prefix = prefix | (pick.to(tl.int64) << shift)
    return prefix, found


@triton.jit
def refine_kernel(
    x_ptr, m_ptr, t_ptr, k_ptr, p_ptr, tk_ptr, z_ptr, need_k_ptr, need_p_ptr, thr_ptr, V, CH: tl.constexpr
):
    """Exact t_k and t_p for the rows the window could not settle; others return at once."""
    row = tl.program_id(0)
    need_k = tl.load(need_k_ptr + row) != 0
    need_p = tl.load(need_p_ptr + row) != 0
    if need_k | need_p:
        base = x_ptr + row.to(tl.int64) * V
        m = tl.load(m_ptr + row)
        t = tl.load(t_ptr + row)
        tk = tl.load(tk_ptr + row)
        z = tl.load(z_ptr + row)
        thr = tl.load(thr_ptr + row)
        u_inf = 0x7F800000
        if need_k:
            k = tl.load(k_ptr + row).to(tl.float32)
            uk, _ = radix_select(base, V, m, t, u_inf, k, False, CH)
            tk = -(uk.to(tl.int32).to(tl.float32, bitcast=True))
            thr = tl.maximum(thr, tk)
            if need_p:  # the nucleus is a fraction of the top-k set's mass
                z = tl.zeros([], tl.float32)
                for start in range(0, V, CH):
                    offs = start + tl.arange(0, CH)
                    x = tl.load(base + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
                    y = (x - m) / t
                    z += tl.sum(tl.where(y >= tk, tl.exp(y), 0.0), 0)
        if need_p:
            u_k = (tk.to(tl.int32, bitcast=True) & 0x7FFFFFFF).to(tl.int64)
            u_k = tl.where(tk > float("-inf"), u_k, u_inf)
            p = tl.load(p_ptr + row)
            up, found = radix_select(base, V, m, t, u_k, p * z, True, CH)
            tp = -(up.to(tl.int32).to(tl.float32, bitcast=True))
            thr = tl.where(found != 0, tl.maximum(thr, tp), thr)
        tl.store(thr_ptr + row, thr)


@triton.jit
def draw_kernel(
    x_ptr,
    m_ptr,
    t_ptr,
    thr_ptr,
    arg_ptr,
    bad_ptr,
    keys_ptr,
    tok_ptr,
    lp_ptr,
    V,
    NB,
    BLK: tl.constexpr,
    SUBN: tl.constexpr,
    NBT: tl.constexpr,
    SUB_BASE_C: tl.constexpr,
    TOKEN_BASE_C: tl.constexpr,
):
    """The three-stage draw of one row (see the module note); greedy and bad rows written directly."""
    row = tl.program_id(0)
    bad = tl.load(bad_ptr + row) != 0
    t = tl.load(t_ptr + row)
    if bad:
        tl.store(tok_ptr + row, -1)
        tl.store(lp_ptr + row, float("nan"))
    elif t == 0:
        tl.store(tok_ptr + row, tl.load(arg_ptr + row))
        tl.store(lp_ptr + row, 0.0)
    else:
        base = x_ptr + row.to(tl.int64) * V
        m = tl.load(m_ptr + row)
        thr = tl.load(thr_ptr + row)
        k0, k1, c2, c3 = load_key(keys_ptr + row * 4)
        best = tl.full([], float("-inf"), tl.float32)
        best_j = tl.zeros([], tl.int64)
        zm = tl.full([], float("-inf"), tl.float32)  # log-mass of K, online
        zs = tl.zeros([], tl.float32)
        cols = tl.arange(0, BLK)
        for jb in range(0, NB, NBT):
            blocks = jb + tl.arange(0, NBT)
            offs = blocks.to(tl.int64)[:, None] * BLK + cols[None, :]
            x = tl.load(base + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
            y = (x - m) / t
            kept = (y >= thr) & (y > float("-inf"))
            ym = tl.where(kept, y, float("-inf"))
            mj = tl.max(ym, 1)
            sj = tl.sum(tl.where(kept, tl.exp(ym - mj[:, None]), 0.0), 1)
            lj = mj + tl.log(sj)
            score = tl.where(blocks < NB, lj + gumbel(k0, k1, c2, c3, blocks.to(tl.int64)), float("-inf"))
            cb = tl.max(score, 0)
            cj = tl.argmax(score, 0)
            best_j = tl.where(cb > best, jb + cj.to(tl.int64), best_j)
            best = tl.maximum(best, cb)
            lm = tl.max(lj, 0)
            nm = tl.maximum(zm, lm)
            safe = tl.where(nm > float("-inf"), nm, 0.0)
            zs = zs * tl.exp(zm - safe) + tl.sum(tl.exp(lj - safe), 0)
            zm = nm
        # stages 2 and 3 inside the chosen block, seen as 16 sub-blocks (rows) of 16 tokens; one
        # noise call: columns 0-15 the tokens' noise, column 16 of row r the noise of sub-block r
        r16 = tl.arange(0, BLK // SUBN)
        c32 = tl.arange(0, 2 * SUBN)
        offs = best_j * BLK + r16[:, None] * SUBN + c32[None, :]
        x = tl.load(base + offs, mask=(c32[None, :] < SUBN) & (offs < V), other=float("-inf")).to(tl.float32)
        y = (x - m) / t
        ym = tl.where((y >= thr) & (y > float("-inf")), y, float("-inf"))
        idx = tl.where(
            c32[None, :] < SUBN,
            TOKEN_BASE_C + offs,
            SUB_BASE_C + best_j * (BLK // SUBN) + r16[:, None].to(tl.int64) + 0 * c32[None, :],
        )
        g = gumbel(k0, k1, c2, c3, idx)
        ms = tl.max(ym, 1)
        ss = tl.sum(tl.where(ym > float("-inf"), tl.exp(ym - ms[:, None]), 0.0), 1)
        gs = tl.sum(tl.where(c32[None, :] == SUBN, g, 0.0), 1)
        s = tl.argmax(ms + tl.log(ss) + gs, 0)
        pick = r16[:, None] == s
        ys = tl.max(tl.where(pick, ym, float("-inf")), 0)  # the chosen sub-block's y (-inf past column 15)
        gt = tl.sum(tl.where(pick, g, 0.0), 0)
        pos = tl.argmax(tl.where(c32 < SUBN, ys + gt, float("-inf")), 0)
        tok = best_j * BLK + s.to(tl.int64) * SUBN + pos.to(tl.int64)
        ytok = tl.max(tl.where(c32 == pos, ys, float("-inf")), 0)
        tl.store(tok_ptr + row, tok)
        tl.store(lp_ptr + row, ytok - (zm + tl.log(zs)))
