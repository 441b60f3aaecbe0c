"""The lab's config idiom: a typed, frozen dataclass per experiment whose fields carry their help,
checker and role (:func:`option`); the command line is generated from it and parsed and checked
once (:meth:`Config.make`), and every later step trusts the instance. A field's role says what it
is for: ``setting`` changes what a cell computes (it is in the configuration's key), ``grid`` only
says which cells there are, ``run`` says how the job runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any, ClassVar

__all__ = ["COMMANDS", "MIN_TAU", "Config", "Flag", "Float", "Floats", "Int", "Names", "OneOf", "PathText", "UserError"]
__all__ += ["installed", "option", "parse_list"]

#: Most CPU threads any command accepts (torch.set_num_threads(100000) crashes the interpreter).
MAX_THREADS = 1024
#: Smallest temperature the lab accepts: below it a float32 relaxed sample is one-hot to the last
#: bit and its gradient underflows to exactly zero, so nothing measured there means anything.
MIN_TAU = 1e-3


class UserError(Exception):
    """A problem with the user's input or files: the command prints one line and exits with status 2."""


# --------------------------------------------------------------------------- checkers (value, flag) -> value


def parse_list(value: Any, flag: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; a list or tuple is taken item by item."""
    items = [str(t).strip() for t in value] if isinstance(value, (list, tuple)) else str(value).split(",")
    items = [t.strip() for t in items]
    if not items or any(not t for t in items):
        raise UserError(f"expected a comma-separated list for {flag}, got {value!r}")
    return items


@dataclasses.dataclass(frozen=True)
class Int:
    """An integer in [lo, hi] (text or number; not a bool or a fractional number)."""

    lo: int = 0
    hi: int | None = None

    def describe(self) -> str:
        return f">= {self.lo}" if self.hi is None else f"{self.lo}..{self.hi}"

    def __call__(self, value: Any, flag: str) -> int:
        span = f"an integer >= {self.lo}" if self.hi is None else f"an integer from {self.lo} to {self.hi}"
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            v = int(value) if isinstance(value, (int, float)) else int(str(value).strip())
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"expected {flag} to be {span}, got {value!r}") from None
        if v < self.lo:
            raise UserError(f"expected {flag} >= {self.lo}, got {v}")
        if self.hi is not None and v > self.hi:
            raise UserError(f"expected {flag} <= {self.hi}, got {v}")
        return v


@dataclasses.dataclass(frozen=True)
class Float:
    """A finite number, optionally > 0 (``positive``), >= ``lo``, <= ``hi``, < ``below``."""

    lo: float | None = None
    hi: float | None = None
    positive: bool = False
    below: float | None = None

    def describe(self) -> str:
        bounds = [("> 0", True)] if self.positive else []
        bounds += [
            (f"{op} {v:g}", True) for op, v in ((">=", self.lo), ("<=", self.hi), ("<", self.below)) if v is not None
        ]
        return ", ".join(["finite"] + [text for text, _ in bounds])

    def __call__(self, value: Any, flag: str) -> float:
        try:
            if isinstance(value, bool):
                raise TypeError
            v = float(str(value).strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"expected {flag} to be a number, got {value!r}") from None
        if not math.isfinite(v):
            raise UserError(f"expected a finite {flag}, got {value!r}")
        if self.positive and not v > 0:
            raise UserError(f"expected {flag} > 0, got {v!r}")
        if self.lo is not None and v < self.lo:
            raise UserError(f"expected {flag} >= {self.lo:g} (the supported range), got {v:g}")
        if self.hi is not None and v > self.hi:
            raise UserError(f"expected {flag} <= {self.hi:g}, got {v:g}")
        if self.below is not None and not v < self.below:
            raise UserError(f"expected {flag} < {self.below:g}, got {v:g}")
        return v


@dataclasses.dataclass(frozen=True)
class Floats:
    """A comma-separated list of numbers, each checked by ``item`` under the name ``name``."""

    item: Float
    name: str

    def describe(self) -> str:
        return f"each {self.item.describe()}"

    def __call__(self, value: Any, flag: str) -> list[float]:
        return [self.item(v, self.name) for v in parse_list(value, flag)]


@dataclasses.dataclass(frozen=True)
class PathText:
    """A path as text: not empty or blank, no NUL character."""

    def describe(self) -> str:
        return ""

    def __call__(self, value: Any, flag: str) -> str:
        text = os.fsdecode(value) if isinstance(value, (str, bytes, os.PathLike)) else None
        if text is None:
            raise UserError(f"expected a path for {flag}, got {value!r}")
        if not text.strip():
            raise UserError(f"expected a non-empty path for {flag}, got {text!r}")
        if "\0" in text:
            raise UserError(f"expected {flag} without NUL characters, got {text!r}")
        return text


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of ``choices`` (text)."""

    choices: tuple[str, ...]

    def describe(self) -> str:
        return " or ".join(self.choices)

    def __call__(self, value: Any, flag: str) -> str:
        text = str(value).strip()
        if text not in self.choices:
            listed = ", ".join(self.choices[:-1]) + f" or {self.choices[-1]}" if len(self.choices) > 1 else text
            raise UserError(f"expected {flag} {listed}, got {value!r}")
        return text


@dataclasses.dataclass(frozen=True)
class Names:
    """A comma-separated list of names from ``allowed``, duplicates dropped, in the order given."""

    allowed: tuple[str, ...]
    what: str | None = None  # how an unknown item is called in the message (default: the flag)

    def describe(self) -> str:
        return "from " + ", ".join(self.allowed)

    def __call__(self, value: Any, flag: str) -> list[str]:
        items = list(dict.fromkeys(parse_list(value, flag)))
        bad = [t for t in items if t not in self.allowed]
        if bad:
            raise UserError(f"unknown {self.what or flag} {bad[0]!r}; expected some of {', '.join(self.allowed)}")
        return items


@dataclasses.dataclass(frozen=True)
class Flag:
    """Yes or no (``--name`` / ``--no-name``); ``auto``: also None, left to the experiment."""

    auto: bool = False

    def describe(self) -> str:
        return ""

    def __call__(self, value: Any, flag: str) -> bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low not in ("true", "false", "yes", "no", "1", "0"):
                raise UserError(f"expected {flag} to be true or false, got {value!r}")
            return low in ("true", "yes", "1")
        return bool(value)


# --------------------------------------------------------------------------- the config idiom

#: What a field is for: ``setting`` changes what a cell computes (it is in the key), ``grid`` only
#: says which cells there are (cells are named by it), ``run`` says how the job runs.
ROLES = ("setting", "grid", "run")


@dataclasses.dataclass(frozen=True)
class _Meta:
    help: str | Callable[[], str]
    check: Callable[[Any, str], Any]
    flag: str | None
    role: str
    hidden: bool


def option(
    default: Any,
    help: str | Callable[[], str],
    check: Callable[[Any, str], Any],
    *,
    flag: str | None = None,
    role: str = "setting",
    hidden: bool = False,
) -> Any:
    """A config field: its default (a list, or a function for a default computed when asked), its
    help for ``--help`` (text, or a function for live text), its checker, its role (:data:`ROLES`)."""
    meta = {"lab": _Meta(help, check, flag, role, hidden)}
    if callable(default) or isinstance(default, list):
        factory = default if callable(default) else (lambda d=default: list(d))
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _meta(f: dataclasses.Field) -> _Meta:
    return f.metadata["lab"]


def _flag(f: dataclasses.Field) -> str:
    return _meta(f).flag or "--" + f.name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _text(value: Any) -> str:
    """A value as written on a command line (floats round-trip)."""
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


#: Every experiment's config class, by command (filled by :meth:`Config.__init_subclass__`).
COMMANDS: dict[str, type[Config]] = {}


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every experiment's config: the options every command shares, and the one check.

    A subclass sets :attr:`COMMAND` (the command's name), :attr:`HELP` (one line), optionally
    :attr:`RESUME` (the default of ``--resume``) and :attr:`VERSION` (raised when the cells'
    contents change, so that older cells are computed again), and may override :meth:`cross_check`.
    """

    COMMAND: ClassVar[str] = ""
    HELP: ClassVar[str] = ""
    RESUME: ClassVar[bool] = True
    VERSION: ClassVar[int] = 1
    #: Fields listed first in the reproducing command line.
    FIRST: ClassVar[tuple[str, ...]] = ()

    threads: int = option(1, "torch CPU threads (0 keeps PyTorch's default)", Int(0, MAX_THREADS), role="run")
    resume: bool | None = option(
        None,
        "reuse the finished cells in --out/cells whose configuration matches (default: on, except bench); "
        "--fresh or --no-resume start over; a damaged cell file is refused",
        Flag(auto=True),
        role="run",
    )
    plots: bool | None = option(
        None,
        "draw the PNG plots after the results are written (default: when matplotlib is installed; "
        "--plots without it is refused)",
        Flag(auto=True),
        role="run",
    )
    progress: bool | None = option(
        None, "progress bar (default: when stderr is a terminal)", Flag(auto=True), role="run"
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.COMMAND:
            COMMANDS[cls.COMMAND] = cls

    # -- the one check

    @classmethod
    def make(cls, **given: Any) -> Any:
        """The checked config: defaults filled in (None means the default), every value checked
        by its field's checker, then :meth:`cross_check`; UserError (one line) for a bad value."""
        fields = dataclasses.fields(cls)
        unknown = sorted(set(given) - {f.name for f in fields})
        if unknown:
            raise UserError(f"unknown {cls.COMMAND} option {unknown[0]!r}")
        values = {}
        for f in fields:
            raw = given.get(f.name)
            raw = _default(f) if raw is None else raw
            values[f.name] = None if raw is None else _meta(f).check(raw, _flag(f))
        if values["resume"] is None:
            values["resume"] = cls.RESUME
        return cls(**cls.cross_check(values))

    @classmethod
    def cross_check(cls, values: dict) -> dict:
        """Checks between fields, after each passed its own; returns the (normalised) values."""
        return values

    # -- the command line

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field (yes/no fields: ``--name`` and ``--no-name``; ``--fresh`` = ``--no-resume``)."""
        for f in sorted(dataclasses.fields(cls), key=lambda f: f.name in ("threads", "resume", "plots", "progress")):
            meta, flag, default = _meta(f), _flag(f), _default(f)
            text = meta.help() if callable(meta.help) else meta.help
            if isinstance(meta.check, Flag):
                parser.add_argument(
                    flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text
                )
                continue
            extra = [meta.check.describe()] if hasattr(meta.check, "describe") else []
            if default is not None or "default" not in text:  # a None default the help explains itself
                extra.append(f"default: {'none' if default is None else _text(default)}")
            notes = "; ".join(e for e in extra if e)
            text = (f"{text} ({notes})" if notes else text).replace("%", "%%")
            help_text = argparse.SUPPRESS if meta.hidden else text
            parser.add_argument(flag, dest=f.name, default=default, metavar=f.name.upper(), help=help_text)
        parser.add_argument("--fresh", dest="resume", action="store_false", help="start over (= --no-resume)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Any:
        return cls.make(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def command(self) -> str:
        """The explicit command line that reproduces this config (automatic and run-time switches left out)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        order = [fields[n] for n in self.FIRST] + [f for n, f in fields.items() if n not in self.FIRST]
        parts = ["python -m experiments", self.COMMAND]
        for f in order:
            value = getattr(self, f.name)
            if value is None or f.name in ("resume", "plots", "progress") or _meta(f).hidden:
                continue
            if isinstance(_meta(f).check, Flag):
                if value != _default(f):
                    parts.append(_flag(f) if value else "--no-" + _flag(f)[2:])
                continue
            parts.append(f"{_flag(f)} {shlex.quote(_text(value))}")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def key(self, **extra: Any) -> str:
        """The hash of what decides a cell's numbers: the command, :attr:`VERSION`, every ``setting``
        field and ``extra`` (a data digest, a device type)."""
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if _meta(f).role == "setting"}
        text = json.dumps([self.COMMAND, self.VERSION, settings, extra], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def requirements(self) -> list[tuple[str, str, str]]:
        """(import name, pip name, the option that needs it) of the optional packages this run needs:
        those a field's checker ``needs`` for its value, then tqdm and matplotlib where asked for."""
        reqs = []
        for f in dataclasses.fields(self):
            needs, value = getattr(_meta(f).check, "needs", None), getattr(self, f.name)
            reqs += [(*need, f"{_flag(f)} {value}") for need in (needs(value) if needs else [])]
        if self.progress:
            reqs.append(("tqdm", "tqdm", "--progress"))
        if self.plots:
            reqs.append(("matplotlib", "matplotlib", "--plots"))
        return reqs


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (``sys.modules[module] = None`` counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules without a spec: imported already
        return sys.modules.get(module) is not None
    except ImportError:  # a parent package is missing
        return False
