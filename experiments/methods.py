"""Methods and their options on the command line, read from the registry by family.

``--methods`` takes ``NAME[:OPTION=VALUE[,OPTION=VALUE...]]`` items separated by commas, e.g.
``st,gumbel_rao:k=100,reinforce:n=8`` (an ``OPTION=VALUE`` part without ``:`` continues the item
before it); with ``taus=True`` an item may end in ``@TAU`` (``gumbel_rao:k=10@0.1``). Every
method of the family is accepted, plugins included, and every option is checked against its
declaration. Two items that resolve to the same method and options run once (the first is kept).

A :class:`Method` has two names: ``label`` (how results call it: the options written explicitly,
``gumbel_rao:k=100``) and ``tag`` (the same, file- and seed-friendly: ``gumbel_rao_k100``; the
random streams are keyed by it). The older syntax ``NAME_<option><value>`` (``gumbel_rao_k10``)
is still read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gumbelkit as gk

from . import config
from .config import MIN_TAU, Float, UserError, parse_list

__all__ = ["Chosen", "Method", "choices", "describe", "labels", "option", "option_help", "parse"]


@dataclasses.dataclass(frozen=True)
class Method:
    """One method with its options (and, where the command takes one, its temperature)."""

    spec: gk.MethodSpec
    given: tuple[tuple[str, Any], ...] = ()
    tau: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def options(self) -> dict:
        """Every option: the explicit ones over the declared defaults, in declaration order."""
        return self.spec.resolve(dict(self.given))

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={self.spec.option(k).format(v)}" for k, v in self.given)
        return self.name + (f":{opts}" if opts else "") + ("" if self.tau is None else f"@{self.tau:g}")

    @property
    def tag(self) -> str:
        return self.name + "".join(f"_{k}{self.spec.option(k).format(v)}" for k, v in self.given)

    def objective(self, logits: Any, loss_fn: Callable, tau: Any, **kwargs: Any) -> Any:
        """:meth:`gumbelkit.MethodSpec.objective` with this choice's options."""
        return self.spec.objective(logits, loss_fn, tau, **kwargs, **self.options)


def describe(family: str, kind: str | None = None) -> str:
    """The methods of a family with their options, for ``--help`` (read when the parser is built)."""
    out = []
    for spec in gk.estimators.specs(family, kind):
        opts = ",".join(f"{o.name}={o.type.__name__} {_range(o)}default {o.format(o.default)}" for o in spec.options)
        out.append(f"{spec.name}[:{opts}]" if opts else spec.name)
    return ", ".join(out)


def _range(opt: gk.OptionSpec) -> str:
    if opt.choices:
        return "|".join(map(str, opt.choices)) + ", "
    lo = f">= {opt.minimum:g}" if opt.minimum is not None else ""
    hi = f"<= {opt.maximum:g}" if opt.maximum is not None else ""
    return " ".join(b for b in (lo, hi) if b) + (", " if lo or hi else "")


def option_help(family: str, kind: str | None = None, what: str = "methods") -> Callable[[], str]:
    """Live help text for a method-list option."""
    return lambda: f"{what} NAME[:OPTION=VALUE,...] (default: every one), any of: {describe(family, kind)}"


def option(
    family: str, kind: str | None = None, *, what="methods", default=None, cap=None, taus=False, none=False, role="grid"
):
    """A config field listing methods of ``family`` (and ``kind``): by default every one of them, read
    from the registry when the config is made (so a plugin's methods are in it); see :func:`labels`."""

    def every() -> list[str]:
        return [
            m.label for m in choices(list(gk.estimators.methods(family, kind)), family, kind=kind, cap=cap, taus=taus)
        ]

    check = labels(family, kind, cap=cap, taus=taus, none=none)
    return config.option(default or every, option_help(family, kind, what), check, role=role)


def _legacy(token: str, specs: dict[str, gk.MethodSpec]) -> tuple[str, str, str] | None:
    """``gumbel_rao_k10`` -> ("gumbel_rao", "k", "10") when that is a method and one of its options."""
    for name in sorted(specs, key=len, reverse=True):
        rest = token[len(name) + 1 :] if token.startswith(name + "_") else ""
        for opt in sorted(specs[name].options, key=lambda o: len(o.name), reverse=True):
            if rest.startswith(opt.name) and len(rest) > len(opt.name):
                return name, opt.name, rest[len(opt.name) :]
    return None


def _tau(text: str, item: str, flag: str) -> float:
    if "@" in text:
        raise UserError(f"{flag} {item!r}: expected one @TAU at the end of an item, got a second '@'")
    return Float(positive=True, lo=MIN_TAU)(text, f"temperature in {flag} {item!r}")


def parse(item: str, family: str, *, kind: str | None = None, flag: str = "--methods", cap=None, taus=False):
    """One ``NAME[:OPTION=VALUE,...][@TAU]`` item as a :class:`Method`; UserError (one line) for an
    unknown method or option, a value out of range (``cap``: an upper bound on numeric options)."""
    text = str(item).strip()
    head, at, tau_text = text.partition("@") if taus else (text, "", "")
    name, sep, rest = head.partition(":")
    specs = {s.name: s for s in gk.estimators.specs(family, kind)}
    pairs = [p.partition("=") for p in rest.split(",")] if sep else []
    if any(not eq or not key.strip() for key, eq, _ in pairs):
        raise UserError(f"expected {flag} items like NAME or NAME:OPTION=VALUE[,OPTION=VALUE], got {text!r}")
    name = name.strip()
    if name not in specs:
        legacy = None if sep else _legacy(name, specs)
        if legacy is None:
            raise UserError(f"unknown {flag} {name!r}; expected some of {', '.join(specs)} (NAME[:OPTION=VALUE,...])")
        name, key, value = legacy
        pairs = [(key, "=", value)]
    spec, given = specs[name], {}
    for key, _, value in pairs:
        if key.strip() in given:
            raise UserError(f"{flag} {text!r}: option {key.strip()!r} is given twice")
        try:
            given[key.strip()] = spec.option(key.strip()).parse(value, name, cap=cap)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{flag} {text!r}: {exc}") from None
    tau = None
    if spec.uses_tau and taus:
        tau = _tau(tau_text, text, flag) if at else (spec.default_tau or 1.0)
    elif at:
        raise UserError(f"{flag} {text!r}: method {name!r} uses no temperature; drop @{tau_text}")
    return Method(spec, tuple((o.name, given[o.name]) for o in spec.options if o.name in given), tau)


def _items(value: Any, flag: str) -> list[str]:
    """Split a method list: an ``OPTION=VALUE`` part without ``:`` continues the item before it."""
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    items: list[str] = []
    for part in parse_list(value, flag):
        if "=" in part and ":" not in part.split("@")[0]:
            if not items:
                raise UserError(f"expected {flag} to start with a method name, got {value!r}")
            items[-1] += "," + part
        else:
            items.append(part)
    return items


def choices(value: Any, family: str, **kwargs: Any) -> list[Method]:
    """Every method of a method-list value (text or a list of items); an item that resolves to the
    same method, options and temperature as an earlier one is dropped (``gumbel_rao,gumbel_rao:k=10``
    is one method: k = 10 is the default)."""
    out: dict[tuple, Method] = {}
    for item in _items(value, kwargs.get("flag", "--methods")):
        c = parse(item, family, **kwargs)
        out.setdefault((c.name, tuple(c.options.items()), c.tau), c)
    return list(out.values())


class Chosen:
    """A config attribute: the :class:`Method` objects of its ``methods`` value in ``family``
    (:func:`choices` with ``kwargs``), resolved on first use and kept."""

    def __init__(self, family: str, **kwargs: Any):
        self.family, self.kwargs, self.name = family, kwargs, "choices"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = choices(obj.methods, self.family, **self.kwargs)
        return value


def labels(family: str, kind: str | None = None, *, cap=None, taus: bool = False, none: bool = False):
    """A checker of a method-list option: the labels of :func:`choices`; ``none``: 'none' is the empty list."""

    def check(value: Any, flag: str) -> list[str]:
        if none and (value in ([], ()) or (isinstance(value, str) and value.strip() in ("none", ""))):
            return []
        return [c.label for c in choices(value, family, kind=kind, flag=flag, cap=cap, taus=taus)]

    check.describe = lambda: ""  # type: ignore[attr-defined]  # the help lists the methods itself
    return check
