"""Boundary checks shared by every public function.

One message style everywhere: ``expected <what>, got <value>``. Value checks that need the
data (NaN, all-masked rows, tau <= 0 in a tensor) cost one reduction and a host sync; under
``torch.compile`` they would force a graph break, and under ``torch.vmap`` a batched tensor
cannot be read on the host at all, so they are skipped there (the eager call of the same code is
where a user meets them first).
"""

from __future__ import annotations

import math
import numbers

import torch

Tau = float | torch.Tensor


class DimError(IndexError, ValueError):
    """A ``dim`` that does not exist for the given tensor (an IndexError, as in PyTorch)."""


def _compiling() -> bool:
    return bool(torch.compiler.is_compiling())


def functorch_active() -> bool:
    """Whether a torch.func transform (vmap, grad, jvp, ...) is running (False while compiling).

    Dynamo cannot trace the C query, and under compilation no functorch layer is visible anyway.
    """
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


def in_vmap() -> bool:
    """Whether the current call runs under ``torch.vmap`` (at any nesting level)."""
    if not functorch_active():
        return False
    stack = torch._C._functorch.get_interpreter_stack() or ()
    return any(i.key() == torch._C._functorch.TransformType.Vmap for i in stack)


def skip_value_checks() -> bool:
    """Data-dependent checks are skipped while compiling and under vmap (see the module note)."""
    return _compiling() or in_vmap()


def shape_str(shape) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype noise and softmax are computed in: float64 for float64 inputs, else float32.

    Half-precision noise truncates the Gumbel tail (fp16 tops out near 7.6, bf16 near 5.5
    instead of ~16.6) and half-precision softmax of perturbed logits loses the argmax, so
    fp16/bf16 inputs are promoted for the arithmetic and the result is cast back.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_dtype(logits: torch.Tensor, name: str = "logits") -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor, got {type(logits).__name__}")
    if not logits.dtype.is_floating_point:
        raise TypeError(
            f"expected {name} with a floating dtype (float16, bfloat16, float32, float64), "
            f"got {logits.dtype}"
        )


def normalize_dim(logits: torch.Tensor, dim: int, name: str = "logits") -> int:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"expected dim to be an int, got {type(dim).__name__}")
    nd = logits.dim()
    if nd == 0:
        raise DimError(f"expected {name} with at least one dimension, got a 0-d tensor")
    if not -nd <= dim < nd:
        raise DimError(
            f"expected dim in [{-nd}, {nd - 1}] for {name} of shape {shape_str(logits.shape)}, got {dim}"
        )
    dim = int(dim) % nd
    if logits.shape[dim] == 0:
        raise ValueError(
            f"expected at least one category along dim={dim}, got {name} of shape {shape_str(logits.shape)}"
        )
    return dim


def _raise_bad_values(logits: torch.Tensor, row_max: torch.Tensor, name: str, dim: int) -> None:
    """Raise the message for NaN, +inf or an all-masked row (row_max: the amax along dim)."""
    n_nan = int(torch.isnan(logits).sum())
    if n_nan:
        raise ValueError(f"expected {name} without NaN, got {n_nan} NaN entries")
    n_pinf = int((logits == float("inf")).sum())
    if n_pinf:
        raise ValueError(f"expected {name} < +inf, got {n_pinf} entries equal to +inf")
    bad = (row_max == float("-inf")).nonzero()
    where = tuple(int(i) for i in bad[0]) if bad.numel() else ()
    raise ValueError(
        f"expected at least one finite logit along dim={dim} (a row that is not fully masked), "
        f"got {bad.shape[0]} all-masked row(s), the first at batch index {where}"
    )


def check_values(logits: torch.Tensor, dim: int, name: str = "logits") -> None:
    """Raise on NaN, +inf, or a row whose every entry is -inf (fully masked).

    A single max-reduction finds all three: the row max is NaN if the row has a NaN
    (``amax`` propagates NaN), +inf if it has +inf, and -inf only if every entry is -inf.
    """
    if skip_value_checks() or logits.numel() == 0:
        return
    row_max = logits.detach().amax(dim)
    if bool(torch.isfinite(row_max).all()):
        return
    _raise_bad_values(logits, row_max, name, dim)


def check_logits_scale(logits: torch.Tensor, dim: int, name: str = "logits"):
    """:func:`check_logits`, also returning the row maxima the samplers shift by.

    Returns ``(dim, row_max, max_abs)``: the non-negative dim, ``amax`` along dim (keepdim,
    detached, finite) and max |row_max| as a Python float -- or None where the value checks are
    skipped (compiling, vmap), which the samplers read as "could be anything". The same
    reduction and the same single host sync as :func:`check_values`: the samplers get the
    numbers that decide their stabilising steps for free.
    """
    check_dtype(logits, name)
    dim = normalize_dim(logits, dim, name)
    row_max = logits.detach().amax(dim, keepdim=True)
    if skip_value_checks():
        return dim, row_max, None
    if logits.numel() == 0:
        return dim, row_max, 0.0
    top = float(row_max.abs().amax())  # NaN if a row has NaN (amax propagates it), inf for +inf/all-masked
    if not math.isfinite(top):
        _raise_bad_values(logits, row_max.squeeze(dim), name, dim)
    return dim, row_max, top


def check_logits(logits: torch.Tensor, dim: int, name: str = "logits") -> int:
    """dtype, dim and value checks; returns the non-negative dim."""
    check_dtype(logits, name)
    dim = normalize_dim(logits, dim, name)
    check_values(logits, dim, name)
    return dim


def check_tau(tau: Tau, logits: torch.Tensor | None = None, name: str = "tau") -> Tau:
    """Validate a temperature: a positive number, or a positive tensor that broadcasts to logits."""
    if isinstance(tau, torch.Tensor):
        if not tau.dtype.is_floating_point:
            raise TypeError(f"expected {name} with a floating dtype, got {tau.dtype}")
        if logits is not None:
            try:
                shape = torch.broadcast_shapes(tau.shape, logits.shape)
            except RuntimeError:
                shape = None
            if shape != logits.shape:
                raise ValueError(
                    f"expected {name} broadcastable to logits of shape {shape_str(logits.shape)}, "
                    f"got {name} of shape {shape_str(tau.shape)}"
                )
        if not skip_value_checks() and tau.numel():
            t = tau.detach()
            # One sync: NaN fails both comparisons, so this also rejects NaN (and +inf, which
            # would make every (x - max) / tau a 0 / inf = NaN at the row's top).
            if not bool(((t > 0) & (t < float("inf"))).all()):
                n_bad = int((~((t > 0) & (t < float("inf")))).sum())
                raise ValueError(
                    f"expected {name} > 0 and finite, got a tensor of shape {shape_str(tau.shape)} with "
                    f"{n_bad} entries outside (0, inf) (min {float(t.min())}, max {float(t.max())})"
                )
        return tau
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise TypeError(f"expected {name} to be a float or a tensor, got {type(tau).__name__}")
    tau = float(tau)
    if not tau > 0 or tau == float("inf"):  # `not >` also rejects NaN
        raise ValueError(f"expected {name} > 0 and finite, got {tau}")
    return tau


def tau_like(tau: Tau, ref: torch.Tensor) -> Tau:
    """A tensor tau moved to ref's device and dtype (a float stays a float)."""
    if isinstance(tau, torch.Tensor):
        return tau.to(device=ref.device, dtype=ref.dtype)
    return tau


def check_generator(generator, device: torch.device) -> None:
    """A generator must live where the noise is drawn: torch's own error would not name both."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"expected generator to be a torch.Generator, got {type(generator).__name__}")
    gdev = torch.device(generator.device)
    dev = torch.device(device)
    if gdev.type != dev.type or (gdev.index is not None and dev.index is not None and gdev.index != dev.index):
        raise ValueError(f"expected a generator on the logits' device ({dev}), got one on {gdev}")


def check_sample_args(logits: torch.Tensor, tau: Tau, dim: int, generator) -> tuple[int, Tau]:
    """The checks every sampler with a temperature makes: logits, dim, tau, generator.

    Returns the non-negative dim and the validated tau.
    """
    dim = check_logits(logits, dim)
    tau = check_tau(tau, logits)
    check_generator(generator, logits.device)
    return dim, tau


def check_sample_args_scale(logits: torch.Tensor, tau: Tau, dim: int, generator):
    """:func:`check_sample_args` plus the row maxima: ``(dim, tau, row_max, max_abs)``.

    See :func:`check_logits_scale` for ``row_max`` and ``max_abs``.
    """
    dim, row_max, max_abs = check_logits_scale(logits, dim)
    tau = check_tau(tau, logits)
    check_generator(generator, logits.device)
    return dim, tau, row_max, max_abs


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"expected {name} to be an integer >= 1, got {value!r}")
    return int(value)
