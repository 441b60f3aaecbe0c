"""The core library's module layout: imports between modules use public names from ``__all__``."""

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

import gumbelkit

PKG = Path(gumbelkit.__file__).resolve().parent
# estimators/ is checked by its own test (test_open_core_layout.py).
CORE = sorted(p for p in PKG.rglob("*.py") if p.relative_to(PKG).parts[0] not in ("estimators", "conftest.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _relative_imports(path: Path):
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                yield node.lineno, target, alias.name


def _subpackage(module: str) -> str:
    """``kernels`` for gumbelkit.kernels._fused, ``""`` for the top-level modules (gumbelkit._sampling)."""
    parts = module.split(".")[1:]
    return parts[0] if parts and not parts[0].startswith("_") and (PKG / parts[0]).is_dir() else ""


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(PKG)))
def test_core_modules_import_only_public_names_listed_in_all(path):
    """Across subpackages (and from the top-level modules): non-underscore names from ``__all__``."""
    here = _subpackage(_module_name(path))
    for lineno, target, name in _relative_imports(path):
        if here and _subpackage(target) == here:
            continue  # inside one subpackage its private modules may share what they like
        mod = importlib.import_module(target)
        if hasattr(mod, "__path__") and importlib.util.find_spec(f"{target}.{name}") is not None:
            continue  # a submodule of a package: `from . import nn`
        assert not name.startswith("_"), f"{path.name}:{lineno} imports the private name {target}.{name}"
        assert name in getattr(mod, "__all__", ()), f"{path.name}:{lineno}: {name} is not in {target}.__all__"


@pytest.mark.parametrize(
    "module",
    [
        "gumbelkit._core.policy",
        "gumbelkit._core.validation",
        "gumbelkit._core.numerics",
        "gumbelkit._core.autograd",
        "gumbelkit._sampling",
        "gumbelkit._core.noise",
        "gumbelkit._kl",
        "gumbelkit.errors",
        "gumbelkit.structured",
        "gumbelkit.distributions",
        "gumbelkit.schedules",
        "gumbelkit.nn",
    ],
)
def test_every_module_has_an_explicit_all(module):
    mod = importlib.import_module(module)
    assert mod.__all__ and all(hasattr(mod, n) for n in mod.__all__)


def test_one_dtype_rule():
    from gumbelkit._core import policy as _policy
    from gumbelkit._core import validation as _validation
    from gumbelkit.kernels import _fused

    assert _validation.compute_dtype is _policy.compute_dtype and _fused.compute_dtype is _policy.compute_dtype
    import torch

    assert [_policy.compute_dtype(d) for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)] == [
        torch.float32,
        torch.float32,
        torch.float32,
        torch.float64,
    ]


def test_backwards_compatible_names_stay_importable():
    # estimators/ and kernels/ imported these from gumbelkit._sampling / _validation before the split
    from gumbelkit._core.validation import (  # noqa: F401
        DimError,
        Tau,
        check_dtype,
        check_generator,
        check_logits,
        check_positive_int,
        check_sample_args_scale,
        compute_dtype,
        shape_str,
        skip_value_checks,
    )
    from gumbelkit._sampling import (  # noqa: F401
        _SHIFT_ABOVE,
        _lean,
        _needs_grad,
        _one_hot,
        _softmax_grad,
        gumbel_argmax,
        log_exp_noise,
        noise_plan,
        one_hot_like,
        one_hot_straight_through,
        per_class_tau,
        plain_shift,
        prepare_tau,
        tempered_core,
        tempered_softmax,
        theta_shift,
    )
