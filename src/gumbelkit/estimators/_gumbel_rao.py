"""Gumbel-Rao: the straight-through Gumbel-Softmax gradient Rao-Blackwellised over the noise.

Cost. The forward is ST-Gumbel's (one noise draw, one argmax): the estimator's value is the
one-hot sample, and the k conditional draws only matter for the backward. The backward makes them
one at a time and accumulates the soft gradient draw by draw, so its peak memory does not grow
with k, and nothing B x K besides the logits is held between forward and backward. (Batching
several draws per pass measured slower, through the copies that batch them, and made the rounding
of the result depend on the batch size.) Each draw has its own noise stream: one 64-bit word drawn
from the caller's generator seeds draw j's generator through the SplitMix64 finaliser, so the same
generator state gives the same draws and the same gradient, and draw j is the same in the
unbatched formula (:func:`conditional_gumbel`) used under ``torch.func`` and ``torch.compile``.
On CUDA (where the Triton kernels run) the word would have to be read back to the host: there the
caller's generator draws a 128-bit key into a device tensor instead, and draw j is the counter
noise of stream j under that key (one kernel per draw), with the same properties and no host read.
"""

from __future__ import annotations

import torch

from .._core import gpu as _gpu
from .._core.autograd import one_hot_straight_through, softmax_grad, tempered_core
from .._core.numerics import (
    SHIFT_ABOVE,
    gumbel_argmax,
    log_exp_noise,
    needs_grad,
    noise_plan,
    one_hot,
    one_hot_like,
    per_class_tau,
    prepare_tau,
    theta_shift,
)
from .._core.policy import compiling, compute_dtype, functorch_active, in_vmap
from .._core.validation import (
    Tau,
    check_generator,
    check_positive_int,
    check_sample_args_scale,
    mark_bad_rows,
)
from ._registry import OptionSpec, register

__all__ = ["conditional_gumbel", "gumbel_rao_estimator"]

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64's finaliser (Steele, Lea, Flood, OOPSLA 2014): decorrelates consecutive seeds."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _draw_base(generator, ref: torch.Tensor) -> int | torch.Tensor:
    """The key of all k draws, from ``generator`` (or the device's default RNG).

    Where the counter-noise kernel runs (CUDA), a 128-bit key in a device tensor: nothing is read
    to the host, and a CUDA graph replays fresh draws. Elsewhere one 64-bit word on the host.
    """
    if _gpu.use_counter_noise(ref):
        return _gpu.draw_key(generator, ref.device)
    dev = torch.device(generator.device) if generator is not None else ref.device
    return int(torch.empty(1, dtype=torch.int64, device=dev).random_(generator=generator).item()) & _MASK64


def _draw_log_e(base: int | torch.Tensor, j0: int, j1: int, shape, device, dtype) -> torch.Tensor:
    """log E for draws j0..j1-1, shape (j1 - j0, *shape).

    Draw j: with a device key, the counter noise of its stream c3 + j (see
    :func:`gumbelkit._core.gpu.log_exponential`); with a host word, its own generator seeded
    with mix(base + j).
    """
    parts = []
    for j in range(j0, j1):
        if isinstance(base, torch.Tensor):
            parts.append(_gpu.log_exponential(tuple(shape), base, j, dtype))
        else:
            gen = torch.Generator(device=device).manual_seed(_mix64(base + j))
            parts.append(log_exp_noise(tuple(shape), gen, device, dtype))
    return parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts)


def _condition(theta: torch.Tensor, log_z: torch.Tensor, index: torch.Tensor, log_e: torch.Tensor, dim: int):
    """theta + g conditioned on argmax = index, per draw, from a private log E buffer (overwritten).

    -logaddexp(a, b) with a = log E_i - theta_i and b = log E_D - log Z is written as
    -(b + softplus(a - b)), softplus(t) = max(t, 0) + log1p(exp(-|t|)): exact for every t (exp
    never overflows) in vectorised passes (ATen's CPU logaddexp and softplus measured 25-100 ns
    per element). A masked class (theta_i = -inf) has t = inf: log1p(exp(-inf)) = 0 and the
    result is -inf.
    """
    d = dim + 1
    idx = index.unsqueeze(0).expand((log_e.shape[0],) + tuple(index.shape))
    b = log_e.gather(d, idx).sub_(log_z.unsqueeze(0))  # log E_D - log Z, one value per row
    t = log_e.sub_(theta.unsqueeze(0)).sub_(b)  # a - b, in the noise buffer
    tail = t.abs().neg_().exp_().log1p_()
    out = t.clamp_min_(0.0).add_(tail).add_(b).neg_()
    # out of place: under torch.vmap the in-place scatter has no batching rule (a slow fallback)
    return out.scatter(d, idx, b.neg_())  # the sampled class: log Z - log E_D


def _conditional_softmax(theta, log_z, index, log_e, dim: int, tau: float) -> torch.Tensor:
    """softmax((theta + g) / tau) along dim + 1 for conditional draws g, from a private log E buffer.

    With t_i = (log E_i - theta_i) - (log E_D - log Z), theta_i + g_i = -(b + softplus(t_i)) and
    theta_D + g_D = -b, so the row maximum is the sampled class and
    exp((theta_i + g_i - theta_D - g_D) / tau) = exp(-softplus(t_i) / tau) = sigmoid(-t_i)^(1 / tau):
    one sigmoid (and one power for tau != 1) per element instead of logaddexp, exp and a row
    maximum. Every term lies in [0, 1], the sampled class's is exactly 1, so the sum is >= 1 and
    nothing overflows whatever tau is; masked classes (t = inf) give exactly 0.
    """
    d = dim + 1
    idx = index.unsqueeze(0).expand((log_e.shape[0],) + tuple(index.shape))
    b = log_e.gather(d, idx).sub_(log_z.unsqueeze(0))  # log E_D - log Z, one value per row
    e = log_e.sub_(theta.unsqueeze(0)).sub_(b).neg_()  # -t, in the noise buffer
    e.scatter_(d, idx, float("inf")).sigmoid_()  # the sampled class: sigmoid(inf) = 1
    if tau != 1.0:
        e.pow_(1.0 / tau)
    return e.div_(e.sum(d, keepdim=True))


def conditional_gumbel(
    logits: torch.Tensor, index: torch.Tensor, k: int, dim: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""k draws of theta + g, g ~ Gumbel, conditioned on argmax(theta + g) = index.

    Math (E ~ Exp(1), Z = sum_i exp(theta_i), D the sampled class):
    theta_D + g_D = log Z - log E_D; for i != D: theta_i + g_i = -log(E_i exp(-theta_i) + E_D / Z).
    Computed in log-space, -logaddexp(log E_i - theta_i, log E_D - log Z), so that large
    |theta| cannot overflow exp(-theta_i); masked classes (theta_i = -inf) come out -inf.
    The draws are equivariant in theta: conditional_gumbel(theta - c) = conditional_gumbel(theta) - c,
    and passing theta shifted to a row max of 0 keeps the noise from being rounded away for large theta.

    Noise: one 64-bit word is drawn from ``generator``; draw j takes its exact-tail Exp(1) noise
    from a generator seeded with SplitMix64(word + j), so draw j is the same however many draws
    are made at once (under ``torch.vmap`` and ``torch.compile`` all k come from one call instead).
    On CUDA a 128-bit key is drawn into a device tensor instead and draw j is the counter noise of
    stream j under it (no value is read to the host).

    Args:
        logits: (..., K, ...) logits, detached.
        index: argmax positions, keepdim layout along ``dim``.
        k: number of conditional draws (a new leading dimension).
        dim: the category dimension (non-negative).
        generator: optional ``torch.Generator`` (keyword-only).

    Returns:
        Tensor of shape (k, *logits.shape) in the compute dtype, no gradient.

    Examples:
        >>> c = conditional_gumbel(torch.zeros(1, 3), torch.tensor([[2]]), 4, 1,
        ...                        generator=torch.Generator().manual_seed(0))
        >>> c.shape, bool((c.argmax(-1) == 2).all())
        (torch.Size([4, 1, 3]), True)

    Reference: Paulus, Maddison, Krause, "Rao-Blackwellizing the Straight-Through Gumbel-Softmax
    Gradient Estimator", ICLR 2021 (appendix: sampling the conditional Gumbels).
    """
    check_generator(generator, logits.device)
    k = check_positive_int(k, "k")
    theta = logits.detach().to(compute_dtype(logits.dtype))
    log_z = torch.logsumexp(theta, dim, keepdim=True)
    if in_vmap() or compiling():
        # batched / traced random draws must be out-of-place calls without Python integers
        log_e = log_exp_noise((k,) + tuple(theta.shape), generator, theta.device, theta.dtype)
    else:
        base = _draw_base(generator, theta)
        log_e = _draw_log_e(base, 0, k, theta.shape, theta.device, theta.dtype)
    return _condition(theta, log_z, index, log_e, dim)


class _GumbelRaoStraightThrough(torch.autograd.Function):
    """Forward: one_hot(index). Backward: (1/k) sum_j J(softmax((x + g_j) / tau))^T v / tau, draw by draw.

    ``x`` is theta in the compute dtype (shifted to a row max of 0 when large); the conditional
    noise g_j = (theta + g_j) - theta is regenerated in the backward from the 64-bit ``base`` key,
    draw by draw, so only x (an input) and the index are kept between forward and backward.
    Under ``create_graph`` the backward is built from differentiable ops (softmax and ATen's
    differentiable softmax backward) on the saved x, so double backward works.
    """

    @staticmethod
    def forward(x, index, base, k: int, tau: float, dim: int, post: bool, out_dtype):
        return one_hot(x, index, dim, dtype=out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, index, base, k, tau, dim, post, _out_dtype = inputs
        ctx.save_for_backward(x, index)
        ctx.base, ctx.k, ctx.tau, ctx.dim, ctx.post = base, k, tau, dim, post

    @staticmethod
    def backward(ctx, v):
        x, index = ctx.saved_tensors
        k, tau, dim, d = ctx.k, ctx.tau, ctx.dim, ctx.dim + 1
        building = torch.is_grad_enabled()  # create_graph: keep every op differentiable
        theta = x.detach()
        log_z = torch.logsumexp(theta, dim, keepdim=True)
        masked = torch.isneginf(theta)
        theta0 = torch.where(masked, 0.0, theta) if building else None
        v = v.to(x.dtype).unsqueeze(0)
        grad = None
        for j in range(k):  # one draw at a time: memory does not grow with k
            log_e = _draw_log_e(ctx.base, j, j + 1, theta.shape, theta.device, theta.dtype)
            if building:
                z = _condition(theta, log_z, index, log_e, dim)  # theta + g_j, no gradient
                del log_e
                # x + g_j with g_j = (theta + g_j) - theta held fixed (0 at masked classes, where
                # x + g stays -inf): the gradient flows to x through the softmax
                z = x.unsqueeze(0) + torch.where(masked, 0.0, z - theta0)
                if ctx.post:  # tiny tau: top of every row exactly 0 before dividing
                    z = z - z.amax(d, keepdim=True)
                y = torch.softmax(z / tau if tau != 1.0 else z, d)
                del z
            else:
                y = _conditional_softmax(theta, log_z, index, log_e, dim, tau)
                del log_e
            g = softmax_grad(y, v, d, overwrite_y=not building)[0]
            del y
            if grad is None:
                grad = g
            else:
                grad = grad + g if building else grad.add_(g)
            del g
        assert grad is not None  # k >= 1
        scale = k * tau
        return (grad / scale if building else grad.div_(scale)), None, None, None, None, None, None, None


@register(
    "gumbel_rao",
    one_hot=True,
    relaxed=True,
    options=(
        OptionSpec(
            "k",
            int,
            10,
            minimum=1,
            help="conditional noise draws per sample (time grows as k; memory does not: drawn one at a time)",
        ),
    ),
    reference="Paulus, Maddison, Krause, Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient Estimator, ICLR 2021",
)
def gumbel_rao_estimator(
    logits: torch.Tensor, tau: Tau = 1.0, *, dim: int = -1, generator: torch.Generator | None = None, k: int = 10
) -> torch.Tensor:
    r"""Gumbel-Rao: forward one_hot(D), D = argmax(theta + g); backward E[grad of ST-Gumbel | D].

    Math: grad = (1/k) sum_j d softmax((theta + g_j)/tau) / d theta with g_j drawn from the Gumbel
    distribution conditioned on argmax(theta + g_j) = D (the noise held fixed, as in ST-Gumbel), so
    its mean equals the ST-Gumbel gradient's mean and its variance is lower.

    Cost: the forward is ST-Gumbel's; the backward costs about k ST-Gumbel forward+backward passes
    (each draw: conditional noise, softmax, softmax backward) and makes the draws one at a time,
    so peak memory does not grow with k. A tensor ``tau``, ``torch.func`` transforms and
    ``torch.compile`` take the batched formula (the same draws, k x logits memory).

    Args:
        logits: unnormalised log-probabilities.
        tau: temperature > 0 (float or tensor broadcastable to ``logits``).
        dim: the category dimension.
        generator: optional ``torch.Generator``.
        k: number of conditional noise draws (default 10).

    Examples:
        >>> import torch, gumbelkit as gk
        >>> y = gk.sample(torch.randn(4, 6, requires_grad=True), "gumbel_rao", tau=0.5, k=20)
        >>> y.sum(-1)
        tensor([1., 1., 1., 1.], grad_fn=<SumBackward1>)

    Reference: Paulus, Maddison, Krause, "Rao-Blackwellizing the Straight-Through Gumbel-Softmax
    Gradient Estimator", ICLR 2021.
    """
    dim, tau, row_max, max_abs = check_sample_args_scale(logits, tau, dim, generator, fn="sample")
    k = check_positive_int(k, "k", fn="sample")
    cdt = compute_dtype(logits.dtype)
    m = theta_shift(row_max, max_abs, cdt)
    index = gumbel_argmax(logits, dim, generator, m)
    if not needs_grad(logits, tau):
        return mark_bad_rows(one_hot_like(logits, index, dim), logits, row_max, tau)
    # For large |theta| shift to a row max of 0 first (the gradient is unchanged: softmax ignores
    # a per-row constant) so that theta + g_j below is formed near 0, where float32 keeps the noise.
    xs = logits.to(cdt) if m is None else logits.to(cdt) - m
    draw_by_draw = not isinstance(tau, torch.Tensor) and not compiling() and not functorch_active()
    if draw_by_draw:
        ftau = prepare_tau(float(tau), cdt)
        # |max z| <= max|theta| + log K + |log E|: a float tau needs no second shift unless it is tiny
        _, post = noise_plan(None, SHIFT_ABOVE if m is None else 0.0, ftau, cdt, False)
        base = _draw_base(generator, logits)
        args = (xs, index, base, k, float(ftau), dim, bool(post), logits.dtype)
        return mark_bad_rows(_GumbelRaoStraightThrough.apply(*args), logits, row_max, tau)
    xd = xs.detach()
    cond = conditional_gumbel(xd, index, k, dim, generator=generator)
    # Noise g_j = (theta + g_j) - theta, detached; masked entries get g = 0 so theta + g stays -inf
    # instead of -inf - (-inf) = NaN.
    masked = torch.isneginf(xd)
    noise = torch.where(masked, torch.zeros((), dtype=cdt, device=xd.device), cond - torch.where(masked, 0.0, xd))
    z = xs.unsqueeze(0) + noise
    per_class = per_class_tau(tau, z.dim(), dim + 1)
    _, post = noise_plan(None, SHIFT_ABOVE if m is None else 0.0, tau, cdt, per_class)
    soft = tempered_core(z, prepare_tau(tau, cdt), dim + 1, post=post, per_class=per_class).mean(0)
    return mark_bad_rows(one_hot_straight_through(soft, index, dim).to(logits.dtype), logits, row_max, tau)
