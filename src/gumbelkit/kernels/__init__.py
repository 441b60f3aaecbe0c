"""Fused, memory-lean implementations: the same distribution, checks and dtype policy as the public samplers.

:func:`triton_gumbel_softmax` and :func:`triton_gumbel_max` are the Triton kernels that the public
samplers run for CUDA tensors (noise, softmax, argmax and one-hot in one pass; the backward in
one; no host synchronisation), callable directly; see ``docs/gpu.md``.

:func:`gumbel_softmax` generates its Gumbel noise with Philox4x32-10 inside one compiled
(torch.compile / Inductor) kernel together with the softmax, argmax and one-hot; the backward is
one fused kernel and only the softmax is saved. On a 2-core AVX2 CPU it measured slower than the
eager sampler on one thread and about as fast on two (``docs/bench.md``): Philox and Inductor's
logs cost more there than the eager path's host-drawn bits and ATen logs. Where it should pay off
-- GPUs, with native 32-bit multiplies and no noise buffer in memory -- it has not been measured.

The noise has exact Gumbel tails ([-3.13, 22.87] in float32, [-3.81, 45.05] in float64), is indexed
by each element's logical position (any memory layout gives the same sample), and the samplers
work under ``torch.func.grad`` / ``torch.vmap`` (op by op there) and with double backward.
"""

from .._core.gpu import triton_gumbel_max, triton_gumbel_softmax
from ._fused import (
    FusedFallbackWarning,
    compile_times,
    draw_key,
    gumbel_noise_philox,
    gumbel_softmax,
    gumbel_softmax_reference,
    is_available,
)
from ._philox import (
    gumbel_float32,
    gumbel_float64,
    philox4x32,
    uniform_float32,
    uniform_float64,
)

__all__ = [
    "FusedFallbackWarning",
    "compile_times",
    "draw_key",
    "gumbel_float32",
    "gumbel_float64",
    "gumbel_noise_philox",
    "gumbel_softmax",
    "gumbel_softmax_reference",
    "is_available",
    "philox4x32",
    "triton_gumbel_max",
    "triton_gumbel_softmax",
    "uniform_float32",
    "uniform_float64",
]
