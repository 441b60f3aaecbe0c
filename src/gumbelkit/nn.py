"""``torch.nn`` modules over the functional API."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch

from ._validation import check_tau
from .errors import GumbelkitTypeError, GumbelkitValueError
from .estimators import get_estimator, sample
from .schedules import LearnableTemperature

__all__ = ["GumbelSoftmax"]


class GumbelSoftmax(torch.nn.Module):
    r"""Draws a sample with any registered method; usable inside ``nn.Sequential``.

    The temperature is a float, a schedule (a pure ``step -> tau`` function evaluated at the
    module's ``step`` buffer, which advances by one per forward in training mode), or a
    :class:`~gumbelkit.schedules.LearnableTemperature`.

    Args:
        method: a name from :data:`gumbelkit.METHODS` (default ``"st_gumbel"``).
        tau: float, schedule or learnable temperature module.
        dim: category dimension.
        generator: optional ``torch.Generator`` used on every call.
        **options: method options (``k`` for gumbel_rao).

    Raises:
        GumbelkitValueError: an unknown ``method`` or a float ``tau`` that is not > 0 and finite.
        GumbelkitTypeError: a ``tau`` that is neither a float nor callable.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 10), GumbelSoftmax("st_gumbel", tau=0.5))
        >>> y = net(torch.randn(4, 16))
        >>> y.shape, bool((y.sum(-1) == 1).all())
        (torch.Size([4, 10]), True)

    Reference: Jang, Gu, Poole, ICLR 2017.
    """

    def __init__(
        self,
        method: str = "st_gumbel",
        tau: float | Callable[[int], float] | LearnableTemperature = 1.0,
        dim: int = -1,
        *,
        generator: torch.Generator | None = None,
        **options: Any,
    ):
        super().__init__()
        fn = type(self).__name__
        try:
            get_estimator(method)
        except ValueError as exc:  # the registry's message, named after this constructor
            raise GumbelkitValueError(f"{fn}: {exc}") from None
        if isinstance(tau, numbers.Real) and not isinstance(tau, bool):
            check_tau(tau, fn=fn)  # > 0 and finite (also refuses NaN), as the samplers do at every call
        elif not callable(tau):
            raise GumbelkitTypeError(
                f"{fn}: expected tau to be a float, a schedule or a LearnableTemperature, got {type(tau).__name__}"
            )
        self.method = method
        self.tau = tau  # a LearnableTemperature registers as a submodule
        self.dim = dim
        self.generator = generator
        self.options = options
        self.step: torch.Tensor
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def current_tau(self):
        """The temperature the next forward will use (float or tensor)."""
        if isinstance(self.tau, torch.nn.Module):
            return self.tau()
        if callable(self.tau):
            return self.tau(int(self.step))
        return self.tau

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        out = sample(logits, self.method, self.current_tau(), self.dim, generator=self.generator, **self.options)
        if self.training:
            self.step.add_(1)
        return out

    def extra_repr(self) -> str:
        tau = self.tau if isinstance(self.tau, numbers.Real) else getattr(self.tau, "spec", type(self.tau).__name__)
        return f"method={self.method!r}, tau={tau}, dim={self.dim}"
