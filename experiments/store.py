"""The lab's files: written atomically with a SHA-256 digest and read by one loader that verifies it
first, and the store of a run directory's finished cells (``OUT/cells``)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch

from .config import UserError

__all__ = ["Store", "atomic_write", "json_bytes", "read_checked", "write_checked"]


_MAGIC = b"\x89GKSUM1\n"
_LENGTH = struct.Struct(">Q")


def atomic_write(path: Path, data: bytes) -> None:
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


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented JSON bytes (tensors as lists, NaN allowed)."""
    return (json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n").encode()


def write_checked(path: Path, obj: Any) -> None:
    """``obj`` (JSON when the name ends in .json, else ``torch.save``) framed with its length and a
    SHA-256 digest, written atomically: MAGIC | length | payload | SHA-256 of all before."""
    if path.suffix == ".json":
        payload = json_bytes(obj)
    else:
        buf = io.BytesIO()
        torch.save(obj, buf)
        payload = buf.getvalue()
    head = _MAGIC + _LENGTH.pack(len(payload))
    atomic_write(path, head + payload + hashlib.sha256(head + payload).digest())


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
