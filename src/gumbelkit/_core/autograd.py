"""The library's ``torch.autograd.Function`` classes and their thin ``apply`` wrappers.

* :class:`ScatterStraightThrough`: an exact 0/1 forward (ones at given indices: one-hot, k-hot,
  permutation matrices) whose backward passes the gradient to a soft tensor unchanged.
* :class:`TemperedSoftmax`: one node for the tempered softmax, the Gumbel-Softmax and their
  straight-through forms, saving only the softmax.
* :class:`LogCumSumExp`: a log-cumulative-sum-exp along the last dim whose derivatives of every
  order are finite and exact (torch's own has a NaN second derivative wherever an incoming
  gradient is exactly 0), with its two helper nodes :class:`SuffixWeights` / :class:`PrefixWeights`.
* :class:`TauDivide`: x / tau for a tensor temperature, whose tau-gradient is exactly 0 wherever
  the quotient is not finite (masked entries, +-inf logits, a tiny tau), never 0 * inf = NaN.

Both are pure functions of their inputs (the noise is an input), use ``setup_context`` and
``generate_vmap_rule``, and write their backwards in differentiable ops, so they work under
``torch.func`` transforms and double backward. Like :mod:`gumbelkit._core.numerics`, nothing here
validates its arguments.
"""

from __future__ import annotations

import torch

from .numerics import argmax_one_hot, one_hot, vertical_softmax_, vertical_softmax_grad
from .policy import compute_dtype, lean
from .validation import Tau

__all__ = [
    "LogCumSumExp",
    "PrefixWeights",
    "ScatterStraightThrough",
    "SuffixWeights",
    "TauDivide",
    "TemperedSoftmax",
    "divide_by_tau",
    "log_cumsum_exp",
    "one_hot_straight_through",
    "softmax_grad",
    "tempered_core",
]


def softmax_grad(y: torch.Tensor, v: torch.Tensor, dim: int, *, overwrite_y: bool = False) -> torch.Tensor:
    """y * (v - <y, v>) along dim: ATen's fused softmax backward (one pass instead of four).

    Differentiable (it has a double backward), so backwards built on it support create_graph.
    With ``overwrite_y`` (for a private saved y that no one else reads) the result is written over
    y -- the kernel finishes each row's <y, v> before writing it -- so the backward allocates no
    B x K buffer. Only on CPU (the kernel checked), outside compilation and torch.func transforms,
    when the graph is not retained (a second backward would read the overwritten y) and not
    built (create_graph: an out= result cannot be differentiated). Under the same conditions, more
    than 1024 categories at a stride of 512 or more (dim=1 of B x K x H x W) take the cache-blocked
    :func:`gumbelkit._core.numerics.vertical_softmax_grad` instead of ATen's strided kernel.
    """
    v = v.to(y.dtype).contiguous()
    eager_cpu = (
        y.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch.is_grad_enabled()
        and not torch._C._are_functorch_transforms_active()
    )
    # a retained graph (retain_graph=True) may read y again: then y is not overwritten
    keep = overwrite_y and eager_cpu and torch._C._autograd._get_current_graph_task_keep_graph()
    if eager_cpu and _vertical(y, dim) and y.stride(dim) >= _VGRAD_MIN_INNER and y.shape[dim] > _VGRAD_MIN_K:
        # Many categories far apart (dim=1 of B x 8192 x 32 x 32): ATen's kernel walks each
        # category column at a power-of-two stride and thrashes the cache; the blocked version
        # measured faster there (and slower than ATen's for K <= 1024 or small H x W).
        return vertical_softmax_grad(y, v, dim, overwrite_y=overwrite_y and not keep)
    if overwrite_y and eager_cpu and not keep:
        return torch.ops.aten._softmax_backward_data.out(v, y, dim, y.dtype, grad_input=y)
    return torch._softmax_backward_data(v, y, dim, y.dtype)


_VGRAD_MIN_INNER = 512
_VGRAD_MIN_K = 1024


# The blocked kernels reduce over the category dim of (slabs, K, inner) blocks; ATen's reductions
# are vectorised across ``inner`` and measured slow below 64 (amax of a (256, 64, 16) block: ~20x
# the time per element of a (1, 512, 512) one), where ATen's own softmax is the faster choice.
_VERTICAL_MIN_INNER = 64


def _vertical(t: torch.Tensor, dim: int) -> bool:
    """Whether the blocked softmax kernels apply: CPU, contiguous, at least 64 elements after ``dim``."""
    return (
        t.device.type == "cpu"
        and t.dim() > dim + 1
        and t.is_contiguous()
        and t.numel() > 0
        and t.stride(dim) >= _VERTICAL_MIN_INNER
    )


class ScatterStraightThrough(torch.autograd.Function):
    """Forward: zeros shaped like ``soft`` with 1 at ``index`` along ``dim``; backward: the identity into ``soft``.

    One index per row gives a one-hot forward, k indices a k-hot one, and a permutation along the
    last dim of a square ``soft`` a permutation matrix.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(soft: torch.Tensor, index: torch.Tensor, dim: int):
        return one_hot(soft, index, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, v: torch.Tensor):
        return v, None, None


def one_hot_straight_through(soft: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Exact 0/1 forward with ones at ``index`` along ``dim``; the gradient passes to ``soft`` unchanged.

    One index per row gives a one-hot forward (the straight-through estimators), k indices a
    k-hot one (k-subsets), a permutation's indices a permutation matrix: the one straight-through
    function of the library. The forward is built from the index, so it is 0/1 to the last bit,
    which ``hard - soft.detach() + soft`` is not (its entries are 1 - s + s, off by rounding).

    Args:
        soft: the differentiable surrogate whose gradient the estimator uses (any shape).
        index: int64 indices of the ones in keepdim layout: ``soft``'s shape with size 1 (one-hot),
            k (k-hot) or n (a permutation of n) along ``dim``, e.g. ``argmax(dim, keepdim=True)``.
        dim: the category dimension.

    Returns:
        A tensor shaped and typed like ``soft``: 1 at ``index`` and 0 elsewhere, exactly, whose
        gradient with respect to ``soft`` is the identity.

    Examples:
        >>> import torch
        >>> from gumbelkit.estimators import one_hot_straight_through
        >>> x = torch.tensor([[1.0, 2.0, 0.5]], requires_grad=True)
        >>> soft = torch.softmax(x, -1)
        >>> y = one_hot_straight_through(soft, soft.argmax(-1, keepdim=True), -1)
        >>> y.detach()
        tensor([[0., 1., 0.]])
        >>> v = torch.tensor([[1.0, 0.0, 0.0]])
        >>> (y * v).sum().backward()
        >>> torch.allclose(x.grad, torch.autograd.functional.vjp(lambda t: torch.softmax(t, -1), x.detach(), v)[1])
        True
    """
    return ScatterStraightThrough.apply(soft, index, dim)


class TemperedSoftmax(torch.autograd.Function):
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
        if (
            lean
            and own
            and log_e is not None
            and not per_class
            and not with_lse
            and not isinstance(tau, torch.Tensor)
            and _vertical(z, dim)
        ):
            # categories not innermost (dim=1 of B x K x H x W, ...): z is the private noise
            # buffer, contiguous in the logical layout; softmax and one-hot in cache-sized blocks
            h = vertical_softmax_(z, dim, float(tau), hard and index is None)
            y = z.view_as(z)  # z is the log_e input: autograd takes an input's view as an output
            if index is not None:
                out = one_hot(y, index, dim, dtype=x.dtype)
            elif h is not None:
                out = h if h.dtype == x.dtype else h.to(x.dtype)
            else:
                out = y if y.dtype == x.dtype else y.to(x.dtype)
            return (out,) if out is y else (out, y)
        # the one-hot of argmax(z) itself, before any shift or scaling: dividing by tau could round
        # two values into a tie
        hot = argmax_one_hot(z, dim, x.dtype) if hard and index is None else None
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
        lse = torch.logsumexp(s, dim, keepdim=True) if with_lse else None
        if lean and (own or s is not z) and s.is_contiguous():
            # s is a private buffer (the noise, or a quotient): the softmax overwrites it (ATen's
            # kernel reads each row's max and sum before writing it). One B x K allocation less
            # per call: on the CPU a fresh mapping costs a page fault per 4 KiB whenever the
            # allocator has just returned the previous one to the system.
            y = torch.ops.aten._softmax.out(s, dim, False, out=s).view_as(s)
        else:
            y = torch.softmax(s, dim)
        del z, s
        if index is not None:
            out = one_hot(y, index, dim, dtype=x.dtype)
        elif hot is not None:
            out = hot
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
            g = softmax_grad(y, v, ctx.dim, overwrite_y=private)
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


class TauDivide(torch.autograd.Function):
    r"""q = x / tau (tau a tensor broadcastable with x), with a tau-gradient that is never 0 * inf.

    Autograd's own division differentiates tau as :math:`-g\,x / \tau^2`, and that is NaN in
    exactly the places where the forward does not depend on tau at all: a masked entry
    (x = -inf) or a +-inf logit gives :math:`0 \cdot \infty`, and a tensor tau below ~1e-19 in
    float32 makes :math:`\tau^2` underflow to 0, so every entry is :math:`g\,x / 0`. Here the
    gradient is written through the quotient, :math:`\partial q / \partial \tau = -q / \tau`:
    entries whose q is not finite (they sit at a saturated value, -inf or +inf, where nothing
    downstream can move them) contribute exactly 0, and the others contribute
    :math:`-(g\,q) / \tau`, the product taken first so that a zero upstream gradient stays an exact
    zero even when :math:`q / \tau` would overflow. The backward is written in differentiable ops
    on the saved quotient, so it has a (finite) second derivative as well.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, tau):
        return x / tau

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, tau = inputs
        ctx.save_for_backward(tau, output)
        ctx.x_shape = x.shape

    @staticmethod
    def backward(ctx, g):
        tau, q = ctx.saved_tensors
        gx = gtau = None
        if ctx.needs_input_grad[0]:
            gx = (g / tau).sum_to_size(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            fin = torch.isfinite(q)
            # the inner where keeps q's own (double-backward) gradient away from the inf entries
            gq = torch.where(fin, g * torch.where(fin, q, 0.0), 0.0)
            # Summed (tau is one value over each summed group) in float64, then divided: with a tiny
            # tau and a huge q the terms g q / tau can overflow, and +inf + -inf would be NaN; the
            # true gradient is then just too large for the dtype, and comes out as +-inf instead.
            wide = torch.float64 if gq.dtype != torch.float64 else gq.dtype
            gtau = (-gq.to(wide).sum_to_size(tau.shape) / tau.to(wide)).to(tau.dtype)
        return gx, gtau


def divide_by_tau(x: torch.Tensor, tau: Tau) -> torch.Tensor:
    """x / tau; a tensor tau goes through :class:`TauDivide` (its gradient is exactly 0 where x / tau is not finite)."""
    if isinstance(tau, torch.Tensor):
        return TauDivide.apply(x, tau)
    return x / tau


# --------------------------------------------------------------------------- log-cumsum-exp
#
# r = logcumsumexp(x) along the last dim. Its derivatives are the two linear maps
#     T(g)_i  = sum_{o >= i} g_o exp(x_i - r_o)     (the vector-Jacobian product of r: grad_x)
#     T'(v)_o = sum_{i <= o} v_i exp(x_i - r_o)     (the transpose of T)
# and the derivatives of T and T' are T and T' again, so three autograd nodes that call each other
# give every order of derivative. torch's own logcumsumexp backward takes log |g| of the incoming
# gradient: its second derivative is 1 / g, and where g is exactly 0 (common: unused outputs, masked
# entries) that is 0 * inf = NaN. Here the logs are taken only inside the nodes' forwards (no
# autograd there), and each derivative with respect to g is the linear map itself, exact at g = 0.


def _signed_logs(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log max(g, 0), log max(-g, 0)): -inf where that part is 0 (only used in forwards)."""
    return torch.log(g.clamp_min(0.0)), torch.log(torch.neg(g).clamp_min(0.0))


def _suffix_lse(a: torch.Tensor) -> torch.Tensor:
    """log sum_{o >= i} exp(a_o) along the last dim."""
    return a.flip(-1).logcumsumexp(-1).flip(-1)


class _WeightsFunction(torch.autograd.Function):
    """The shared part of the two linear maps below: inputs (vector, x, r), everything saved."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs, output)


class SuffixWeights(_WeightsFunction):
    """T(g; x, r)_i = sum_{o >= i} g_o exp(x_i - r_o), r = logcumsumexp(x) (last dim)."""

    @staticmethod
    def forward(g, x, r):
        # a prefix that is all -inf has r = -inf and contributes nothing (no -inf - -inf)
        dead = torch.isneginf(r)
        out = torch.zeros_like(x)
        for lg, sign in zip(_signed_logs(g), (1.0, -1.0)):
            # exp(x_i + log sum_{o >= i} g_o e^{-r_o}): every exponent is <= log sum |g|, as x_i <= r_o
            a = torch.where(dead, float("-inf"), lg - r)
            out = out + sign * torch.exp(x + _suffix_lse(a))
        return out

    @staticmethod
    def backward(ctx, u):
        g, x, r, out = ctx.saved_tensors
        need_g, need_x, need_r = ctx.needs_input_grad
        tu = PrefixWeights.apply(u, x, r) if need_g or need_r else None
        return (tu if need_g else None), (u * out if need_x else None), (-g * tu if need_r else None)


class PrefixWeights(_WeightsFunction):
    """T'(v; x, r)_o = sum_{i <= o} v_i exp(x_i - r_o), the transpose of :class:`SuffixWeights`."""

    @staticmethod
    def forward(v, x, r):
        dead = torch.isneginf(r)
        out = torch.zeros_like(x)
        for lv, sign in zip(_signed_logs(v), (1.0, -1.0)):
            b = torch.where(dead, float("-inf"), (lv + x).logcumsumexp(-1) - r)
            out = out + sign * torch.exp(b)
        return out

    @staticmethod
    def backward(ctx, u):
        v, x, r, out = ctx.saved_tensors
        need_v, need_x, need_r = ctx.needs_input_grad
        tu = SuffixWeights.apply(u, x, r) if need_v or need_x else None
        return (tu if need_v else None), (v * tu if need_x else None), (-u * out if need_r else None)


class LogCumSumExp(torch.autograd.Function):
    """r_o = log sum_{i <= o} exp(x_i) along the last dim; backward :class:`SuffixWeights` (any order)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.logcumsumexp(-1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x, output)

    @staticmethod
    def backward(ctx, g):
        x, r = ctx.saved_tensors
        return SuffixWeights.apply(g, x, r)


def log_cumsum_exp(x: torch.Tensor) -> torch.Tensor:
    """logcumsumexp along the last dim, with finite, exact derivatives of every order (see above)."""
    return LogCumSumExp.apply(x)


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

    ``tau`` must come from :func:`gumbelkit._core.numerics.prepare_tau`; ``log_e`` must be a fresh
    buffer (it is overwritten).
    """
    # a per-class tau's gradient needs lse (one value per row); computed whenever tau is a tensor
    # there, since torch.func.grad may ask for it without tau.requires_grad being visible here
    with_lse = per_class and isinstance(tau, torch.Tensor)
    outs = TemperedSoftmax.apply(x, log_e, m, tau, dim, hard, index, post, per_class, lean(), with_lse)
    return outs[0]
