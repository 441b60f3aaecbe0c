"""The public samplers: Gumbel-Max, Gumbel-top-k, Gumbel-Softmax and the tempered softmax baseline.

Layout of the sampling code:

* :mod:`gumbelkit._core.policy` -- the dtype rule and the execution-context rules;
* :mod:`gumbelkit._core.validation` -- the argument checks (every message names the public function);
* :mod:`gumbelkit._core.numerics` -- unchecked building blocks: the numerical plan (theta shift,
  overflow guard), noise buffers, one-hot helpers;
* :mod:`gumbelkit._core.autograd` -- the ``torch.autograd.Function`` classes;
* this module -- the public functions, which validate once and call the pieces above.
"""

from __future__ import annotations

import warnings

import torch

from ._core import gpu as _gpu
from ._core.autograd import TemperedSoftmax, softmax_grad, tempered_core
from ._core.numerics import (
    argmax_one_hot,
    gumbel_argmax,
    log_exp_noise,
    needs_grad,
    noise_plan,
    per_class_tau,
    perturbed,
    plain_shift,
    prepare_tau,
    theta_shift,
)
from ._core.policy import check_mode, compiling, compute_dtype
from ._core.validation import (
    Tau,
    bad_rows,
    check_generator,
    check_int,
    check_logits,
    check_logits_scale,
    check_sample_args_scale,
    check_tau,
    mark_bad_rows,
    shape_str,
)
from .errors import GumbelkitValueError

# Public (re-exported by gumbelkit): gumbel_max, gumbel_softmax, gumbel_topk, tempered_softmax;
# checked_gumbel_softmax is for other public functions built on the Gumbel-Softmax.
__all__ = [
    "checked_gumbel_softmax",
    "gumbel_max",
    "gumbel_softmax",
    "gumbel_topk",
    "tempered_softmax",
]


def _relaxed(logits, tau: Tau, hard: bool, dim: int, generator, row_max, max_abs) -> torch.Tensor:
    if compiling() and not isinstance(tau, torch.Tensor) and logits.numel() > 0:
        # Inside torch.compile: one opaque custom op (the eager sampler) instead of tracing the
        # noise construction op by op (see the notes above _op_generator).
        return _compiled_gumbel_softmax(logits, float(tau), hard, dim)
    cdt = compute_dtype(logits.dtype)
    per_class = per_class_tau(tau, logits.dim(), dim)
    m, post = noise_plan(row_max, max_abs, tau, cdt, per_class)
    if hard and not needs_grad(logits, tau):
        return argmax_one_hot(perturbed(logits, generator, m), dim, logits.dtype)
    log_e = log_exp_noise(logits.shape, generator, logits.device, cdt)
    return tempered_core(
        logits, prepare_tau(tau, cdt), dim, log_e=log_e, m=m, post=post, hard=hard, per_class=per_class
    )


# --------------------------------------------------------------------------- public functions


def gumbel_max(logits: torch.Tensor, dim: int = -1, *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""An exact sample of Categorical(softmax(logits)) by the Gumbel-Max trick.

    Math: z = argmax_k (theta_k + g_k), g_k ~ Gumbel(0, 1) i.i.d., gives P(z = k) = softmax(theta)_k.
    Masked classes (logit -inf) are never drawn; ties go to the lowest index. On CUDA it is one
    Triton kernel that never stores the noise (:func:`gumbelkit.kernels.triton_gumbel_max`).

    Args:
        logits: unnormalised log-probabilities, any floating dtype, any shape.
        dim: the category dimension.
        generator: optional ``torch.Generator`` (keyword-only).

    Returns:
        int64 tensor of indices, ``logits.shape`` without ``dim``. In ``"device"`` validation mode
        (see :func:`gumbelkit.set_validation`) a row with NaN, +inf or no finite logit gives -1.

    Examples:
        >>> z = gumbel_max(torch.tensor([[0.0, 1.0, 2.0]]), generator=torch.Generator().manual_seed(0))

    Reference: Gumbel (1954); Maddison, Tarlow, Minka, "A* Sampling", NeurIPS 2014.
    """
    if _gpu.use_triton(logits):  # CUDA: one kernel, no noise buffer, no host read
        dim = check_logits(logits, dim, fn="gumbel_max")
        check_generator(generator, logits.device, "gumbel_max")
        return _gpu.gumbel_max_index(logits, dim, generator)
    dim, row_max, max_abs = check_logits_scale(logits, dim, fn="gumbel_max")
    check_generator(generator, logits.device, "gumbel_max")
    m = theta_shift(row_max, max_abs, compute_dtype(logits.dtype))
    index = gumbel_argmax(logits, dim, generator, m)
    if check_mode(logits) == "device":
        index = torch.where(bad_rows(row_max), -1, index)
    return index.squeeze(dim)


def gumbel_topk(
    logits: torch.Tensor, k: int, dim: int = -1, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""k indices sampled *without replacement*, in sampled order (Gumbel-top-k trick).

    Math: the indices of the k largest theta_i + g_i, in decreasing order, are distributed as
    k successive draws without replacement (Plackett-Luce): P(i1, i2) = p_i1 * p_i2 / (1 - p_i1).
    On CUDA (k <= 64) a Triton kernel keeps each block's top k in registers and the noise is never
    stored.

    Args:
        logits: unnormalised log-probabilities.
        k: how many indices, 1 <= k <= number of unmasked classes in every row.
        dim: the category dimension.
        generator: optional ``torch.Generator`` (keyword-only).

    Returns:
        int64 tensor shaped like ``logits`` with ``dim`` of size k. In ``"device"`` validation mode
        a row with NaN, +inf or no finite logit gives -1 everywhere, and a row with fewer than k
        unmasked classes gives -1 after its last unmasked one.

    Examples:
        >>> gumbel_topk(torch.zeros(5), 3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3])

    Reference: Kool, van Hoof, Welling, "Stochastic Beams and Where to Find Them", ICML 2019.
    """
    fn = "gumbel_topk"
    triton = _gpu.use_triton(logits)
    if triton:
        dim = check_logits(logits, dim, fn=fn)
    else:
        dim, row_max, max_abs = check_logits_scale(logits, dim, fn=fn)
    check_generator(generator, logits.device, fn)
    k = check_int(k, "k", min=1, fn=fn)
    K = logits.shape[dim]
    if k > K:
        raise GumbelkitValueError(
            f"{fn}: expected k <= {K} (categories along dim={dim} of logits of shape {shape_str(logits.shape)}), got {k}"
        )
    mode = check_mode(logits)
    if mode == "raise" and logits.numel():  # an empty batch has no rows to count (min of nothing)
        n_free = int(torch.isfinite(logits.detach()).sum(dim).min())
        if k > n_free:
            raise GumbelkitValueError(
                f"{fn}: expected k <= {n_free} (the fewest unmasked classes in a row of logits of shape "
                f"{shape_str(logits.shape)}), got {k}"
            )
    if triton:
        # CUDA: each block's top k of theta + g in registers, then the top k of those
        index = _gpu.gumbel_topk(logits, k, dim, generator)
        if index is not None:
            return index
        row_max, max_abs = logits.detach().amax(dim, keepdim=True), None  # k too large for the kernel
    m = theta_shift(row_max, max_abs, compute_dtype(logits.dtype))
    values, index = perturbed(logits, generator, m).topk(k, dim, sorted=True)
    if mode == "device":
        # a masked class is picked only once a row has run out of unmasked ones: -1 from there on
        index = torch.where(torch.isneginf(values) | bad_rows(row_max), -1, index)
    return index


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
    ``torch.compile(fullgraph=True)``: compiled, it runs as one opaque custom operator
    (``gumbelkit::gumbel_softmax_soft`` / ``_hard``, with ``gumbelkit::softmax_backward``) fed a
    seed drawn in the graph, so ``generator`` is not used there. Categories at dim=1 of
    B x K x H x W (H x W >= 64) are softmaxed in cache-sized contiguous blocks rather than by
    ATen's strided kernels or a transposed copy (see ``docs/bench.md``).

    On CUDA (float16, bfloat16, float32, with ``triton`` installed) it runs as Triton kernels:
    noise, softmax and one-hot in one forward pass, the backward in one, the noise from a key drawn
    into a device tensor (CUDA graphs replay fresh noise), and no value read back to the host --
    in the ``"device"`` validation mode, the CUDA default (see :func:`gumbelkit.set_validation`), a
    row with NaN, +inf or no finite logit comes out NaN instead of raising. See
    :func:`gumbelkit.kernels.triton_gumbel_softmax` and ``docs/gpu.md``.

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

    Examples:
        >>> y = gumbel_softmax(torch.randn(8, 10), tau=0.5, hard=True)
        >>> bool((y.sum(-1) == 1).all())
        True

    Reference: Jang, Gu, Poole, ICLR 2017; Maddison, Mnih, Teh, ICLR 2017.
    """
    if eps != 1e-10:
        # torch.nn.functional.gumbel_softmax's own rule and message
        warnings.warn("`eps` parameter is deprecated and has no effect.", DeprecationWarning, stacklevel=2)
    return checked_gumbel_softmax(logits, tau, hard, dim, generator=generator, fn="gumbel_softmax")


def checked_gumbel_softmax(
    logits: torch.Tensor,
    tau: Tau = 1.0,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
    fn: str = "gumbel_softmax",
) -> torch.Tensor:
    """:func:`gumbel_softmax` (without ``eps``) whose argument errors name ``fn``.

    For public functions built on the Gumbel-Softmax (e.g. :func:`gumbelkit.sample`), so that a
    bad argument is reported under the name the user called. Same samples and gradients.
    """
    if _gpu.use_triton(logits):  # CUDA: the Triton kernels (see gumbelkit.kernels.triton_gumbel_softmax)
        out = _gpu.gumbel_softmax(logits, tau, hard, dim, generator, fn)
        if out is not None:
            return out
    dim, tau, row_max, max_abs = check_sample_args_scale(logits, tau, dim, generator, fn=fn)
    return mark_bad_rows(_relaxed(logits, tau, bool(hard), dim, generator, row_max, max_abs), logits, row_max, tau)


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

    Examples:
        >>> tempered_softmax(torch.tensor([0.0, 0.0]), tau=0.5)
        tensor([0.5000, 0.5000])

    Reference: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    dim, row_max, max_abs = check_logits_scale(logits, dim, fn="tempered_softmax")
    tau = check_tau(tau, logits, fn="tempered_softmax")
    cdt = compute_dtype(logits.dtype)
    per_class = per_class_tau(tau, logits.dim(), dim)
    m = plain_shift(row_max, max_abs, tau, cdt, per_class)
    out = tempered_core(logits, prepare_tau(tau, cdt), dim, m=m, per_class=per_class)
    return mark_bad_rows(out, logits, row_max, tau)


# --------------------------------------------------------------------------- torch.compile: custom ops
#
# Under torch.compile the sampler is opaque operators: gumbelkit::gumbel_softmax_soft / _hard
# (forward: the eager sampler, noise included) and gumbelkit::softmax_backward (ATen's one-pass
# softmax backward divided by tau), tied together by register_autograd. The compiler fuses the
# model's other ops around them and calls them as kernels. Traced op by op instead, the sampler
# gave Inductor ~12 elementwise passes of integer noise construction, and compiled models were
# reported to run about 2x slower with it than the same model eager.
#
# Randomness: an operator cannot take a torch.Generator, so a 64-bit seed is drawn in the traced
# graph (torch.randint, which follows torch.manual_seed like every random op under compile) and
# passed in as a tensor; the operator seeds a private CPU/CUDA generator with it. The samples of a
# compiled call therefore differ from an eager call's for the same seed (as every traced random
# op's do), and a ``generator`` argument is not used while compiling. Tensor temperatures, empty
# inputs and torch.func transforms keep the traced path.


def _op_generator(seed: torch.Tensor, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed.item()) & 0xFFFFFFFFFFFFFFFF)


def _memory_order(t: torch.Tensor) -> list[int]:
    """The dims of ``t`` from the outermost to the innermost in memory (a permutation)."""
    strides, sizes = t.stride(), t.shape
    return sorted(range(t.dim()), key=lambda d: (-strides[d], -sizes[d]))


def _in_memory_order(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, int, list[int]]:
    """``t`` permuted so that its memory order is the logical one (a view, contiguous when ``t`` is
    dense), the category dim in that view, and the permutation that undoes it."""
    order = _memory_order(t)
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return t.permute(order), order.index(dim % t.dim()) if t.dim() else dim, inverse


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` is a view of ``b``'s memory (an operator's output may not alias its input)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _like(ref: torch.Tensor, value: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``value`` with exactly the strides of ``torch.empty_like(ref, dtype=dtype)`` (what the fake
    implementations promise the compiler); a copy only when they differ."""
    out = torch.empty_like(ref, dtype=dtype or value.dtype)
    if out.stride() == value.stride():
        return value
    return out.copy_(value)


def _gs_outputs(logits: torch.Tensor, seed: torch.Tensor, tau: float, hard: bool, dim: int):
    """(out, y) of the eager sampler, both laid out like ``logits``: out the sample (one-hot when
    hard), y the softmax it saves.

    The compiler may hand the operator channels-last (or other permuted) logits: the sampler runs on
    the view whose logical order is the memory order (contiguous, no copy) and its results are
    viewed back, so no layout copy is made on either side of the call. (Under compile no generator
    is used: the seed comes from the graph, and the draw depends on the memory order.)
    """
    dim = dim % logits.dim() if logits.dim() else dim
    view, vdim, inverse = _in_memory_order(logits, dim)
    out, y = _gs_outputs_contiguous(view.contiguous(), seed, tau, hard, vdim)
    return _like(logits, out.permute(inverse)), _like(logits, y.permute(inverse), y.dtype)


def _gs_outputs_contiguous(logits: torch.Tensor, seed: torch.Tensor, tau: float, hard: bool, dim: int):
    generator = _op_generator(seed, logits.device)
    dim, tau_c, row_max, max_abs = check_sample_args_scale(logits, tau, dim, generator, fn="gumbel_softmax")
    cdt = compute_dtype(logits.dtype)
    m, post = noise_plan(row_max, max_abs, tau_c, cdt, False)
    log_e = log_exp_noise(logits.shape, generator, logits.device, cdt)
    outs = TemperedSoftmax.forward(
        logits.detach(), log_e, m, prepare_tau(tau_c, cdt), dim, hard, None, post, False, True, False
    )
    return outs[0], outs[-1]


# flexible_layout: the compiler may pass the logits in the layout it chose (e.g. channels-last after a
# convolution) and takes the outputs in that layout, instead of copying to the traced strides and back.
@torch.library.custom_op("gumbelkit::gumbel_softmax_soft", mutates_args=(), tags=(torch.Tag.flexible_layout,))
def _gs_op_soft(logits: torch.Tensor, seed: torch.Tensor, tau: float, dim: int) -> torch.Tensor:
    """softmax((logits + g) / tau) along dim, in the compute dtype (the saved softmax is the output's value)."""
    _, y = _gs_outputs(logits, seed, tau, False, dim)
    return y.clone() if _shares_memory(y, logits) else y


@torch.library.custom_op("gumbelkit::gumbel_softmax_hard", mutates_args=(), tags=(torch.Tag.flexible_layout,))
def _gs_op_hard(logits: torch.Tensor, seed: torch.Tensor, tau: float, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(one_hot(argmax(logits + g)) in the logits' dtype, softmax((logits + g) / tau) in the compute dtype)."""
    out, y = _gs_outputs(logits, seed, tau, True, dim)
    return out, y


@torch.library.custom_op("gumbelkit::softmax_backward", mutates_args=(), tags=(torch.Tag.flexible_layout,))
def _softmax_backward_op(y: torch.Tensor, grad: torch.Tensor, tau: float, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """y * (grad - <y, grad>) / tau along dim, cast to ``dtype``, laid out like ``y``: the gradient of
    softmax(s / tau) at y (computed in y's memory order, like the forward)."""
    dim = dim % y.dim() if y.dim() else dim
    order = _memory_order(y)
    inverse = sorted(range(len(order)), key=order.__getitem__)
    vdim = order.index(dim) if y.dim() else dim
    g = softmax_grad(y.permute(order).contiguous(), grad.permute(order).contiguous(), vdim)
    g = (g / tau if tau != 1.0 else g).to(dtype)
    return _like(y, g.permute(inverse), dtype)


@_gs_op_soft.register_fake
def _(logits, seed, tau, dim):
    return torch.empty_like(logits, dtype=compute_dtype(logits.dtype))


@_gs_op_hard.register_fake
def _(logits, seed, tau, dim):
    return torch.empty_like(logits), torch.empty_like(logits, dtype=compute_dtype(logits.dtype))


@_softmax_backward_op.register_fake
def _(y, grad, tau, dim, dtype):
    return torch.empty_like(y, dtype=dtype)


def _setup_soft(ctx, inputs, output):
    logits, _seed, tau, dim = inputs
    ctx.save_for_backward(output)
    ctx.tau, ctx.dim, ctx.dtype = tau, dim, logits.dtype


def _setup_hard(ctx, inputs, output):
    logits, _seed, tau, dim = inputs
    ctx.save_for_backward(output[1])
    ctx.tau, ctx.dim, ctx.dtype = tau, dim, logits.dtype
    # the softmax output is only read by the backward: no B x K zero gradient for it, no extra add
    ctx.set_materialize_grads(False)


def _backward_soft(ctx, grad):
    (y,) = ctx.saved_tensors
    return _softmax_backward_op(y, grad, ctx.tau, ctx.dim, ctx.dtype), None, None, None


def _backward_hard(ctx, grad_out, grad_y):
    (y,) = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(y)
    v = grad_out if grad_y is None else grad_out.to(y.dtype) + grad_y
    return _softmax_backward_op(y, v, ctx.tau, ctx.dim, ctx.dtype), None, None, None


_gs_op_soft.register_autograd(_backward_soft, setup_context=_setup_soft)
_gs_op_hard.register_autograd(_backward_hard, setup_context=_setup_hard)


def _compiled_gumbel_softmax(logits: torch.Tensor, tau: float, hard: bool, dim: int) -> torch.Tensor:
    """The sampler as custom ops (for torch.compile): a seed drawn in the graph, one forward op."""
    seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=logits.device)
    if hard:
        return _gs_op_hard(logits, seed, tau, dim)[0]
    y = _gs_op_soft(logits, seed, tau, dim)
    return y if y.dtype == logits.dtype else y.to(logits.dtype)
