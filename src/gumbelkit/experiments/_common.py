"""Helpers shared by the experiments: clean user errors, atomic and checksummed files, tables, devices.

The checksummed files (``write_checked_*`` / ``read_checked_*``) are the experiments' one resume
scheme; option checking, settings and outputs are in :mod:`._harness`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import platform
import struct
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MAX_THREADS",
    "MIN_TAU",
    "UserError",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "environment_info",
    "markdown_table",
    "mean_std",
    "read_checked_bytes",
    "read_checked_json",
    "read_checked_torch",
    "resolve_device",
    "save_figure",
    "write_checked_bytes",
    "write_checked_json",
    "write_checked_torch",
]


class UserError(Exception):
    """A problem with the user's input or environment: the CLI prints one line and exits non-zero."""


#: Smallest temperature the vae and gradients experiments accept. Below it a float32 relaxed
#: sample is one-hot to the last bit and its gradient underflows to exactly zero, so the measured
#: quantities (relative bias against the relaxed gradient, training progress) say nothing.
MIN_TAU = 1e-3

#: Most CPU threads any command accepts (torch.set_num_threads(100000) crashes the interpreter).
MAX_THREADS = 1024


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    A reader (or a crash) never sees a half-written file: the rename is atomic on POSIX.
    An OSError (a folder in the way, no permission, a full disk) becomes a one-line
    :class:`UserError` naming ``path``.
    """
    path = Path(path)
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
        # mkstemp creates the file 0600; give results the usual permissions (0666 minus umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: some file systems cannot open or sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def atomic_torch_save(obj: Any, path) -> Path:
    """``torch.save`` atomically, without a checksum (resume state uses :func:`write_checked_torch`)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- checked files
#
# Resume state (checkpoints, finished-run records, partial results) is written with a SHA-256
# digest and verified before anything in it is trusted: a flipped bit must not silently change a
# result. Binary files are one self-contained frame, written atomically in one piece:
#
#     MAGIC (8 bytes) | payload length (8 bytes, big-endian) | payload | SHA-256 of all before (32 bytes)
#
# JSON files stay plain JSON: the top-level object carries ``"checksum": "sha256:<hex>"``, the
# digest of the canonical serialisation (sorted keys, no whitespace) of every other key.

CHECKED_MAGIC = b"\x89GKSUM1\n"
_LENGTH = struct.Struct(">Q")
_DIGEST_BYTES = 32
CHECKSUM_KEY = "checksum"


class _Damaged(Exception):
    """Why a checked file cannot be trusted (turned into a one-line UserError by the readers)."""


def write_checked_bytes(path, payload: bytes) -> Path:
    """Atomically write ``payload`` framed with a length and a SHA-256 digest (see above)."""
    head = CHECKED_MAGIC + _LENGTH.pack(len(payload))
    h = hashlib.sha256(head)
    h.update(payload)
    return atomic_write_bytes(path, b"".join((head, payload, h.digest())))


def _unframe(data: bytes) -> bytes:
    if not data:
        raise _Damaged("is empty")
    if not data.startswith(CHECKED_MAGIC):
        if data.startswith(b"PK\x03\x04") or data[:1] == b"\x80":
            raise _Damaged("has no checksum (written by an older gumbelkit or another program)")
        raise _Damaged("is not a gumbelkit state file (unknown header)")
    n_head = len(CHECKED_MAGIC) + _LENGTH.size
    if len(data) < n_head + _DIGEST_BYTES:
        raise _Damaged(f"is truncated ({len(data)} bytes, shorter than its header and checksum)")
    (n,) = _LENGTH.unpack_from(data, len(CHECKED_MAGIC))
    expected = n_head + n + _DIGEST_BYTES
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise _Damaged(f"is {what} ({len(data)} bytes, header says {expected})")
    body, digest = data[: n_head + n], data[n_head + n :]
    if hashlib.sha256(body).digest() != digest:
        raise _Damaged("is damaged (SHA-256 checksum mismatch)")
    return body[n_head:]


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _Damaged(f"cannot be read ({exc.strerror or exc})") from None


def _refuse(what: str, path, reason: str, hint: str | None) -> UserError:
    return UserError(f"{what} {path} {reason}" + (f"; {hint}" if hint else ""))


def read_checked_bytes(path, *, what: str = "state file", hint: str | None = None) -> bytes:
    """The payload of a file written by :func:`write_checked_bytes`; UserError (one line naming
    ``path`` and the reason) when it is empty, truncated, damaged or has no checksum."""
    path = Path(path)
    try:
        return _unframe(_read_bytes(path))
    except _Damaged as exc:
        raise _refuse(what, path, str(exc), hint) from None


def write_checked_torch(obj: Any, path) -> Path:
    """``torch.save`` ``obj`` into a checked frame, atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_checked_bytes(path, buf.getvalue())


def read_checked_torch(path, *, what: str = "checkpoint", hint: str | None = None) -> Any:
    """Verify the digest, then ``torch.load(..., weights_only=True)`` on CPU; UserError otherwise."""
    payload = read_checked_bytes(path, what=what, hint=hint)
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types; a verified frame that is no tensor pickle
        raise _refuse(what, path, f"does not load ({type(exc).__name__})", hint) from None


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True, ensure_ascii=True).encode()


def write_checked_json(path, obj: dict) -> Path:
    """Atomically write the dict ``obj`` as JSON with a ``"checksum"`` entry (see above)."""
    plain = json.loads(json.dumps(obj, default=_json_default, allow_nan=True))
    if not isinstance(plain, dict) or CHECKSUM_KEY in plain:
        raise TypeError(f"expected a dict without a {CHECKSUM_KEY!r} key, got {type(obj).__name__}")
    digest = hashlib.sha256(_canonical(plain)).hexdigest()
    return atomic_write_json(path, {CHECKSUM_KEY: f"sha256:{digest}", **plain})


def read_checked_json(path, *, what: str = "state file", hint: str | None = None) -> dict:
    """The dict written by :func:`write_checked_json`, checksum removed; UserError (one line) when
    the file is empty, not JSON, not an object, has no checksum or a wrong one."""
    path = Path(path)
    try:
        data = _read_bytes(path)
        if not data.strip():
            raise _Damaged("is empty")
        try:
            obj = json.loads(data.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError
            raise _Damaged("is damaged (not valid JSON)") from None
        if not isinstance(obj, dict):
            raise _Damaged(f"is not a gumbelkit state file (a JSON {type(obj).__name__}, expected an object)")
        stored = obj.pop(CHECKSUM_KEY, None)
        if stored is None:
            raise _Damaged("has no checksum (written by an older gumbelkit or another program)")
        if not isinstance(stored, str) or stored != f"sha256:{hashlib.sha256(_canonical(obj)).hexdigest()}":
            raise _Damaged("is damaged (SHA-256 checksum mismatch)")
        return obj
    except _Damaged as exc:
        raise _refuse(what, path, str(exc), hint) from None


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats are printed with 4 significant digits."""

    def fmt(v):
        if isinstance(v, float):
            if math.isnan(v):
                return "nan"
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def resolve_device(name: str | None) -> torch.device:
    """``cpu``, ``cuda[:i]`` or ``auto`` (CUDA when available) -> torch.device; UserError when absent."""
    name = (name or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"expected --device cpu, cuda or auto, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"expected --device cpu, cuda or auto, got {name!r}")
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


def save_figure(fig, path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
