"""The binary methods, each declared once: kind, exact 0/1 forward, temperature, options, reference."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import GumbelkitTypeError, GumbelkitValueError
from ..estimators._registry import OptionSpec

__all__ = ["METHODS", "BinaryMethod", "get_method"]


@dataclass(frozen=True)
class BinaryMethod:
    """One binary method: how :func:`gumbelkit.binary.sample` or :func:`gumbelkit.binary.surrogate` runs it.

    Attributes:
        name: the method's name.
        kind: ``"sample"`` (a pathwise sample whose backward is the estimator) or ``"surrogate"``
            (a score-function estimator that needs the loss).
        hard: the forward value is exactly 0/1 (the analogue of ``one_hot`` in
            :class:`gumbelkit.MethodSpec`).
        uses_tau: the temperature changes the result.
        default_tau: the temperature used when none is given (None: no temperature).
        options: the method's keyword options.
        reference: the paper.
        fn: the implementation.
    """

    name: str
    kind: str
    hard: bool
    uses_tau: bool
    default_tau: float | None
    options: tuple[OptionSpec, ...] = ()
    reference: str = ""
    fn: Callable[..., Any] = field(default=lambda *a, **k: None, repr=False, compare=False)

    def resolve(self, options: Mapping[str, Any], fn: str) -> dict[str, Any]:
        """Every option's value: the given ones checked, the others at their defaults."""
        known = {o.name: o for o in self.options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            valid = ", ".join(sorted(known)) or "none"
            raise GumbelkitValueError(
                f"{fn}: expected options of method {self.name!r} ({valid}), got unknown option(s) {', '.join(unknown)}"
            )
        return {
            name: (spec.check(options[name], self.name, where=f"{fn}: ") if name in options else spec.default)
            for name, spec in known.items()
        }


_METHODS: dict[str, BinaryMethod] = {}

#: Read-only view of the binary methods by name.
METHODS: Mapping[str, BinaryMethod] = MappingProxyType(_METHODS)


def declare(name: str, kind: str, **attrs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: declare ``fn`` as the binary method ``name`` (internal)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _METHODS[name] = BinaryMethod(name, kind, fn=fn, **attrs)
        return fn

    return deco


def get_method(method: Any, kind: str, fn: str) -> BinaryMethod:
    """The method ``method`` of ``kind``, or an error naming ``fn`` and the valid names."""
    valid = sorted(n for n, m in _METHODS.items() if m.kind == kind)
    if not isinstance(method, str):
        raise GumbelkitTypeError(f"{fn}: expected method to be a str (one of {', '.join(valid)}), got {method!r}")
    spec = _METHODS.get(method)
    if spec is None or spec.kind != kind:
        raise GumbelkitValueError(f"{fn}: expected method to be one of {', '.join(valid)}, got {method!r}")
    return spec
