"""The library's policies, each written once: the dtype rule and the execution-context rules.

* **dtype rule** (:func:`compute_dtype`): noise is drawn and softmaxes are computed in float64
  for float64 inputs and in float32 for everything else (float32, float16, bfloat16); results
  are cast back to the input dtype at the end. Half-precision noise would truncate the Gumbel
  tail (fp16 uniforms stop g near 7.6, bf16 near 5.5, instead of ~16.6 and beyond) and a
  half-precision softmax of perturbed logits loses the argmax.
* **value-check rule** (:func:`skip_value_checks`): checks that read the data (NaN, all-masked
  rows, tau <= 0 inside a tensor) cost a reduction and a host sync. Under ``torch.compile`` they
  would force a graph break and under ``torch.vmap`` a batched tensor cannot be read on the host,
  so they are skipped there; the eager call of the same code is where a user meets them first.
* **buffer-reuse rule** (:func:`lean`): in-place ops and ``out=`` writes into private buffers are
  used only in eager mode outside torch.func transforms, where nothing else can observe them.

Every module reads these functions rather than restating the rules.
"""

from __future__ import annotations

import torch

__all__ = [
    "compiling",
    "compute_dtype",
    "functorch_active",
    "in_vmap",
    "lean",
    "skip_value_checks",
]


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


def skip_value_checks() -> bool:
    """Data-dependent checks are skipped while compiling and under vmap (see the module note)."""
    return compiling() or in_vmap()


def lean() -> bool:
    """In-place/out= buffer reuse is allowed: not under torch.compile nor a torch.func transform."""
    return not torch.compiler.is_compiling() and not functorch_active()
