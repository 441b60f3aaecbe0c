"""Temperature schedules: small frozen dataclasses ``step -> tau``, plus a learnable temperature.

Each schedule validates its arguments once, at construction, and is then a pure function of
the (integer) training step: the same step always gives the same tau, so checkpoints need no
schedule state. Being plain frozen dataclasses (not closures), schedules pickle, compare equal
field by field, hash, and print as ``Exponential(tau0=1.0, rate=3e-05, floor=0.5, interval=1000)``;
``str(s)`` (also ``s.spec``) is the text form that :func:`parse_schedule` reads back.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

import torch

from ._core.validation import check_int, shape_str
from .errors import GumbelkitError, GumbelkitValueError

__all__ = [
    "Constant",
    "Cosine",
    "Exponential",
    "LearnableTemperature",
    "Linear",
    "Schedule",
    "constant",
    "cosine",
    "exponential",
    "jang_schedule",
    "linear",
    "parse_schedule",
]


# --------------------------------------------------------------------------- argument checks
#
# Every message names the class (or function) the user called, e.g.
# "Exponential: expected interval to be an integer >= 1, got 0".


def _pos(name: str, value, owner: str) -> float:
    """A finite float > 0 (bools, NaN and inf rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0 or math.isinf(value):
        raise GumbelkitValueError(f"{owner}: expected {name} > 0 and finite, got {value!r}")
    return float(value)


def _nonneg(name: str, value, owner: str) -> float:
    """A finite float >= 0 (`not value >= 0` also rejects NaN)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0 or math.isinf(value):
        raise GumbelkitValueError(f"{owner}: expected {name} >= 0 and finite, got {value!r}")
    return float(value)


def _step(step, owner: str) -> int:
    """The training step as an int >= 0; a negative, fractional or non-finite step is a ValueError."""
    if isinstance(step, torch.Tensor):
        if step.numel() != 1:
            raise GumbelkitValueError(
                f"{owner}: expected step to be an integer >= 0, got a tensor of shape {shape_str(step.shape)}"
            )
        value = step.item()
        # A floating step must be a whole number: int(1.7) would silently truncate it to 1 (and
        # int(nan) / int(inf) raise a message that does not say which argument was bad).
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise GumbelkitValueError(f"{owner}: expected step to be an integer >= 0, got {value!r}")
        step = int(value)
    return check_int(step, "step", min=0, fn=owner)


# --------------------------------------------------------------------------- schedules


class Schedule:
    """Base of the schedules: a frozen dataclass callable as ``schedule(step) -> tau``.

    Subclasses set ``_name`` (the spec prefix :func:`parse_schedule` knows) and define
    ``__call__``; ``spec``/``str`` list the fields as ``name:field=value,...``.
    """

    _name: ClassVar[str] = ""

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def spec(self) -> str:
        """The text form, e.g. ``exp:tau0=1.0,rate=3e-05,floor=0.5,interval=1000``."""
        # every concrete schedule is a frozen dataclass; the base only declares the interface
        args = ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))  # type: ignore[arg-type]
        return f"{self._name}:{args}"

    def __str__(self) -> str:
        return self.spec

    def _set(self, name: str, value) -> None:
        # Frozen dataclass: normalise a field (e.g. an int tau0 to float) once, in __post_init__,
        # so equal schedules compare and hash equal whatever number types built them.
        object.__setattr__(self, name, value)


@dataclass(frozen=True)
class Constant(Schedule):
    """tau(t) = tau."""

    tau: float = 1.0
    _name: ClassVar[str] = "constant"

    def __post_init__(self):
        self._set("tau", _pos("tau", self.tau, "Constant"))

    def __call__(self, step: int) -> float:
        _step(step, "Constant")
        return self.tau


@dataclass(frozen=True)
class Exponential(Schedule):
    r"""tau(t) = max(floor, tau0 * exp(-rate * N * floor(t / N))): Jang et al.'s annealing.

    The temperature changes only every ``interval`` = N steps. Requires tau0, floor > 0 and
    finite, floor <= tau0 (otherwise tau would be ``floor`` at every step), rate >= 0 and
    finite, and an integer interval >= 1.

    Reference: Jang, Gu, Poole, ICLR 2017, Section 4.
    """

    tau0: float = 1.0
    rate: float = 3e-5
    floor: float = 0.5
    interval: int = 1000
    _name: ClassVar[str] = "exp"

    def __post_init__(self):
        self._set("tau0", _pos("tau0", self.tau0, "Exponential"))
        self._set("floor", _pos("floor", self.floor, "Exponential"))
        self._set("rate", _nonneg("rate", self.rate, "Exponential"))
        self._set("interval", check_int(self.interval, "interval", min=1, fn="Exponential"))
        if self.floor > self.tau0:
            raise GumbelkitValueError(
                f"Exponential: expected floor <= tau0 (else tau is floor at every step), "
                f"got floor={self.floor} > tau0={self.tau0}"
            )

    def __call__(self, step: int) -> float:
        t = (_step(step, "Exponential") // self.interval) * self.interval
        try:
            decay = self.rate * t
        except OverflowError:  # t beyond float range (~1.8e308 steps): long since at the floor
            return self.floor if self.rate > 0 else self.tau0
        # rate and t are finite and >= 0, so exp(-decay) is in [0, 1]: never NaN.
        return max(self.floor, self.tau0 * math.exp(-decay))


@dataclass(frozen=True)
class Linear(Schedule):
    """tau(t) = start + (end - start) * min(t, steps) / steps (start, end > 0; steps >= 1)."""

    start: float = 1.0
    end: float = 0.5
    steps: int = 10000
    _name: ClassVar[str] = "linear"

    def __post_init__(self):
        self._set("start", _pos("start", self.start, "Linear"))
        self._set("end", _pos("end", self.end, "Linear"))
        self._set("steps", check_int(self.steps, "steps", min=1, fn="Linear"))

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * min(_step(step, "Linear"), self.steps) / self.steps


@dataclass(frozen=True)
class Cosine(Schedule):
    """tau(t) = end + (start - end) * (1 + cos(pi * min(t, steps) / steps)) / 2 (start, end > 0; steps >= 1)."""

    start: float = 1.0
    end: float = 0.5
    steps: int = 10000
    _name: ClassVar[str] = "cosine"

    def __post_init__(self):
        self._set("start", _pos("start", self.start, "Cosine"))
        self._set("end", _pos("end", self.end, "Cosine"))
        self._set("steps", check_int(self.steps, "steps", min=1, fn="Cosine"))

    def __call__(self, step: int) -> float:
        frac = min(_step(step, "Cosine"), self.steps) / self.steps
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * frac))


def constant(tau: float = 1.0) -> Constant:
    """tau(t) = tau."""
    return Constant(tau)


def exponential(tau0: float = 1.0, rate: float = 3e-5, floor: float = 0.5, interval: int = 1000) -> Exponential:
    r"""tau(t) = max(floor, tau0 * exp(-rate * N * floor(t / N))): Jang et al.'s annealing.

    The temperature changes only every ``interval`` = N steps. Defaults are the public notebook's
    (tau0 = 1, r = 3e-5, N = 1000, floor 0.5); the paper used r in {1e-5, 1e-4}, N in {500, 1000}.

    Reference: Jang, Gu, Poole, ICLR 2017, Section 4.
    """
    return Exponential(tau0, rate, floor, interval)


def jang_schedule() -> Exponential:
    """The categorical-VAE default: max(0.5, exp(-3e-5 t)), updated every 1000 steps."""
    return Exponential(1.0, 3e-5, 0.5, 1000)


def linear(start: float = 1.0, end: float = 0.5, steps: int = 10000) -> Linear:
    """tau(t) = start + (end - start) * min(t, steps) / steps."""
    return Linear(start, end, steps)


def cosine(start: float = 1.0, end: float = 0.5, steps: int = 10000) -> Cosine:
    """tau(t) = end + (start - end) * (1 + cos(pi * min(t, steps) / steps)) / 2."""
    return Cosine(start, end, steps)


_FACTORIES = {"constant": constant, "exp": exponential, "exponential": exponential, "linear": linear, "cosine": cosine}
_INT_ARGS = {"interval", "steps"}


def parse_schedule(spec: str) -> Schedule:
    """Build a schedule from text: ``NAME[:key=value,...]`` or a bare number (constant).

    Examples: ``"0.5"``, ``"constant:tau=0.5"``, ``"exp:tau0=1,rate=3e-5,floor=0.5,interval=1000"``,
    ``"linear:start=1,end=0.5,steps=5000"``, ``"cosine:start=2,end=0.5,steps=5000"``, ``"jang"``.
    ``parse_schedule(str(s)) == s`` for every schedule ``s``.

    Examples:
        >>> s = parse_schedule("exp:tau0=1,rate=3e-5,floor=0.5,interval=1000")
        >>> s
        Exponential(tau0=1.0, rate=3e-05, floor=0.5, interval=1000)
        >>> s(0), parse_schedule(str(s)) == s, parse_schedule("0.5")(10)
        (1.0, True, 0.5)
        >>> parse_schedule("exp:floor=0")
        Traceback (most recent call last):
        ...
        gumbelkit.errors.GumbelkitValueError: parse_schedule: Exponential: expected floor > 0 and finite, got 0.0 (spec 'exp:floor=0')
    """
    fn = "parse_schedule"
    text = str(spec).strip()
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        return _build(text, constant, value)
    if text == "jang":
        return jang_schedule()
    name, _, rest = text.partition(":")
    if name not in _FACTORIES:
        raise GumbelkitValueError(
            f"{fn}: expected a schedule in {tuple(_FACTORIES) + ('jang',)} or a number, got {text!r}"
        )
    kwargs = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, val = item.partition("=")
        if not eq:
            raise GumbelkitValueError(f"{fn}: expected key=value in schedule spec, got {item!r}")
        if key.strip() in kwargs:  # "last one wins" would silently drop a value the user wrote
            raise GumbelkitValueError(
                f"{fn}: expected each key once in schedule spec, got {key.strip()!r} twice in {text!r}"
            )
        try:
            kwargs[key.strip()] = int(val) if key.strip() in _INT_ARGS else float(val)
        except ValueError:
            raise GumbelkitValueError(
                f"{fn}: expected a number for {key.strip()!r} in schedule spec, got {val!r}"
            ) from None
    try:
        return _build(text, _FACTORIES[name], **kwargs)
    except TypeError as exc:
        raise GumbelkitValueError(
            f"{fn}: expected valid arguments for schedule {name!r}, got {sorted(kwargs)} ({exc})"
        ) from None


def _build(text: str, factory, *args, **kwargs) -> Schedule:
    """factory(*args, **kwargs), its argument errors re-raised as parse_schedule's (with the spec)."""
    try:
        return factory(*args, **kwargs)
    except GumbelkitError as exc:
        raise type(exc)(f"parse_schedule: {exc} (spec {text!r})") from None


# --------------------------------------------------------------------------- learnable temperature


@functools.cache
def _above(floor: float, dtype: torch.dtype) -> float:
    """The smallest value of ``dtype`` strictly greater than the Python float ``floor``."""
    f = torch.tensor(floor, dtype=dtype)
    if float(f) <= floor:  # floor rounded down (or is exact) in dtype: step one ulp up
        f = torch.nextafter(f, torch.tensor(math.inf, dtype=dtype))
    return float(f)


class LearnableTemperature(torch.nn.Module):
    r"""A trainable temperature, tau = floor + softplus(rho): positive by parametrisation.

    Args:
        init: initial tau (> floor, finite).
        floor: lower bound approached as rho -> -inf (default 0.05), which keeps 1/tau bounded.

    For every finite rho the value is finite and strictly greater than ``floor``.

    Examples:
        >>> import gumbelkit as gk
        >>> temp = LearnableTemperature(1.0)
        >>> y = gk.gumbel_softmax(torch.randn(4, 10), tau=temp())
        >>> y.sum().backward()
        >>> temp.rho.grad is not None
        True
    """

    def __init__(self, init: float = 1.0, floor: float = 0.05):
        super().__init__()
        fn = type(self).__name__
        init, floor = _pos("init", init, fn), _pos("floor", floor, fn)
        if not init > floor:
            raise GumbelkitValueError(f"{fn}: expected init > floor ({floor}), got {init}")
        # Inverse softplus: rho = log(exp(x) - 1) = x + log(-expm1(-x)), stable for large x.
        x = init - floor
        self.floor = floor
        self.rho = torch.nn.Parameter(torch.tensor(x + math.log(-math.expm1(-x))))
        if not bool(torch.isfinite(self.rho)):  # init - floor beyond the parameter dtype's range
            raise GumbelkitValueError(
                f"{fn}: expected init - floor representable in {self.rho.dtype} (max {torch.finfo(self.rho.dtype).max:.3g}), "
                f"got init={init}, floor={floor}"
            )

    def forward(self) -> torch.Tensor:
        tau = self.floor + torch.nn.functional.softplus(self.rho)
        # floor + softplus(rho) rounds to floor once softplus(rho) < ulp(floor) / 2 (rho < -20 in
        # float32), and a floor that rounds down in the dtype can even put tau below it. Lift the
        # value to the next representable number above floor, with the gradient of the
        # unclamped expression (straight-through), so training behaves exactly as before.
        lo = _above(self.floor, tau.dtype)
        return tau + (tau.clamp_min(lo) - tau).detach()

    def extra_repr(self) -> str:
        return f"tau={float(self().detach()):.4g}, floor={self.floor}"
