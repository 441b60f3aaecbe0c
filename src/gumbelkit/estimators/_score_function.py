"""Score-function (REINFORCE) estimators: surrogate losses whose gradient is the estimator."""

from __future__ import annotations

import numbers

import torch

from .._validation import check_dtype, check_logits, shape_str

__all__ = ["reinforce_surrogate", "categorical_log_prob", "MovingAverageBaseline"]


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
    dim = check_logits(logits, dim)
    if value.dtype.is_floating_point:
        if value.shape != logits.shape:
            raise ValueError(
                f"expected a one-hot value of shape {shape_str(logits.shape)}, got {shape_str(value.shape)}"
            )
        index = value.argmax(dim)
    else:
        index = value
    lp = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim)
    return lp.gather(dim, index.unsqueeze(dim)).squeeze(dim)


def reinforce_surrogate(
    losses: torch.Tensor,
    log_probs: torch.Tensor,
    *,
    baseline="loo",
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

    Example:
        >>> surrogate = reinforce_surrogate(losses, log_probs)   # losses: (n, batch)
        >>> surrogate.sum().backward()

    Reference: Williams, 1992; Kool, van Hoof, Welling, "Buy 4 REINFORCE Samples, Get a Baseline
    for Free!", ICLR 2019 workshop (leave-one-out baseline).
    """
    check_dtype(losses, "losses")
    check_dtype(log_probs, "log_probs")
    if losses.shape != log_probs.shape:
        raise ValueError(
            f"expected losses and log_probs of the same shape, got {shape_str(losses.shape)} and {shape_str(log_probs.shape)}"
        )
    if losses.dim() == 0:
        raise ValueError("expected losses with a sample dimension, got a 0-d tensor")
    dim = dim % losses.dim()
    n = losses.shape[dim]
    f = losses.detach()
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(f).all()):
        raise ValueError(f"expected finite losses, got {int((~torch.isfinite(f)).sum())} non-finite entries")
    if isinstance(baseline, str):
        if baseline == "loo":
            if n < 2:
                raise ValueError(f"expected at least 2 samples along dim={dim} for the leave-one-out baseline, got {n}")
            b = (f.sum(dim, keepdim=True) - f) / (n - 1)
        elif baseline == "none":
            b = torch.zeros((), dtype=f.dtype, device=f.device)
        else:
            raise ValueError(f"expected baseline in ('loo', 'none') or a tensor, got {baseline!r}")
    elif isinstance(baseline, torch.Tensor):
        b = baseline.detach().to(f)
    elif isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        b = torch.as_tensor(float(baseline), dtype=f.dtype, device=f.device)
    else:
        raise TypeError(f"expected baseline to be 'loo', 'none', a float or a tensor, got {type(baseline).__name__}")
    score = log_probs - log_probs.detach()  # value 0, gradient grad log q
    return (losses + (f - b) * score).mean(dim)


class MovingAverageBaseline:
    r"""Exponential moving average of the mean loss, a simple REINFORCE baseline.

    Math: b <- decay * b + (1 - decay) * mean(f). Call :meth:`value` *before* :meth:`update` with
    the current batch, so the baseline does not depend on the samples it is applied to.

    Example:
        >>> base = MovingAverageBaseline(0.9)
        >>> surrogate = reinforce_surrogate(losses, log_probs, baseline=base.value(losses))
        >>> base.update(losses)
    """

    def __init__(self, decay: float = 0.9):
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"expected 0 <= decay < 1, got {decay}")
        self.decay = float(decay)
        self.mean: float | None = None

    def value(self, losses: torch.Tensor) -> torch.Tensor:
        m = 0.0 if self.mean is None else self.mean
        return torch.as_tensor(m, dtype=losses.dtype, device=losses.device)

    def update(self, losses: torch.Tensor) -> None:
        cur = float(losses.detach().mean())
        self.mean = cur if self.mean is None else self.decay * self.mean + (1 - self.decay) * cur

    def state_dict(self) -> dict:
        return {"decay": self.decay, "mean": self.mean}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.mean = state["mean"]
