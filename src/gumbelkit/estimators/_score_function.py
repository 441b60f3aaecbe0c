"""Score-function (REINFORCE) estimators: surrogate losses whose gradient is the estimator."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .._core.policy import skip_value_checks
from .._core.validation import (
    check_dtype,
    check_generator,
    check_logits,
    shape_str,
)
from .._sampling import gumbel_max
from ..errors import GumbelkitDimError, GumbelkitTypeError, GumbelkitValueError
from ._registry import OptionSpec, register

__all__ = ["MovingAverageBaseline", "categorical_log_prob", "reinforce_objective", "reinforce_surrogate"]


def categorical_log_prob(logits: torch.Tensor, value: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""log Categorical(value | softmax(logits)) for a one-hot ``value`` (or an index tensor).

    Uses a gather of log_softmax at the chosen index instead of ``(value * log_softmax).sum``:
    a masked class has log-probability -inf and 0 * -inf would be NaN.

    Args:
        logits: (..., K, ...) logits.
        value: one-hot tensor shaped like ``logits``, or int64 indices shaped like logits without ``dim``.
        dim: category dimension.

    Returns:
        Log-probabilities shaped like ``logits`` without ``dim``.
    """
    fn = "categorical_log_prob"
    dim = check_logits(logits, dim, fn=fn)
    if not isinstance(value, torch.Tensor):
        raise GumbelkitTypeError(
            f"{fn}: expected value to be a torch.Tensor (one-hot or integer indices), got {type(value).__name__}"
        )
    if value.dtype == torch.bool or value.dtype.is_complex:
        raise GumbelkitTypeError(
            f"{fn}: expected value with a floating (one-hot) or integer (index) dtype, got {value.dtype}"
        )
    K = logits.shape[dim]
    check = not skip_value_checks() and value.numel() > 0
    if value.dtype.is_floating_point:
        if value.shape != logits.shape:
            raise GumbelkitValueError(
                f"{fn}: expected a one-hot value of shape {shape_str(logits.shape)}, got {shape_str(value.shape)}"
            )
        if check:
            v = value.detach()
            # argmax of anything that is not exactly one-hot (a relaxed sample, a float index)
            # would silently pick some class: refuse it
            if not bool(((v == 0) | (v == 1)).all() & (v.sum(dim) == 1).all()):
                raise GumbelkitValueError(
                    f"{fn}: expected a one-hot value along dim={dim} (entries 0 or 1, exactly one 1 per row) of shape "
                    f"{shape_str(value.shape)}, got entries in [{float(v.min())}, {float(v.max())}] and row sums in "
                    f"[{float(v.sum(dim).min())}, {float(v.sum(dim).max())}]"
                )
        index = value.argmax(dim)
    else:
        expected = logits.shape[:dim] + logits.shape[dim + 1 :]
        if value.shape != expected:
            raise GumbelkitValueError(
                f"{fn}: expected integer indices of shape {shape_str(expected)} (logits of shape "
                f"{shape_str(logits.shape)} without dim={dim}), got {shape_str(value.shape)}"
            )
        if check:
            lo, hi = (int(t) for t in torch.aminmax(value.detach()))
            if lo < 0 or hi >= K:
                raise GumbelkitValueError(
                    f"{fn}: expected indices in [0, {K - 1}] (K = {K} classes along dim={dim}), got values in [{lo}, {hi}]"
                )
        index = value.long()
    lp = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim)
    return lp.gather(dim, index.unsqueeze(dim)).squeeze(dim)


def reinforce_surrogate(
    losses: torch.Tensor,
    log_probs: torch.Tensor,
    *,
    baseline: str | float | torch.Tensor = "loo",
    dim: int = 0,
) -> torch.Tensor:
    r"""Surrogate loss whose gradient is the REINFORCE estimate (plus any pathwise gradient of the losses).

    Math: for n samples z_i with losses f_i and log-probabilities log q(z_i),
    surrogate = (1/n) sum_i [ f_i + (f_i - b_i) * (log q(z_i) - stopgrad(log q(z_i))) ].
    Its value is the mean loss; its gradient is (1/n) sum_i [grad f_i + (f_i - b_i) grad log q(z_i)].
    With ``baseline="loo"`` b_i = (sum_{j != i} f_j) / (n - 1) (leave-one-out, needs n >= 2),
    which does not depend on z_i, so the estimate stays unbiased.

    Args:
        losses: per-sample losses, samples along ``dim`` (f_i may depend on parameters).
        log_probs: log q(z_i) of the sampled values, same shape as ``losses``.
        baseline: ``"loo"``, ``"none"``, or a tensor/float b (detached; e.g. a moving average
            from :class:`MovingAverageBaseline`) broadcastable to ``losses``.
        dim: the sample dimension, averaged out.

    Returns:
        The surrogate, ``losses`` with ``dim`` reduced by the mean.

    Examples:
        >>> import torch, gumbelkit as gk
        >>> logits = torch.zeros(8, 3, requires_grad=True)
        >>> z = gk.gumbel_max(logits.expand(4, 8, 3), generator=torch.Generator().manual_seed(0))  # n = 4 draws
        >>> losses = (z == 1).float()                                    # (n, batch): f(z) = [z == 1]
        >>> log_probs = gk.categorical_log_prob(logits.expand(4, 8, 3), z)
        >>> surrogate = gk.reinforce_surrogate(losses, log_probs)       # (batch,)
        >>> surrogate.sum().backward()
        >>> logits.grad.shape
        torch.Size([8, 3])

    Reference: Williams, 1992; Kool, van Hoof, Welling, "Buy 4 REINFORCE Samples, Get a Baseline
    for Free!", ICLR 2019 workshop (leave-one-out baseline).
    """
    fn = "reinforce_surrogate"
    check_dtype(losses, "losses", fn)
    check_dtype(log_probs, "log_probs", fn)
    if losses.shape != log_probs.shape:
        raise GumbelkitValueError(
            f"{fn}: expected losses and log_probs of the same shape, got {shape_str(losses.shape)} and {shape_str(log_probs.shape)}"
        )
    nd = losses.dim()
    if nd == 0:
        raise GumbelkitValueError(f"{fn}: expected losses with a sample dimension, got a 0-d tensor")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise GumbelkitTypeError(f"{fn}: expected dim to be an int, got {type(dim).__name__}")
    if not -nd <= dim < nd:
        raise GumbelkitDimError(
            f"{fn}: expected dim in [{-nd}, {nd - 1}] for losses of shape {shape_str(losses.shape)}, got {dim}"
        )
    dim = int(dim) % nd
    n = losses.shape[dim]
    if n == 0:
        raise GumbelkitValueError(
            f"{fn}: expected at least one sample along dim={dim}, got losses of shape {shape_str(losses.shape)}"
        )
    f = losses.detach()
    if isinstance(baseline, str):
        if baseline == "loo":
            if n < 2:
                raise GumbelkitValueError(
                    f"{fn}: expected at least 2 samples along dim={dim} for the leave-one-out baseline, got {n}"
                )
            b = (f.sum(dim, keepdim=True) - f) / (n - 1)
        elif baseline == "none":
            b = torch.zeros((), dtype=f.dtype, device=f.device)
        else:
            raise GumbelkitValueError(f"{fn}: expected baseline in ('loo', 'none') or a tensor, got {baseline!r}")
    elif isinstance(baseline, torch.Tensor):
        try:
            shape = torch.broadcast_shapes(baseline.shape, f.shape)
        except RuntimeError:
            shape = None
        if shape != f.shape:
            raise GumbelkitValueError(
                f"{fn}: expected a baseline broadcastable to losses of shape {shape_str(f.shape)}, "
                f"got shape {shape_str(baseline.shape)}"
            )
        b = baseline.detach().to(f)
    elif isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        if not math.isfinite(float(baseline)):
            raise GumbelkitValueError(f"{fn}: expected a finite baseline, got {float(baseline)}")
        b = torch.as_tensor(float(baseline), dtype=f.dtype, device=f.device)
    else:
        raise GumbelkitTypeError(
            f"{fn}: expected baseline to be 'loo', 'none', a float or a tensor, got {type(baseline).__name__}"
        )
    if not skip_value_checks():
        lp = log_probs.detach()
        # One host sync for all three: a NaN / inf anywhere would make the surrogate's gradient NaN.
        ok = torch.isfinite(f).all() & torch.isfinite(lp).all()
        if isinstance(baseline, torch.Tensor):
            ok = ok & torch.isfinite(b).all()
        if not bool(ok):
            if not bool(torch.isfinite(f).all()):
                raise GumbelkitValueError(
                    f"{fn}: expected finite losses, got {int((~torch.isfinite(f)).sum())} non-finite entries"
                )
            if not bool(torch.isfinite(lp).all()):
                raise GumbelkitValueError(
                    f"{fn}: expected finite log_probs (a sampled value always has a finite log-probability), got "
                    f"{int(torch.isnan(lp).sum())} NaN and {int(torch.isinf(lp).sum())} infinite entries "
                    f"in log_probs of shape {shape_str(lp.shape)}"
                )
            raise GumbelkitValueError(
                f"{fn}: expected a finite baseline, got {int((~torch.isfinite(b)).sum())} non-finite entries"
            )
    score = log_probs - log_probs.detach()  # value 0, gradient grad log q
    return (losses + (f - b) * score).mean(dim)


class MovingAverageBaseline:
    r"""Exponential moving average of the mean loss, a simple REINFORCE baseline.

    Math: b <- decay * b + (1 - decay) * mean(f). Call :meth:`value` *before* :meth:`update` with
    the current batch, so the baseline does not depend on the samples it is applied to.

    Examples:
        >>> import torch, gumbelkit as gk
        >>> base = gk.MovingAverageBaseline(0.9)
        >>> losses, log_probs = torch.tensor([[1.0, 3.0]]), torch.zeros(1, 2, requires_grad=True)
        >>> surrogate = gk.reinforce_surrogate(losses, log_probs, baseline=base.value(losses))
        >>> base.update(losses)
        >>> base.mean
        2.0
    """

    def __init__(self, decay: float = 0.9):
        self.decay = self._check_decay(decay)
        self.mean: float | None = None

    @staticmethod
    def _check_decay(decay) -> float:
        try:
            d = float(decay)
        except (TypeError, ValueError):
            raise GumbelkitTypeError(
                f"MovingAverageBaseline: expected decay to be a float, got {type(decay).__name__}"
            ) from None
        if not 0.0 <= d < 1.0:  # a chained comparison is False for NaN, so NaN is refused too
            raise GumbelkitValueError(f"MovingAverageBaseline: expected 0 <= decay < 1, got {decay}")
        return d

    def value(self, losses: torch.Tensor) -> torch.Tensor:
        m = 0.0 if self.mean is None else self.mean
        return torch.as_tensor(m, dtype=losses.dtype, device=losses.device)

    def update(self, losses: torch.Tensor) -> None:
        """Fold mean(losses) into the average; non-finite or empty losses raise, leaving the state unchanged."""
        if isinstance(losses, torch.Tensor):
            if losses.numel() == 0:
                raise GumbelkitValueError(
                    f"MovingAverageBaseline.update: expected at least one loss, got an empty tensor of shape {shape_str(losses.shape)}"
                )
            cur = float(losses.detach().float().mean())
        elif isinstance(losses, numbers.Real) and not isinstance(losses, bool):
            cur = float(losses)
        else:
            raise GumbelkitTypeError(
                f"MovingAverageBaseline.update: expected losses to be a tensor or a float, got {type(losses).__name__}"
            )
        # One NaN would poison the average for good (every later value stays NaN).
        if not math.isfinite(cur):
            raise GumbelkitValueError(f"MovingAverageBaseline.update: expected finite losses, got a mean of {cur}")
        self.mean = cur if self.mean is None else self.decay * self.mean + (1 - self.decay) * cur

    def state_dict(self) -> dict:
        return {"decay": self.decay, "mean": self.mean}

    def load_state_dict(self, state: dict) -> None:
        decay = self._check_decay(state["decay"])
        mean = state["mean"]
        if mean is not None:
            mean = float(mean)
            if not math.isfinite(mean):
                raise GumbelkitValueError(
                    f"MovingAverageBaseline.load_state_dict: expected a finite mean in the state, got {mean}"
                )
        self.decay, self.mean = decay, mean


@register(
    "reinforce",
    one_hot=True,
    uses_tau=False,
    kind="score_function",
    options=(OptionSpec("n", int, 4, minimum=2, help="samples per estimate, for the leave-one-out baseline"),),
    evaluations_option="n",
    reference="Williams, 1992; Kool, van Hoof, Welling, Buy 4 REINFORCE Samples, Get a Baseline for Free!, 2019",
)
def reinforce_objective(
    logits: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    dim: int = -1,
    generator: torch.Generator | None = None,
    n: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""REINFORCE with n samples and the leave-one-out baseline, as a surrogate objective.

    Math: z_1..z_n ~ Categorical(softmax(logits)) (one-hot along ``dim``, drawn by Gumbel-Max),
    f_i = loss_fn(z_i), log q(z_i) summed over every categorical variable that one loss covers;
    the surrogate is :func:`reinforce_surrogate` (f, log q, baseline="loo"): its value is the mean
    loss and its gradient the unbiased estimate (1/n) sum_i [grad f_i + (f_i - b_i) grad log q(z_i)].

    Args:
        logits: (..., K, ...) logits; all variables are independent.
        loss_fn: maps the samples, shape (n, *logits.shape), to losses of shape (n, *batch) where
            ``batch`` is a leading part of ``logits.shape`` without ``dim``; the log-probabilities
            of the remaining (trailing) variables are summed into each loss's sample.
        dim: the category dimension.
        generator: optional ``torch.Generator``.
        n: samples per estimate, >= 2.

    Returns:
        (surrogate of shape ``batch``, losses of shape (n, *batch)).

    Examples:
        >>> import torch, gumbelkit as gk
        >>> logits = torch.zeros(6, 2, 3, requires_grad=True)           # 6 examples, 2 variables, 3 classes
        >>> target = torch.tensor([1.0, 0.0, 0.0])
        >>> loss_fn = lambda z: ((z - target) ** 2).sum((-1, -2))         # (n, 6, 2, 3) -> (n, 6)
        >>> surrogate, losses = gk.estimators.reinforce_objective(logits, loss_fn, n=4)
        >>> surrogate.shape, losses.shape
        (torch.Size([6]), torch.Size([4, 6]))
        >>> surrogate.sum().backward()

    Reference: Williams, 1992; Kool, van Hoof, Welling, ICLR 2019 workshop.
    """
    fn = "reinforce_objective"
    dim = check_logits(logits, dim, fn=fn)
    check_generator(generator, logits.device, fn)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise GumbelkitValueError(f"{fn}: expected n to be an integer >= 2, got {n!r}")
    n = int(n)
    rep = logits.unsqueeze(0).expand(n, *logits.shape)
    index = gumbel_max(rep, dim=dim + 1, generator=generator)  # (n, *shape without dim)
    z = F.one_hot(index, logits.shape[dim]).to(logits.dtype)
    if dim != logits.dim() - 1:
        z = z.movedim(-1, dim + 1)
    losses = loss_fn(z)
    log_q = categorical_log_prob(rep, index, dim=dim + 1)
    if (
        not isinstance(losses, torch.Tensor)
        or losses.dim() < 1
        or tuple(losses.shape) != tuple(log_q.shape[: losses.dim()])
    ):
        got = shape_str(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise GumbelkitValueError(
            f"{fn}: expected loss_fn to return losses of a leading shape of {shape_str(log_q.shape)} "
            f"(n samples first), got {got}"
        )
    if log_q.dim() > losses.dim():
        # one sample of the loss covers every trailing variable: its log-probability is their sum
        log_q = log_q.sum(tuple(range(losses.dim(), log_q.dim())))
    return reinforce_surrogate(losses, log_q, baseline="loo", dim=0), losses
