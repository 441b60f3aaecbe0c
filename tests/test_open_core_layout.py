"""Layout of estimators/: explicit ``__all__`` everywhere (the lab's own layout rules:
tests/experiments/test_layout.py)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import gumbelkit

PKG = Path(gumbelkit.__file__).resolve().parent
MODULES = sorted((PKG / "estimators").glob("*.py"))


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_every_module_has_an_explicit_all(path):
    mod = importlib.import_module(_module(path))
    assert isinstance(mod.__all__, list)
    assert all(hasattr(mod, name) for name in mod.__all__), [n for n in mod.__all__ if not hasattr(mod, n)]
