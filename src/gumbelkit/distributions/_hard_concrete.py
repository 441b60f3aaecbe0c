r"""The Hard Concrete distribution (stretched and rectified Binary Concrete) for L0 gates.

Louizos, Welling, Kingma, "Learning Sparse Neural Networks through L0 Regularization", ICLR 2018.
Same conventions as :mod:`gumbelkit.distributions._concrete` (shapes, checks under
``validate_args``, errors named after the class, ``rsample(..., generator=)``).
"""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

import torch
from torch.distributions import Distribution, constraints

from .._core.validation import check_dtype
from ..errors import GumbelkitTypeError, GumbelkitValueError
from ._concrete import (
    _NO_SAMPLE_DIMS,
    _batch_shape,
    _check_param_values,
    _check_temperature_values,
    _Checked,
    _expanded_batch,
    _relaxed_bits,
    _resolve_validate,
    _temperature,
    _torch_checked,
)

__all__ = ["HardConcrete", "check_limits"]


def check_limits(owner: str, limits) -> tuple[float, float]:
    """(gamma, zeta) as floats with gamma < 0 < 1 < zeta, both finite (checked always: no tensor, no sync)."""
    try:
        gamma, zeta = limits
    except (TypeError, ValueError):
        raise GumbelkitTypeError(
            f"{owner}: expected limits to be a pair (gamma, zeta) of floats, got {limits!r}"
        ) from None
    for v in (gamma, zeta):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise GumbelkitTypeError(
                f"{owner}: expected limits to be a pair (gamma, zeta) of floats, got {type(v).__name__} in {limits!r}"
            )
    gamma, zeta = float(gamma), float(zeta)
    if not (math.isfinite(gamma) and math.isfinite(zeta) and gamma < 0.0 and zeta > 1.0):
        raise GumbelkitValueError(
            f"{owner}: expected limits (gamma, zeta) with gamma < 0 < 1 < zeta, both finite, got ({gamma}, {zeta})"
        )
    return gamma, zeta


class HardConcrete(_Checked, Distribution):
    r"""Hard Concrete: a Binary Concrete sample stretched to (gamma, zeta) and clipped to [0, 1].

    Math (log alpha = ``logits``, beta = ``temperature``, (gamma, zeta) = ``limits``):

    * sample: s = sigmoid((L + log alpha) / beta) with L ~ Logistic(0, 1) (the library's noise,
      exact tails), s_bar = s (zeta - gamma) + gamma, z = min(1, max(0, s_bar)). z is exactly 0
      or exactly 1 with positive probability; the gradient flows through the stretch and is 0
      where the clamp is active.
    * P(z != 0) = sigmoid(log alpha - beta log(-gamma / zeta)) (:meth:`prob_nonzero`, the
      expected L0 norm), P(z = 1) = sigmoid(log alpha - beta log((1 - gamma) / (zeta - 1))).
    * cdf: P(z <= v) = sigmoid(beta log((v - gamma) / (zeta - v)) - log alpha) for 0 <= v < 1,
      and 1 for v >= 1.
    * test-time gate (:meth:`deterministic`): min(1, max(0, sigmoid(log alpha) (zeta - gamma) + gamma)).

    ``log_prob`` is the log-density with respect to Lebesgue measure on (0, 1) *plus* unit atoms at
    0 and 1: at v = 0 it is log P(z = 0), at v = 1 it is log P(z = 1), and for 0 < v < 1 it is the
    density of s_bar,
    log p(v) = log beta + u - 2 softplus(u) + log(zeta - gamma) - log(v - gamma) - log(zeta - v),
    u = log alpha - beta (log(v - gamma) - log(zeta - v)).
    Outside [0, 1] it is -inf (an error under ``validate_args``). A value that is 0 or 1 in
    floating point counts as the atom, even when it came from the continuous part by rounding.

    ``mean`` / ``variance`` are not implemented: E[z] = integral over (0, 1) of
    sigmoid(log alpha - beta logit((t - gamma) / (zeta - gamma))) dt is an incomplete-beta type
    integral with no elementary closed form for general beta.

    Args:
        logits: log alpha, the location (any shape; floating dtype).
        temperature: beta > 0, a number or a tensor broadcastable with ``logits``; the batch
            shape is the broadcast of the two. Default 2/3 (the paper's).
        limits: (gamma, zeta) with gamma < 0 < 1 < zeta, Python floats (always checked).
            Default (-0.1, 1.1).
        validate_args: check value arguments (finite logits, temperature > 0 and finite) and
            ``log_prob`` arguments (default: torch's).

    Examples:
        >>> d = HardConcrete(torch.tensor([-2.0, 0.0, 2.0]))
        >>> d.prob_nonzero()
        tensor([0.4010, 0.8318, 0.9734])
        >>> d.deterministic()
        tensor([0.0430, 0.5000, 0.9570])
        >>> z = d.rsample((1000,), generator=torch.Generator().manual_seed(0))
        >>> bool(((z >= 0) & (z <= 1)).all()), bool((z == 0).any()), bool((z == 1).any())
        (True, True, True)

    Reference: Louizos, Welling, Kingma, ICLR 2018, Section 4.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "logits": constraints.real,
        "temperature": constraints.positive,
    }
    support = constraints.unit_interval
    has_rsample = True

    def __init__(
        self,
        logits: torch.Tensor,
        temperature: float | torch.Tensor = 2.0 / 3.0,
        limits: tuple[float, float] = (-0.1, 1.1),
        validate_args: bool | None = None,
    ) -> None:
        owner = type(self).__name__
        if not isinstance(logits, torch.Tensor):
            raise GumbelkitTypeError(f"{owner}: expected logits to be a tensor, got {type(logits).__name__}")
        check_dtype(logits, "logits", fn=owner)
        self.gamma, self.zeta = check_limits(owner, limits)
        t = _temperature(owner, temperature, logits)
        batch_shape = _batch_shape(owner, t, logits.shape, "logits.shape")
        if _resolve_validate(self, validate_args):
            _check_temperature_values(owner, t)
            _check_param_values(owner, "logits", logits, vector=False)
        self.logits = logits.expand(batch_shape)
        self.temperature = t.expand(batch_shape)
        _torch_checked(owner, super().__init__, batch_shape, validate_args=validate_args)

    @property
    def limits(self) -> tuple[float, float]:
        """(gamma, zeta), the stretch interval."""
        return self.gamma, self.zeta

    @property
    def param_shape(self):
        return self.logits.size()

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(HardConcrete, _instance)
        batch_shape = _expanded_batch(type(self).__name__, batch_shape, self.batch_shape)
        new.logits = self.logits.expand(batch_shape)
        new.temperature = self.temperature.expand(batch_shape)
        new.gamma, new.zeta = self.gamma, self.zeta
        super(HardConcrete, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # ------------------------------------------------------------------ sampling

    def rsample_stretched(
        self, sample_shape=_NO_SAMPLE_DIMS, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """s_bar = sigmoid((L + log alpha) / beta) (zeta - gamma) + gamma, before the clamp."""
        lo, span = self.gamma, self.zeta - self.gamma
        return _relaxed_bits(self, sample_shape, generator, lambda x: torch.sigmoid(x) * span + lo)

    def rsample(self, sample_shape=_NO_SAMPLE_DIMS, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.rsample_stretched(sample_shape, generator=generator).clamp(0.0, 1.0)

    def sample(self, sample_shape=_NO_SAMPLE_DIMS, *, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    # ------------------------------------------------------------------ closed forms

    def prob_nonzero(self) -> torch.Tensor:
        """P(z != 0) = sigmoid(log alpha - beta log(-gamma / zeta)): the expected L0 norm per gate."""
        return torch.sigmoid(self.logits - self.temperature * math.log(-self.gamma / self.zeta))

    def _log_prob_zero(self) -> torch.Tensor:
        return torch.nn.functional.logsigmoid(self.temperature * math.log(-self.gamma / self.zeta) - self.logits)

    def _log_prob_one(self) -> torch.Tensor:
        c = math.log((1.0 - self.gamma) / (self.zeta - 1.0))
        return torch.nn.functional.logsigmoid(self.logits - self.temperature * c)

    def deterministic(self) -> torch.Tensor:
        """The test-time gate min(1, max(0, sigmoid(log alpha) (zeta - gamma) + gamma)), of shape batch_shape."""
        return (torch.sigmoid(self.logits) * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        v = value.clamp(0.0, 1.0)
        c = self.temperature * (torch.log(v - self.gamma) - torch.log(self.zeta - v)) - self.logits
        out = torch.where(value >= 1.0, 1.0, torch.sigmoid(c))
        return torch.where(value < 0.0, 0.0, out)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        v = value.clamp(0.0, 1.0)  # log(v - gamma), log(zeta - v) stay finite
        lv = torch.log(v - self.gamma)
        lw = torch.log(self.zeta - v)
        u = self.logits - self.temperature * (lv - lw)
        sp = torch.nn.functional.softplus
        # log p(l) of the logit l = lv - lw, plus log |dl/dv| = log(zeta - gamma) - lv - lw
        dens = torch.log(self.temperature) + u - 2.0 * sp(u) + (math.log(self.zeta - self.gamma) - lv - lw)
        out = torch.where(value == 0.0, self._log_prob_zero(), torch.where(value == 1.0, self._log_prob_one(), dens))
        return torch.where((value < 0.0) | (value > 1.0), float("-inf"), out)
