"""Fused Gumbel-Softmax: Philox noise generated inside the softmax kernel (torch.compile / Inductor).

The built-in spends most of its time in ``Tensor.exponential_()`` (a serial generator) and keeps
several B x K temporaries. Here the noise is a pure function of (key, position) -- Philox4x32-10 on
int32 words -- written in plain torch ops, so Inductor compiles noise + softmax (+ argmax and the
one-hot for ``hard``) into one C++/OpenMP kernel on CPU, and the same code into Triton on CUDA.

Noise: g = -log E with E ~ Exp(1) from the exact construction of :mod:`gumbelkit._core.noise` (one
Philox word per float32 value, two per float64 value), so both tails of the Gumbel law are right
up to the dtype's limits: g in [-3.13, 22.87] in float32 and [-3.81, 45.05] in float64 -- a class
19 nats below the top of a 65,536-way row is drawn at its true rate.

Layout: the kernel always sees the logits as row-major rows, ``x.movedim(dim, -1).reshape(-1, K)``
made contiguous (a copy only for inputs that are not already laid out that way: transposed,
expanded, strided or with ``dim`` not the innermost axis). The noise of an element is indexed by
its logical position in that row-major order, so the same generator state gives the same sample
and gradient whatever the memory layout. (Two things went wrong with strided rows: Inductor's CPU
code for column-major rows vectorises across rows and then keeps one row's exponentials in a
per-row scratch buffer that the 16 vectorised rows overwrite -- rows summed to 0.4-1.8 -- and
ATen's softmax backward written over a non-contiguous saved softmax, used by the hard backward,
returned wrong values.)

Memory: the forward saves only y = softmax((x + g) / tau) for the backward (soft mode: that is the
output itself, so nothing extra is held); the backward regenerates nothing: it is ATen's one-pass
softmax backward grad_x = y * (v - <y, v>) / tau, written over the private y in hard mode. With
``create_graph=True`` (or under torch.func transforms) it is written with differentiable ops
instead, so double backward works in both modes.

Temperature: the softmax is taken of (s - max s) / tau with s = x + g, and 0 / tau is 0 even when
1/tau overflows (subnormal tau), so tiny tau and logits near the float limits give an exact
one-hot y and zero gradients, never inf - inf or 0 * inf.

Compilation is lazy and cached per variant (soft, hard, hard without grad) and row-length class
(each K <= 64 gets its own kernel, longer rows share one with a symbolic K; the batch size is
always symbolic); the first call of each is timed (see :func:`compile_times`). When compilation or
the compiled kernel fails, the call -- and every later call -- takes the eager
:func:`gumbelkit.gumbel_softmax` instead, with one warning, never an error. Under torch.func
transforms (``grad``, ``vmap``, ...) the same algorithm runs op by op (see :func:`gumbel_softmax`).
"""

from __future__ import annotations

import math
import threading
import time
import warnings

import torch

from .._core.autograd import softmax_grad as _softmax_grad
from .._core.policy import compute_dtype
from .._core.validation import (
    Tau,
    check_dtype,
    check_generator,
    check_tau,
    check_values,
    normalize_dim,
)
from .._sampling import gumbel_softmax as _eager_gumbel_softmax
from ._philox import gumbel_float32, gumbel_float64, philox4x32

__all__ = [
    "FusedFallbackWarning",
    "compile_times",
    "draw_key",
    "gumbel_noise_philox",
    "gumbel_softmax",
    "is_available",
]


class FusedFallbackWarning(RuntimeWarning):
    """The fused kernel could not be compiled or run; the eager implementation is used instead."""


# --------------------------------------------------------------------------- noise (pure torch ops)


def _resolve_generator(generator, device):
    """The generator a draw on ``device`` uses: the given one, else the device's default (or None)."""
    if generator is not None:
        return generator
    device = torch.device(device)
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[idx]
    return None


def draw_key(generator: torch.Generator | None, device) -> torch.Tensor:
    """Four int32 words (k0, k1, c2, c3) drawn from ``generator`` (or the device's default RNG).

    128 random bits per call: a 64-bit Philox key and the upper 64 bits of the counter. Same
    generator state -> same words -> same noise; every call advances the generator. Drawn with an
    out-of-place ``randint`` (each word uniform on [-2^31, 2^31)), which ``torch.vmap`` batches:
    with ``randomness='different'`` every vmapped sample gets its own key.
    """
    dev = torch.device(generator.device) if generator is not None else torch.device(device)
    words = torch.randint(-(2**31), 2**31, (4,), dtype=torch.int64, device=dev, generator=generator)
    return words.to(torch.int32).to(device)


def gumbel_noise_philox(n: int, key: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""n i.i.d. Gumbel(0, 1) values, a pure function of (``key``, position): g_i = -log E_i, exact tails.

    Element-to-word mapping: with L lanes (L = 4 for float32, 2 for float64) and m = ceil(n / L),
    element i lies in lane j = i // m and takes Philox4x32-10 at counter (i mod m, 0, key[2],
    key[3]) with key (key[0], key[1]) -- for more than 2^31 - 1 counters the second counter word
    holds (i mod m) >> 32. float32: element i takes word j of that call
    (:func:`~gumbelkit.kernels._philox.gumbel_float32`); float64: words 2j (high) and 2j + 1 (low),
    joined into one 64-bit word (:func:`~gumbelkit.kernels._philox.gumbel_float64`). The words of
    one Philox call go to distant positions, so one call serves four (two) elements and the output
    is a plain concatenation (which Inductor fuses).

    E ~ Exp(1) comes from :func:`gumbelkit._core.noise.exp_from_words32` / ``exp_from_words64``: one
    bit picks the half of the unit interval and the small distance v to its end gives E = -log v
    or -log1p(-v), so both tails of g are exact up to the representable range.

    Args:
        n: number of values.
        key: int32 tensor of 4 words, e.g. from :func:`draw_key`.
        dtype: float32 (one 32-bit word per value) or float64 (two words per value).

    Returns:
        1-d tensor of n finite Gumbel values on ``key.device``: in [-3.13, 22.87] (float32) or
        [-3.81, 45.05] (float64).
    """
    lanes = 2 if dtype == torch.float64 else 4
    m = max(1, -(-n // lanes))
    dev = key.device
    if m <= 2**31 - 1:
        c0 = torch.arange(m, dtype=torch.int32, device=dev)
        c1: torch.Tensor | int = 0
    else:  # more than 2^31 Philox calls: the element index needs the second counter word
        i = torch.arange(m, dtype=torch.int64, device=dev)
        c0 = (i & 0xFFFFFFFF).to(torch.int32)
        c1 = (i >> 32).to(torch.int32)
    w = philox4x32(c0, c1, key[2], key[3], key[0], key[1])
    if lanes == 4:
        gs = [gumbel_float32(wj) for wj in w]
    else:
        gs = [gumbel_float64(w[0], w[1]), gumbel_float64(w[2], w[3])]
    g = torch.cat(gs)
    return g[:n]  # unconditional slice: no shape-dependent branch for the compiler to guard on


# --------------------------------------------------------------------------- the fused functions


def _forward(x2d: torch.Tensor, key: torch.Tensor, inv_tau: torch.Tensor, hard: bool, need_soft: bool):
    """(out, y, smax) for row-major logits x2d (B, K).

    y = softmax((x + g) / tau) (None unless ``need_soft``), out = one_hot(argmax(x + g)) for
    ``hard``, y cast to the input dtype for a soft half-precision input, and None when the output
    is y itself. smax, the row maximum of s = x + g, is finite exactly when the row is valid (g is
    finite): NaN with a NaN, +inf with a +inf, -inf when all entries are masked.
    """
    cdt = compute_dtype(x2d.dtype)
    B, K = x2d.shape
    g = gumbel_noise_philox(B * K, key, cdt).view(B, K)
    s = x2d.to(cdt) + g
    smax = s.amax(-1, keepdim=True)
    out = None
    if hard:
        idx = s.argmax(-1, keepdim=True)  # of x + g itself: scaling by 1/tau could round two values into a tie
        cols = torch.arange(K, device=x2d.device).view(1, K)
        out = (cols == idx).to(x2d.dtype)  # exactly one-hot, ties to the lowest index
    if not need_soft:
        return out, None, smax.squeeze(-1)
    # The softmax written out: one row maximum serves the softmax and the validity check, so the
    # NaN / +inf / all-masked checks cost no pass of their own (measured 1.3x faster at 1024 x 1000
    # than torch.softmax(s * inv_tau)). The maximum is subtracted *before* scaling: s * inv_tau
    # overflows for logits near the float limit or tiny tau (then inf - inf = NaN), while d <= 0
    # and d * inv_tau is at worst -inf (weight 0). d = 0 -- the maximum itself -- stays 0 when
    # inv_tau = inf (tau subnormal), where the product would be 0 * inf = NaN; a NaN d (NaN
    # logits) still propagates.
    d = s - smax
    z = torch.where(d == 0, 0.0, d * inv_tau)
    e = torch.exp(z)
    y = e / e.sum(-1, keepdim=True)  # the sum is >= 1: the maximum contributes exp(0)
    if not hard and y.dtype != x2d.dtype:
        out = y.to(x2d.dtype)
    return out, y, smax.squeeze(-1)


# --------------------------------------------------------------------------- compilation, fallback

_lock = threading.Lock()
_compiled: dict = {}
_compile_times: dict = {}
_state: dict[str, str | None] = {"failed": None}
_warned = [False]


# Inductor inlines a pointwise node into every reader unless it is "large"; with ten chained Philox
# rounds the default threshold re-traces the chain exponentially often (measured: 70 s to compile
# the noise alone). Realizing nodes above 20 ops compiles in ~20 s and runs as fast (the realized
# words stay inside one fused loop).
_INDUCTOR_OPTIONS: dict[str, str | int | bool] = {"realize_opcount_threshold": 20}


def _compile(fn):
    # The first torch.compile of a process runs Dynamo's one-time patching, which among other
    # things turns torch.distributions' default validate_args off for the whole process. A library
    # must not change a global its user relies on (their distributions would silently stop
    # validating), so the default is put back as it was.
    validate = torch.distributions.Distribution._validate_args
    try:
        return torch.compile(fn, fullgraph=True, dynamic=False, options=dict(_INDUCTOR_OPTIONS))
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)


def _get_compiled(name: str, fn):
    with _lock:
        c = _compiled.get(name)
        if c is None:
            c = _compile(fn)
            _compiled[name] = c
        return c


def _disable(exc: BaseException) -> None:
    _state["failed"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if not _warned[0]:
        _warned[0] = True
        warnings.warn(
            "gumbelkit.kernels: the fused kernel is unavailable "
            f"({_state['failed']}); using the eager gumbelkit.gumbel_softmax from now on",
            FusedFallbackWarning,
            stacklevel=4,
        )


# Rows longer than this share one kernel compiled for a symbolic row length (measured as fast as a
# specialised one at K = 1000); shorter rows get a kernel specialised to their K, whose fixed inner
# loop is what makes small K fast.
_STATIC_K_MAX = 64


def _row_key(k: int):
    return k if k <= _STATIC_K_MAX else f">{_STATIC_K_MAX}"


def _signature(name: str, args) -> tuple:
    # What a compiled variant specialises on: the row-length class, dtypes, device (the number of
    # rows is always a dynamic dimension, so batch sizes share one kernel).
    parts: list = [name]
    for a in args:
        if isinstance(a, torch.Tensor):
            parts.append((_row_key(a.shape[-1]) if a.dim() == 2 else tuple(a.shape), str(a.dtype), a.device.type))
        else:
            parts.append(a)
    return tuple(parts)


def _forward_static_k(*args):
    return _forward(*args)


def _forward_dynamic_k(*args):
    return _forward(*args)


def _run(name: str, fn, *args):
    """Call the compiled variant ``name``; time its first call per signature (see :func:`_signature`)."""
    if torch.compiler.is_compiling():  # inside a user's torch.compile: let the outer compile fuse it
        return fn(*args)
    long_rows = args[0].shape[1] > _STATIC_K_MAX
    # Two entry points with their own code objects, hence their own Dynamo caches: a kernel for a
    # symbolic K is never picked up for short rows, and short rows never turn K symbolic.
    entry = _forward_dynamic_k if long_rows else _forward_static_k
    c = _get_compiled(f"{name}/{entry.__name__}", entry)
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() == 2:
            torch._dynamo.maybe_mark_dynamic(a, 0)
            if long_rows:
                torch._dynamo.maybe_mark_dynamic(a, 1)
            else:
                torch._dynamo.mark_static(a, 1)
    sig = _signature(name, args)
    if sig in _compile_times:
        return c(*args)
    if sum(1 for k in _compile_times if k[0] == name) >= _MAX_SIGNATURES:
        # Dynamo would stop compiling this function after its recompile limit and run the
        # op-by-op Philox instead (slow); the eager sampler is the better fallback.
        raise _TooManyShapes(name)
    t0 = time.perf_counter()
    out = c(*args)
    _compile_times[sig] = time.perf_counter() - t0
    return out


class _TooManyShapes(Exception):
    pass


# Distinct (K, dtype, device) signatures compiled per variant; Dynamo's default limit is 8.
_MAX_SIGNATURES = 6


def compile_times() -> dict:
    """First-call seconds (compilation included) of each compiled variant and input signature."""
    return dict(_compile_times)


def is_available() -> bool:
    """False once compilation has failed in this process (calls then take the eager path)."""
    return _state["failed"] is None


def _reset_for_tests() -> None:
    with _lock:
        _compiled.clear()
        _compile_times.clear()
    _state["failed"] = None
    _warned[0] = False


def _grad_scale(inv: float, dtype: torch.dtype) -> float:
    """1/tau for the backward, capped at the dtype's largest finite value.

    1/tau overflows for subnormal tau; an infinite factor would turn the exact zeros of a
    one-hot y's gradient into 0 * inf = NaN. Capped, zeros stay zero and the rest saturate.
    """
    return min(inv, torch.finfo(dtype).max)


def _functorch_state() -> tuple[bool, bool]:
    """(active, vmap): whether torch.func transforms wrap this call, and whether one is a vmap."""
    if torch.compiler.is_compiling() or not torch._C._are_functorch_transforms_active():
        return False, False
    stack = torch._C._functorch.get_interpreter_stack() or ()
    return True, any(i.key() == torch._C._functorch.TransformType.Vmap for i in stack)


class _FusedGumbelSoftmax(torch.autograd.Function):
    """Noise, softmax and (hard) one-hot in one node that saves only y.

    Outputs: (y, smax) when the output is y itself (soft, input dtype = compute dtype), else
    (out, smax, y). y is always an *output* of the node, so the saved y is connected to the graph
    and double backward (``create_graph=True``) differentiates through it; smax is not
    differentiable. ``generate_vmap_rule``: under ``torch.vmap`` the forward (then op by op: see
    :func:`_gumbel_softmax`) and the backward are vmapped like any torch code.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x2d, key, inv_tau, inv: float, hard: bool, compiled: bool):
        name = "hard" if hard else "soft"
        if compiled:
            out, y, smax = _run(name, _forward, x2d, key, inv_tau, hard, True)
        else:
            out, y, smax = _forward(x2d, key, inv_tau, hard, True)
        if out is None:
            return y, smax
        return out, smax, y

    @staticmethod
    def setup_context(ctx, inputs, output):
        x2d, _key, _inv_tau, inv, hard, _compiled = inputs
        y = output[0] if len(output) == 2 else output[2]
        ctx.save_for_backward(y)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # an unused y gets no B x K zero gradient
        ctx.inv = inv
        ctx.hard = hard
        ctx.x_dtype = x2d.dtype

    @staticmethod
    def backward(ctx, v, _gsmax, gy=None):
        (y,) = ctx.saved_tensors
        if v is None:
            v = gy
        elif gy is not None:
            v = v.to(y.dtype) + gy
        if v is None:
            return None, None, None, None, None, None
        scale = _grad_scale(ctx.inv, y.dtype)
        if torch.is_grad_enabled() or _functorch_state()[0]:
            # create_graph or a torch.func transform: out of place, differentiable in y and v.
            v = v.to(y.dtype)
            gx = y * (v - (y * v).sum(1, keepdim=True))
            if ctx.inv != 1.0:
                gx = gx * scale
        else:
            # The backward needs no noise: ATen's one-pass softmax backward on the saved y
            # (measured as fast as an Inductor kernel, and no compilation). In hard mode y is
            # private and is overwritten by the gradient, so the backward allocates no B x K
            # buffer -- only for a contiguous y: ATen's kernel writes a strided output as if it
            # were contiguous. (y is contiguous here: the forward takes row-major x2d.)
            gx = _softmax_grad(y, v, 1, overwrite_y=ctx.hard and y.is_contiguous())
            if ctx.inv != 1.0:
                gx = gx.mul_(scale)
        return gx.to(ctx.x_dtype), None, None, None, None, None


def _fused_2d(x2d, key, inv_tau, inv: float, hard: bool, need_grad: bool, compiled: bool):
    """(out, smax) for row-major x2d: through the autograd node, or without autograd."""
    if need_grad:
        res = _FusedGumbelSoftmax.apply(x2d, key, inv_tau, inv, hard, compiled)
        return res[0], res[1]
    # The soft forward is the same graph with or without autograd (Function.forward runs without
    # grad too), so it shares the compiled "soft" kernel; hard without grad skips the softmax.
    name = "hard_nograd" if hard else "soft"
    with torch.no_grad():
        if compiled:
            out, y, smax = _run(name, _forward, x2d, key, inv_tau, hard, not hard)
        else:
            out, y, smax = _forward(x2d, key, inv_tau, hard, not hard)
    return (y if out is None else out), smax


# --------------------------------------------------------------------------- public entry point


def _scalar_tau(tau):
    """1/tau as a float (inf for subnormal tau), or None when tau is a tensor the fused path does not take."""
    if isinstance(tau, torch.Tensor):
        if tau.requires_grad or tau.numel() != 1 or torch._C._functorch.is_functorch_wrapped_tensor(tau):
            return None
        tau = float(tau)
    try:
        return 1.0 / float(tau)
    except OverflowError:  # tau subnormal: the forward and backward are written for 1/tau = inf
        return math.inf


def _gumbel_softmax(logits, tau, hard, dim, generator, compiled: bool, fn: str):
    check_dtype(logits, fn=fn)
    dim = normalize_dim(logits, dim, fn=fn)
    tau = check_tau(tau, logits, fn=fn)
    check_generator(generator, logits.device, fn=fn)
    hard = bool(hard)
    inv = _scalar_tau(tau)
    transformed, vmapped = _functorch_state()
    if transformed:
        # Under torch.func transforms (grad, vmap, jacrev, ...) the compiled kernel cannot be
        # traced: the same algorithm runs op by op -- the same key and noise, so the same sample.
        compiled = False
    if inv is None or (compiled and _state["failed"] is not None):
        # Per-element or learnable temperatures (and a disabled fused path) take the eager path,
        # which has the same semantics.
        return _eager_gumbel_softmax(logits, tau, hard, dim=dim, generator=generator)
    K = logits.shape[dim]
    moved = logits.movedim(dim, -1)
    # Row-major rows, whatever the input's layout (a copy only when it is not already): the noise
    # is indexed by logical position, Inductor's CPU kernel miscomputes column-major rows (see the
    # module notes), and the saved softmax inherits this layout.
    x2d = moved.reshape(-1, K).contiguous()
    if x2d.numel() == 0:
        return _eager_gumbel_softmax(logits, tau, hard, dim=dim, generator=generator)
    cdt = compute_dtype(logits.dtype)
    inv_tau = torch.tensor(inv, dtype=cdt, device=logits.device)  # inf when 1/tau overflows cdt
    # A fallback must draw from the generator state the caller passed in: remember it.
    rng = _resolve_generator(generator, logits.device) if compiled else None
    rng_state = rng.get_state() if rng is not None else None
    key = draw_key(generator, logits.device)
    # Under torch.func transforms requires_grad does not tell (inside grad(vmap(f)) the batched
    # logits report False): take the autograd node, which the transforms differentiate as needed.
    need_grad = torch.is_grad_enabled() and (logits.requires_grad or transformed)
    try:
        out2d, smax = _fused_2d(x2d, key, inv_tau, inv, hard, need_grad, compiled)
    except Exception as exc:  # compile / backend failure: never an error for the caller
        if not compiled:
            raise
        if not isinstance(exc, _TooManyShapes):
            _disable(exc)
        if rng is not None:
            rng.set_state(rng_state)
        return _eager_gumbel_softmax(logits, tau, hard, dim=dim, generator=generator)
    # One reduction and one sync: the sum of the row maxima is finite unless a row is invalid (or,
    # harmlessly, finite maxima overflow the sum; check_values then finds nothing and returns).
    # Not under vmap (no data-dependent Python control flow there) nor while compiling.
    if not torch.compiler.is_compiling() and not vmapped and not math.isfinite(float(smax.detach().sum())):
        check_values(logits, dim, fn=fn)  # raises the library's message for NaN / +inf / all-masked rows
    return out2d.reshape(moved.shape).movedim(-1, dim)


def _warn_eps(eps) -> None:
    if eps != 1e-10:  # torch.nn.functional.gumbel_softmax's own rule and message
        warnings.warn("`eps` parameter is deprecated and has no effect.", DeprecationWarning, stacklevel=3)


def gumbel_softmax(
    logits: torch.Tensor,
    tau: Tau = 1.0,
    hard: bool = False,
    eps: float = 1e-10,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Gumbel-Softmax with the noise generated inside one compiled kernel (Philox4x32-10).

    Math: y = softmax((theta + g) / tau), g = -log E with E ~ Exp(1) built from Philox4x32-10
    words at the element's position under a 128-bit key drawn from ``generator`` (see
    :func:`gumbel_noise_philox`); ``hard=True`` returns one_hot(argmax(theta + g)) (exactly
    one-hot) with the gradient of y. The noise has exact Gumbel tails over its whole range,
    [-3.13, 22.87] for float32 (and fp16/bf16) logits and [-3.81, 45.05] for float64, so rare
    classes -- e.g. 19 nats below the top of a 65,536-way row -- are drawn at their true rate.
    Same distribution, checks and dtype policy as :func:`gumbelkit.gumbel_softmax` (float32 noise
    and arithmetic for fp16/bf16, masked classes get 0 weight and 0 gradient, NaN / +inf /
    all-masked rows and tau <= 0 raise), but a different random stream: the samples differ from
    the eager ones for the same generator state (each path is reproducible on its own).

    The noise of an element depends on its logical position along ``logits.movedim(dim, -1)``
    (row-major), never on strides: contiguous, transposed, expanded, sliced or channels-last
    inputs with equal values give equal samples and gradients for the same generator state.
    Tiny temperatures (down to subnormal tau) and logits near the float limits give no NaN: the
    row maximum is subtracted before scaling by 1/tau.

    The forward saves only y (soft: the output itself) and the backward is one pass over y;
    double backward works. The first call per variant (soft, hard, hard without grad) and
    row-length class compiles (about 20-30 s cold on a 2-core CPU; see
    :func:`gumbelkit.kernels.compile_times`). Under ``torch.func`` transforms (``grad``,
    ``vmap(..., randomness='different')`` or ``'same'``, ...) the same algorithm runs op by op,
    with the same key and noise; NaN / +inf / all-masked rows are not detected under ``vmap``.
    Tensor temperatures with more than one element or requiring grad take the eager path; if
    compilation fails the eager path is used with one :class:`FusedFallbackWarning`.

    Args:
        logits: unnormalised log-probabilities (float16, bfloat16, float32, float64).
        tau: temperature > 0 (float or one-element tensor for the fused path).
        hard: one-hot forward with the soft gradient (straight-through Gumbel-Softmax).
        eps: ignored, as in torch and :func:`gumbelkit.gumbel_softmax` (the same signature).
        dim: the category dimension.
        generator: optional ``torch.Generator`` (keyword-only); 128 bits are drawn from it per call.

    Returns:
        Tensor shaped and typed like ``logits``.

    Examples:
        >>> from gumbelkit import kernels
        >>> y = kernels.gumbel_softmax(torch.randn(256, 1000), tau=0.5, hard=True)

    Reference: Jang, Gu, Poole, ICLR 2017; Maddison, Mnih, Teh, ICLR 2017; Salmon, Moraes, Dror,
    Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3", SC 2011 (Philox).
    """
    _warn_eps(eps)
    return _gumbel_softmax(logits, tau, hard, dim, generator, compiled=True, fn="gumbel_softmax")


def gumbel_softmax_reference(
    logits: torch.Tensor,
    tau: Tau = 1.0,
    hard: bool = False,
    eps: float = 1e-10,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The fused algorithm run op by op without compilation: identical random stream, for tests.

    Same arguments and results as :func:`gumbel_softmax` (up to float rounding of the compiled
    kernel); slow, since every Philox round is a separate pass over memory.
    """
    _warn_eps(eps)
    return _gumbel_softmax(logits, tau, hard, dim, generator, compiled=False, fn="gumbel_softmax_reference")
