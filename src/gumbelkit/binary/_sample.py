r"""Pathwise samples of independent Bernoullis: straight-through, Binary Concrete, Hard Concrete."""

from __future__ import annotations

from typing import Any

import torch

from .._core.autograd import divide_by_tau
from .._core.noise import logistic_noise
from .._core.numerics import prepare_tau
from .._core.policy import compute_dtype, skip_value_checks
from .._core.validation import Tau, check_dtype, check_generator, check_tau, shape_str, tau_like
from ..errors import GumbelkitValueError
from ..estimators._registry import OptionSpec, get_spec, register

__all__ = ["check_binary_logits", "logistic_like", "sample"]

_FN = "binary.sample"


def check_binary_logits(logits: torch.Tensor, fn: str) -> None:
    """A floating tensor without NaN; +-inf are allowed (deterministic bits)."""
    check_dtype(logits, fn=fn)
    if skip_value_checks() or logits.numel() == 0:
        return
    n_nan = int(torch.isnan(logits.detach()).sum())
    if n_nan:
        raise GumbelkitValueError(
            f"{fn}: expected logits without NaN, got {n_nan} NaN entries (logits of shape {shape_str(logits.shape)})"
        )


def logistic_like(logits: torch.Tensor, generator, cdt: torch.dtype) -> torch.Tensor:
    """Standard logistic noise shaped like ``logits`` in ``cdt``, drawn in logical (row-major) order.

    The noise is drawn for ``logits.shape``, not ``empty_like(logits)``, so a given generator state
    gives the same sample whatever the memory layout of ``logits``.
    """
    return logistic_noise(logits.shape, generator=generator, device=logits.device, dtype=cdt)


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    r"""sigmoid(x) as exp(logsigmoid(x)): the value within a few ulps of ``torch.sigmoid``, and a
    gradient :math:`\sigma(x)\sigma(-x)` accurate to a few ulps *relative* in both tails, where
    ``torch.sigmoid``'s backward y (1 - y) loses all relative precision as y rounds towards 1
    (measured: relative gradient error <= 6e-7 in float32 on [-30, 30], against up to 1 for
    ``torch.sigmoid``)."""
    return torch.nn.functional.logsigmoid(x).exp()


def _straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    # hard + (soft - soft) is exactly hard forwards (x - x = 0 for finite x; soft is in [0, 1]).
    return hard + (soft - soft.detach())


@register("st", family="bernoulli", one_hot=True, default_tau=1.0, reference="Bengio, Leonard, Courville, 2013")
def _st(theta: torch.Tensor, tau: Tau, noise: torch.Tensor) -> torch.Tensor:
    b = (theta.detach() + noise > 0).to(theta.dtype)
    return _straight_through(b, _sigmoid(divide_by_tau(theta, tau)))


_CONCRETE: dict = {"family": "bernoulli", "default_tau": 1.0}
_CONCRETE["reference"] = "Maddison, Mnih, Teh, ICLR 2017; Jang, Gu, Poole, ICLR 2017"


@register("binary_concrete", one_hot=False, **_CONCRETE)
def _binary_concrete(theta: torch.Tensor, tau: Tau, noise: torch.Tensor) -> torch.Tensor:
    return _sigmoid(divide_by_tau(theta + noise, tau))


@register("st_binary_concrete", one_hot=True, **_CONCRETE)
def _st_binary_concrete(theta: torch.Tensor, tau: Tau, noise: torch.Tensor) -> torch.Tensor:
    x = theta + noise
    return _straight_through((x.detach() > 0).to(theta.dtype), _sigmoid(divide_by_tau(x, tau)))


@register(
    "hard_concrete",
    family="bernoulli",
    one_hot=False,
    default_tau=2.0 / 3.0,
    options=(
        OptionSpec("gamma", float, -0.1, maximum=0.0, help="lower end of the stretched interval (<= 0)"),
        OptionSpec("zeta", float, 1.1, minimum=1.0, help="upper end of the stretched interval (>= 1)"),
    ),
    reference="Louizos, Welling, Kingma, ICLR 2018",
)
def _hard_concrete(theta: torch.Tensor, tau: Tau, noise: torch.Tensor, gamma: float, zeta: float) -> torch.Tensor:
    s = _sigmoid(divide_by_tau(theta + noise, tau))
    return (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def sample(
    logits: torch.Tensor,
    method: str,
    tau: Tau | None = None,
    *,
    generator: torch.Generator | None = None,
    **options: Any,
) -> torch.Tensor:
    r"""A differentiable sample of independent Bernoulli(sigmoid(logits)) bits, elementwise.

    Every method draws one standard logistic variable per element, :math:`L = \log U - \log(1-U)`
    (:func:`gumbelkit.logistic_noise`, exact in both tails), and with :math:`\theta` = ``logits``:

    * ``"st"`` (straight-through): forward :math:`b = 1[\theta + L > 0]`, exactly 0/1; this is
      :math:`1[u < \sigma(\theta)]` with :math:`u = \sigma(-L)` uniform, evaluated in log-odds so
      that tiny and near-1 probabilities are exact. Backward: the gradient of
      :math:`\sigma(\theta/\tau)` (no noise in the backward).
    * ``"binary_concrete"``: :math:`y = \sigma((\theta + L)/\tau)` with its exact gradient
      (Maddison et al. 2017; Jang et al. 2017).
    * ``"st_binary_concrete"``: forward :math:`1[\theta + L > 0]` (exactly 0/1: the rounding of
      ``binary_concrete``'s sample for the same generator state), backward the gradient of
      :math:`\sigma((\theta + L)/\tau)` with the same L. Same forward as ``"st"`` for the same
      generator state; only the backward differs.
    * ``"hard_concrete"`` (Louizos, Welling, Kingma 2018; :math:`\beta` = ``tau``, default 2/3;
      options ``gamma=-0.1``, ``zeta=1.1``): :math:`s = \sigma((\theta + L)/\beta)`,
      :math:`z = \min(1, \max(0, s(\zeta - \gamma) + \gamma))`, exactly 0 with probability
      :math:`\sigma(\beta \log(-\gamma/\zeta) - \theta)` and exactly 1 with probability
      :math:`\sigma(\theta - \beta\log((1-\gamma)/(\zeta-1)))`; the gradient flows through the clamp
      (zero where clamped).

    ``"st"`` and ``"st_binary_concrete"`` are exactly 0/1 forwards (``METHODS[m].one_hot``).
    Logits of :math:`\pm\infty` are allowed: the bit is deterministically 1 / 0 (``hard_concrete``:
    z = 1 / 0) with zero gradient. float16 / bfloat16 are computed in float32, float64 in float64;
    the result has the logits' dtype. The noise is drawn in the logical order of ``logits.shape``,
    so the same generator state gives the same sample whatever the memory layout.

    Args:
        logits: log-odds :math:`\theta` (any floating dtype, any shape).
        method: ``"st"``, ``"binary_concrete"``, ``"st_binary_concrete"`` or ``"hard_concrete"``.
        tau: temperature > 0 and finite, a float or a tensor broadcastable to ``logits``; None:
            the method's default (1.0; 2/3 for ``hard_concrete``).
        generator: optional ``torch.Generator`` for the noise (keyword-only).
        **options: the method's options (``hard_concrete``: ``gamma`` <= 0, ``zeta`` >= 1).

    Returns:
        Tensor shaped and typed like ``logits``.

    Raises:
        GumbelkitError: a non-floating dtype, NaN logits, tau <= 0 / inf / NaN, an unknown
            method or option, or an option out of range.

    Examples:
        >>> logits = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
        >>> b = gk.binary.sample(logits, "st", generator=torch.Generator().manual_seed(0))
        >>> bool(((b == 0) | (b == 1)).all())
        True
        >>> b.sum().backward()
        >>> logits.grad.shape
        torch.Size([3])
        >>> z = gk.binary.sample(torch.zeros(4), "hard_concrete", generator=torch.Generator().manual_seed(0))
        >>> bool(((z >= 0) & (z <= 1)).all())
        True
    """
    spec = get_spec(method, "bernoulli", kind="sample", where=_FN)
    check_binary_logits(logits, _FN)
    opts = spec.resolve(options, where=f"{_FN}: ")
    default = 1.0 if spec.default_tau is None else spec.default_tau
    tau = check_tau(default if tau is None else tau, logits, fn=_FN)
    check_generator(generator, logits.device, _FN)
    cdt = compute_dtype(logits.dtype)
    noise = logistic_like(logits, generator, cdt)
    # prepare_tau: a subnormal tau is raised to the smallest normal number (see there); every
    # method divides through divide_by_tau, so a tensor tau gets exactly 0 gradient from +-inf
    # logits and saturated sigmoids (a tiny tau) instead of 0 * inf = NaN
    # contiguous: elementwise kernels round some values differently on strided memory, and the
    # sample must not depend on the layout of the logits
    theta = logits.to(cdt).contiguous()
    out = spec.fn(theta, prepare_tau(tau_like(tau, noise), cdt), noise, **opts)
    return out.to(logits.dtype)
