"""Token sampling in torch ops (the CPU path, and the reference of the Triton kernels).

The law. A row x (V logits) with temperature T > 0 becomes y = (x - max x) / T; the filters keep
K = {t : y_t >= t*, y_t > -inf} with t* = max(t_k, t_p, t_min) (the filters' thresholds, see
:func:`~gumbelkit.decoding.sample_tokens`), and the token is an exact draw from
softmax(y) restricted to K.

The draw: hierarchical Gumbel-Max in three stages. Tokens are grouped in blocks of
:data:`BLOCK` = 256 consecutive ids, each split into 16 sub-blocks of :data:`SUB` = 16. A group's
log-mass is L = log sum_{t in K, t in group} exp(y_t), computed as M + log sum exp(y_t - M) with M
the group's largest kept y (so a group far below the row's top keeps its exact log-mass instead
of underflowing). The block is j* = argmax_j L_j + G_j, the sub-block s* = argmax_{s in j*}
L_s + G_s, and the token t = argmax_{t in K, t in s*} y_t + g_t, where the Gs and gs are the
row's counter noise (``counter_gumbel(key, i)``) at three separate index ranges: block j at j,
sub-block s at SUB_BASE + s, token t at TOKEN_BASE + t. Gumbel-Max at each stage gives
P(j*) P(s* | j*) P(t | s*) = softmax(y)_t on K exactly, with V / 256 + 32 noise values per row
instead of V.

Precision: a group's S is a float32 sum of terms <= 1 whose largest is exactly 1, so terms below
2^-24 are lost only next to much larger ones (in a 65,536-way row with one token at 0 and the
rest at -19, the top block drops its 255 tail weights of 5.6e-9: its probability moves by at
most 1.4e-6), while every token's own chance inside its group is carried by exact-tail noise.

Pruning (exact): M_j <= L_j <= M_j + log n_j (n_j: the block's size), so with the best lower bound
L* = max_j M_j + G_j, a block with M_j + log n_j + G_j < L* cannot win and its L_j is never
computed. Block maxima come from one cheap max-reduction over the row; only a few blocks (the
likely winners) are exponentiated. The sampled block is the one the full computation would pick.

Small kept sets (top-k, a peaked nucleus, min-p) are found inside a *window*: the row's W largest
logits, taken from the W groups of 16 tokens (strided, see :func:`_group_max`) with the largest
maxima, which hold all of them -- no V-sized sort. When K lies strictly inside the window, the
same three-stage draw runs on the window alone; otherwise on the whole row, with the threshold
found in the window or, for a nucleus larger than the window, from a mass histogram of the row
(:func:`_nucleus_by_bins`).

Reproducibility. Every quantity of a row is computed from that row alone, with reductions over
fixed-size pieces (256 tokens, then the row's blocks), so a row's token is a pure function of
(row logits, parameters, key): the same whatever else is in the batch, bitwise.
"""

from __future__ import annotations

from typing import Any

import torch

from .._core.policy import compute_dtype
from ._counter import gumbel_at, gumbel_range
from ._params import RowParams

__all__ = ["BLOCK", "SUB", "SUB_BASE", "TOKEN_BASE", "WINDOW", "row_maxima", "sample_rows"]

BLOCK = 256  # tokens per block of the hierarchical draw (block j holds ids [256 j, 256 j + 256))
SUB_BASE = 1 << 32  # noise indices: block j at j, sub-block s (ids [16 s, 16 s + 16)) at SUB_BASE + s,
TOKEN_BASE = 2 << 32  # token t at TOKEN_BASE + t: three separate ranges of the row's counter noise
SUB = 16  # tokens per sub-block (the draw's second stage and the window search)
WINDOW = 128  # the first window: the row's 128 largest logits
_ROUND = 8  # blocks whose exact log-mass is computed per row and round of the pruned draw
_BINS = 2048  # bins of the nucleus search over whole rows, 1/64 nat each
_BIN_RANGE = 32.0  # nats below the row's top covered by bins; lower values share the last bin
_CHUNK = 1 << 16  # tokens per piece of the passes over whole rows (the piece stays in cache)
# L_j <= M_j + log n_j holds exactly; the margin covers the rounding of the computed L_j.
_BOUND_MARGIN = 1e-3
_NEG_INF = float("-inf")


# --------------------------------------------------------------------------- block maxima


def _block_max(x: torch.Tensor, size: int) -> torch.Tensor:
    """Max over consecutive pieces of ``size`` tokens, (R, ceil(V / size)); a ragged last piece too.

    ``amax`` propagates NaN, so a row with a NaN has a NaN piece.
    """
    R, V = x.shape
    n = V // size
    parts = []
    if n:
        parts.append(x[:, : n * size].view(R, n, size).amax(-1))
    if V % size:
        parts.append(x[:, n * size :].amax(-1, keepdim=True))
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def _pad_to(t: torch.Tensor, n: int, value: float) -> torch.Tensor:
    """``t`` (R, m) padded on the right with ``value`` to (R, n)."""
    if t.shape[1] == n:
        return t
    return torch.cat([t, t.new_full((t.shape[0], n - t.shape[1]), value)], 1)


def _group_max(x: torch.Tensor) -> torch.Tensor:
    """Maxima of the window search's groups, (R, n + V mod 16), n = V // 16 (see :func:`_group_ids`).

    Group c < n holds the 16 tokens c + i n (i < 16): the row seen as 16 rows of n tokens, so the
    max is a vectorised max of 16 contiguous rows (7x faster than a max over each run of 16
    consecutive tokens, whose short inner reduction does not vectorise). The last V mod 16 tokens
    are groups of one.
    """
    R, V = x.shape
    n = V // SUB
    parts = []
    if n:
        parts.append(x[:, : n * SUB].view(R, SUB, n).amax(1))
    if V % SUB:
        parts.append(x[:, n * SUB :])
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def _group_ids(groups: torch.Tensor, V: int) -> torch.Tensor:
    """The token ids of groups ``groups`` (..., W) as (..., W * 16); a group of one is padded with V."""
    n = V // SUB
    i = torch.arange(SUB, device=groups.device)
    c = groups.unsqueeze(-1)
    ids = torch.where(c < n, c + i * n, torch.where(i == 0, c - n + n * SUB, V))
    return ids.flatten(-2)


def row_maxima(x: torch.Tensor, cdt: torch.dtype):
    """(block maxima (R, nb), row maxima (R,)) in ``cdt``: one max-reduction pass."""
    blk = _block_max(x, BLOCK).to(cdt)
    return blk, blk.amax(1)


# --------------------------------------------------------------------------- tempered values


def _tempered(v: torch.Tensor, m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """y = (v - m) / T in the compute dtype, m and T per row (broadcast over v's last dim).

    The one formula for y everywhere (windows, blocks, passes, the Triton kernels): the same
    float32 operations give the same y, so a token's fate never depends on where y was computed.
    """
    y = v.to(m.dtype) - m.unsqueeze(-1)
    if t.device.type == "cpu" and bool((t == 1).all()):  # dividing by 1 changes no bit
        return y
    return y.div_(t.unsqueeze(-1))


def _block_elements(x: torch.Tensor, rows: torch.Tensor, blocks: torch.Tensor):
    """The logits of blocks ``blocks`` of rows ``rows``, (n, BLOCK), -inf past the row's end, and their ids.

    Each block is one contiguous run of the flat logits, copied whole: ``unfold`` views the flat
    storage as every run of BLOCK consecutive values, and ``index_select`` copies the chosen runs
    (3x faster than gathering element by element). A ragged last block reads into the next row;
    those values are masked. Only the very last block of the storage could run past its end: it is
    read from a clamped start and put back in place.
    """
    V = x.shape[1]
    flat = x.view(-1)
    n = flat.numel()
    ids = blocks.unsqueeze(1) * BLOCK + torch.arange(BLOCK, device=x.device)
    if n < BLOCK:  # a single row shorter than a block
        return _pad_to(x[rows], BLOCK, _NEG_INF), ids
    start = rows * V + blocks * BLOCK
    over = start > n - BLOCK
    vals = flat.unfold(0, BLOCK, 1).index_select(0, start.clamp(max=n - BLOCK))
    if bool(over.any()):
        shift = int(n - BLOCK - start[over][0])  # one block at most: the storage's last
        vals[over] = vals[over].roll(shift, 1)
    if V % BLOCK:
        tail = blocks == V // BLOCK  # the ragged last block: the rest of the run is the next row
        if bool(tail.any()):
            vals[tail, V % BLOCK :] = _NEG_INF
    return vals, ids


def _rows_of(x: torch.Tensor, rows: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Rows rows[s:e] of x: a view when they are consecutive (no copy of a V-sized row), else a gather."""
    if e - s == 1:
        return x[int(rows[s]) : int(rows[s]) + 1]
    return x.index_select(0, rows[s:e])


def _masked_mass(x, rows, m, t, thr) -> torch.Tensor:
    """sum over y_i >= thr of exp(y_i) for rows ``rows`` of x, float64, y = (x - m) / T (one pass).

    In pieces of about 64K tokens (a piece stays in cache), summed per block of 256 first, then
    over the blocks: a fixed order whatever the batch size (a whole-row reduction may be split
    across threads differently for one row and for many).
    """
    V = x.shape[1]
    R = rows.numel()
    nb = -(-V // BLOCK)
    out = torch.empty(R, dtype=torch.float64, device=x.device)
    step = max(1, _CHUNK // (nb * BLOCK))
    buf = torch.empty((min(step, R), nb * BLOCK), dtype=m.dtype, device=x.device)
    for s in range(0, R, step):
        e = min(s + step, R)
        piece = buf[: e - s]
        y = piece[:, :V]
        y.copy_(_rows_of(x, rows, s, e)).sub_(m[s:e, None])  # the cast first: mixed-dtype ops are 3x slower
        if bool((t[s:e] != 1).any()):  # dividing by 1 changes no bit
            y.div_(t[s:e, None])
        if bool((thr[s:e] > _NEG_INF).any()):
            y.masked_fill_(y < thr[s:e, None], _NEG_INF)
        piece[:, V:] = _NEG_INF  # the ragged last block's missing tokens weigh exp(-inf) = 0
        out[s:e] = piece.exp_().view(e - s, nb, BLOCK).sum(-1, dtype=torch.float64).sum(-1)
    return out


# --------------------------------------------------------------------------- the two-stage draw


def _draw_in_block(y, kept, chosen, keys, cdt):
    """Stages 2 and 3 inside the chosen block: y, kept (R, BLOCK), chosen (R,) block ids.

    A sub-block s by Gumbel-Max over its log-mass L_s = M_s + log sum exp(y - M_s) (M_s its
    largest kept y), then a token of s by Gumbel-Max over y. Returns (position in the block, y).
    """
    R = y.shape[0]
    per = BLOCK // SUB
    ys = torch.where(kept, y, _NEG_INF).view(R, per, SUB)
    Ms = ys.amax(-1)
    # an empty sub-block has M_s = -inf and y - M_s = NaN, which `where` discards: L_s = -inf
    Ss = torch.where(kept.view(R, per, SUB), (ys - Ms.unsqueeze(-1)).exp(), 0.0).sum(-1)
    Gs = gumbel_range(keys, SUB_BASE + chosen * per, per, cdt)
    s = (Ms + Ss.log() + Gs).argmax(1)  # ties: the lowest sub-block
    g = gumbel_range(keys, TOKEN_BASE + chosen * BLOCK + s * SUB, SUB, cdt)
    ym = ys.gather(1, s.view(R, 1, 1).expand(R, 1, SUB)).squeeze(1)
    pos = (ym + g).argmax(1, keepdim=True)  # masked tokens are -inf; ties: the lowest id
    return s * SUB + pos.squeeze(1), ym.gather(1, pos).squeeze(1)


def _block_scores(x, rows, blocks, m, t, thr, M, G):
    """Exact L_j + G_j of blocks ``blocks`` of rows ``rows`` (m, t, thr, M, G indexed alike)."""
    vals, _ = _block_elements(x, rows, blocks)
    y = _tempered(vals, m, t)
    if bool((thr > _NEG_INF).any()):
        y.masked_fill_(y < thr.unsqueeze(1), _NEG_INF)
    # tokens out of K are -inf and weigh exp(-inf - M_j) = 0 (M_j is finite)
    S = (y - M.unsqueeze(1)).exp_().sum(1)
    return M + S.log() + G


def _draw_full(x, rows, m, t, thr, keys, bmax, cdt):
    """Hierarchical Gumbel-Max over K = {y >= thr, y > -inf} on whole rows ``rows``, with pruning.

    ``m, t, thr, keys, bmax`` belong to ``rows``. The winning block is found by bounds, in rounds:
    each round computes the exact score of the live blocks with the highest upper bound per row
    (8, then 64, then 512, ...), raises the best known score, and drops every block whose upper bound is
    below it. The winner's upper bound is never below the best known score, so it is never
    dropped, and the result is the argmax of the exact scores, whichever blocks were computed.
    Returns (token (R,), y of the token (R,)).
    """
    V = x.shape[1]
    R = rows.numel()
    dev = x.device
    nb = bmax.shape[1]
    M = _tempered(bmax, m, t)  # the block's largest y (the block's max token is in K iff M >= thr)
    keep = (thr.unsqueeze(1) <= M) & (M > _NEG_INF)
    G = gumbel_range(keys, torch.zeros(R, dtype=torch.int64, device=dev), nb + nb % 2, cdt)[:, :nb]
    size = torch.full((nb,), float(BLOCK), dtype=cdt, device=dev)
    size[-1] = V - (nb - 1) * BLOCK
    low = torch.where(keep, M + G, _NEG_INF)
    upper = low + size.log() + _BOUND_MARGIN
    best = low.amax(1)
    exact = torch.full((R, nb), _NEG_INF, dtype=cdt, device=dev)
    live = keep & (upper >= best.unsqueeze(1))
    c = _ROUND
    while True:
        n_live = live.sum(1)
        if not bool(n_live.any()):
            break
        c = min(c, nb)
        top = torch.where(live, upper, _NEG_INF).topk(c, dim=1).indices
        valid = torch.arange(c, device=dev) < n_live.unsqueeze(1)
        r, i = valid.nonzero(as_tuple=True)
        b = top[r, i]
        exact[r, b] = _block_scores(x, rows[r], b, m[r], t[r], thr[r], M[r, b], G[r, b])
        live[r, b] = False
        best = torch.maximum(best, exact.amax(1))
        live &= upper >= best.unsqueeze(1)
        c *= _ROUND  # rows with many close blocks (flat rows) finish in a round or two more
    chosen = exact.argmax(1)  # ties: the lowest block
    vals, _ = _block_elements(x, rows, chosen)
    y = _tempered(vals, m, t)
    pos, ytok = _draw_in_block(y, (y >= thr.unsqueeze(1)) & (y > _NEG_INF), chosen, keys, cdt)
    return chosen * BLOCK + pos, ytok


def _draw_window(yw, ids, kept, keys, cdt):
    """The same three-stage draw when K lies inside a window: yw, ids, kept (R, W), yw descending.

    A block's kept tokens appear in the window in descending order, so its first one carries M_j,
    and S_j is summed in that order (a fixed order: tied values are equal terms). The chosen
    block's kept tokens are put in place in a (R, BLOCK) row for :func:`_draw_in_block`.
    Returns (token (R,), y of the token (R,), log of the kept mass (R,)).
    """
    R, W = yw.shape
    dev = yw.device
    blk = ids // BLOCK
    nb = int(blk.max()) + 1 if blk.numel() else 1
    ymask = torch.where(kept, yw, _NEG_INF)
    M = torch.full((R, nb), _NEG_INF, dtype=cdt, device=dev).scatter_reduce_(1, blk, ymask, "amax")
    Mt = M.gather(1, blk)
    e = torch.where(kept, (yw - Mt).exp(), 0.0)
    S = torch.zeros((R, nb), dtype=cdt, device=dev).scatter_add_(1, blk, e)
    L = (Mt + S.gather(1, blk).log()).masked_fill(~kept, _NEG_INF)
    # block noise only where a kept token is (a block's tokens share its noise and its score)
    kr, kc = kept.nonzero(as_tuple=True)
    G = torch.zeros((R, W), dtype=cdt, device=dev)
    G[kr, kc] = gumbel_at(keys[kr], blk[kr, kc].unsqueeze(1), cdt).squeeze(1)
    chosen = blk.gather(1, (L + G).argmax(1, keepdim=True)).squeeze(1)
    inb = kept & (blk == chosen.unsqueeze(1))
    y = torch.full((R, BLOCK + 1), _NEG_INF, dtype=cdt, device=dev)  # the last column takes the others
    y = y.scatter_(1, torch.where(inb, ids % BLOCK, BLOCK), ymask)[:, :BLOCK]
    pos, ytok = _draw_in_block(y, y > _NEG_INF, chosen, keys, cdt)
    mass = torch.where(kept, yw.double().exp(), 0.0).sum(1)
    return chosen * BLOCK + pos, ytok, mass.log()


# --------------------------------------------------------------------------- windows and thresholds


def _gather(x: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x[rows[i], ids[i, j]] as (R, n), reading only those tokens."""
    return x.view(-1).index_select(0, (rows.unsqueeze(1) * x.shape[1] + ids).view(-1)).view(ids.shape)


def _window(x: torch.Tensor, rows: torch.Tensor, groups: torch.Tensor, W: int, cdt: torch.dtype):
    """The W largest logits of rows ``rows``, sorted descending, and their ids (no V-sized sort).

    Every token above the W-th largest group maximum lies in one of the W groups with the largest
    maxima, and those hold at least W tokens at or above it, so the top W of the gathered tokens
    are the row's top W (up to which of several tied tokens is picked, which changes no value).
    ``groups`` (the group maxima) belongs to ``rows``. Returns (values (R, W') in ``cdt``,
    ids (R, W'), covers_row), W' = min(W, V).
    """
    V = x.shape[1]
    if groups.shape[1] <= W:
        vals, pos = x.index_select(0, rows).to(cdt).topk(min(W, V), dim=1)
        return vals, pos, W >= V
    ids = _group_ids(groups.topk(W, dim=1, sorted=False).indices, V)
    vals = _gather(x, rows, ids.clamp(max=V - 1)).to(cdt).masked_fill(ids >= V, _NEG_INF)
    top, pos = vals.topk(W, dim=1)
    return top, ids.gather(1, pos), False


def _nucleus(yw, kept, mass_total, p):
    """The top-p threshold from a window: (t_p (R,), found (R,) bool).

    Kept are the tokens whose strictly larger tokens weigh < p of the mass: in the window's
    descending order, the last position whose exclusive cumulative mass C_j is < p Z gives t_p
    (tied tokens share the C of the first of them, so all of them are kept). Found when a later
    kept position has C_j >= p Z, i.e. the crossing lies inside the window. Masses in float64.
    """
    e = torch.where(kept, yw.double().exp(), 0.0)
    C = e.cumsum(1) - e
    limit = (p.double() * mass_total).unsqueeze(1)
    inside = kept & (limit > C)
    last = torch.where(inside, torch.arange(yw.shape[1], device=yw.device), -1).amax(1)
    found = (kept & (limit <= C)).any(1)
    tp = yw.gather(1, last.clamp(min=0).unsqueeze(1)).squeeze(1)
    return tp, found


def _first_window(k: torch.Tensor) -> torch.Tensor:
    """The window of each row: WINDOW, or the power of two above k for larger k."""
    need = (k + 1).clamp(min=1).double()
    return torch.where(k + 1 > WINDOW, 2 ** torch.log2(need).ceil().long(), WINDOW)


def _nucleus_by_bins(x, rows, m, t, tk, p) -> torch.Tensor:
    """t_p of rows whose nucleus does not fit a window (flat rows): a mass histogram, then one bin sorted.

    Per row: the top-k set's masses exp(y) go into bins of 1/64 nat by -y (one
    :func:`torch.bincount` for a piece of rows, one pass); the bin where the cumulative mass from
    the top reaches p Z holds the crossing, and only its tokens (a few hundred) are sorted to find
    it exactly as :func:`_nucleus` does. Tied tokens fall in the same bin. Tokens more than 32
    nats below the top share the last bin.
    """
    V = x.shape[1]
    R = rows.numel()
    dev = x.device
    out = torch.full((R,), _NEG_INF, dtype=m.dtype, device=dev)
    scale = _BINS / _BIN_RANGE
    step = max(1, _CHUNK // V)
    for s in range(0, R, step):
        e = min(s + step, R)
        n = e - s
        y = _rows_of(x, rows, s, e).to(m.dtype) - m[s:e, None]  # a new tensor: x is never written
        if bool((t[s:e] != 1).any()):  # dividing by 1 changes no bit
            y.div_(t[s:e, None])
        keep = (y >= tk[s:e, None]) & (y > _NEG_INF)
        bins = (y * -scale).clamp_(max=_BINS - 1).long()  # y <= 0; -inf goes to the last bin
        offset = torch.arange(n, device=dev).unsqueeze(1) * _BINS
        w = torch.where(keep, y.exp(), 0.0)
        mass = torch.bincount((bins + offset).view(-1), weights=w.view(-1), minlength=n * _BINS)
        mass = mass.view(n, _BINS).double()
        cum = mass.cumsum(1)
        limit = p[s:e].double() * cum[:, -1]
        c = torch.searchsorted(cum, limit.unsqueeze(1)).clamp(max=_BINS - 1)
        base = (cum.gather(1, c) - mass.gather(1, c)).squeeze(1)
        r, col = (keep & (bins == c)).nonzero(as_tuple=True)
        vals = y[r, col]
        # the crossing bin's tokens, by row and then descending value
        order = vals.sort(descending=True, stable=True).indices
        r, vals = r[order], vals[order]
        order = r.sort(stable=True).indices
        r, vals = r[order], vals[order]
        ev = vals.double().exp()
        before = ev.cumsum(0) - ev  # exclusive, over all rows of the piece
        first = torch.searchsorted(r, torch.arange(n, device=dev)).clamp(max=max(r.numel() - 1, 0))
        C = base[r] + before - before[first][r] if r.numel() else before
        pos = torch.where(limit[r] > C, torch.arange(r.numel(), device=dev), -1)
        last = torch.full((n,), -1, dtype=torch.int64, device=dev).scatter_reduce_(0, r, pos, "amax")
        found = last >= 0
        out[s:e][found] = vals[last[found]]
    return out


def _thresholds(x, gmax, m, rp: RowParams, rows: torch.Tensor, cdt):
    """Thresholds of ``rows`` (each with some filter on), found in windows.

    Returns a list of (rows, kind, data): kind "window" with (yw, ids, kept) when K lies strictly
    inside the window, or "full" with the threshold (R,) when it does not.
    """
    out: list[tuple[torch.Tensor, str, Any]] = []
    first = _first_window(rp.top_k[rows])
    for W in torch.unique(first).tolist():
        r = rows[first == W]
        mr, tr = m[r], rp.temperature[r]
        k, p, mp = rp.top_k[r], rp.top_p[r], rp.min_p[r]
        vals, ids, covers = _window(x, r, gmax[r], int(W), cdt)
        yw = _tempered(vals, mr, tr)
        finite = yw > _NEG_INF
        last_y = yw[:, -1]
        kth = yw.gather(1, (k - 1).clamp(min=0, max=yw.shape[1] - 1).unsqueeze(1)).squeeze(1)
        tk = torch.where(k > 0, kth, _NEG_INF)
        kept_k = finite & (yw >= tk.unsqueeze(1))
        use_p = p < 1
        # the mass the nucleus is a fraction of: the top-k set's, from the window when it holds
        # the whole top-k set, else from one pass over the row
        Z = torch.where(kept_k, yw.double().exp(), 0.0).sum(1)
        far = use_p & ~(covers | ((k > 0) & (last_y < tk)))
        if bool(far.any()):
            Z[far] = _masked_mass(x, r[far], mr[far], tr[far], tk[far])
        tp, found = _nucleus(yw, kept_k, Z, p)
        if covers:  # the whole row: a nucleus not "found" by rounding keeps the whole top-k set
            tp = torch.where(found, tp, _NEG_INF)
            found = torch.ones_like(found)
        missing = use_p & ~found
        if bool(missing.any()):
            tp[missing] = _nucleus_by_bins(x, r[missing], mr[missing], tr[missing], tk[missing], p[missing])
        tp = torch.where(use_p, tp, _NEG_INF)
        tmin = torch.where(mp > 0, mp.log(), _NEG_INF)
        thr = torch.maximum(torch.maximum(tk, tp), tmin)
        inside = (last_y < thr) | covers
        if bool(inside.any()):
            kept = finite & (yw >= thr.unsqueeze(1))
            out.append((r[inside], "window", (yw[inside], ids[inside], kept[inside])))
        if not bool(inside.all()):
            out.append((r[~inside], "full", thr[~inside]))
    return out


# --------------------------------------------------------------------------- greedy rows


def _greedy(x: torch.Tensor, rows: torch.Tensor, bmax: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """argmax with ties to the lowest id: the first block holding the max, then its first token."""
    first_block = (bmax == m.unsqueeze(1)).to(torch.int8).argmax(1)
    vals, ids = _block_elements(x, rows, first_block)
    pos = (vals.to(m.dtype) == m.unsqueeze(1)).to(torch.int8).argmax(1, keepdim=True)
    return ids.gather(1, pos).squeeze(1)


# --------------------------------------------------------------------------- entry point


def sample_rows(x: torch.Tensor, rp: RowParams, keys: torch.Tensor, need_logprobs: bool):
    """Tokens (B,) int64 and log-probabilities (B,) for valid rows; bad rows flagged.

    Returns (tokens, logprobs or None, bad (B,) bool, row maxima (B,)). Bad rows (NaN, +inf, no
    finite logit, a bad parameter) get token -1 and log-probability NaN; the caller raises or not.
    """
    B = x.shape[0]
    cdt = compute_dtype(x.dtype)
    dev = x.device
    x = x.detach()
    if not x.is_contiguous():
        x = x.contiguous()
    tokens = torch.full((B,), -1, dtype=torch.int64, device=dev)
    logp = torch.full((B,), float("nan"), dtype=cdt, device=dev) if need_logprobs else None
    if B == 0:
        return tokens, logp, torch.zeros(0, dtype=torch.bool, device=dev), torch.zeros(0, dtype=cdt, device=dev)
    bmax, m = row_maxima(x, cdt)
    bad = rp.bad | ~torch.isfinite(m)
    greedy = ~bad & (rp.temperature == 0)
    if bool(greedy.any()):
        g = greedy.nonzero().squeeze(1)
        tokens[g] = _greedy(x, g, bmax[g], m[g])
        if logp is not None:
            logp[g] = 0.0  # the greedy distribution is a point mass
    sampled = ~bad & ~greedy
    filtered = sampled & ((rp.top_k > 0) | (rp.top_p < 1) | (rp.min_p > 0))
    plain = sampled & ~filtered
    groups: list[tuple[torch.Tensor, str, Any]] = []
    if bool(plain.any()):
        r = plain.nonzero().squeeze(1)
        groups.append((r, "full", torch.full((r.numel(),), _NEG_INF, dtype=cdt, device=dev)))
    if bool(filtered.any()):
        groups += _thresholds(x, _group_max(x).to(cdt), m, rp, filtered.nonzero().squeeze(1), cdt)
    for r, kind, data in groups:
        if kind == "window":
            yw, ids, kept = data
            tok, ytok, logz = _draw_window(yw, ids, kept, keys[r], cdt)
        else:
            thr = data
            mr, tr = m[r], rp.temperature[r]
            tok, ytok = _draw_full(x, r, mr, tr, thr, keys[r], bmax[r], cdt)
            logz = _masked_mass(x, r, mr, tr, thr).log() if logp is not None else None
        tokens[r] = tok
        if logp is not None and logz is not None:
            logp[r] = (ytok.double() - logz).to(cdt)
    return tokens, logp, bad, m
