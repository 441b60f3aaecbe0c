"""Fused, memory-lean implementations: same results as the public samplers, faster.

:func:`gumbel_softmax` generates its Gumbel noise with Philox4x32-10 inside one compiled
(torch.compile / Inductor) kernel together with the softmax, argmax and one-hot; the backward is
one fused kernel and only the softmax is saved. See ``docs/bench.md`` for measured speed and memory.
"""

from ._fused import (
    FusedFallbackWarning,
    compile_times,
    draw_key,
    gumbel_noise_philox,
    gumbel_softmax,
    gumbel_softmax_reference,
    is_available,
)
from ._philox import philox4x32, uniform_float32, uniform_float64

__all__ = [
    "gumbel_softmax",
    "gumbel_softmax_reference",
    "gumbel_noise_philox",
    "draw_key",
    "philox4x32",
    "uniform_float32",
    "uniform_float64",
    "compile_times",
    "is_available",
    "FusedFallbackWarning",
]
