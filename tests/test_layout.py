"""The library's module layout: one private core, one explicit export list, no aliases.

* ``gumbelkit._core`` is the private core: its modules import one another and ``gumbelkit.errors``
  only (at module level), and every sampler and estimator imports it directly;
* outside the core, a module imports another subpackage's names only from that module's
  ``__all__`` (inside one subpackage, its private modules share what they like);
* every module has an explicit ``__all__``; ``gumbelkit.__all__`` is the public API: every
  subpackage is reachable as an attribute and listed there;
* no compatibility aliases (a module-level ``name = other_name``), one straight-through function.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import torch

import gumbelkit as gk
from gumbelkit._core import autograd as core_autograd

PKG = Path(gk.__file__).resolve().parent
MODULES = sorted(PKG.rglob("*.py"))
SUBPACKAGES = sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists())
_IDS = {"ids": lambda p: str(p.relative_to(PKG))}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _relative_imports(path: Path, *, top_level_only: bool = False):
    """(line, target module, imported name) of each relative import."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                yield node.lineno, target, alias.name


def _subpackage(module: str) -> str:
    """``kernels`` for gumbelkit.kernels._fused, ``_core`` for the core, ``""`` for top-level modules."""
    parts = module.split(".")[1:]
    return parts[0] if parts and (PKG / parts[0]).is_dir() else ""


def _is_submodule(target: str, name: str) -> bool:
    mod = importlib.import_module(target)
    return hasattr(mod, "__path__") and importlib.util.find_spec(f"{target}.{name}") is not None


@pytest.mark.parametrize("path", sorted((PKG / "_core").glob("*.py")), **_IDS)
def test_the_core_imports_only_itself_and_the_errors(path):
    for lineno, target, name in _relative_imports(path, top_level_only=True):
        full = target if not _is_submodule(target, name) else f"{target}.{name}"
        assert full.startswith("gumbelkit._core") or full == "gumbelkit.errors", (
            f"{path.name}:{lineno} imports {full}.{name} at module level: the core depends on nothing above it"
        )


@pytest.mark.parametrize("path", MODULES, **_IDS)
def test_modules_import_public_names_across_subpackages(path):
    here = _subpackage(_module_name(path))
    for lineno, target, name in _relative_imports(path):
        there = _subpackage(target)
        if (here and there == here) or there == "_core" or _is_submodule(target, name):
            continue  # inside one subpackage, from the private core, or a submodule (`from . import nn`)
        assert not name.startswith("_"), f"{path.name}:{lineno} imports the private name {target}.{name}"
        assert name in importlib.import_module(target).__all__, f"{path.name}:{lineno}: {name} not in {target}.__all__"


@pytest.mark.parametrize("path", MODULES, **_IDS)
def test_every_module_has_an_explicit_all(path):
    if path.name == "__init__.py" and path.parent.name == "_core":
        pytest.skip("the core package's __init__ is its docstring only")
    mod = importlib.import_module(_module_name(path))
    assert isinstance(mod.__all__, list) and len(set(mod.__all__)) == len(mod.__all__)
    assert [n for n in mod.__all__ if not hasattr(mod, n)] == []


def test_the_export_list_is_the_public_api():
    public = {s for s in SUBPACKAGES if not s.startswith("_")} | {"errors", "nn", "schedules"}
    assert public <= set(gk.__all__), sorted(public - set(gk.__all__))
    for name in public:
        assert inspect.ismodule(getattr(gk, name)), name  # reachable as an attribute: gk.kernels, gk.estimators...
    assert [n for n in gk.__all__ if not hasattr(gk, n)] == []
    assert all(not n.startswith("_") or n == "__version__" for n in gk.__all__)
    # every public name of the package namespace is in the list (nothing reachable by accident)
    extra = {n for n in vars(gk) if not n.startswith("_") and n not in gk.__all__}
    assert extra == set(), sorted(extra)


@pytest.mark.parametrize("path", MODULES, **_IDS)
def test_no_compatibility_aliases(path):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id not in vars(builtins):
            raise AssertionError(
                f"{path.name}:{node.lineno}: `{ast.unparse(node)}` gives {node.value.id} a second name"
            )


def _code(path: Path) -> str:
    """The module's code without its docstrings (which may show the pattern they avoid)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            body[0] = ast.Pass()
    return ast.unparse(tree)


def test_one_straight_through():
    """Every exact 0/1 forward with an identity backward (one-hot, k-hot, permutation) is the core's one function."""
    code = {p.relative_to(PKG): _code(p) for p in MODULES}
    assert gk.estimators.one_hot_straight_through is core_autograd.one_hot_straight_through
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            takes_index = isinstance(node, ast.FunctionDef) and {"index", "perm"} & {a.arg for a in node.args.args}
            if takes_index and node.name.endswith("straight_through"):  # (a 0/1 forward at given positions)
                if path.relative_to(PKG) == Path("_core/autograd.py"):
                    continue
                # a public checked form (k-hot, permutation) validates and calls the core's function
                assert "one_hot_straight_through(" in ast.unparse(node), f"{path.name}: {node.name} is a second one"
    users = [p for p, s in code.items() if "one_hot_straight_through(" in s]
    assert len(users) >= 5, users  # estimators, k-subsets and permutations all share it
    # the rounding-inexact idiom `hard - soft.detach() + soft` is written nowhere
    assert [p for p, s in code.items() if re.search(r"- \w+\.detach\(\) \+ \w+", s)] == []


def test_one_dtype_rule():
    from gumbelkit._core.policy import compute_dtype

    got = [compute_dtype(d) for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)]
    assert got == [torch.float32, torch.float32, torch.float32, torch.float64]


def test_tests_mirror_the_modules():
    """tests/<subpackage>/test_<subpackage>[_<module>].py for every subpackage; the lab's tests apart."""
    tests = Path(__file__).resolve().parent
    for sub in SUBPACKAGES:
        folder = tests / sub.lstrip("_")
        files = sorted(folder.glob("test_*.py"))
        assert files, f"no tests/{folder.name}/ for gumbelkit.{sub}"
        modules = {p.stem.lstrip("_") for p in (PKG / sub).glob("*.py")} | {sub.lstrip("_")}
        for f in files:
            assert f.stem.startswith(f"test_{folder.name}"), f"{f.name}: expected test_{folder.name}_<module>.py"
            rest = f.stem.removeprefix(f"test_{folder.name}").lstrip("_")
            assert not rest or any(rest.startswith(m) for m in modules), f"{f.name}: no module {rest!r} in {sub}"
    assert (tests / "experiments").is_dir()  # the lab's tests, apart from the library's
