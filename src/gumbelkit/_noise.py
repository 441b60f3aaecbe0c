"""Uniform, exponential and Gumbel noise: always finite, drawn in float32 or better."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ._validation import check_generator

__all__ = ["gumbel_noise", "exponential_noise", "uniform_open", "logistic_noise"]


def _noise_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision uniforms have ~11 bits: the Gumbel tail would stop near 7.6 (fp16) or
    # 5.5 (bf16) instead of ~16.6. Draw in float32 (float64 on request) and cast at the end.
    if not dtype.is_floating_point:
        raise TypeError(f"expected a floating noise dtype, got {dtype}")
    return torch.float64 if dtype == torch.float64 else torch.float32


def _resolve_device(generator, device):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"expected generator to be a torch.Generator, got {type(generator).__name__}")
    if device is None:
        return torch.device(generator.device) if generator is not None else torch.device("cpu")
    return torch.device(device)


# Below this many words the torch generator itself is cheaper than setting up a NumPy one
# (~70 us, measured); above it NumPy's SFC64 produces the bits about 1.8x faster.
_NUMPY_MIN_WORDS = 1 << 15


def _random_words(n: int, generator, device) -> torch.Tensor:
    """n independent 32-bit random words (int32 bit patterns) on a CPU ``device``.

    Small draws: ceil(n / 2) full-range int64 values from the torch generator itself; one
    ``random_`` on int64 costs about half of ``torch.rand`` per 32 bits (3.2 vs 6.0 ns, measured).

    Large draws: the torch generator supplies only a 128-bit key (so the same generator state
    still gives the same words, and no other RNG is read or advanced); NumPy's SFC64, seeded
    from that key through ``SeedSequence``, fills the buffer at ~1.8 ns per word against
    ~3.2 ns for ``random_`` (``benchmarks/noise_sources.py``, one thread). SFC64 is Chris
    Doty-Humphrey's Small Fast Chaotic generator (the author of PractRand): a 64-bit counter in
    its state guarantees a cycle of at least 2^64 per seed (expected ~2^255), and NumPy
    guarantees that a fixed seed always gives the same stream.
    """
    if n >= _NUMPY_MIN_WORDS:
        key = torch.empty(2, dtype=torch.int64).random_(-(2**63), None, generator=generator)
        seed = np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in key.tolist()])
        bits = np.random.SFC64(seed).random_raw((n + 1) // 2)
        return torch.from_numpy(bits.view(np.int32))[:n]
    bits = torch.empty((n + 1) // 2, dtype=torch.int64, device=device)
    bits.random_(-(2**63), None, generator=generator)  # the full 64-bit range: every bit uniform
    return bits.view(torch.int32)[:n]


def _uniform_float32_from_words(w: torch.Tensor) -> torch.Tensor:
    """u = (2 m + 1) 2^-24 from the low 23 bits m of each word, in place (w is consumed).

    The words become the float32 bit patterns of 1 + m 2^-23 in [1, 2) (exponent of 1.0, m as
    the mantissa), and subtracting 1 - 2^-24 is exact (Sterbenz), giving the midpoints of 2^23
    equal cells: every value lies in [2^-24, 1 - 2^-24], so log(u) and log(-log u) are finite
    without a clamp. The same values as the fused Philox path's uniforms.
    """
    w.bitwise_and_(0x007FFFFF).bitwise_or_(0x3F800000)
    return w.view(torch.float32).sub_(1.0 - 2.0**-24)


def uniform_open(
    shape: Sequence[int] | torch.Size,
    *,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """I.i.d. Uniform on the *open* interval (0, 1).

    float32 on CPU: u = (2 m + 1) 2^-24 with m uniform on 23 random bits, i.e. the midpoints of
    2^23 equal cells, in [2^-24, 1 - 2^-24]; built from random 32-bit words (see
    ``_random_words``) in place, 2.6x as fast as ``torch.rand`` (measured, one thread).
    Otherwise (float64, other devices) ``torch.rand``, which draws from [0, 1):
    an exact 0 would make ``log(u)`` infinite, so it is raised to the smallest positive normal
    number (a probability-2^-24 event in float32, 2^-53 in float64).

    Args:
        shape: output shape.
        generator: optional ``torch.Generator`` (keyword-only); the global RNG is untouched when given.
        device: output device (default: the generator's device, else CPU).
        dtype: output dtype; the draw itself is float32 or float64.

    Returns:
        Tensor of ``shape`` with values in (0, 1).

    Example:
        >>> u = uniform_open((2, 3), generator=torch.Generator().manual_seed(0))
        >>> bool(((u > 0) & (u < 1)).all())
        True
    """
    device = _resolve_device(generator, device)
    check_generator(generator, device)
    ndt = _noise_dtype(dtype)
    shape = tuple(shape)
    # Under torch.compile, Dynamo cannot trace random_ and Inductor generates its own uniforms.
    if ndt == torch.float32 and device.type == "cpu" and not torch.compiler.is_compiling():
        n = math.prod(int(s) for s in shape)
        u = _uniform_float32_from_words(_random_words(n, generator, device)).view(shape)
    else:
        # On CUDA torch.rand is a vectorised Philox and already cheap; the guard is one pass.
        u = torch.rand(shape, generator=generator, device=device, dtype=ndt)
        u.clamp_(min=torch.finfo(ndt).tiny)
    return u if ndt == dtype else u.to(dtype)


def exponential_noise(
    shape, *, generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """I.i.d. Exp(1) noise, E = -log U with U ~ Uniform(0, 1) open: finite and > 0.

    ``-log U`` costs one uniform draw and one ``log`` per element, several times cheaper on CPU than
    ``Tensor.exponential_``.
    """
    device = _resolve_device(generator, device)
    ndt = _noise_dtype(dtype)
    e = uniform_open(shape, generator=generator, device=device, dtype=ndt).log_().neg_()
    return e if ndt == dtype else e.to(dtype)


def gumbel_noise(
    shape, *, generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    r"""I.i.d. standard Gumbel noise, g = -log(-log U), always finite.

    Math: if U ~ Uniform(0, 1) then -log(-log U) ~ Gumbel(0, 1), and
    ``argmax(theta + g) ~ Categorical(softmax(theta))`` (the Gumbel-Max trick).

    Args:
        shape: output shape.
        generator: optional ``torch.Generator`` (keyword-only). Same state, same noise.
        device: output device (default: the generator's device, else CPU).
        dtype: output dtype. The noise is always drawn in float32 (float64 if asked) and only
            cast at the end, so fp16/bf16 noise keeps the full tail (values up to ~16.6).

    Returns:
        Tensor of ``shape``; values lie in about [-4.5, 16.6] for float32.

    Example:
        >>> g = gumbel_noise((4, 10), generator=torch.Generator().manual_seed(0))

    Reference: Gumbel (1954); Maddison, Tarlow, Minka, "A* Sampling", NeurIPS 2014.
    """
    device = _resolve_device(generator, device)
    ndt = _noise_dtype(dtype)
    g = log_exponential_noise(shape, generator=generator, device=device, dtype=ndt).neg_()
    return g if ndt == dtype else g.to(dtype)


def log_exponential_noise(shape, *, generator=None, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """log E with E ~ Exp(1), i.e. *minus* a standard Gumbel: exactly ``-gumbel_noise(...)``.

    Internal building block of the samplers: theta + g is computed as ``theta - log E`` straight
    into this fresh buffer, which saves the final negation pass of :func:`gumbel_noise`. The
    result is in float32 (float64 if asked), whatever ``dtype`` says otherwise.
    """
    device = _resolve_device(generator, device)
    ndt = _noise_dtype(dtype)
    # Two in-place logs: -log U is in (0, 87.4], so the outer log is finite as well.
    return uniform_open(shape, generator=generator, device=device, dtype=ndt).log_().neg_().log_()


def logistic_noise(
    shape, *, generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """I.i.d. standard Logistic noise, log U - log(1 - U): the difference of two Gumbels.

    ``log1p(-u)`` keeps precision for u near 0; the open interval keeps both logs finite.
    """
    device = _resolve_device(generator, device)
    ndt = _noise_dtype(dtype)
    u = uniform_open(shape, generator=generator, device=device, dtype=ndt)
    out = u.log() - torch.log1p(-u)
    return out if ndt == dtype else out.to(dtype)
