"""Temperature schedules: pure ``step -> tau`` functions, plus a learnable temperature.

Each factory validates its arguments once and returns a pure function of the (integer)
training step, so the same step always gives the same tau (and checkpoints need no state).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

__all__ = [
    "Schedule",
    "constant",
    "exponential",
    "linear",
    "cosine",
    "parse_schedule",
    "jang_schedule",
    "LearnableTemperature",
]

Schedule = Callable[[int], float]


def _pos(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 or math.isinf(value):
        raise ValueError(f"expected {name} > 0, got {value!r}")
    return float(value)


def _step(step) -> int:
    if isinstance(step, torch.Tensor):
        step = int(step.item())
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"expected step to be an integer >= 0, got {step!r}")
    return int(step)


def constant(tau: float = 1.0) -> Schedule:
    """tau(t) = tau."""
    tau = _pos("tau", tau)

    def schedule(step: int) -> float:
        _step(step)
        return tau

    schedule.spec = f"constant:tau={tau}"
    return schedule


def exponential(tau0: float = 1.0, rate: float = 3e-5, floor: float = 0.5, interval: int = 1000) -> Schedule:
    r"""tau(t) = max(floor, tau0 * exp(-rate * N * floor(t / N))): Jang et al.'s annealing.

    The temperature changes only every ``interval`` = N steps. Defaults are the public notebook's
    (tau0 = 1, r = 3e-5, N = 1000, floor 0.5); the paper used r in {1e-5, 1e-4}, N in {500, 1000}.

    Reference: Jang, Gu, Poole, ICLR 2017, Section 4.
    """
    tau0 = _pos("tau0", tau0)
    floor = _pos("floor", floor)
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or rate < 0:
        raise ValueError(f"expected rate >= 0, got {rate!r}")
    if isinstance(interval, bool) or not isinstance(interval, numbers.Integral) or interval < 1:
        raise ValueError(f"expected interval to be an integer >= 1, got {interval!r}")
    rate, interval = float(rate), int(interval)

    def schedule(step: int) -> float:
        t = (_step(step) // interval) * interval
        return max(floor, tau0 * math.exp(-rate * t))

    schedule.spec = f"exp:tau0={tau0},rate={rate},floor={floor},interval={interval}"
    return schedule


def jang_schedule() -> Schedule:
    """The categorical-VAE default: max(0.5, exp(-3e-5 t)), updated every 1000 steps."""
    return exponential(1.0, 3e-5, 0.5, 1000)


def linear(start: float = 1.0, end: float = 0.5, steps: int = 10000) -> Schedule:
    """tau(t) = start + (end - start) * min(t, steps) / steps."""
    start, end = _pos("start", start), _pos("end", end)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"expected steps to be an integer >= 1, got {steps!r}")

    def schedule(step: int) -> float:
        return start + (end - start) * min(_step(step), steps) / steps

    schedule.spec = f"linear:start={start},end={end},steps={steps}"
    return schedule


def cosine(start: float = 1.0, end: float = 0.5, steps: int = 10000) -> Schedule:
    """tau(t) = end + (start - end) * (1 + cos(pi * min(t, steps) / steps)) / 2."""
    start, end = _pos("start", start), _pos("end", end)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"expected steps to be an integer >= 1, got {steps!r}")

    def schedule(step: int) -> float:
        frac = min(_step(step), steps) / steps
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * frac))

    schedule.spec = f"cosine:start={start},end={end},steps={steps}"
    return schedule


_FACTORIES = {"constant": constant, "exp": exponential, "exponential": exponential, "linear": linear, "cosine": cosine}
_INT_ARGS = {"interval", "steps"}


def parse_schedule(spec: str) -> Schedule:
    """Build a schedule from text: ``NAME[:key=value,...]`` or a bare number (constant).

    Examples: ``"0.5"``, ``"constant:tau=0.5"``, ``"exp:tau0=1,rate=3e-5,floor=0.5,interval=1000"``,
    ``"linear:start=1,end=0.5,steps=5000"``, ``"cosine:start=2,end=0.5,steps=5000"``, ``"jang"``.
    """
    text = str(spec).strip()
    try:
        return constant(float(text))
    except ValueError as exc:
        if "expected" in str(exc):
            raise
    if text == "jang":
        return jang_schedule()
    name, _, rest = text.partition(":")
    if name not in _FACTORIES:
        raise ValueError(f"expected a schedule in {tuple(_FACTORIES) + ('jang',)} or a number, got {text!r}")
    kwargs = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, val = item.partition("=")
        if not eq:
            raise ValueError(f"expected key=value in schedule spec, got {item!r}")
        try:
            kwargs[key.strip()] = int(val) if key.strip() in _INT_ARGS else float(val)
        except ValueError:
            raise ValueError(f"expected a number for {key.strip()!r} in schedule spec, got {val!r}") from None
    try:
        return _FACTORIES[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"expected valid arguments for schedule {name!r}, got {sorted(kwargs)} ({exc})") from None


class LearnableTemperature(torch.nn.Module):
    r"""A trainable temperature, tau = floor + softplus(rho): positive by parametrisation.

    Args:
        init: initial tau (> floor).
        floor: lower bound approached as rho -> -inf (default 0.05), which keeps 1/tau bounded.

    Example:
        >>> temp = LearnableTemperature(1.0)
        >>> y = gumbel_softmax(logits, tau=temp())
    """

    def __init__(self, init: float = 1.0, floor: float = 0.05):
        super().__init__()
        init, floor = _pos("init", init), _pos("floor", floor)
        if not init > floor:
            raise ValueError(f"expected init > floor ({floor}), got {init}")
        # Inverse softplus: rho = log(exp(x) - 1) = x + log(-expm1(-x)), stable for large x.
        x = init - floor
        self.floor = floor
        self.rho = torch.nn.Parameter(torch.tensor(x + math.log(-math.expm1(-x))))

    def forward(self) -> torch.Tensor:
        return self.floor + torch.nn.functional.softplus(self.rho)

    def extra_repr(self) -> str:
        return f"tau={float(self()):.4g}, floor={self.floor}"
