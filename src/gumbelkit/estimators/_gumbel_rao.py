"""Gumbel-Rao: the straight-through Gumbel-Softmax gradient Rao-Blackwellised over the noise."""

from __future__ import annotations

import torch

from .._policy import compute_dtype
from .._sampling import (
    _SHIFT_ABOVE,
    _needs_grad,
    gumbel_argmax,
    log_exp_noise,
    noise_plan,
    one_hot_like,
    one_hot_straight_through,
    per_class_tau,
    prepare_tau,
    tempered_core,
    theta_shift,
)
from .._validation import (
    Tau,
    check_generator,
    check_positive_int,
    check_sample_args_scale,
)
from ._registry import OptionSpec, register

__all__ = ["conditional_gumbel", "gumbel_rao_estimator"]


def conditional_gumbel(logits: torch.Tensor, index: torch.Tensor, k: int, dim: int, *, generator=None) -> torch.Tensor:
    r"""k draws of theta + g, g ~ Gumbel, conditioned on argmax(theta + g) = index.

    Math (E ~ Exp(1), Z = sum_i exp(theta_i), D the sampled class):
    theta_D + g_D = log Z - log E_D; for i != D: theta_i + g_i = -log(E_i exp(-theta_i) + E_D / Z).
    Computed in log-space, -logaddexp(log E_i - theta_i, log E_D - log Z), so that large
    |theta| cannot overflow exp(-theta_i); masked classes (theta_i = -inf) come out -inf.
    The draws are equivariant in theta: conditional_gumbel(theta - c) = conditional_gumbel(theta) - c,
    and passing theta shifted to a row max of 0 keeps the noise from being rounded away for large theta.

    Args:
        logits: (..., K, ...) logits, detached.
        index: argmax positions, keepdim layout along ``dim``.
        k: number of conditional draws (a new leading dimension).

    Returns:
        Tensor of shape (k, *logits.shape) in the compute dtype, no gradient.
    """
    check_generator(generator, logits.device)
    k = check_positive_int(k, "k")
    theta = logits.detach().to(compute_dtype(logits.dtype))
    log_e = log_exp_noise((k,) + tuple(theta.shape), generator, theta.device, theta.dtype)
    d = dim + 1
    idx = index.unsqueeze(0).expand((k,) + tuple(index.shape))
    log_z = torch.logsumexp(theta, dim, keepdim=True).unsqueeze(0)
    log_e_d = log_e.gather(d, idx)
    top = log_z - log_e_d
    others = -torch.logaddexp(log_e - theta.unsqueeze(0), log_e_d - log_z)
    return others.scatter(d, idx, top)


@register(
    "gumbel_rao",
    one_hot=True,
    relaxed=True,
    options=(
        OptionSpec("k", int, 10, minimum=1, help="conditional noise draws per sample (memory grows as k x logits)"),
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

    Args:
        logits: unnormalised log-probabilities.
        tau: temperature > 0 (float or tensor broadcastable to ``logits``).
        dim: the category dimension.
        generator: optional ``torch.Generator``.
        k: number of conditional noise draws (default 10); memory grows as k x logits.

    Examples:
        >>> import torch, gumbelkit as gk
        >>> y = gk.sample(torch.randn(4, 6, requires_grad=True), "gumbel_rao", tau=0.5, k=20)
        >>> y.sum(-1)
        tensor([1., 1., 1., 1.], grad_fn=<SumBackward1>)

    Reference: Paulus, Maddison, Krause, "Rao-Blackwellizing the Straight-Through Gumbel-Softmax
    Gradient Estimator", ICLR 2021.
    """
    dim, tau, row_max, max_abs = check_sample_args_scale(logits, tau, dim, generator)
    k = check_positive_int(k, "k")
    cdt = compute_dtype(logits.dtype)
    m = theta_shift(row_max, max_abs, cdt)
    index = gumbel_argmax(logits, dim, generator, m)
    if not _needs_grad(logits, tau):
        return one_hot_like(logits, index, dim)
    # For large |theta| shift to a row max of 0 first (the gradient is unchanged: softmax ignores
    # a per-row constant) so that theta + g_j below is formed near 0, where float32 keeps the noise.
    xs = logits.to(cdt) if m is None else logits.to(cdt) - m
    xd = xs.detach()
    cond = conditional_gumbel(xd, index, k, dim, generator=generator)
    # Noise g_j = (theta + g_j) - theta, detached; masked entries get g = 0 so theta + g stays -inf
    # instead of -inf - (-inf) = NaN.
    masked = torch.isneginf(xd)
    noise = torch.where(masked, torch.zeros((), dtype=cdt, device=xd.device), cond - torch.where(masked, 0.0, xd))
    z = xs.unsqueeze(0) + noise
    # |max z| <= max|theta| + log K + |log E|: a float tau needs no second shift unless it is tiny.
    per_class = per_class_tau(tau, z.dim(), dim + 1)
    _, post = noise_plan(None, _SHIFT_ABOVE if m is None else 0.0, tau, cdt, per_class)
    soft = tempered_core(z, prepare_tau(tau, cdt), dim + 1, post=post, per_class=per_class).mean(0)
    return one_hot_straight_through(soft, index, dim).to(logits.dtype)
