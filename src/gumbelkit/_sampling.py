"""Gumbel-Max, Gumbel-top-k, Gumbel-Softmax and the tempered softmax baseline."""

from __future__ import annotations

import torch

from ._noise import gumbel_noise, log_exponential_noise
from ._validation import (
    Tau,
    check_generator,
    check_logits,
    check_positive_int,
    check_sample_args,
    check_tau,
    compute_dtype,
    shape_str,
    tau_like,
)

__all__ = ["gumbel_max", "gumbel_topk", "gumbel_softmax", "tempered_softmax"]


# --------------------------------------------------------------------------- autograd pieces


class _LeanSoftmax(torch.autograd.Function):
    """softmax(x) along dim, optionally emitting a one-hot forward; saves only y = softmax(x).

    Backward (for either forward): grad_x = y * (v - <y, v>). Autograd's own softmax saves the
    same y, but the straight-through composition ``hard - y.detach() + y`` adds two more
    B x K buffers and is not exactly one-hot in floating point ((1 - y) + y can round to
    1 - ulp). Here the hard forward is a fresh one-hot and only y is kept for the backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, index: torch.Tensor | None):
        y = torch.softmax(x, dim)
        ctx.dim = dim
        ctx.save_for_backward(y)
        if index is None:
            return y
        return torch.zeros_like(y).scatter_(dim, index, 1.0)

    @staticmethod
    def backward(ctx, v: torch.Tensor):
        (y,) = ctx.saved_tensors
        return _softmax_grad(y, v, ctx.dim), None, None


def _softmax_grad(y: torch.Tensor, v: torch.Tensor, dim: int, *, overwrite_y: bool = False) -> torch.Tensor:
    """y * (v - <y, v>) along dim: ATen's fused softmax backward (one pass instead of four).

    With ``overwrite_y`` (for a private saved y that no one else reads) the result is written over
    y -- the kernel finishes each row's <y, v> before writing it -- so the backward allocates no
    B x K buffer. Only on CPU (the kernel checked), outside compilation, and when the graph is not
    retained (a second backward would read the overwritten y).
    """
    v = v.to(y.dtype).contiguous()
    if (
        overwrite_y
        and y.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch._C._autograd._get_current_graph_task_keep_graph()
    ):
        return torch.ops.aten._softmax_backward_data.out(v, y, dim, y.dtype, grad_input=y)
    return torch._softmax_backward_data(v, y, dim, y.dtype)


class _OneHotST(torch.autograd.Function):
    """Forward: one_hot(index) shaped like ``soft``; backward: the identity into ``soft``."""

    @staticmethod
    def forward(ctx, soft: torch.Tensor, index: torch.Tensor, dim: int):
        return torch.zeros_like(soft).scatter_(dim, index, 1.0)

    @staticmethod
    def backward(ctx, v: torch.Tensor):
        return v, None, None


def one_hot_straight_through(soft: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Exactly one-hot forward at ``index`` (keepdim layout), gradient passed to ``soft`` unchanged."""
    return _OneHotST.apply(soft, index, dim)


def one_hot_like(ref: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.zeros_like(ref).scatter_(dim, index, 1.0)


def softmax_st(x: torch.Tensor, dim: int, index: torch.Tensor | None) -> torch.Tensor:
    """softmax(x) (index None) or one_hot(index) with the softmax(x) gradient, saving one buffer."""
    return _LeanSoftmax.apply(x, dim, index)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


# --------------------------------------------------------------------------- internals (no checks)


def perturbed_logits(logits: torch.Tensor, generator=None) -> torch.Tensor:
    """theta + g in the compute dtype (float32 for half inputs). Masked (-inf) entries stay -inf."""
    cdt = compute_dtype(logits.dtype)
    g = gumbel_noise(logits.shape, generator=generator, device=logits.device, dtype=cdt)
    return logits.to(cdt) + g


def gumbel_argmax(logits: torch.Tensor, dim: int, generator=None) -> torch.Tensor:
    """argmax(theta + g) along dim, keepdim layout: the index of an exact categorical sample."""
    return perturbed_logits(logits.detach(), generator).argmax(dim, keepdim=True)


class _GumbelSoftmax(torch.autograd.Function):
    """Noise, perturbation, softmax and (hard) one-hot in one node that saves only y.

    Forward, in one fresh buffer: log E (E ~ Exp(1), drawn exactly like :func:`gumbel_noise`),
    then z = theta - log E = theta + g in place, then z / tau in place (skipped for tau = 1), then
    y = softmax(z); the hard output is a new exact one-hot. Compared with composing autograd ops
    this drops the negation pass, two B x K temporaries and the autograd bookkeeping; the backward
    is ATen's fused softmax backward divided by tau. Temperatures that require grad do not come here.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tau, hard: bool, dim: int, generator):
        cdt = compute_dtype(logits.dtype)
        z = log_exponential_noise(logits.shape, generator=generator, device=logits.device, dtype=cdt)
        torch.sub(logits, z, out=z)  # theta + g, written over the noise buffer
        index = z.argmax(dim, keepdim=True) if hard else None
        unit_tau = not isinstance(tau, torch.Tensor) and tau == 1.0
        if not unit_tau:
            z.div_(tau)
        y = torch.softmax(z, dim)
        del z
        ctx.save_for_backward(y)
        ctx.dim, ctx.tau, ctx.unit_tau, ctx.in_dtype, ctx.hard = dim, tau, unit_tau, logits.dtype, hard
        if hard:
            return torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device).scatter_(dim, index, 1.0)
        return y if y.dtype == logits.dtype else y.to(logits.dtype)

    @staticmethod
    def backward(ctx, v: torch.Tensor):
        (y,) = ctx.saved_tensors
        # hard: y is private (the output is the one-hot), so the gradient may overwrite it
        gx = _softmax_grad(y, v, ctx.dim, overwrite_y=ctx.hard)
        if not ctx.unit_tau:
            gx.div_(ctx.tau)  # dz/dtheta = 1/tau
        return gx.to(ctx.in_dtype), None, None, None, None


def relaxed_unchecked(logits: torch.Tensor, tau: Tau, hard: bool, dim: int, generator=None) -> torch.Tensor:
    if isinstance(tau, torch.Tensor) and tau.requires_grad and torch.is_grad_enabled():
        # Learnable temperature: divide outside the custom function so that tau receives its
        # gradient from autograd, while the function still saves only y.
        z = perturbed_logits(logits, generator)
        index = z.detach().argmax(dim, keepdim=True) if hard else None
        return softmax_st(z / tau_like(tau, z), dim, index).to(logits.dtype)
    if hard and not _needs_grad(logits):
        return one_hot_like(logits, gumbel_argmax(logits, dim, generator), dim)
    t = tau_like(tau.detach(), logits.new_empty((), dtype=compute_dtype(logits.dtype))) if isinstance(tau, torch.Tensor) else tau
    return _GumbelSoftmax.apply(logits, t, hard, dim, generator)


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
    dim = check_logits(logits, dim)
    check_generator(generator, logits.device)
    return perturbed_logits(logits.detach(), generator).argmax(dim)


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
    dim = check_logits(logits, dim)
    check_generator(generator, logits.device)
    k = check_positive_int(k, "k")
    K = logits.shape[dim]
    if k > K:
        raise ValueError(f"expected k <= {K} (categories along dim={dim} of shape {shape_str(logits.shape)}), got {k}")
    if not torch.compiler.is_compiling():
        n_free = int(torch.isfinite(logits.detach()).sum(dim).min())
        if k > n_free:
            raise ValueError(f"expected k <= {n_free} (the fewest unmasked classes in a row), got {k}")
    return perturbed_logits(logits.detach(), generator).topk(k, dim, sorted=True).indices


def gumbel_softmax(
    logits: torch.Tensor,
    tau: Tau = 1.0,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Gumbel-Softmax (Concrete) sample; a safe drop-in for ``torch.nn.functional.gumbel_softmax``.

    Math: y = softmax((theta + g) / tau), g ~ Gumbel(0, 1). With ``hard=True`` the forward value is
    one_hot(argmax(theta + g)) -- an exact categorical sample, exactly one-hot -- and the backward is
    the gradient of y (straight-through Gumbel-Softmax).

    Unlike the built-in: noise is drawn in float32 even for fp16/bf16 logits and is always finite;
    masked (-inf) classes get exactly zero weight and zero gradient; NaN logits, all-masked rows,
    tau <= 0 and integer dtypes raise; ``generator`` makes it reproducible; only y is saved for
    backward (one buffer), and the noise costs 32 random bits plus two logs instead of ``exponential_``.

    Args:
        logits: unnormalised log-probabilities (float16, bfloat16, float32, float64).
        tau: temperature > 0, a float or a tensor broadcastable to ``logits`` (may require grad).
        hard: one-hot forward with the soft gradient.
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
    dim, tau = check_sample_args(logits, tau, dim, generator)
    return relaxed_unchecked(logits, tau, bool(hard), dim, generator)


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
    dim = check_logits(logits, dim)
    tau = check_tau(tau, logits)
    cdt = compute_dtype(logits.dtype)
    x = logits.to(cdt)
    return softmax_st(x / tau_like(tau, x), dim, None).to(logits.dtype)
