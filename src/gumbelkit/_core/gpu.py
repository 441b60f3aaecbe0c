"""The Triton samplers, host side: checks, layouts, launch configuration, keys, autograd, custom ops.

The kernels themselves live in :mod:`gumbelkit.kernels._triton`, imported on first use (Triton
reads ``TRITON_INTERPRET`` when it builds them), so ``import gumbelkit`` never imports ``triton``.
This module sits beside the samplers rather than in :mod:`gumbelkit.kernels` because the samplers
import it (that package imports the samplers).

Which calls take the kernels (:func:`use_triton`): CUDA tensors of float16, bfloat16 or float32
when ``triton`` is installed, outside ``torch.func`` transforms (``grad``, ``vmap``: those keep the
eager samplers). float64 stays on the eager path. For tests on machines without a GPU, the
private context manager :func:`triton_on_cpu` sends CPU tensors of the default samplers through
the same code under Triton's interpreter (``TRITON_INTERPRET=1`` set before the first use);
:func:`gumbelkit.kernels.triton_gumbel_softmax` and :func:`gumbelkit.kernels.triton_gumbel_max`
take CPU tensors under the interpreter without it.

Randomness: each call draws a 128-bit key into a device tensor with one torch RNG op (``random_``
on the generator's device, so the generator's state advances on the device and a CUDA graph replays
a fresh key each time), and the kernels compute element i's noise as
``counter_exponential(key, i)`` (see :mod:`gumbelkit.kernels._triton_noise`). Under
``torch.compile`` the key comes from ``torch.randint`` in the graph (a ``generator`` is not used
there, as for every traced random op) and the kernels run as custom operators
(``gumbelkit::triton_gumbel_softmax_soft`` / ``_hard`` / ``triton_softmax_backward`` /
``triton_gumbel_max`` / ``triton_gumbel_topk``), which the compiler treats as opaque nodes of the
graph: no graph break.

No host synchronisation: nothing here reads a tensor value on the host; in ``"raise"`` validation
mode the callers run the synchronous checks before the launch, in ``"device"`` mode the kernels
mark bad rows (NaN, index -1).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import itertools
import math
import os
from collections.abc import Iterator

import torch

from ..errors import GumbelkitError, GumbelkitTypeError
from .policy import compiling, functorch_active
from .validation import (
    Tau,
    check_dtype,
    check_generator,
    check_tau,
    check_values,
    normalize_dim,
    shape_str,
)

__all__ = [
    "AVAILABLE",
    "draw_key",
    "gumbel_max_index",
    "gumbel_softmax",
    "gumbel_topk",
    "kernels_off",
    "log_exponential",
    "triton_gumbel_max",
    "triton_gumbel_softmax",
    "triton_on_cpu",
    "use_counter_noise",
    "use_triton",
]

#: Whether ``triton`` is installed (looked up, not imported: the import waits for the first kernel).
AVAILABLE = importlib.util.find_spec("triton") is not None
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_cpu = [False]  # the private switch of triton_on_cpu
_off = [False]  # the private switch of kernels_off


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@contextlib.contextmanager
def triton_on_cpu(enabled: bool = True) -> Iterator[None]:
    """Private, for tests: the default samplers take the Triton path for CPU tensors too.

    Only under Triton's interpreter (``TRITON_INTERPRET=1``, set before the kernels are first
    built); elsewhere CPU tensors keep the eager path. With it, a CPU test runs exactly the code a
    CUDA tensor runs -- key drawing, checks, launches, autograd -- with the kernels interpreted.
    """
    previous = _cpu[0]
    _cpu[0] = enabled and _interpreting()  # read once here: use_triton stays free of environment reads
    try:
        yield
    finally:
        _cpu[0] = previous


@contextlib.contextmanager
def kernels_off() -> Iterator[None]:
    """Private, for benchmarks and tests: the default samplers take the eager path even for CUDA tensors."""
    previous = _off[0]
    _off[0] = True
    try:
        yield
    finally:
        _off[0] = previous


def use_triton(t) -> bool:
    """Whether the default samplers run ``t`` through the Triton kernels (see the module notes)."""
    return isinstance(t, torch.Tensor) and t.dtype in _DTYPES and use_counter_noise(t)


def use_counter_noise(t: torch.Tensor) -> bool:
    """Whether noise for ``t`` (any floating dtype) comes from the counter-noise kernel with a device key.

    The estimators that draw extra noise (Gumbel-Rao's conditional draws, the decoupled forward)
    use it where the samplers use the kernels, float64 included: no seed is read to the host.
    """
    if not AVAILABLE or _off[0]:
        return False
    kind = t.device.type
    if kind != "cuda" and not (kind == "cpu" and _cpu[0]):
        return False
    return not functorch_active()


@functools.cache
def _kernels():
    """The kernel module (gumbelkit.kernels._triton), imported -- its kernels built -- on first use."""
    return importlib.import_module("..kernels._triton", __package__)


def _require(logits, fn: str) -> None:
    """The explicit entry points: a CUDA tensor (or a CPU tensor under the interpreter) and Triton."""
    check_dtype(logits, fn=fn)
    if not AVAILABLE:
        raise GumbelkitError(f"{fn}: expected the triton package to be installed (pip install triton)")
    kind = logits.device.type
    if kind == "cuda" or (kind == "cpu" and _interpreting()):
        if kind == "cpu" and not _kernels().gs_forward.__class__.__name__.startswith("Interpreted"):
            raise GumbelkitError(
                f"{fn}: the Triton kernels were built before TRITON_INTERPRET=1 was set; set it before "
                "the first call to run them on CPU tensors"
            )
        return
    raise GumbelkitError(
        f"{fn}: expected logits on a CUDA device (or on the CPU with TRITON_INTERPRET=1, Triton's "
        f"interpreter), got logits on {logits.device} (logits of shape {shape_str(logits.shape)})"
    )


# --------------------------------------------------------------------------- layout and configuration


def _collapse(sizes, strides) -> tuple[int, int] | None:
    """(size, stride) of dims that one stride can walk in row-major order, or None."""
    dims = [(n, s) for n, s in zip(sizes, strides) if n != 1]
    if not dims:
        return 1, 0
    for (_, s_outer), (n_inner, s_inner) in itertools.pairwise(dims):
        if s_outer != n_inner * s_inner:
            return None
    return math.prod(n for n, _ in dims), dims[-1][1]


def _split(t: torch.Tensor, dim: int):
    """(t or its contiguous copy, columns = outer * inner, K, inner, stride of outer, of K, of inner).

    The dims before ``dim`` become one ``outer`` axis and those after it one ``inner`` axis when
    their strides allow (contiguous, transposed, channels-last, expanded, sliced inputs all do);
    otherwise the tensor is copied to the contiguous layout, which always does. Only the memory
    walk changes: the logical (row-major) index of every element, hence its noise, is the same.
    """
    sizes, strides = t.shape, t.stride()
    outer = _collapse(sizes[:dim], strides[:dim])
    inner = _collapse(sizes[dim + 1 :], strides[dim + 1 :])
    if outer is None or inner is None:
        t = t.contiguous()
        sizes, strides = t.shape, t.stride()
        outer = _collapse(sizes[:dim], strides[:dim])
        inner = _collapse(sizes[dim + 1 :], strides[dim + 1 :])
        assert outer is not None and inner is not None  # a contiguous tensor always collapses
    return t, outer[0] * inner[0], sizes[dim], inner[0], outer[1], strides[dim], inner[1]


def _strides(t: torch.Tensor, dim: int) -> tuple[int, int, int]:
    """(outer, K, inner) strides of a tensor laid out like one :func:`_split` accepted."""
    _, _, _, _, so, sk, si = _split(t, dim)
    return so, sk, si


# Launch configuration. Elements per block (registers): 4096 float32 values with their float64
# sums is 16 values per thread at 8 warps. Rows longer than one block are cut into chunks, each its
# own program, so that few long rows still give every SM work ("waves" programs per SM).
_CONFIG = {"tile": 4096, "row_block": 2048, "max_chunks": 128, "waves": 4, "topk_max": 64}


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _programs_wanted(device: torch.device) -> int:
    if device.type != "cuda":
        return 2 * _CONFIG["waves"]  # the interpreter runs programs one by one: few, large ones
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(index) * _CONFIG["waves"]


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _launch(n: int, k: int, inner: int, elem: int, device: torch.device, one_block_chunks: bool = False) -> _Launch:
    """The launch geometry for these sizes (cached: the same shapes come back call after call)."""
    index = device.index if device.index is not None or device.type != "cuda" else torch.cuda.current_device()
    return _cached_launch(n, k, inner, elem, device.type, index, one_block_chunks, tuple(_CONFIG.values()))


@functools.lru_cache(maxsize=256)
def _cached_launch(n, k, inner, elem, kind, index, one_block_chunks, _config) -> _Launch:
    return _Launch(n, k, inner, elem, torch.device(kind, index), one_block_chunks)


class _Launch:
    """The launch geometry of one call: tile orientation and sizes, chunks, grid."""

    __slots__ = ("bk", "bn", "cb", "chunk", "grid", "nchunk", "paired", "rax", "single", "warps")

    def __init__(
        self, n: int, k: int, inner: int, elem: int, device: torch.device, one_block_chunks: bool = False
    ) -> None:
        tile, row_block = _CONFIG["tile"], _CONFIG["row_block"]
        wanted = _programs_wanted(device)
        if inner == 1:  # categories along the tile's last axis
            self.rax = 1
            self.bk = max(2, min(_pow2(k), row_block))
            # several short rows per program, but not so many that the GPU runs out of programs
            self.bn = max(1, min(tile // self.bk, _pow2(-(-n // wanted)))) if k <= row_block else 1
            self.paired = k % 2 == 0
        else:  # columns (consecutive inner positions) along the last axis
            self.rax = 0
            # at least 32 bytes of consecutive columns per category row (one memory sector), and a
            # whole category dim in one block up to twice the usual tile (one pass, no chunks)
            narrow = max(2, 32 // elem)
            self.bn = max(narrow, min(64, tile // _pow2(k)))
            self.bk = max(2, min(_pow2(k), 2 * tile // self.bn))
            self.paired = inner % 2 == 0
        blocks = -(-k // self.bk)
        n_programs = -(-n // self.bn)
        if one_block_chunks:  # top-k: every block is a chunk of its own
            self.nchunk = blocks
        else:
            self.nchunk = min(blocks, max(1, -(-wanted // n_programs)), _CONFIG["max_chunks"])
        self.chunk = -(-blocks // self.nchunk) * self.bk
        self.nchunk = -(-k // self.chunk)
        self.single = self.nchunk == 1 and k <= self.bk
        self.cb = max(2, _pow2(self.nchunk))
        self.grid = (n_programs, self.nchunk)
        size = self.bn * self.bk
        self.warps = 16 if size > 4096 else 8 if size >= 2048 else 4


# --------------------------------------------------------------------------- keys


def draw_key(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Four int32 key words (k0, k1, c2, c3) in a device tensor, from one torch RNG op.

    ``random_`` over the full int64 range on two words: one launch on the generator's device (the
    CUDA generator advances its offset on the device, so graph replays get fresh keys), no host
    read. While compiling, ``torch.randint`` in the graph (Dynamo traces it; a generator is not
    used there).
    """
    if compiling():
        return torch.randint(-(2**31), 2**31, (4,), dtype=torch.int64, device=device).to(torch.int32)
    words = torch.empty(2, dtype=torch.int64, device=device)
    return words.random_(-(2**63), None, generator=generator).view(torch.int32)


# --------------------------------------------------------------------------- forward / backward launches


def _tau_columns(tau: torch.Tensor, shape, dim: int) -> torch.Tensor:
    """A per-row tensor tau as one float32 value per column (row-major over the dims other than dim)."""
    return torch.broadcast_to(tau.detach(), shape).select(dim, 0).reshape(-1).to(torch.float32).contiguous()


def _float_tau(tau: float) -> float:
    # below float32's smallest normal, 1/tau overflows and a subnormal tau reads as 0 under
    # denormals-are-zero: raise it to the smallest normal (the one-hot limit is already reached)
    return max(float(tau), torch.finfo(torch.float32).tiny)


def _forward(x: torch.Tensor, key, tau, tau_cols, dim: int, mode: int, save_y: bool):
    """Run the forward kernel: (out, y); mode 0 soft (y is out), 1 hard, 2 index (out: int64 per row)."""
    k = _kernels()
    xs, n, kk, inner, sxo, sxk, sxi = _split(x, dim)
    if mode == 2:
        out = torch.empty(n, dtype=torch.int64, device=x.device)
        y = out
        soo = sok = soi = 0
    else:
        out = torch.empty_like(xs)
        y = torch.empty_like(xs) if save_y else out
        soo, sok, soi = _strides(out, dim)
    cfg = _launch(n, kk, inner, x.element_size(), x.device)
    tau_ptr = tau_cols if tau_cols is not None else key  # an unused pointer argument when tau is a float
    tau_val = 1.0 if tau_cols is not None else _float_tau(tau)
    common = (n, kk, inner, sxo, sxk, sxi, soo, sok, soi, tau_val, cfg.chunk, cfg.nchunk)
    meta = dict(
        BN=cfg.bn,
        BK=cfg.bk,
        CB=cfg.cb,
        RAX=cfg.rax,
        PAIRED=cfg.paired,
        MODE=mode,
        SAVE_Y=save_y,
        TAU_T=tau_cols is not None,
        num_warps=cfg.warps,
    )
    if cfg.single:
        k.gs_forward[(cfg.grid[0], 1)](xs, out, y, key, tau_ptr, key, key, key, key, *common, PHASE=0, **meta)
        return out, y
    pm = torch.empty((n, cfg.nchunk), dtype=torch.float64, device=x.device)
    ps = torch.empty((n, cfg.nchunk), dtype=torch.float32, device=x.device)
    pi = torch.empty((n, cfg.nchunk), dtype=torch.int32, device=x.device)
    pb = torch.empty((n, cfg.nchunk), dtype=torch.int32, device=x.device)
    k.gs_forward[cfg.grid](xs, out, y, key, tau_ptr, pm, ps, pi, pb, *common, PHASE=1, **meta)
    grid2 = (cfg.grid[0], 1) if mode == 2 else cfg.grid
    k.gs_forward[grid2](xs, out, y, key, tau_ptr, pm, ps, pi, pb, *common, PHASE=2, **meta)
    return out, y


def _backward(y: torch.Tensor, v: torch.Tensor, tau, tau_cols, dim: int, dtype: torch.dtype, grad_tau: bool):
    """(dx, dtau per column or None) of y = softmax(s / tau) for the incoming gradient v."""
    k = _kernels()
    ys, n, kk, inner, syo, syk, syi = _split(y, dim)
    vs = v if v.shape == y.shape else v.expand(y.shape)
    vs, _, _, _, svo, svk, svi = _split(vs, dim)
    dx = torch.empty_like(ys, dtype=dtype)
    sdo, sdk, sdi = _strides(dx, dim)
    gt = torch.empty(n, dtype=torch.float32, device=y.device) if grad_tau else ys
    cfg = _launch(n, kk, inner, y.element_size(), y.device)
    tau_ptr = tau_cols if tau_cols is not None else ys
    tau_val = 1.0 if tau_cols is not None else _float_tau(tau)
    common = (n, kk, inner, syo, syk, syi, svo, svk, svi, sdo, sdk, sdi, tau_val, cfg.chunk, cfg.nchunk)
    meta = dict(
        BN=cfg.bn,
        BK=cfg.bk,
        CB=cfg.cb,
        RAX=cfg.rax,
        TAU_T=tau_cols is not None,
        GRAD_TAU=grad_tau,
        num_warps=cfg.warps,
    )
    if cfg.single:
        k.gs_backward[(cfg.grid[0], 1)](ys, vs, dx, tau_ptr, gt, ys, ys, ys, *common, PHASE=0, **meta)
    else:
        pd = torch.empty((n, cfg.nchunk), dtype=torch.float32, device=y.device)
        pa = torch.empty_like(pd) if grad_tau else pd
        pb = torch.empty_like(pd) if grad_tau else pd
        k.gs_backward[cfg.grid](ys, vs, dx, tau_ptr, gt, pd, pa, pb, *common, PHASE=1, **meta)
        k.gs_backward[cfg.grid](ys, vs, dx, tau_ptr, gt, pd, pa, pb, *common, PHASE=2, **meta)
    return dx, (gt if grad_tau else None)


def _tau_grad(gt_cols: torch.Tensor, tau_t: torch.Tensor, shape, dim: int) -> torch.Tensor:
    """The per-column dtau summed to tau's own shape (tau broadcasts to the logits' shape)."""
    rows = list(shape)
    rows[dim] = 1
    g = gt_cols.view(rows)
    return g.sum_to_size(tau_t.shape).to(tau_t.dtype) if tau_t.dim() else g.sum().to(tau_t.dtype)


def _softmax_grad_ops(y, v, tau, tau_t, dim: int, dtype: torch.dtype, need_tau: bool):
    """The backward in differentiable torch ops (double backward: ``create_graph=True``)."""
    yf = y.to(torch.float32)
    g = yf * (v.to(torch.float32) - (yf * v.to(torch.float32)).sum(dim, keepdim=True))
    t = tau_t.to(torch.float32).clamp_min(torch.finfo(torch.float32).tiny) if tau_t is not None else _float_tau(tau)
    gtau = None
    if need_tau and tau_t is not None:
        pos = yf > 0
        log_y = torch.where(pos, torch.log(torch.where(pos, yf, 1.0)), 0.0)
        gtau = (-(g * log_y).sum(dim, keepdim=True) / t).sum_to_size(tau_t.shape).to(tau_t.dtype)
    return (g / t).to(dtype), gtau


class _TritonGumbelSoftmax(torch.autograd.Function):
    """Noise, softmax and (hard) one-hot in one kernel; saves only y; backward in one kernel.

    Outputs: (y,) for soft (y in the input dtype is the output), (one_hot, y) for hard: y is an
    output so that a double backward can differentiate through it. A tensor tau (constant along the
    categories) gets its gradient.
    """

    @staticmethod
    def forward(ctx, x, tau_t, key, tau, tau_cols, dim, hard):
        out, y = _forward(x, key, tau, tau_cols, dim, 1 if hard else 0, hard)
        ctx.save_for_backward(y, tau_t, tau_cols)
        ctx.tau, ctx.dim, ctx.dtype, ctx.hard = tau, dim, x.dtype, hard
        ctx.set_materialize_grads(False)
        return (out, y) if hard else (out,)

    @staticmethod
    def backward(ctx, v, v_y=None):
        y, tau_t, tau_cols = ctx.saved_tensors
        if v is None:
            v = v_y
        elif v_y is not None:
            v = v + v_y
        if v is None:
            return (None,) * 7
        need_tau = ctx.needs_input_grad[1]
        if torch.is_grad_enabled():
            gx, gtau = _softmax_grad_ops(y, v, ctx.tau, tau_t, ctx.dim, ctx.dtype, need_tau)
        else:
            gx, gt = _backward(y, v, ctx.tau, tau_cols, ctx.dim, ctx.dtype, need_tau)
            gtau = _tau_grad(gt, tau_t, y.shape, ctx.dim) if gt is not None else None
        return gx, gtau, None, None, None, None, None


# --------------------------------------------------------------------------- custom operators (torch.compile)
#
# Under torch.compile the samplers call these operators: opaque graph nodes whose implementation
# launches the kernels (the key is an input, drawn in the graph). Their fake implementations only
# allocate the outputs, laid out as the kernels lay them out.


def _fake_like(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.empty_like(_split(x, dim)[0])


@torch.library.custom_op("gumbelkit::triton_gumbel_softmax_soft", mutates_args=())
def _op_soft(x: torch.Tensor, key: torch.Tensor, tau_t: torch.Tensor | None, tau: float, dim: int) -> torch.Tensor:
    tau_cols = _tau_columns(tau_t, x.shape, dim) if tau_t is not None else None
    return _forward(x, key, tau, tau_cols, dim, 0, False)[0]


@torch.library.custom_op("gumbelkit::triton_gumbel_softmax_hard", mutates_args=())
def _op_hard(
    x: torch.Tensor, key: torch.Tensor, tau_t: torch.Tensor | None, tau: float, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    tau_cols = _tau_columns(tau_t, x.shape, dim) if tau_t is not None else None
    return _forward(x, key, tau, tau_cols, dim, 1, True)


@torch.library.custom_op("gumbelkit::triton_softmax_backward", mutates_args=())
def _op_backward(
    y: torch.Tensor, v: torch.Tensor, tau_t: torch.Tensor | None, tau: float, dim: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    tau_cols = _tau_columns(tau_t, y.shape, dim) if tau_t is not None else None
    dx, gt = _backward(y, v, tau, tau_cols, dim, dtype, tau_t is not None)
    return dx, (gt if gt is not None else torch.empty(0, device=y.device))


@torch.library.custom_op("gumbelkit::triton_gumbel_max", mutates_args=())
def _op_max(x: torch.Tensor, key: torch.Tensor, dim: int) -> torch.Tensor:
    return _forward(x, key, 1.0, None, dim, 2, False)[0]


@torch.library.custom_op("gumbelkit::triton_gumbel_topk", mutates_args=())
def _op_topk(x: torch.Tensor, key: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    return _topk(x, key, k, dim)


@_op_soft.register_fake
def _(x, key, tau_t, tau, dim):
    return _fake_like(x, dim)


@_op_hard.register_fake
def _(x, key, tau_t, tau, dim):
    return _fake_like(x, dim), _fake_like(x, dim)


@_op_backward.register_fake
def _(y, v, tau_t, tau, dim, dtype):
    n = y.numel() // y.shape[dim] if tau_t is not None else 0
    return torch.empty_like(_split(y, dim)[0], dtype=dtype), y.new_empty(n, dtype=torch.float32)


@_op_max.register_fake
def _(x, key, dim):
    return x.new_empty(x.numel() // x.shape[dim], dtype=torch.int64)


@_op_topk.register_fake
def _(x, key, k, dim):
    shape = list(x.shape)
    shape[dim] = k
    return x.new_empty(shape, dtype=torch.int64)


def _setup(ctx, inputs, output):
    x, _key, tau_t, tau, dim = inputs
    y = output if isinstance(output, torch.Tensor) else output[1]
    ctx.save_for_backward(y, tau_t)
    ctx.tau, ctx.dim, ctx.dtype = tau, dim, x.dtype
    ctx.set_materialize_grads(False)


def _op_grads(ctx, v):
    y, tau_t = ctx.saved_tensors
    if v is None:
        return None, None, None, None, None
    dx, gt = _op_backward(y, v, tau_t, ctx.tau, ctx.dim, ctx.dtype)
    gtau = _tau_grad(gt, tau_t, y.shape, ctx.dim) if tau_t is not None else None
    return dx, None, gtau, None, None


def _backward_soft(ctx, v):
    return _op_grads(ctx, v)


def _backward_hard(ctx, v, v_y):
    if v is None:
        v = v_y
    elif v_y is not None:
        v = v + v_y
    return _op_grads(ctx, v)


_op_soft.register_autograd(_backward_soft, setup_context=_setup)
_op_hard.register_autograd(_backward_hard, setup_context=_setup)


# --------------------------------------------------------------------------- the samplers


def gumbel_softmax(logits: torch.Tensor, tau: Tau, hard: bool, dim: int, generator, fn: str) -> torch.Tensor | None:
    """The Gumbel-Softmax of the default path for a tensor :func:`use_triton` accepts.

    The same checks as the eager sampler (``"raise"`` mode: the synchronous value checks first;
    ``"device"``: bad rows come out NaN). Returns None -- the caller then runs the eager sampler --
    for what the kernels do not take: a tensor tau that varies along the categories, empty input.
    """
    check_dtype(logits, fn=fn)
    dim = normalize_dim(logits, dim, fn=fn)
    tau = check_tau(tau, logits, fn=fn)
    check_generator(generator, logits.device, fn)
    check_values(logits, dim, fn=fn)  # raises in "raise" mode only (one sync); see _validation
    tau_t = tau if isinstance(tau, torch.Tensor) else None
    if logits.numel() == 0 or (tau_t is not None and _per_class(tau_t, logits.dim(), dim)):
        return None
    hard = bool(hard)
    if compiling():
        key = draw_key(None, logits.device)
        if hard:
            return _op_hard(logits, key, tau_t, 1.0 if tau_t is not None else float(tau), dim)[0]
        return _op_soft(logits, key, tau_t, 1.0 if tau_t is not None else float(tau), dim)
    key = draw_key(generator, logits.device)
    ftau = 1.0 if tau_t is not None else float(tau)
    tau_cols = _tau_columns(tau_t, logits.shape, dim) if tau_t is not None else None
    if not (torch.is_grad_enabled() and (logits.requires_grad or (tau_t is not None and tau_t.requires_grad))):
        return _forward(logits, key, ftau, tau_cols, dim, 1 if hard else 0, False)[0]
    return _TritonGumbelSoftmax.apply(logits, tau_t, key, ftau, tau_cols, dim, hard)[0]


def _per_class(tau: torch.Tensor, ndim: int, dim: int) -> bool:
    i = dim - (ndim - tau.dim())
    return tau.dim() > 0 and i >= 0 and tau.shape[i] != 1


def gumbel_max_index(logits: torch.Tensor, dim: int, generator) -> torch.Tensor:
    """argmax(logits + g) along the (normalised, checked) dim: int64, shape without dim, -1 for a bad row."""
    shape = logits.shape[:dim] + logits.shape[dim + 1 :]
    if logits.numel() == 0:
        return torch.empty(shape, dtype=torch.int64, device=logits.device)
    if compiling():
        return _op_max(logits, draw_key(None, logits.device), dim).view(shape)
    key = draw_key(generator, logits.device)
    return _forward(logits.detach(), key, 1.0, None, dim, 2, False)[0].view(shape)


def _topk(x: torch.Tensor, key: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    kern = _kernels()
    xs, n, kk, inner, sxo, sxk, sxi = _split(x, dim)
    cfg = _launch(n, kk, inner, x.element_size(), x.device, one_block_chunks=True)
    cv = torch.empty((n, cfg.nchunk * k), dtype=torch.float64, device=x.device)
    ci = torch.empty((n, cfg.nchunk * k), dtype=torch.int64, device=x.device)
    pb = torch.empty((n, cfg.nchunk), dtype=torch.int32, device=x.device)
    kern.topk_candidates[cfg.grid](
        xs,
        cv,
        ci,
        pb,
        key,
        n,
        kk,
        inner,
        sxo,
        sxk,
        sxi,
        cfg.nchunk,
        KTOP=k,
        BN=cfg.bn,
        BK=cfg.bk,
        RAX=cfg.rax,
        PAIRED=cfg.paired,
        num_warps=cfg.warps,
    )
    if cfg.nchunk > 1:  # the row's top k among its blocks' candidates (B x blocks*k, not B x K)
        cv, pos = cv.topk(k, dim=1, sorted=True)
        ci = ci.gather(1, pos)
    # a masked class is picked only once a row has run out of unmasked ones; a bad row is all -1
    index = torch.where(torch.isneginf(cv) | (pb.sum(1, keepdim=True) > 0), -1, ci)
    rows = list(x.shape)
    del rows[dim]
    return index.view(*rows, k).movedim(-1, dim).contiguous()


def gumbel_topk(logits: torch.Tensor, k: int, dim: int, generator) -> torch.Tensor | None:
    """k indices without replacement (the checked dim and k), or None when k is too large for the kernel."""
    if k > _CONFIG["topk_max"] or logits.numel() == 0:
        return None
    if compiling():
        return _op_topk(logits, draw_key(None, logits.device), k, dim)
    return _topk(logits.detach(), draw_key(generator, logits.device), k, dim)


def log_exponential(shape, key: torch.Tensor, stream: int, dtype: torch.dtype) -> torch.Tensor:
    """log E, E ~ Exp(1), for every element of ``shape``: the counter noise under ``key`` with its
    last word c3 + ``stream`` (``counter_exponential`` of the flat index), float32 or float64."""
    n = math.prod(shape)
    out = torch.empty(shape, dtype=dtype, device=key.device)
    if n:
        block = 1024
        _kernels().noise_fill[(-(-n // block),)](
            out, key, n, stream, BLOCK=block, LOG=True, FP64=dtype == torch.float64, num_warps=4
        )
    return out


# --------------------------------------------------------------------------- explicit entry points


def triton_gumbel_softmax(
    logits: torch.Tensor,
    tau: Tau = 1.0,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Gumbel-Softmax in one Triton kernel (forward) and one (backward): the CUDA default of the samplers.

    Math: y = softmax((theta + g) / tau) with g = -log E, E ~ Exp(1) from the counter-based noise
    (Philox4x32-10, two words per element, exact tails: g up to 45); ``hard=True`` gives
    one_hot(argmax(theta + g)), exactly one-hot, with the gradient of y. theta + g is summed in
    float64, so huge logits keep their noise and the argmax does not depend on the blocking.

    One read of the logits and one write of the output (two writes for ``hard`` with gradient:
    the one-hot and the saved y) for rows up to 2048 categories; longer rows are cut into chunks
    that run in parallel and read the logits twice. The backward reads y and the incoming gradient
    once and writes the logits' gradient (a tensor tau constant along the categories gets its own).
    Any ``dim``, read at its stride (dim=1 of B x K x H x W without a transposed copy); float16,
    bfloat16 and float32 (computed in float32); masked (-inf) classes get exactly zero weight and
    zero gradient. The sample of an element depends on its logical position only, so any memory
    layout gives the same sample for the same generator state. Every call draws a 128-bit key
    into a device tensor with one torch RNG op; no value is read back to the host (in
    ``"device"`` validation mode, the CUDA default, a row with NaN, +inf or no finite logit comes
    out NaN; in ``"raise"`` mode it raises, one sync). Works under ``torch.compile`` (custom
    operators, no graph break) and CUDA-graph capture (each replay draws a fresh key).

    :func:`gumbelkit.gumbel_softmax` calls this for CUDA tensors; call it directly to insist on
    the kernels (float64 is refused here: it stays on the eager path there).

    Args:
        logits: CUDA tensor (or CPU tensor under ``TRITON_INTERPRET=1``), float16/bfloat16/float32.
        tau: temperature > 0, a float or a tensor broadcastable to ``logits`` (constant along
            ``dim`` for the kernel; one varying along ``dim`` takes the eager sampler).
        hard: one-hot forward with the soft gradient (straight-through).
        dim: the category dimension.
        generator: optional ``torch.Generator`` on the logits' device (keyword-only).

    Returns:
        Tensor shaped and typed like ``logits`` (laid out like it when it is dense).

    Raises:
        GumbelkitError: not a CUDA tensor (nor a CPU tensor under the interpreter), or no Triton.
        GumbelkitTypeError: float64 or a non-floating dtype.

    Reference: Jang, Gu, Poole, ICLR 2017; Maddison, Mnih, Teh, ICLR 2017; Salmon et al., SC 2011.
    """
    fn = "triton_gumbel_softmax"
    _require(logits, fn)
    _check_kernel_dtype(logits, fn)
    out = gumbel_softmax(logits, tau, hard, dim, generator, fn)
    if out is None:  # a per-class tensor tau or an empty input: the eager sampler, the same law
        from .._sampling import checked_gumbel_softmax

        with triton_on_cpu(False):
            return checked_gumbel_softmax(logits, tau, hard, dim, generator=generator, fn=fn)
    return out


def triton_gumbel_max(logits: torch.Tensor, dim: int = -1, *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""An exact sample of Categorical(softmax(logits)) per row, by Gumbel-Max in one Triton kernel.

    Math: argmax_k (theta_k + g_k) with the counter-based noise of :func:`triton_gumbel_softmax`
    (the same key and noise give the same index as its ``hard=True`` one-hot). The noise never
    exists in memory: one read of the logits, one int64 per row written. Rows longer than 2048
    categories are cut into chunks that run in parallel and a second tiny launch combines them.
    No host read; in ``"device"`` validation mode (the CUDA default) a bad row gives -1.

    Args:
        logits: CUDA tensor (or CPU tensor under ``TRITON_INTERPRET=1``), float16/bfloat16/float32.
        dim: the category dimension.
        generator: optional ``torch.Generator`` on the logits' device (keyword-only).

    Returns:
        int64 tensor of indices, ``logits.shape`` without ``dim``.

    Reference: Gumbel (1954); Maddison, Tarlow, Minka, "A* Sampling", NeurIPS 2014.
    """
    fn = "triton_gumbel_max"
    _require(logits, fn)
    _check_kernel_dtype(logits, fn)
    dim = normalize_dim(logits, dim, fn=fn)
    check_generator(generator, logits.device, fn)
    check_values(logits, dim, fn=fn)
    return gumbel_max_index(logits, dim, generator)


def _check_kernel_dtype(logits: torch.Tensor, fn: str) -> None:
    if logits.dtype not in _DTYPES:
        raise GumbelkitTypeError(
            f"{fn}: expected logits of dtype float16, bfloat16 or float32 (float64 runs on the eager "
            f"samplers), got {logits.dtype} (logits of shape {shape_str(logits.shape)})"
        )
