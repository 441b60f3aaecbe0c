"""Gumbel-Max, Gumbel-top-k, Gumbel-Softmax and the tempered softmax baseline."""

from __future__ import annotations

import warnings

import torch

from ._noise import log_exponential_noise
from ._validation import (
    Tau,
    check_generator,
    check_logits_scale,
    check_positive_int,
    check_sample_args_scale,
    check_tau,
    compute_dtype,
    functorch_active,
    in_vmap,
    shape_str,
    skip_value_checks,
)

__all__ = ["gumbel_max", "gumbel_softmax", "gumbel_topk", "tempered_softmax"]


# --------------------------------------------------------------------------- numerical policy
#
# theta + g is formed as (theta - m) + g with m the row max only when some |row max| exceeds
# _SHIFT_ABOVE. Above it the rounding of theta + g eats the noise (theta = 1e7 has a float32 ulp
# of 1, so [1e7, 1e7] would be drawn 62/38 instead of 50/50); at or below it theta + g and
# (theta - m) + g both stay under ~50 in magnitude (ulp <= 4e-6), so the shift could not change
# the sampled law and would only cost a B x K pass. The row max comes from the validation's
# reduction (no extra pass), and its |max| from the same host sync.
_SHIFT_ABOVE = 16.0
# A bound on |log E| for every noise source (the widest, float64, reaches 45.1), kept generous:
# with theta shifted, |(theta - m) - log E| <= _NOISE_BOUND, so (theta + g) / tau cannot overflow
# unless tau < ~4 * _NOISE_BOUND / finfo.max (about 1e-35 in float32). Only then do the samplers
# also subtract the perturbed row max, making the top of every row exactly 0 before dividing.
_NOISE_BOUND = 1024.0


def _overflows(bound: float, tau: float, cdt: torch.dtype) -> bool:
    """Whether |values| <= bound divided by a float tau could reach inf (a margin of 4 for rounding)."""
    return bound / tau > torch.finfo(cdt).max / 4


def prepare_tau(tau: Tau, cdt: torch.dtype) -> Tau:
    """tau in the compute dtype, raised to the dtype's smallest normal number.

    A float tau below the dtype's range (1e-50 in float32) rounds to 0 inside the kernel, and a
    subnormal one is read as 0 under denormals-are-zero: either turns (z - zmax) / tau into
    0 / 0 = NaN at the row's top. At the smallest normal (1.2e-38 in float32) the softmax is
    already one-hot except between values closer than ~1e-38, so the result is unchanged there.
    A tensor tau keeps its gradient (clamp passes it through where tau is not raised).
    """
    tiny = torch.finfo(cdt).tiny
    if isinstance(tau, torch.Tensor):
        return tau.to(cdt).clamp_min(tiny)
    return max(float(tau), tiny)


def per_class_tau(tau: Tau, ndim: int, dim: int) -> bool:
    """Whether a tensor tau varies along the category dim (then no per-row shift is exact)."""
    if not isinstance(tau, torch.Tensor) or tau.dim() == 0:
        return False
    i = dim - (ndim - tau.dim())
    return i >= 0 and tau.shape[i] != 1


def theta_shift(row_max: torch.Tensor, max_abs: float | None, cdt: torch.dtype) -> torch.Tensor | None:
    """The row max to subtract before adding noise (see _SHIFT_ABOVE), or None when it cannot matter.

    ``max_abs`` is None under torch.compile / vmap (unknown on the host): shift, which Inductor
    fuses for free.
    """
    if max_abs is not None and max_abs <= _SHIFT_ABOVE:
        return None
    return row_max.to(cdt)


def noise_plan(row_max, max_abs, tau: Tau, cdt: torch.dtype, per_class: bool):
    """(m, post) for softmax((theta + g) / tau): the theta shift, and whether to shift again after the noise.

    A tensor tau is not known on the host, so its rows are always brought to a top of exactly 0
    (post): then (z - zmax) / tau lies in [-inf, 0] with a 0 in every row, and the softmax never
    sees inf - inf whatever tau is. A per-class tau cannot be shifted at all (the shift would not
    cancel); that path clamps instead (see _TemperedSoftmax).
    """
    m = theta_shift(row_max, max_abs, cdt) if row_max is not None else None
    if isinstance(tau, torch.Tensor):
        return m, not per_class
    bound = (max_abs if m is None else 0.0) + _NOISE_BOUND
    return m, _overflows(bound, tau, cdt)


def plain_shift(row_max, max_abs, tau: Tau, cdt: torch.dtype, per_class: bool) -> torch.Tensor | None:
    """The row max to subtract before theta / tau (no noise), or None when theta / tau cannot overflow.

    Without noise, theta - m has a top of exactly 0, which is all the stability the division needs.
    """
    if per_class:
        return None
    if isinstance(tau, torch.Tensor) or max_abs is None or _overflows(max_abs, tau, cdt):
        return row_max.to(cdt)
    return None


# --------------------------------------------------------------------------- noise and one-hot helpers


def log_exp_noise(shape, generator, device, cdt: torch.dtype) -> torch.Tensor:
    """log E, E ~ Exp(1), in the compute dtype: a fresh buffer the caller may overwrite.

    Under ``torch.vmap(randomness="different")`` only out-of-place random ops are batched; the
    library's noise is built in place on fresh, unbatched buffers (which vmap refuses, or would
    repeat across the batch), so there the noise comes from one ``torch.rand`` in float64 (53-bit
    uniforms clamped to the smallest normal: E = -log u in [1.1e-16, 708], log E finite).
    """
    if in_vmap():
        u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
        return u.clamp_min_(torch.finfo(torch.float64).tiny).log_().neg_().log_().to(cdt)
    return log_exponential_noise(shape, generator=generator, device=device, dtype=cdt)


def _one_hot(ref: torch.Tensor, index: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    out = torch.zeros_like(ref, dtype=dtype)
    if functorch_active():
        # Under vmap the index may be batched while the zeros are not: only the out-of-place
        # scatter batches both.
        return out.scatter(dim, index, 1.0)
    return out.scatter_(dim, index, 1.0)


def one_hot_like(ref: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    return _one_hot(ref, index, dim)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _lean() -> bool:
    """In-place/out= buffer reuse is allowed: not under torch.compile nor a torch.func transform."""
    return not torch.compiler.is_compiling() and not functorch_active()


# --------------------------------------------------------------------------- autograd pieces


def _softmax_grad(y: torch.Tensor, v: torch.Tensor, dim: int, *, overwrite_y: bool = False) -> torch.Tensor:
    """y * (v - <y, v>) along dim: ATen's fused softmax backward (one pass instead of four).

    Differentiable (it has a double backward), so backwards built on it support create_graph.
    With ``overwrite_y`` (for a private saved y that no one else reads) the result is written over
    y -- the kernel finishes each row's <y, v> before writing it -- so the backward allocates no
    B x K buffer. Only on CPU (the kernel checked), outside compilation and torch.func transforms,
    when the graph is not retained (a second backward would read the overwritten y) and not
    built (create_graph: an out= result cannot be differentiated).
    """
    v = v.to(y.dtype).contiguous()
    if (
        overwrite_y
        and y.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch.is_grad_enabled()
        and not torch._C._are_functorch_transforms_active()
        and not torch._C._autograd._get_current_graph_task_keep_graph()
    ):
        return torch.ops.aten._softmax_backward_data.out(v, y, dim, y.dtype, grad_input=y)
    return torch._softmax_backward_data(v, y, dim, y.dtype)


class _OneHotST(torch.autograd.Function):
    """Forward: one_hot(index) shaped like ``soft``; backward: the identity into ``soft``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(soft: torch.Tensor, index: torch.Tensor, dim: int):
        return _one_hot(soft, index, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, v: torch.Tensor):
        return v, None, None


def one_hot_straight_through(soft: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Exactly one-hot forward at ``index`` (keepdim layout), gradient passed to ``soft`` unchanged."""
    return _OneHotST.apply(soft, index, dim)


class _TemperedSoftmax(torch.autograd.Function):
    """y = softmax((x [- m] [- log E] [- zmax]) / tau), soft or one-hot forward, saving only y.

    One node for the tempered softmax, the Gumbel-Softmax (noise ``log_e`` passed in, so the
    function is pure and vmap can generate its batching rule) and the straight-through forms
    (one-hot at ``index``, or at argmax of the perturbed logits when ``hard``). In the lean mode
    (eager, no torch.func transform) theta - log E is written straight into the private noise
    buffer and divided by tau in place: one B x K buffer besides y, as before.

    Backward, from y alone: with g = y * (v - <y, v>) (ATen's fused softmax backward),
    grad_x = g / tau -- a division, never g * (1 / tau), so a subnormal tau cannot make 0 * inf --
    and, for a row-constant tensor tau, grad_tau = -sum_k g_k log y_k / tau. That is
    -sum_k g_k s_k / tau with s = (x - c) / tau, because log y_k = s_k - logsumexp(s) and
    sum_k g_k = 0; it never touches s, which is -inf (masked) or overflows where y_k = 0, and
    there g_k = 0 exactly, so masked classes give exactly 0 to both gradients instead of
    0 * inf = NaN. A per-class tau needs s_k itself: s_k = log y_k + lse with lse = logsumexp(s)
    returned as an extra output (one value per row). Extra outputs (y when the first output is
    not y, lse) make every backward quantity a function of outputs and inputs, so the backward,
    written in differentiable ops, also gives correct second derivatives.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, log_e, m, tau, dim: int, hard: bool, index, post: bool, per_class: bool, lean: bool, with_lse: bool):
        cdt = compute_dtype(x.dtype)
        if m is not None:
            z, own = torch.sub(x, m), True  # promotes fp16/bf16 to the compute dtype
        else:
            z = x.to(cdt)
            own = z is not x
        if log_e is not None:
            # theta - log E = theta + g; in lean mode straight into the (private) noise buffer
            z = torch.sub(z, log_e, out=log_e) if lean else z - log_e
            own = True
        if hard and index is None:
            index = z.argmax(dim, keepdim=True)
        if post:
            # top of every row exactly 0: (z - zmax) / tau is then in [-inf, 0] with a 0 in every row
            zmax = z.amax(dim, keepdim=True)
            z = z.sub_(zmax) if lean and own else z - zmax
        if per_class:
            # softmax(s_k = z_k / tau_k): no common shift cancels, so clamp quotients that overflowed
            # (tiny tau_k, huge z_k) to the finite range -- the softmax then never sees inf - inf --
            # and keep masked classes at exactly -inf (zero weight).
            s = z if m is None else z + m
            fin = torch.finfo(cdt)
            s = torch.where(torch.isneginf(z), float("-inf"), (s / tau).clamp(fin.min, fin.max))
        elif isinstance(tau, torch.Tensor) or tau != 1.0:
            s = z.div_(tau) if lean and own else z / tau
        else:
            s = z
        y = torch.softmax(s, dim)
        lse = torch.logsumexp(s, dim, keepdim=True) if with_lse else None
        del z, s
        if index is not None:
            out = _one_hot(y, index, dim, dtype=x.dtype)
        else:
            out = y if y.dtype == x.dtype else y.to(x.dtype)
        outs = (out,) if out is y else (out, y)
        return outs + (lse,) if with_lse else outs

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _log_e, _m, tau, dim, hard, index, _post, per_class, lean, with_lse = inputs
        y_is_out = not hard and index is None and x.dtype == compute_dtype(x.dtype)
        y = output[0] if y_is_out else output[1]
        lse = output[-1] if with_lse else None
        tau_t = tau if isinstance(tau, torch.Tensor) else None
        ctx.save_for_backward(y, tau_t, lse)
        ctx.dim, ctx.tau, ctx.per_class, ctx.in_dtype = dim, tau, per_class, x.dtype
        ctx.y_is_out, ctx.with_lse, ctx.lean = y_is_out, with_lse, lean
        ctx.set_materialize_grads(False)  # unused extra outputs cost no zero buffers

    @staticmethod
    def backward(ctx, *grads):
        y, tau_t, lse = ctx.saved_tensors
        v = grads[0]
        v_y = None if ctx.y_is_out else grads[1]
        v_lse = grads[-1] if ctx.with_lse else None
        if v is None:
            v = v_y
        elif v_y is not None:
            v = v.to(y.dtype) + v_y
        need_x, need_tau = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        nones = (None,) * 7
        if v is None and v_lse is None:
            return (None, None, None, None) + nones
        if v is None:
            g = y * v_lse  # d lse / d s = y
        else:
            # y is private (not returned to the caller) unless the output is y itself
            private = ctx.lean and not ctx.y_is_out and not need_tau and v_lse is None
            g = _softmax_grad(y, v, ctx.dim, overwrite_y=private)
            if v_lse is not None:
                g = g + y * v_lse
        gtau = None
        if need_tau:
            pos = y > 0
            # log y where y > 0, else 0 (g is exactly 0 there): the inner where keeps log's own
            # backward (1 / y) away from y = 0, so even a double backward sees no 0 * inf.
            log_y = torch.where(pos, torch.log(torch.where(pos, y, 1.0)), 0.0)
            if ctx.per_class:
                gtau = -(g * torch.where(pos, log_y + lse, 0.0)) / tau_t
            else:
                gtau = -(g * log_y).sum(ctx.dim, keepdim=True) / tau_t
            gtau = gtau.sum_to_size(tau_t.shape)
        gx = None
        if need_x:
            if tau_t is not None:
                gx = g / tau_t
            elif ctx.tau != 1.0:
                gx = g.div_(ctx.tau) if not torch.is_grad_enabled() and v_lse is None else g / ctx.tau
            else:
                gx = g
            gx = gx.to(ctx.in_dtype)
        return (gx, None, None, gtau) + nones


def tempered_core(
    x: torch.Tensor,
    tau: Tau,
    dim: int,
    *,
    log_e: torch.Tensor | None = None,
    m: torch.Tensor | None = None,
    post: bool = False,
    hard: bool = False,
    index: torch.Tensor | None = None,
    per_class: bool = False,
) -> torch.Tensor:
    """Unchecked softmax((x [- m] [- log_e]) / tau) (one-hot at ``index`` / the argmax with ``hard``).

    ``tau`` must come from :func:`prepare_tau`; ``log_e`` must be a fresh buffer (it is overwritten).
    """
    # a per-class tau's gradient needs lse (one value per row); computed whenever tau is a tensor
    # there, since torch.func.grad may ask for it without tau.requires_grad being visible here
    with_lse = per_class and isinstance(tau, torch.Tensor)
    outs = _TemperedSoftmax.apply(x, log_e, m, tau, dim, hard, index, post, per_class, _lean(), with_lse)
    return outs[0]


def _perturbed(logits: torch.Tensor, generator, m: torch.Tensor | None) -> torch.Tensor:
    """(theta [- m]) + g in the compute dtype, no gradient, a fresh buffer. Masked entries stay -inf."""
    cdt = compute_dtype(logits.dtype)
    z = log_exp_noise(logits.shape, generator, logits.device, cdt)
    x = logits.detach()
    if m is not None:
        x = torch.sub(x, m)
    # theta + g = theta - log E, written over the noise buffer in the lean mode
    return torch.sub(x, z, out=z) if _lean() else x - z


def gumbel_argmax(logits: torch.Tensor, dim: int, generator=None, m: torch.Tensor | None = None) -> torch.Tensor:
    """argmax(theta + g) along dim, keepdim layout: the index of an exact categorical sample.

    Same noise, same arithmetic and so the same index as the hard forward of
    :class:`_TemperedSoftmax` for the same generator state and the same ``m``.
    """
    return _perturbed(logits, generator, m).argmax(dim, keepdim=True)


def _relaxed(logits, tau: Tau, hard: bool, dim: int, generator, row_max, max_abs) -> torch.Tensor:
    cdt = compute_dtype(logits.dtype)
    per_class = per_class_tau(tau, logits.dim(), dim)
    m, post = noise_plan(row_max, max_abs, tau, cdt, per_class)
    if hard and not _needs_grad(logits, tau):
        return one_hot_like(logits, gumbel_argmax(logits, dim, generator, m), dim)
    log_e = log_exp_noise(logits.shape, generator, logits.device, cdt)
    return tempered_core(
        logits, prepare_tau(tau, cdt), dim, log_e=log_e, m=m, post=post, hard=hard, per_class=per_class
    )


# --------------------------------------------------------------------------- public functions


def gumbel_max(logits: torch.Tensor, dim: int = -1, *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""An exact sample of Categorical(softmax(logits)) by the Gumbel-Max trick.

    Math: z = argmax_k (theta_k + g_k), g_k ~ Gumbel(0, 1) i.i.d., gives P(z = k) = softmax(theta)_k.
    Masked classes (logit -inf) are never drawn; ties go to the lowest index.

    Args:
        logits: unnormalised log-probabilities, any floating dtype, any shape.
        dim: the category dimension.
        generator: optional ``torch.Generator`` (keyword-only).

    Returns:
        int64 tensor of indices, ``logits.shape`` without ``dim``.

    Example:
        >>> z = gumbel_max(torch.tensor([[0.0, 1.0, 2.0]]), generator=torch.Generator().manual_seed(0))

    Reference: Gumbel (1954); Maddison, Tarlow, Minka, "A* Sampling", NeurIPS 2014.
    """
    dim, row_max, max_abs = check_logits_scale(logits, dim)
    check_generator(generator, logits.device)
    m = theta_shift(row_max, max_abs, compute_dtype(logits.dtype))
    return gumbel_argmax(logits, dim, generator, m).squeeze(dim)


def gumbel_topk(
    logits: torch.Tensor, k: int, dim: int = -1, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""k indices sampled *without replacement*, in sampled order (Gumbel-top-k trick).

    Math: the indices of the k largest theta_i + g_i, in decreasing order, are distributed as
    k successive draws without replacement (Plackett-Luce): P(i1, i2) = p_i1 * p_i2 / (1 - p_i1).

    Args:
        logits: unnormalised log-probabilities.
        k: how many indices, 1 <= k <= number of unmasked classes in every row.
        dim: the category dimension.
        generator: optional ``torch.Generator`` (keyword-only).

    Returns:
        int64 tensor shaped like ``logits`` with ``dim`` of size k.

    Example:
        >>> gumbel_topk(torch.zeros(5), 3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3])

    Reference: Kool, van Hoof, Welling, "Stochastic Beams and Where to Find Them", ICML 2019.
    """
    dim, row_max, max_abs = check_logits_scale(logits, dim)
    check_generator(generator, logits.device)
    k = check_positive_int(k, "k")
    K = logits.shape[dim]
    if k > K:
        raise ValueError(f"expected k <= {K} (categories along dim={dim} of shape {shape_str(logits.shape)}), got {k}")
    if not skip_value_checks() and logits.numel():  # an empty batch has no rows to count (min of nothing)
        n_free = int(torch.isfinite(logits.detach()).sum(dim).min())
        if k > n_free:
            raise ValueError(f"expected k <= {n_free} (the fewest unmasked classes in a row), got {k}")
    m = theta_shift(row_max, max_abs, compute_dtype(logits.dtype))
    return _perturbed(logits, generator, m).topk(k, dim, sorted=True).indices


def gumbel_softmax(
    logits: torch.Tensor,
    tau: Tau = 1.0,
    hard: bool = False,
    eps: float = 1e-10,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Gumbel-Softmax (Concrete) sample; a safe drop-in for ``torch.nn.functional.gumbel_softmax``.

    Math: y = softmax((theta + g) / tau), g ~ Gumbel(0, 1). With ``hard=True`` the forward value is
    one_hot(argmax(theta + g)) -- an exact categorical sample, exactly one-hot -- and the backward is
    the gradient of y (straight-through Gumbel-Softmax).

    Unlike the built-in: noise is drawn in float32 even for fp16/bf16 logits and is always finite;
    masked (-inf) classes get exactly zero weight and zero gradient (to the logits and to a tensor
    tau); huge logits keep their noise (theta + g is formed after subtracting the row max when it
    matters) and tiny or subnormal tau, or logits near the dtype's range, give finite outputs and
    gradients; NaN logits, all-masked rows, tau <= 0 or non-finite and integer dtypes raise;
    ``generator`` makes it reproducible; only y is saved for backward (one buffer). Works under
    ``torch.func.grad``, ``torch.vmap(randomness="different")``, double backward and
    ``torch.compile(fullgraph=True)``.

    Args:
        logits: unnormalised log-probabilities (float16, bfloat16, float32, float64).
        tau: temperature > 0, a float or a tensor broadcastable to ``logits`` (may require grad).
        hard: one-hot forward with the soft gradient.
        eps: ignored, as in torch (kept so that ``gumbel_softmax(logits, tau, hard, eps, dim)``
            calls work unchanged); a value other than the default warns that it is deprecated.
        dim: the category dimension (any axis, contiguous or not).
        generator: optional ``torch.Generator`` (keyword-only).

    Returns:
        Tensor shaped and typed like ``logits``.

    Example:
        >>> y = gumbel_softmax(torch.randn(8, 10), tau=0.5, hard=True)
        >>> bool((y.sum(-1) == 1).all())
        True

    Reference: Jang, Gu, Poole, ICLR 2017; Maddison, Mnih, Teh, ICLR 2017.
    """
    if eps != 1e-10:
        # torch.nn.functional.gumbel_softmax's own rule and message
        warnings.warn("`eps` parameter is deprecated and has no effect.", DeprecationWarning, stacklevel=2)
    dim, tau, row_max, max_abs = check_sample_args_scale(logits, tau, dim, generator)
    return _relaxed(logits, tau, bool(hard), dim, generator, row_max, max_abs)


def tempered_softmax(logits: torch.Tensor, tau: Tau = 1.0, dim: int = -1) -> torch.Tensor:
    r"""softmax(logits / tau): deterministic, no noise -- the "no Gumbel" baseline.

    It returns the *average* of the categorical samples, not a sample: for p = [0.3, 0.7] it
    always returns [0.3, 0.7] (tau = 1) where a sampler returns [0, 1] 70% of the time.

    Args:
        logits: unnormalised log-probabilities.
        tau: temperature > 0 (float or broadcastable tensor).
        dim: the category dimension.

    Returns:
        Tensor shaped and typed like ``logits``.

    Example:
        >>> tempered_softmax(torch.tensor([0.0, 0.0]), tau=0.5)
        tensor([0.5000, 0.5000])

    Reference: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    dim, row_max, max_abs = check_logits_scale(logits, dim)
    tau = check_tau(tau, logits)
    cdt = compute_dtype(logits.dtype)
    per_class = per_class_tau(tau, logits.dim(), dim)
    m = plain_shift(row_max, max_abs, tau, cdt, per_class)
    return tempered_core(logits, prepare_tau(tau, cdt), dim, m=m, per_class=per_class)

