"""``torch.nn`` modules over the functional API."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch

from ._validation import check_tau
from .distributions._hard_concrete import HardConcrete, check_limits
from .errors import GumbelkitTypeError, GumbelkitValueError
from .estimators import get_estimator, sample
from .schedules import LearnableTemperature

__all__ = ["GumbelSoftmax", "L0Gate"]


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


class L0Gate(torch.nn.Module):
    r"""Learnable Hard Concrete gates on the last dimension of its input, with an expected-L0 penalty.

    Holds one learnable log alpha per gate, ``n // group_size`` gates, each shared by
    ``group_size`` consecutive units of the last dimension (structured pruning of neurons, heads,
    channels). ``forward(x)`` returns ``x * gate`` broadcast over the last dimension:

    * training: a :class:`~gumbelkit.distributions.HardConcrete` sample, drawn independently for
      every leading index of ``x`` (shape ``x.shape[:-1] + (n_gates,)``, as in the paper's
      reference code), differentiable in log alpha;
    * eval: the deterministic test-time gate min(1, max(0, sigmoid(log alpha) (zeta - gamma) + gamma)).

    :meth:`l0_penalty` is the expected number of non-zero *units*,
    ``group_size * sum_g sigmoid(log alpha_g - beta log(-gamma / zeta))``, so groups of different
    sizes are penalised by the parameters they remove. :meth:`n_active` counts units as well.

    Args:
        n: size of the last dimension of the input.
        group_size: units per gate; must divide ``n`` (default 1: one gate per unit).
        init_log_alpha: initial log alpha, a float or a tensor broadcastable to ``(n // group_size,)``.
            Default 2.0: P(gate != 0) = 0.973, eval gate 0.957 (start almost open). The paper's
            initial drop rate p corresponds to log((1 - p) / p).
        temperature: beta > 0 (default 2/3).
        limits: (gamma, zeta) with gamma < 0 < 1 < zeta (default (-0.1, 1.1)).

    Examples:
        >>> gate = L0Gate(6, group_size=2)
        >>> x = torch.ones(4, 6)
        >>> gate(x, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 6])
        >>> gate.l0_penalty().detach(), gate.n_active()
        (tensor(5.8402), 6)
        >>> _ = gate.eval()
        >>> gate(x).detach()[0]
        tensor([0.9570, 0.9570, 0.9570, 0.9570, 0.9570, 0.9570])

    Reference: Louizos, Welling, Kingma, ICLR 2018.
    """

    n: int
    group_size: int
    temperature: float
    gamma: float
    zeta: float
    log_alpha: torch.nn.Parameter

    def __init__(
        self,
        n: int,
        *,
        group_size: int = 1,
        init_log_alpha: float | torch.Tensor = 2.0,
        temperature: float = 2.0 / 3.0,
        limits: tuple[float, float] = (-0.1, 1.1),
    ):
        super().__init__()
        fn = type(self).__name__
        for name, v in (("n", n), ("group_size", group_size)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise GumbelkitTypeError(f"{fn}: expected {name} to be an int, got {type(v).__name__}")
            if v < 1:
                raise GumbelkitValueError(f"{fn}: expected {name} >= 1, got {v}")
        if n % group_size:
            raise GumbelkitValueError(f"{fn}: expected group_size to divide n = {n}, got group_size = {group_size}")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise GumbelkitTypeError(f"{fn}: expected temperature to be a float, got {type(temperature).__name__}")
        check_tau(float(temperature), name="temperature", fn=fn)
        self.gamma, self.zeta = check_limits(fn, limits)
        self.n = int(n)
        self.group_size = int(group_size)
        self.temperature = float(temperature)
        n_gates = self.n // self.group_size
        init = torch.as_tensor(init_log_alpha, dtype=torch.get_default_dtype())
        try:
            init = init.expand(n_gates).clone()
        except RuntimeError:
            raise GumbelkitValueError(
                f"{fn}: expected init_log_alpha broadcastable to ({n_gates},), got shape {tuple(init.shape)}"
            ) from None
        if not bool(torch.isfinite(init).all()):
            raise GumbelkitValueError(f"{fn}: expected finite init_log_alpha")
        self.log_alpha = torch.nn.Parameter(init)

    @property
    def n_gates(self) -> int:
        """Number of gates, ``n // group_size``."""
        return self.n // self.group_size

    def distribution(self) -> HardConcrete:
        """The gates' :class:`~gumbelkit.distributions.HardConcrete`, batch shape ``(n_gates,)``."""
        return HardConcrete(self.log_alpha, self.temperature, (self.gamma, self.zeta), validate_args=False)

    def _units(self, gates: torch.Tensor) -> torch.Tensor:
        return gates if self.group_size == 1 else gates.repeat_interleave(self.group_size, dim=-1)

    def gate(self, sample_shape: torch.Size | tuple[int, ...] = (), *, generator: torch.Generator | None = None):
        """Per-unit gate, shape ``sample_shape + (n,)``: sampled in training, deterministic in eval."""
        d = self.distribution()
        if self.training:
            return self._units(d.rsample(torch.Size(sample_shape), generator=generator))
        return self._units(d.deterministic()).expand(*sample_shape, self.n)

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.n:
            raise GumbelkitValueError(
                f"{type(self).__name__}: expected x with last dimension n = {self.n}, got x of shape {tuple(x.shape)}"
            )
        if self.training:
            return x * self.gate(x.shape[:-1], generator=generator)
        return x * self.gate()

    def l0_penalty(self) -> torch.Tensor:
        """Expected number of non-zero units: ``group_size * sum(prob_nonzero)`` (differentiable)."""
        return self.distribution().prob_nonzero().sum() * self.group_size

    def n_active(self) -> int:
        """Number of units whose deterministic (eval) gate is > 0: ``group_size`` times the open gates."""
        with torch.no_grad():
            return int((self.distribution().deterministic() > 0).sum()) * self.group_size

    def extra_repr(self) -> str:
        return (
            f"n={self.n}, group_size={self.group_size}, temperature={self.temperature:.4g}, "
            f"limits=({self.gamma}, {self.zeta})"
        )
