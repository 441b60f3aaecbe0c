"""The library's policies, each written once: the dtype rule and the execution-context rules.

* **dtype rule** (:func:`compute_dtype`): noise is drawn and softmaxes are computed in float64
  for float64 inputs and in float32 for everything else (float32, float16, bfloat16); results
  are cast back to the input dtype at the end. Half-precision noise would truncate the Gumbel
  tail (fp16 uniforms stop g near 7.6, bf16 near 5.5, instead of ~16.6 and beyond) and a
  half-precision softmax of perturbed logits loses the argmax.
* **value-check rule** (:func:`check_mode`, :func:`skip_value_checks`): checks that read the
  data (NaN, all-masked rows, tau <= 0 inside a tensor) cost a reduction and, to raise, a host
  sync. The validation switch (:func:`set_validation`, :func:`validation`) chooses how they run:
  ``"raise"`` (synchronous checks that raise), ``"device"`` (no host read: the check runs on the
  device and a bad row comes out NaN, an index -1), ``"off"`` (no data-dependent check) or
  ``"auto"`` (the default: ``"raise"`` for CPU tensors, ``"device"`` for CUDA tensors, where a
  sync stalls the launch queue and breaks CUDA-graph capture). Under ``torch.compile`` they
  would force a graph break and under ``torch.vmap`` a batched tensor cannot be read on the host,
  so they are skipped there whatever the switch says; the eager call of the same code is where
  a user meets them first.
* **buffer-reuse rule** (:func:`lean`): in-place ops and ``out=`` writes into private buffers are
  used only in eager mode outside torch.func transforms, where nothing else can observe them.

Every module reads these functions rather than restating the rules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..errors import GumbelkitValueError

__all__ = [
    "VALIDATION_MODES",
    "check_mode",
    "compiling",
    "compute_dtype",
    "functorch_active",
    "get_validation",
    "in_vmap",
    "lean",
    "set_validation",
    "skip_value_checks",
    "validation",
]

#: The modes of the validation switch (see :func:`set_validation`).
VALIDATION_MODES = ("auto", "raise", "device", "off")

# The switch itself: one process-wide value, like torch's default dtype (set_validation and the
# validation() context manager are the only writers).
_validation = ["auto"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype noise and softmaxes are computed in: float64 for float64, else float32.

    Args:
        dtype: the input (logits) or requested output dtype.

    Returns:
        ``torch.float64`` if ``dtype`` is float64, otherwise ``torch.float32``.

    Examples:
        >>> compute_dtype(torch.float16), compute_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def compiling() -> bool:
    """Whether the code is being traced by ``torch.compile`` (Dynamo)."""
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


def _check_validation_mode(mode, fn: str) -> str:
    if not isinstance(mode, str) or mode not in VALIDATION_MODES:
        raise GumbelkitValueError(f"{fn}: expected mode in {VALIDATION_MODES}, got {mode!r}")
    return mode


def set_validation(mode: str) -> None:
    """Choose how the samplers check values that only the data can tell (NaN, all-masked rows, tau).

    Checks that need no tensor value (tau <= 0 given as a number, a wrong ``dim``, an integer
    dtype) always raise at once; this switch governs the rest:

    * ``"auto"`` (the default): ``"raise"`` for CPU tensors, ``"device"`` for CUDA tensors;
    * ``"raise"``: synchronous checks that raise a :class:`~gumbelkit.errors.GumbelkitValueError`
      (one reduction and one host synchronisation per call);
    * ``"device"``: no host read -- the checks run on the device and a bad row comes out NaN (an
      index sampler returns -1 for it), never a valid-looking sample; a CUDA call then never
      waits for the GPU and can be captured in a CUDA graph;
    * ``"off"``: no data-dependent check at all (bad input gives whatever the arithmetic gives).

    Under ``torch.compile`` and ``torch.vmap`` the data-dependent checks are skipped whatever the
    mode. The setting is process-wide; :func:`validation` sets it for a block.

    Args:
        mode: one of ``"auto"``, ``"raise"``, ``"device"``, ``"off"``.

    Examples:
        >>> gk.set_validation("raise")  # raising checks for CUDA tensors too
        >>> gk.get_validation()
        'raise'
        >>> gk.set_validation("auto")
    """
    _validation[0] = _check_validation_mode(mode, "set_validation")


def get_validation() -> str:
    """The current mode of the validation switch (see :func:`set_validation`)."""
    return _validation[0]


@contextlib.contextmanager
def validation(mode: str) -> Iterator[None]:
    """A block with the validation switch set to ``mode``; the previous mode is restored on exit.

    The mode is restored even when the block raises.

    Examples:
        >>> x = torch.tensor([[0.0, float("nan")], [1.0, 2.0]])
        >>> with gk.validation("device"):
        ...     y = gk.gumbel_softmax(x, hard=True)
        >>> bool(y[0].isnan().all()), float(y[1].sum())
        (True, 1.0)
    """
    previous = _validation[0]
    _validation[0] = _check_validation_mode(mode, "validation")
    try:
        yield
    finally:
        _validation[0] = previous


def check_mode(t: torch.Tensor | None = None) -> str:
    """How the value checks of a call on ``t`` run: ``"raise"``, ``"device"`` or ``"off"``.

    ``"off"`` while compiling and under vmap (see the module note), else the switch's mode,
    with ``"auto"`` resolved by the tensor's device (``"device"`` on CUDA, ``"raise"`` elsewhere).

    Examples:
        >>> check_mode(torch.zeros(2))
        'raise'
    """
    if compiling() or in_vmap():
        return "off"
    mode = _validation[0]
    if mode == "auto":
        return "device" if t is not None and t.device.type == "cuda" else "raise"
    return mode


def skip_value_checks() -> bool:
    """Data-dependent checks are skipped: while compiling, under vmap, and when the switch is ``"off"``.

    For code without a tensor at hand; :func:`check_mode` also tells ``"raise"`` from ``"device"``.
    """
    return compiling() or in_vmap() or _validation[0] == "off"


def lean() -> bool:
    """In-place/out= buffer reuse is allowed: not under torch.compile nor a torch.func transform."""
    return not torch.compiler.is_compiling() and not functorch_active()
