"""Arguments of :func:`gumbelkit.decoding.sample_tokens`: checks, per-row parameters, per-row keys.

Every argument may be a Python number (checked at once, whatever the device) or a per-row
tensor of shape (B,) (or 0-d, which applies to every row). A number out of range always raises.
The *values* inside a parameter tensor are data: they are checked like the logits, by the
validation mode (:func:`gumbelkit.get_validation`, resolved per tensor by
``gumbelkit._core.policy.check_mode``) -- ``"raise"`` reads them and raises naming the row,
``"device"`` and ``"off"`` never read them on the host and turn a bad row's token into -1.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from .._core.policy import compute_dtype
from .._core.validation import check_dtype, check_generator, is_int, prefixed, shape_str
from ..errors import GumbelkitDimError, GumbelkitTypeError, GumbelkitValueError

__all__ = ["FN", "RowParams", "check_logits_2d", "raise_bad_rows", "row_keys", "row_params"]

FN = "sample_tokens"


def check_logits_2d(logits) -> None:
    """A floating (B, V) tensor with V >= 1 (B may be 0)."""
    check_dtype(logits, "logits", FN)
    if logits.dim() != 2:
        raise GumbelkitDimError(
            prefixed(FN, f"expected logits of shape (B, V), got logits of shape {shape_str(logits.shape)}")
        )
    if logits.shape[1] == 0:
        raise GumbelkitValueError(
            prefixed(FN, f"expected at least one token (V >= 1), got logits of shape {shape_str(logits.shape)}")
        )


@dataclass
class RowParams:
    """Per-row parameters, each a (B,) tensor on the logits' device.

    temperature: compute dtype, 0 for greedy rows; top_k: int64, 0 for off (values >= V are off);
    top_p: compute dtype, 1 for off; min_p: compute dtype, 0 for off; bad: bool, a parameter value
    out of range (only set where the value checks do not raise); no_top_k_top_p: top_k and top_p
    were given as None or neutral numbers (the GPU path then skips the threshold search).
    """

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    bad: torch.Tensor
    no_top_k_top_p: bool = False  # known without reading a tensor: top_k and top_p off in every row


def _number(value, name: str, ok, span: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise GumbelkitTypeError(
            prefixed(FN, f"expected {name} to be a number or a tensor, got {type(value).__name__}")
        )
    v = float(value)
    if not ok(v):
        raise GumbelkitValueError(prefixed(FN, f"expected {name} {span}, got {value!r}"))
    return v


def _row_tensor(value: torch.Tensor, name: str, B: int, logits: torch.Tensor, integer: bool) -> torch.Tensor:
    """A parameter tensor as (B,): dtype kind, shape and device checked (never its values)."""
    if integer:
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise GumbelkitTypeError(
                prefixed(
                    FN,
                    f"expected {name} with an integer dtype, got {value.dtype} ({name} of shape {shape_str(value.shape)})",
                )
            )
    elif not value.dtype.is_floating_point:
        raise GumbelkitTypeError(
            prefixed(
                FN,
                f"expected {name} with a floating dtype, got {value.dtype} ({name} of shape {shape_str(value.shape)})",
            )
        )
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != B):
        raise GumbelkitValueError(
            prefixed(
                FN,
                f"expected {name} to be a number or a tensor of shape ({B},) (one value per row), "
                f"got {name} of shape {shape_str(value.shape)} (logits of shape {shape_str(logits.shape)})",
            )
        )
    if value.device != logits.device:
        raise GumbelkitValueError(
            prefixed(FN, f"expected {name} on the logits' device ({logits.device}), got one on {value.device}")
        )
    return value.detach().expand(B)


def _bad_rows_message(name: str, span: str, value: torch.Tensor, bad: torch.Tensor) -> str:
    rows = bad.nonzero().squeeze(1)
    first = int(rows[0])
    return prefixed(
        FN,
        f"expected every {name} {span}, got {float(value[first])!r} in row {first} "
        f"({rows.numel()} bad row(s), {name} of shape {shape_str(value.shape)})",
    )


def _checked(value: torch.Tensor, bad: torch.Tensor, name: str, span: str, mode: str) -> torch.Tensor:
    """``bad`` (the rows whose value is out of range) raised at once in "raise" mode, else returned."""
    if mode == "raise" and bool(bad.any()):
        raise GumbelkitValueError(_bad_rows_message(name, span, value, bad))
    return bad


def row_params(logits: torch.Tensor, temperature, top_k, top_p, min_p, mode: str) -> RowParams:
    """The four sampling parameters as (B,) tensors, checked (see the module note)."""
    B, V = logits.shape
    dev = logits.device
    cdt = compute_dtype(logits.dtype)
    bad = torch.zeros(B, dtype=torch.bool, device=dev)

    if isinstance(temperature, torch.Tensor):
        t = _row_tensor(temperature, "temperature", B, logits, integer=False).to(cdt)
        bad = bad | _checked(t, ~((t >= 0) & (t < float("inf"))), "temperature", ">= 0 and finite", mode)
    else:
        v = _number(temperature, "temperature", lambda v: 0 <= v < float("inf"), ">= 0 and finite")
        t = torch.full((B,), v, dtype=cdt, device=dev)

    if top_k is None:
        k = torch.zeros(B, dtype=torch.int64, device=dev)
    elif isinstance(top_k, torch.Tensor):
        k = _row_tensor(top_k, "top_k", B, logits, integer=True).to(torch.int64)
        bad = bad | _checked(k, k < 0, "top_k", ">= 0 (0 keeps every token)", mode)
    else:
        if not is_int(top_k) or top_k < 0:
            raise GumbelkitValueError(prefixed(FN, f"expected top_k to be None or an integer >= 0, got {top_k!r}"))
        k = torch.full((B,), int(top_k), dtype=torch.int64, device=dev)
    # k >= V keeps every token, as k = 0 does; a negative k (a bad row) is left for `bad`
    k = torch.where(k >= V, 0, k)

    if top_p is None:
        p = torch.ones(B, dtype=cdt, device=dev)
    elif isinstance(top_p, torch.Tensor):
        p = _row_tensor(top_p, "top_p", B, logits, integer=False).to(cdt)
        bad = bad | _checked(p, ~((p > 0) & (p <= 1)), "top_p", "in (0, 1]", mode)
    else:
        v = _number(top_p, "top_p", lambda v: 0 < v <= 1, "in (0, 1]")
        p = torch.full((B,), v, dtype=cdt, device=dev)

    if min_p is None:
        mp = torch.zeros(B, dtype=cdt, device=dev)
    elif isinstance(min_p, torch.Tensor):
        mp = _row_tensor(min_p, "min_p", B, logits, integer=False).to(cdt)
        bad = bad | _checked(mp, ~((mp >= 0) & (mp < 1)), "min_p", "in [0, 1)", mode)
    else:
        v = _number(min_p, "min_p", lambda v: 0 <= v < 1, "in [0, 1)")
        mp = torch.full((B,), v, dtype=cdt, device=dev)

    # Bad rows get neutral values, so that nothing downstream computes with them.
    t = torch.where(bad, 1.0, t)
    k = torch.where(bad, 0, k)
    p = torch.where(bad, 1.0, p)
    mp = torch.where(bad, 0.0, mp)
    static_off = (top_k is None or (not isinstance(top_k, torch.Tensor) and (top_k == 0 or top_k >= V))) and (
        top_p is None or (not isinstance(top_p, torch.Tensor) and top_p == 1)
    )
    return RowParams(t, k, p, mp, bad, static_off)


def _words64(value, name: str, B: int, logits: torch.Tensor) -> torch.Tensor:
    """A 64-bit value per row (int64 bit patterns), from an int or an integer tensor."""
    if isinstance(value, torch.Tensor):
        return _row_tensor(value, name, B, logits, integer=True).to(torch.int64)
    if not is_int(value) or not -(2**63) <= value < 2**64:
        raise GumbelkitValueError(
            prefixed(FN, f"expected {name} to be an integer in [-2^63, 2^64) or an integer tensor, got {value!r}")
        )
    v = int(value) & 0xFFFFFFFFFFFFFFFF
    return torch.full((B,), v - (1 << 64) if v >= 1 << 63 else v, dtype=torch.int64, device=logits.device)


def _split(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) 32-bit words of int64 values, as int32 bit patterns (no overflowing cast)."""
    lo = v & 0xFFFFFFFF
    lo = lo - ((lo >> 31) << 32)  # to [-2^31, 2^31): the same 32-bit pattern
    return lo.to(torch.int32), (v >> 32).to(torch.int32)


def row_keys(logits: torch.Tensor, seeds, offsets, generator) -> torch.Tensor:
    """The (B, 4) int32 Philox words of every row: (seed lo, seed hi, offset lo, offset hi).

    With ``seeds``, a row's key depends on its own seed and offset only. Without, the 128 bits
    of every row are drawn from ``generator`` (or the default generator of the logits' device)
    by one ``random_`` into a device tensor: no host read, and a CUDA graph replays it with
    fresh values.
    """
    B = logits.shape[0]
    if seeds is None:
        if offsets is not None:
            raise GumbelkitValueError(
                prefixed(FN, "expected seeds with offsets (an offset selects a stream of a seed), got seeds=None")
            )
        check_generator(generator, logits.device, FN)
        keys = torch.empty((B, 2), dtype=torch.int64, device=logits.device)
        keys.random_(-(2**63), None, generator=generator)  # the full 64-bit range: every bit uniform
        return keys.view(torch.int32).view(B, 4)
    if generator is not None:
        raise GumbelkitValueError(
            prefixed(
                FN, "expected either seeds (per-request noise) or a generator, got both (the generator would be unused)"
            )
        )
    s = _words64(seeds, "seeds", B, logits)
    o = _words64(0 if offsets is None else offsets, "offsets", B, logits)
    return torch.stack([*_split(s), *_split(o)], dim=1)


def raise_bad_rows(logits: torch.Tensor, row_max: torch.Tensor, bad: torch.Tensor) -> None:
    """Raise for the first row whose logits have a NaN, a +inf, or no finite entry."""
    rows = bad.nonzero().squeeze(1)
    r = int(rows[0])
    m = float(row_max[r])
    if m != m:
        what = "a NaN"
    elif m > 0:
        what = "a +inf"
    else:
        what = "no finite entry (every token masked)"
    raise GumbelkitValueError(
        prefixed(
            FN,
            f"expected finite logits with at least one token left in every row, got {what} in row {r} "
            f"({rows.numel()} bad row(s), logits of shape {shape_str(logits.shape)})",
        )
    )
