"""The exceptions gumbelkit raises for bad arguments: one base class, builtin-compatible subclasses.

Every argument check of the library raises a :class:`GumbelkitError`, so ``except
gumbelkit.GumbelkitError`` catches exactly the library's own complaints. Each subclass also
derives from the builtin type that the same check raised before (and that PyTorch raises for the
same mistake), so existing ``except ValueError`` / ``except TypeError`` / ``except IndexError``
handlers keep working:

========================  ====================================  ===========================================
class                     also an instance of                   raised for
========================  ====================================  ===========================================
:class:`GumbelkitError`   ``Exception``                         (base class only)
``GumbelkitValueError``   ``ValueError``                        a bad value: NaN, tau <= 0, k too large, ...
``GumbelkitTypeError``    ``TypeError``                         a bad type: an integer dtype, a non-tensor
``GumbelkitDimError``     ``IndexError``, ``ValueError``        a ``dim`` the tensor does not have
========================  ====================================  ===========================================

Messages follow one style, ``"<function>: expected <argument> <what>, got <value> (<shapes>)"``:
they name the public function that was called, the argument, the requirement, the offending
value, and the shape of the tensor involved, e.g.
``gumbel_max: expected dim in [-2, 1] for logits of shape (3, 4), got 5``.

Examples:
    >>> import gumbelkit as gk
    >>> try:
    ...     gk.gumbel_softmax(torch.zeros(3), tau=-1.0)
    ... except gk.GumbelkitError as exc:
    ...     print(type(exc).__name__, isinstance(exc, ValueError))
    ...     print(exc)
    GumbelkitValueError True
    gumbel_softmax: expected tau > 0 and finite, got -1.0
"""

from __future__ import annotations

__all__ = [
    "GumbelkitDimError",
    "GumbelkitError",
    "GumbelkitTypeError",
    "GumbelkitValueError",
]


class GumbelkitError(Exception):
    """Base class of every exception gumbelkit raises for a bad argument."""


class GumbelkitValueError(GumbelkitError, ValueError):
    """An argument of the right type with a bad value (a ``ValueError``)."""


class GumbelkitTypeError(GumbelkitError, TypeError):
    """An argument of the wrong type or dtype (a ``TypeError``)."""


class GumbelkitDimError(GumbelkitError, IndexError, ValueError):
    """A ``dim`` that does not exist for the given tensor: an ``IndexError`` as in PyTorch, and a ``ValueError``."""
