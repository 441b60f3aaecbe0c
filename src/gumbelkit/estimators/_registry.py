"""Name -> estimator registry behind :func:`gumbelkit.sample`.

An estimator is a function ``(logits, tau, *, dim, generator, **options) -> Tensor`` whose
forward value and backward *are* the method; it validates its own inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Estimator = Callable[..., torch.Tensor]

_REGISTRY: dict[str, Estimator] = {}
# Methods whose forward value is exactly one-hot.
_ONE_HOT: set = set()


def register(name: str, *, one_hot: bool) -> Callable[[Estimator], Estimator]:
    """Decorator: register ``fn`` under ``name`` (``one_hot`` says whether its forward is one-hot)."""

    def deco(fn: Estimator) -> Estimator:
        if name in _REGISTRY:
            raise ValueError(f"expected a new method name, got {name!r} (already registered)")
        _REGISTRY[name] = fn
        if one_hot:
            _ONE_HOT.add(name)
        return fn

    return deco


def get_estimator(name: str) -> Estimator:
    """The registered function for ``name``; ValueError listing the choices otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"expected method in {tuple(_REGISTRY)}, got {name!r}") from None


def registered_methods() -> tuple:
    return tuple(_REGISTRY)


def is_one_hot(name: str) -> bool:
    """Whether method ``name`` returns an exactly one-hot forward value."""
    get_estimator(name)
    return name in _ONE_HOT
