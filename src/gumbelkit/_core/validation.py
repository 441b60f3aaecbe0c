"""Boundary checks shared by every public function.

One message style everywhere, ``"<function>: expected <argument> <what>, got <value> (<shapes>)"``:
every check takes ``fn``, the name of the public function the user called, and puts it first
(no prefix when ``fn`` is None, for internal callers that have not been given one). Every check
raises one of the :mod:`gumbelkit.errors` classes, which are also the builtin ``ValueError`` /
``TypeError`` / ``IndexError`` the same checks raised before.

Value checks that need the data (NaN, all-masked rows, tau <= 0 in a tensor) cost one reduction
and, to raise, a host sync; they follow the validation switch through
:func:`gumbelkit._core.policy.check_mode`: they raise only in ``"raise"`` mode (the default for CPU
tensors). In ``"device"`` mode (the default for CUDA tensors) the samplers mark bad rows on the
device instead (:func:`bad_rows`, :func:`poison_rows`), and under compile/vmap or ``"off"`` they
are skipped.
"""

from __future__ import annotations

import math
import numbers

import torch

from ..errors import GumbelkitDimError, GumbelkitTypeError, GumbelkitValueError
from .policy import (
    check_mode,
)

__all__ = [
    "Tau",
    "bad_rows",
    "check_dtype",
    "check_float_dtype",
    "check_generator",
    "check_int",
    "check_logits",
    "check_logits_scale",
    "check_positive_int",
    "check_sample_args",
    "check_sample_args_scale",
    "check_shape",
    "check_tau",
    "check_values",
    "is_int",
    "mark_bad_rows",
    "normalize_dim",
    "poison_rows",
    "prefixed",
    "shape_str",
    "tau_like",
]

Tau = float | torch.Tensor


def prefixed(fn: str | None, text: str) -> str:
    """``"fn: text"``, or ``text`` alone when no function name is known."""
    return f"{fn}: {text}" if fn else text


def shape_str(shape) -> str:
    """A shape as ``(3, 4)``: the form every message uses."""
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def is_int(value) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), and not a bool."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def check_int(value, name: str, *, min: int | None = 1, max: int | None = None, fn: str | None = None) -> int:
    """An integer in [min, max] (either bound may be None), returned as a Python int.

    A bool, a float (even 2.0) or any other non-integer is refused, with the same
    :class:`~gumbelkit.errors.GumbelkitValueError` (a ``ValueError``) as an integer out of range.

    Examples:
        >>> check_int(3, "k", max=5)
        3
    """
    if not is_int(value) or (min is not None and value < min) or (max is not None and value > max):
        if max is None:
            span = f"an integer >= {min}" if min is not None else "an integer"
        elif min is None:
            span = f"an integer <= {max}"
        else:
            span = f"an integer in [{min}, {max}]"
        raise GumbelkitValueError(prefixed(fn, f"expected {name} to be {span}, got {value!r}"))
    return int(value)


def check_positive_int(value, name: str, fn: str | None = None) -> int:
    """An integer >= 1 (:func:`check_int` with its defaults)."""
    return check_int(value, name, min=1, fn=fn)


def check_shape(shape, fn: str | None = None, name: str = "shape") -> tuple:
    """A shape (a sequence of integers >= 0) as a tuple of Python ints."""
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise GumbelkitTypeError(
            prefixed(fn, f"expected {name} to be a sequence of integers, got {type(shape).__name__}")
        )
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError, RuntimeError):
        raise GumbelkitTypeError(prefixed(fn, f"expected {name} to be a sequence of integers, got {shape!r}")) from None
    if any(s < 0 for s in out):
        raise GumbelkitValueError(prefixed(fn, f"expected {name} with sizes >= 0, got {out}"))
    return out


def check_float_dtype(dtype, name: str = "dtype", fn: str | None = None) -> torch.dtype:
    """A floating ``torch.dtype`` (float16, bfloat16, float32, float64)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise GumbelkitTypeError(prefixed(fn, f"expected {name} to be a floating dtype, got {dtype}"))
    return dtype


def check_dtype(logits: torch.Tensor, name: str = "logits", fn: str | None = None) -> None:
    """A ``torch.Tensor`` with a floating dtype."""
    if not isinstance(logits, torch.Tensor):
        raise GumbelkitTypeError(prefixed(fn, f"expected {name} to be a torch.Tensor, got {type(logits).__name__}"))
    if not logits.dtype.is_floating_point:
        raise GumbelkitTypeError(
            prefixed(
                fn,
                f"expected {name} with a floating dtype (float16, bfloat16, float32, float64), "
                f"got {logits.dtype} ({name} of shape {shape_str(logits.shape)})",
            )
        )


def normalize_dim(logits: torch.Tensor, dim: int, name: str = "logits", fn: str | None = None) -> int:
    """``dim`` as a non-negative index of ``logits``, which must have at least one category there."""
    if not is_int(dim):
        raise GumbelkitTypeError(prefixed(fn, f"expected dim to be an int, got {type(dim).__name__}"))
    nd = logits.dim()
    if nd == 0:
        raise GumbelkitDimError(prefixed(fn, f"expected {name} with at least one dimension, got a 0-d tensor"))
    if not -nd <= dim < nd:
        raise GumbelkitDimError(
            prefixed(fn, f"expected dim in [{-nd}, {nd - 1}] for {name} of shape {shape_str(logits.shape)}, got {dim}")
        )
    dim = int(dim) % nd
    if logits.shape[dim] == 0:
        raise GumbelkitValueError(
            prefixed(
                fn, f"expected at least one category along dim={dim}, got {name} of shape {shape_str(logits.shape)}"
            )
        )
    return dim


def _raise_bad_values(logits: torch.Tensor, row_max: torch.Tensor, name: str, dim: int, fn: str | None) -> None:
    """Raise the message for NaN, +inf or an all-masked row (row_max: the amax along dim)."""
    where = f"({name} of shape {shape_str(logits.shape)})"
    n_nan = int(torch.isnan(logits).sum())
    if n_nan:
        raise GumbelkitValueError(prefixed(fn, f"expected {name} without NaN, got {n_nan} NaN entries {where}"))
    n_pinf = int((logits == float("inf")).sum())
    if n_pinf:
        raise GumbelkitValueError(prefixed(fn, f"expected {name} < +inf, got {n_pinf} entries equal to +inf {where}"))
    bad = (row_max == float("-inf")).nonzero()
    first = tuple(int(i) for i in bad[0]) if bad.numel() else ()
    raise GumbelkitValueError(
        prefixed(
            fn,
            f"expected at least one finite logit along dim={dim} (a row that is not fully masked), "
            f"got {bad.shape[0]} all-masked row(s), the first at batch index {first} {where}",
        )
    )


def check_values(logits: torch.Tensor, dim: int, name: str = "logits", fn: str | None = None) -> None:
    """Raise on NaN, +inf, or a row whose every entry is -inf (fully masked).

    A single max-reduction finds all three: the row max is NaN if the row has a NaN
    (``amax`` propagates NaN), +inf if it has +inf, and -inf only if every entry is -inf.
    """
    if logits.numel() == 0 or check_mode(logits) != "raise":
        return
    row_max = logits.detach().amax(dim)
    if bool(torch.isfinite(row_max).all()):
        return
    _raise_bad_values(logits, row_max, name, dim, fn)


def check_logits_scale(logits: torch.Tensor, dim: int, name: str = "logits", fn: str | None = None):
    """:func:`check_logits`, also returning the row maxima the samplers shift by.

    Returns ``(dim, row_max, max_abs)``: the non-negative dim, ``amax`` along dim (keepdim,
    detached, finite) and max |row_max| as a Python float -- or None where the value checks do
    not raise (``"device"`` / ``"off"`` mode, compiling, vmap: no host read), which the samplers
    read as "could be anything"; ``row_max`` may then hold NaN or +-inf (see :func:`bad_rows`).
    The same reduction and the same single host sync as :func:`check_values`: the samplers get
    the numbers that decide their stabilising steps for free.
    """
    check_dtype(logits, name, fn)
    dim = normalize_dim(logits, dim, name, fn)
    row_max = logits.detach().amax(dim, keepdim=True)
    if check_mode(logits) != "raise":
        return dim, row_max, None
    if logits.numel() == 0:
        return dim, row_max, 0.0
    top = float(row_max.abs().amax())  # NaN if a row has NaN (amax propagates it), inf for +inf/all-masked
    if not math.isfinite(top):
        _raise_bad_values(logits, row_max.squeeze(dim), name, dim, fn)
    return dim, row_max, top


def check_logits(logits: torch.Tensor, dim: int, name: str = "logits", fn: str | None = None) -> int:
    """dtype, dim and value checks; returns the non-negative dim."""
    check_dtype(logits, name, fn)
    dim = normalize_dim(logits, dim, name, fn)
    check_values(logits, dim, name, fn)
    return dim


def check_tau(tau: Tau, logits: torch.Tensor | None = None, name: str = "tau", fn: str | None = None) -> Tau:
    """Validate a temperature: a positive number, or a positive tensor that broadcasts to logits."""
    if isinstance(tau, torch.Tensor):
        if not tau.dtype.is_floating_point:
            raise GumbelkitTypeError(
                prefixed(
                    fn,
                    f"expected {name} with a floating dtype, got {tau.dtype} ({name} of shape {shape_str(tau.shape)})",
                )
            )
        if logits is not None:
            try:
                shape = torch.broadcast_shapes(tau.shape, logits.shape)
            except RuntimeError:
                shape = None
            if shape != logits.shape:
                raise GumbelkitValueError(
                    prefixed(
                        fn,
                        f"expected {name} broadcastable to logits of shape {shape_str(logits.shape)}, "
                        f"got {name} of shape {shape_str(tau.shape)}",
                    )
                )
        if tau.numel() and check_mode(tau) == "raise":
            t = tau.detach()
            # One sync: NaN fails both comparisons, so this also rejects NaN (and +inf, which
            # would make every (x - max) / tau a 0 / inf = NaN at the row's top).
            if not bool(((t > 0) & (t < float("inf"))).all()):
                n_bad = int((~((t > 0) & (t < float("inf")))).sum())
                raise GumbelkitValueError(
                    prefixed(
                        fn,
                        f"expected {name} > 0 and finite, got a tensor of shape {shape_str(tau.shape)} with "
                        f"{n_bad} entries outside (0, inf) (min {float(t.min())}, max {float(t.max())})",
                    )
                )
        return tau
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise GumbelkitTypeError(prefixed(fn, f"expected {name} to be a float or a tensor, got {type(tau).__name__}"))
    tau = float(tau)
    if not tau > 0 or tau == float("inf"):  # `not >` also rejects NaN
        raise GumbelkitValueError(prefixed(fn, f"expected {name} > 0 and finite, got {tau}"))
    return tau


def bad_rows(row_max: torch.Tensor, tau: Tau | None = None) -> torch.Tensor:
    """The rows a ``"device"``-mode sampler must mark bad, as a bool tensor shaped like ``row_max``.

    ``row_max`` is the keepdim ``amax`` of the logits along the category dim: it is NaN for a row
    with a NaN, +inf for a row with +inf and -inf for an all-masked row, so ``~isfinite`` finds all
    three in one pass over the B row maxima (no pass over the logits). A tensor ``tau`` adds the
    rows where any of its entries is not in (0, inf) (it broadcasts to the logits; its category dim
    is reduced with ``any``).
    """
    bad = ~torch.isfinite(row_max)
    if isinstance(tau, torch.Tensor) and tau.numel():
        t = tau.detach()
        bad_tau = ~((t > 0) & (t < float("inf")))
        nd = row_max.dim()
        bad_tau = bad_tau.reshape((1,) * (nd - bad_tau.dim()) + tuple(bad_tau.shape))
        for d, n in enumerate(row_max.shape):
            if n == 1 and bad_tau.shape[d] != 1:  # the category dim (and any dim tau alone spans)
                bad_tau = bad_tau.any(d, keepdim=True)
        bad = bad | bad_tau
    return bad


def poison_rows(out: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """``out`` with NaN in the rows marked by ``bad`` (a keepdim bool tensor, see :func:`bad_rows`).

    One elementwise pass and no host read: a ``"device"``-mode result is never a valid-looking
    sample for a bad row. (Gradients flow to the other rows only.)
    """
    return torch.where(bad, torch.full((), float("nan"), dtype=out.dtype, device=out.device), out)


def mark_bad_rows(out: torch.Tensor, logits: torch.Tensor, row_max: torch.Tensor, tau: Tau | None = None):
    """``out`` with its bad rows NaN when ``logits`` are checked in ``"device"`` mode, else ``out``.

    For samplers that validated with :func:`check_logits_scale` (whose ``row_max`` this takes) and
    whose output has the logits' shape; see :func:`bad_rows` and :func:`poison_rows`.
    """
    if check_mode(logits) != "device":
        return out
    return poison_rows(out, bad_rows(row_max, tau))


def tau_like(tau: Tau, ref: torch.Tensor) -> Tau:
    """A tensor tau moved to ref's device and dtype (a float stays a float)."""
    if isinstance(tau, torch.Tensor):
        return tau.to(device=ref.device, dtype=ref.dtype)
    return tau


def check_generator(generator, device: torch.device, fn: str | None = None) -> None:
    """A generator must live where the noise is drawn: torch's own error would not name both."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise GumbelkitTypeError(
            prefixed(fn, f"expected generator to be a torch.Generator, got {type(generator).__name__}")
        )
    gdev = torch.device(generator.device)
    dev = torch.device(device)
    if gdev.type != dev.type or (gdev.index is not None and dev.index is not None and gdev.index != dev.index):
        raise GumbelkitValueError(
            prefixed(fn, f"expected a generator on the logits' device ({dev}), got one on {gdev}")
        )


def check_sample_args(logits: torch.Tensor, tau: Tau, dim: int, generator, fn: str | None = None) -> tuple[int, Tau]:
    """The checks every sampler with a temperature makes: logits, dim, tau, generator.

    Returns the non-negative dim and the validated tau.
    """
    dim = check_logits(logits, dim, fn=fn)
    tau = check_tau(tau, logits, fn=fn)
    check_generator(generator, logits.device, fn)
    return dim, tau


def check_sample_args_scale(logits: torch.Tensor, tau: Tau, dim: int, generator, fn: str | None = None):
    """:func:`check_sample_args` plus the row maxima: ``(dim, tau, row_max, max_abs)``.

    See :func:`check_logits_scale` for ``row_max`` and ``max_abs``.
    """
    dim, row_max, max_abs = check_logits_scale(logits, dim, fn=fn)
    tau = check_tau(tau, logits, fn=fn)
    check_generator(generator, logits.device, fn)
    return dim, tau, row_max, max_abs
