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

import io
import math
import platform
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .config import UserError, installed
from .store import Store, atomic_write, json_bytes

__all__ = ["Run", "Timer", "environment_info", "generator", "mean_std", "prepare_folder", "progress"]
__all__ += ["means", "resolve_device", "save_figure", "table"]


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
    if enabled or (enabled is None and sys.stderr.isatty() and installed("tqdm")):
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
            if not installed(module):
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

    def meta(
        self, device: torch.device | None = None, definitions: dict | None = None, compute_s: float | None = None
    ) -> dict:
        """The results' common entries: the command, the config, the machine, the time, the cells; then
        the experiment's ``definitions`` and ``compute_s`` (the measured work of every cell, those taken
        from an earlier process included) where given."""
        extra: dict[str, Any] = {"definitions": definitions} if definitions is not None else {}
        extra |= {"compute_s": compute_s} if compute_s is not None else {}
        return {
            "command": self.cfg.command(),
            "config": {k: v for k, v in self.cfg.to_dict().items() if k not in ("progress", "resume")},
            "environment": environment_info(device) | {"threads": self.cfg.threads or torch.get_num_threads()},
            "runtime_s": self.timer.stop(),
            "cells_computed": self.store.computed,
            "cells_resumed": self.store.reused,
        } | extra

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
        if self.cfg.plots is not False and plots and not installed("matplotlib"):
            note = "matplotlib is not installed (pip install matplotlib); plots skipped"
        results["plots_skipped"] = note
        atomic_write(self.out / "results.json", json_bytes(results))
        atomic_write(self.out / "results.md", markdown(results).encode())
        drawn = []
        if self.cfg.plots is not False and plots and note is None:
            try:
                for name, draw in plots:
                    draw(results, (plot_dir or self.out) / name)
                    drawn.append(name if plot_dir is None else str(plot_dir / name))
            except ImportError as exc:  # a broken matplotlib: the results are on disk already
                note = results["plots_skipped"] = f"matplotlib failed to import ({exc}); plots skipped"
            results["plots"] = drawn
            atomic_write(self.out / "results.json", json_bytes(results))
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


def means(cells: Sequence[dict], fields: Iterable[str]) -> dict[str, float]:
    """``field`` and ``field_std`` for each field that the cells report (not None): mean and standard
    deviation over the cells."""
    out = {}
    for f in fields:
        vals = [c[f] for c in cells if c.get(f) is not None]
        if vals:
            out[f], out[f + "_std"] = mean_std(vals)
    return out


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
    atomic_write(path, buf.getvalue())
