"""Decoupled straight-through Gumbel: one temperature for the forward sample, another for the backward."""

from __future__ import annotations

import torch

from .._core import gpu as _gpu
from .._core.autograd import one_hot_straight_through, tempered_core
from .._core.numerics import (
    argmax_index_,
    log_exp_noise,
    needs_grad,
    noise_plan,
    one_hot_like,
    per_class_tau,
    prepare_tau,
)
from .._core.policy import compute_dtype
from .._core.validation import Tau, check_sample_args_scale, mark_bad_rows
from .._sampling import checked_gumbel_softmax
from ._registry import OptionSpec, register

__all__ = ["decoupled_st_gumbel_estimator"]

_TAU_FORWARD = OptionSpec(
    "tau_forward",
    float,
    1.0,
    minimum=0.0,
    open_minimum=True,
    help="forward temperature (> 0): the sample is drawn from Cat(softmax(theta / tau_forward))",
)


def _check_tau_forward(tau_forward) -> float:
    return float(_TAU_FORWARD.check(tau_forward, "decoupled_st_gumbel", where="sample: "))


@register(
    "decoupled_st_gumbel",
    one_hot=True,
    relaxed=True,
    options=(_TAU_FORWARD,),
    reference="Shah, Yan, Mozer, Liu, Improving Discrete Optimisation Via Decoupled Straight-Through "
    "Estimator, arXiv:2410.13331",
)
def decoupled_st_gumbel_estimator(
    logits: torch.Tensor,
    tau: Tau = 1.0,
    *,
    dim: int = -1,
    generator: torch.Generator | None = None,
    tau_forward: float = 1.0,
) -> torch.Tensor:
    r"""Decoupled straight-through Gumbel: forward at ``tau_forward``, backward at ``tau``.

    Math, with one draw g ~ Gumbel(0, 1) per class:

    * forward: D = argmax(theta / tau_f + g), so one_hot(D) is an exact sample of
      Cat(softmax(theta / tau_f)); tau_f > 1 explores more, tau_f < 1 less, tau_f -> 0 is the
      deterministic argmax. (Dividing theta *and* g by tau_f would change nothing: an argmax
      ignores a common positive scale, so the forward temperature scales the logits only.)
    * backward: the straight-through gradient of softmax((theta + g) / tau_b) with the same g,
      tau_b = ``tau`` (float or tensor, which receives its gradient as in ``st_gumbel``).

    With tau_f = 1 this is exactly ``st_gumbel`` at tau_b: the same sample and the same gradient
    for the same generator state. The forward is exactly one-hot. For tau_f != 1 the forward law
    is not Cat(softmax theta): the method trains the model whose samples are drawn at tau_f.

    Args:
        logits: unnormalised log-probabilities.
        tau: backward temperature tau_b > 0 (float or tensor broadcastable to ``logits``).
        dim: the category dimension.
        generator: optional ``torch.Generator``.
        tau_forward: forward temperature tau_f > 0 (a float; default 1.0).

    Returns:
        A one-hot tensor shaped and typed like ``logits``.

    Examples:
        >>> import torch, gumbelkit as gk
        >>> x = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
        >>> y = gk.sample(x, "decoupled_st_gumbel", tau=2.0, tau_forward=1e-6)  # forward = argmax
        >>> y.detach()
        tensor([[1., 0., 0.]])
        >>> y.backward(torch.tensor([[0.0, 1.0, 0.0]]))  # the gradient of softmax((theta + g) / 2)
        >>> bool(x.grad[0, 1] > 0) and abs(float(x.grad.sum())) < 1e-6
        True

    Reference: Shah, Yan, Mozer, Liu, "Improving Discrete Optimisation Via Decoupled
    Straight-Through Estimator", arXiv:2410.13331 (v2; v1 titled "... Decoupled Straight-Through
    Gumbel-Softmax").
    """
    tau_f = _check_tau_forward(tau_forward)
    if tau_f == 1.0:
        # the same computation as st_gumbel, so the two agree to the bit (validated once, in there)
        return checked_gumbel_softmax(logits, tau, True, dim, generator=generator, fn="sample")
    dim, tau, row_max, max_abs = check_sample_args_scale(logits, tau, dim, generator, fn="sample")
    cdt = compute_dtype(logits.dtype)
    if _gpu.use_counter_noise(logits):  # CUDA: the counter noise from a device key (no host read)
        log_e = _gpu.log_exponential(logits.shape, _gpu.draw_key(generator, logits.device), 0, cdt)
    else:
        log_e = log_exp_noise(logits.shape, generator, logits.device, cdt)
    x = logits.detach().to(cdt)
    # (theta - max) / tau_f has a top of exactly 0 and is <= 0 elsewhere: no overflow for any
    # tau_f (a tiny tau_f sends the others to -inf, i.e. the argmax, which is the limit law);
    # masked classes stay -inf and are never drawn.
    top = x.amax(dim, keepdim=True) if row_max is None else row_max.to(cdt)
    index = argmax_index_((x - top) / tau_f - log_e, dim)  # a fresh temporary: may be overwritten
    if not needs_grad(logits, tau):
        return mark_bad_rows(one_hot_like(logits, index, dim), logits, row_max, tau)
    per_class = per_class_tau(tau, logits.dim(), dim)
    m, post = noise_plan(row_max, max_abs, tau, cdt, per_class)
    # tempered_core overwrites log_e (done with it above); the soft value is st_gumbel's
    soft = tempered_core(logits, prepare_tau(tau, cdt), dim, log_e=log_e, m=m, post=post, per_class=per_class)
    return mark_bad_rows(one_hot_straight_through(soft, index, dim).to(logits.dtype), logits, row_max, tau)
