"""The one runner of the lab: a typed config per experiment, its run directory, resume, results.

- **Config**: an experiment declares a frozen dataclass (a subclass of :class:`Config`) whose
  fields carry their help and checker (:func:`option`). The command line is generated from it and
  parsed and checked once (:meth:`Config.make`): every later step trusts the instance.
- **Run directory** (``--out``): ``results.json`` and ``results.md``, the plots (``*.png``), and
  ``cells/``: one checksummed JSON file per finished cell and, for a cell that trains for long,
  one checksummed state file (``.pt``) while it runs.
- **Resume** (``--resume``, the default; ``--fresh`` / ``--no-resume`` start over): a cell is done
  when its file holds this configuration's key, the hash of every setting that changes what a
  cell computes (:meth:`Config.key`); a cell of another configuration is computed again. Every
  file is written atomically and read by one loader that verifies its SHA-256 first: a damaged
  file is refused in one line, never reused. Cells draw from their own seeded streams, so a run
  resumed after a kill ends bit-identical to a straight one.
- **Results** (:meth:`Run.write`): ``results.json``, then ``results.md`` (built with :func:`table`),
  then the plots, each skipped with a note when matplotlib is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import io
import json
import math
import os
import platform
import re
import shlex
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, ClassVar

import torch

__all__ = [
    "COMMANDS",
    "Config",
    "Flag",
    "Float",
    "Floats",
    "Int",
    "Names",
    "OneOf",
    "PathText",
    "Run",
    "Store",
    "Timer",
    "UserError",
    "environment_info",
    "generator",
    "mean_std",
    "option",
    "parse_list",
    "prepare_folder",
    "progress",
    "read_checked",
    "resolve_device",
    "save_figure",
    "table",
    "write_checked",
]

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
            extra.append(f"default: {'none' if default is None else _text(default)}")
            text = f"{text} ({'; '.join(e for e in extra if e)})".replace("%", "%%")
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
        """(import name, pip name, the option that needs it) of the optional packages this run needs."""
        from .data import required_package  # the data loaders are needed only where there is --data

        reqs = []
        data = getattr(self, "data", None)
        need = required_package(data) if isinstance(data, str) else None
        if need:
            reqs.append((*need, f"--data {data}"))
        if self.progress:
            reqs.append(("tqdm", "tqdm", "--progress"))
        if self.plots:
            reqs.append(("matplotlib", "matplotlib", "--plots"))
        return reqs


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (``sys.modules[module] = None`` counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules without a spec: imported already
        return sys.modules.get(module) is not None
    except ImportError:  # a parent package is missing
        return False


# --------------------------------------------------------------------------- checked files


_MAGIC = b"\x89GKSUM1\n"
_LENGTH = struct.Struct(">Q")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and ``os.replace``: a reader (or a crash) never
    sees a half-written file. An OSError becomes a one-line UserError naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)  # mkstemp creates the file 0600: give results the usual permissions
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n").encode()


def write_checked(path: Path, obj: Any) -> None:
    """``obj`` (JSON when the name ends in .json, else ``torch.save``) framed with its length and a
    SHA-256 digest, written atomically: MAGIC | length | payload | SHA-256 of all before."""
    if path.suffix == ".json":
        payload = _json(obj)
    else:
        buf = io.BytesIO()
        torch.save(obj, buf)
        payload = buf.getvalue()
    head = _MAGIC + _LENGTH.pack(len(payload))
    _atomic_write(path, head + payload + hashlib.sha256(head + payload).digest())


def _unframe(data: bytes) -> str | bytes:
    """The payload, or the reason (a str) why the file cannot be trusted."""
    n_head = len(_MAGIC) + _LENGTH.size
    if not data.startswith(_MAGIC):
        return "has no checksum (it was not written by this lab)"
    if len(data) < n_head + 32 or len(data) != n_head + _LENGTH.unpack_from(data, len(_MAGIC))[0] + 32:
        return f"is truncated or too long ({len(data)} bytes)"
    if hashlib.sha256(data[:-32]).digest() != data[-32:]:
        return "is damaged (SHA-256 checksum mismatch)"
    return data[n_head:-32]


def read_checked(path: Path, hint: str) -> Any:
    """The object written by :func:`write_checked`, after its digest is verified; UserError (one
    line naming ``path``, ending with ``hint``) when it is damaged, truncated or does not load."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror or exc}); {hint}") from None
    payload = _unframe(data)
    if isinstance(payload, str):
        raise UserError(f"{path} {payload}; {hint}")
    try:
        if path.suffix == ".json":
            return json.loads(payload)
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # a verified frame that does not load: written by another version
        raise UserError(f"{path} does not load ({type(exc).__name__}); {hint}") from None


# --------------------------------------------------------------------------- the store of cells


class Store:
    """The finished cells of a run directory (``OUT/cells``), and the state of cells in progress.

    A cell is named by its id (any text); its files are ``cells/<slug>.json`` (the result) and
    ``cells/<slug>.pt`` (a training state). Each holds the config key and the id: a file of
    another configuration is not reused (it is computed again and overwritten); a damaged one is
    refused in one line (``--fresh`` ignores every file).
    """

    HINT = "delete it or pass --fresh to start over"

    def __init__(self, out: Path, key: str, *, resume: bool, writes: bool = True):
        self.folder, self.key, self.resume, self.writes = out / "cells", key, resume, writes
        self.computed = self.reused = 0

    def path(self, cid: str, suffix: str = ".json") -> Path:
        slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", cid)[:80]
        return self.folder / f"{slug}-{zlib.crc32(cid.encode()):08x}{suffix}"

    def _load(self, cid: str, suffix: str) -> Any:
        path = self.path(cid, suffix)
        if not self.resume or not path.exists():
            return None
        box = read_checked(path, self.HINT)
        if not isinstance(box, dict) or box.get("cell") != cid or "value" not in box:
            raise UserError(f"{path} is not the file of cell {cid!r}; {self.HINT}")
        return box["value"] if box.get("key") == self.key else None

    def _save(self, cid: str, suffix: str, value: Any) -> None:
        if self.writes:
            write_checked(self.path(cid, suffix), {"key": self.key, "cell": cid, "value": value})

    def cell(self, cid: str, compute: Callable[[], dict]) -> dict:
        """The finished cell ``cid``, computed (and saved) unless this configuration's file is there."""
        done = self._load(cid, ".json")
        if done is not None:
            self.reused += 1
            return done
        value = compute()
        self._save(cid, ".json", value)
        self.computed += 1
        return value

    def state(self, cid: str) -> Any:
        """The saved training state of cell ``cid`` (None: none of this configuration)."""
        return self._load(cid, ".pt")

    def save_state(self, cid: str, state: Any) -> None:
        self._save(cid, ".pt", state)

    def verify(self, cids: Iterable[str]) -> None:
        """Read every file of these cells now, so a damaged one is refused before any work starts."""
        for cid in cids:
            if self._load(cid, ".json") is None:
                self._load(cid, ".pt")


# --------------------------------------------------------------------------- one job


class Timer:
    """Wall-clock seconds of a block, the device synchronised at both ends (queued GPU work counts)."""

    def __init__(self, device: torch.device | str | None = None):
        self.device, self.seconds, self._start = device, 0.0, 0.0

    def _sync(self) -> None:
        if self.device is not None and torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> Timer:
        self._sync()
        self._start = time.perf_counter()
        return self

    def stop(self) -> float:
        self._sync()
        self.seconds = time.perf_counter() - self._start
        return self.seconds

    def __enter__(self) -> Timer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Quiet:
    """A progress bar that shows nothing (tqdm's methods)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, enabled: bool | None) -> Any:
    """A tqdm bar (``enabled`` None: when stderr is a terminal), else a silent stand-in."""
    if enabled or (enabled is None and sys.stderr.isatty() and _installed("tqdm")):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
    return _Quiet()


class Run:
    """One job of an experiment: inside ``with Run(cfg, units) as run:`` the requirements are met,
    ``--out`` exists, the torch settings hold and ``run.cell`` / ``run.store`` resume; afterwards
    :meth:`write` writes the results.

    Args:
        cfg: the checked config (its ``out``, ``threads``, ``resume``, ``plots``, ``progress``).
        units: the progress bar's total.
        key_extra: what besides the config decides the cells' numbers (a data digest, ...).
        flush_denormal: flush subnormal floats to zero on CPU (see the VAE).
        writes: whether this process writes files (the main process of a distributed job).
    """

    def __init__(self, cfg: Any, units: int, *, key_extra: dict | None = None, flush_denormal=False, writes=True):
        for module, package, why in cfg.requirements():
            if not _installed(module):
                raise UserError(f"{why} needs {package}, which is not installed (pip install {package})")
        self.cfg, self.units, self.flush, self.writes = cfg, units, flush_denormal, writes
        self.out = Path(cfg.out)
        if writes:
            prepare_folder(cfg.out, "--out")
        self.store = Store(self.out, cfg.key(**(key_extra or {})), resume=cfg.resume, writes=writes)
        self.timer = Timer().start()
        self.bar: Any = _Quiet()

    def __enter__(self) -> Run:
        self._threads = torch.get_num_threads()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self._flushed = self.flush and torch.set_flush_denormal(True)
        self.bar = progress(self.units, self.cfg.COMMAND, self.cfg.progress)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        if self._flushed:
            torch.set_flush_denormal(False)
        torch.set_num_threads(self._threads)

    def cell(self, cid: str, compute: Callable[[], dict]) -> dict:
        value = self.store.cell(cid, compute)
        self.bar.update(1)
        return value

    def meta(self, device: torch.device | None = None) -> dict:
        """The results' common entries: the command, the config, the machine, the time, the cells."""
        return {
            "command": self.cfg.command(),
            "config": {k: v for k, v in self.cfg.to_dict().items() if k not in ("progress", "resume")},
            "environment": environment_info(device) | {"threads": self.cfg.threads or torch.get_num_threads()},
            "runtime_s": self.timer.stop(),
            "cells_computed": self.store.computed,
            "cells_resumed": self.store.reused,
        }

    def write(
        self,
        results: dict,
        markdown: Callable[[dict], str],
        plots: Sequence[tuple[str, Callable]] = (),
        plot_dir: Path | None = None,
    ) -> None:
        """``results.json`` and ``results.md``, then each plot ``(file name, draw(results, path))`` into
        ``plot_dir`` (default ``--out``); ``results["plots"]`` lists the plots drawn (the JSON is
        written again when there are any)."""
        results["plots"] = []
        note = None
        if self.cfg.plots is not False and plots and not _installed("matplotlib"):
            note = "matplotlib is not installed (pip install matplotlib); plots skipped"
        results["plots_skipped"] = note
        _atomic_write(self.out / "results.json", _json(results))
        _atomic_write(self.out / "results.md", markdown(results).encode())
        drawn = []
        if self.cfg.plots is not False and plots and note is None:
            try:
                for name, draw in plots:
                    draw(results, (plot_dir or self.out) / name)
                    drawn.append(name if plot_dir is None else str(plot_dir / name))
            except ImportError as exc:  # a broken matplotlib: the results are on disk already
                note = results["plots_skipped"] = f"matplotlib failed to import ({exc}); plots skipped"
            results["plots"] = drawn
            _atomic_write(self.out / "results.json", _json(results))
        if note:
            print(f"{self.cfg.COMMAND}: {note}", file=sys.stderr, flush=True)
        print(
            f"{self.cfg.COMMAND}: {self.store.computed} cell(s) computed, {self.store.reused} reused, in "
            f"{results.get('runtime_s', 0.0):.1f} s; wrote {self.out / 'results.json'}, results.md and "
            f"{len(drawn)} plot(s)",
            file=sys.stderr,
            flush=True,
        )


def prepare_folder(path: str, flag: str) -> Path:
    """Create ``path`` if needed and check it is a writable folder (UserError naming ``flag``)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {flag} {folder}: {exc.strerror or exc}") from None
    return folder


# --------------------------------------------------------------------------- small shared helpers


def generator(*parts: Any, device: torch.device | str = "cpu") -> torch.Generator:
    """An independent, reproducible stream per cell: seeded by CRC-32 of the parts joined by ``|``."""
    key = "|".join(str(p) for p in parts)
    return torch.Generator(device=device).manual_seed(zlib.crc32(key.encode()))


def resolve_device(name: str | None) -> torch.device:
    """``cpu``, ``cuda[:i]`` or ``auto`` (CUDA when available); UserError when absent."""
    name = (name or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"expected --device cpu, cuda or auto, got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"expected --device cpu, cuda or auto, got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def environment_info(device: torch.device | None = None) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "device": str(device) if device is not None else "cpu",
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    return m, (math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0)


def _cell_text(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return "-" if v is None else str(v)


def table(rows: Iterable[Any], columns: Sequence[tuple[str, Any]]) -> str:
    """A Markdown table: one line per row, one column per ``(header, key)``; ``key`` is a dict key
    or a function of the row. Floats print with 4 significant digits, None as ``-``."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [key(row) if callable(key) else row[key] for _, key in columns]
        lines.append("| " + " | ".join(_cell_text(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure (a ``matplotlib.figure.Figure``: no pyplot, no display) as PNG, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _atomic_write(path, buf.getvalue())
