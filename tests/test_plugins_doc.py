"""The guide "Writing an estimator" (docs/plugins.md) is run as written: its files are written into
a package, the package is made visible through its entry point, and its usage block runs with
every printed line equal to the comment beside it. The lab's side (the method in every
experiment) is tests/experiments/test_lab_plugins.py, which reuses this installation."""

from __future__ import annotations

import contextlib
import io
import re
import sys
import textwrap
from pathlib import Path

import pytest

import gumbelkit as gk
from gumbelkit.estimators import _registry

PAGE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
_BLOCK = re.compile(r"<!-- (file: (?P<path>\S+)|run) -->\n```\w*\n(?P<code>.*?)```", re.S)


def page_blocks() -> tuple[dict[str, str], list[str]]:
    """The page's files (path -> text) and the code blocks it runs, in order."""
    files, runs = {}, []
    for m in _BLOCK.finditer(PAGE.read_text()):
        if m["path"]:
            files[m["path"]] = m["code"]
        else:
            runs.append(m["code"])
    return files, runs


def entry_points(pyproject: str) -> dict[str, str]:
    """The ``gumbelkit.estimators`` entry points declared in the page's pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads(pyproject)
    return data["project"]["entry-points"][gk.estimators.ENTRY_POINT_GROUP]


def install_plugin(root: Path, monkeypatch) -> None:
    """The page's package on sys.path with a dist-info holding its entry points (what
    ``pip install -e`` leaves behind), and a fresh plugin pass as in a new process."""
    files, _ = page_blocks()
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    info = root / "gk_scaled_st-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gk-scaled-st\nVersion: 0.1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points(files["pyproject.toml"]).items())
    (info / "entry_points.txt").write_text(f"[{gk.estimators.ENTRY_POINT_GROUP}]\n{lines}\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "gk_scaled_st", raising=False)
    monkeypatch.setattr(_registry, "_plugins_loaded", False)
    monkeypatch.setattr(_registry, "_plugin_names", [])


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    before = set(_registry._REGISTRY)
    install_plugin(tmp_path, monkeypatch)
    try:
        yield
    finally:
        for key in set(_registry._REGISTRY) - before:
            del _registry._REGISTRY[key]


def test_the_page_declares_a_package_and_a_usage_block():
    files, runs = page_blocks()
    assert set(files) == {"gk_scaled_st/__init__.py", "pyproject.toml"} and len(runs) == 1
    assert entry_points(files["pyproject.toml"]) == {"scaled_st": "gk_scaled_st"}


def test_the_usage_block_runs_and_prints_what_the_page_says(plugin):
    assert ("categorical", "scaled_st") not in _registry._REGISTRY  # only the first read imports it
    (code,) = page_blocks()[1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(textwrap.dedent(code), str(PAGE), "exec"), {})
    expected = [line.split("# ", 1)[1].strip() for line in code.splitlines() if line.lstrip().startswith("print(")]
    assert out.getvalue().strip().splitlines() == expected
    assert _registry.load_plugins() == ("scaled_st",)
