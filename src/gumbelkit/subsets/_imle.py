r"""I-MLE (Niepert, Minervini, Franceschi, NeurIPS 2021): perturb-and-MAP forward, implicit differentiation backward.

The k-subset with the largest perturbed score is the MAP state of the exponential family
:math:`p(z; \theta) \propto \exp\langle z, \theta\rangle` over k-hot vectors z; I-MLE samples it
with Sum-of-Gamma noise and differentiates it by a finite difference towards a *target*
distribution whose parameters moved against the downstream gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._core.noise import exponential_noise
from .._core.policy import compute_dtype
from .._core.validation import Tau, check_float_dtype, check_generator, check_int, check_logits, check_shape, check_tau
from ..errors import GumbelkitTypeError, GumbelkitValueError
from ..estimators._registry import OptionSpec, register
from ..structured import check_subset_size

__all__ = ["imle", "sum_of_gamma_noise"]

_FN = "imle"


def sum_of_gamma_noise(
    shape: Sequence[int] | torch.Size,
    k: int,
    s: int = 10,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Sum-of-Gamma noise: k independent draws of it sum to (almost) a standard Gumbel.

    Math: :math:`\epsilon = \frac1k\bigl(\sum_{i=1}^{s} \mathrm{Gamma}(1/k,\ \mathrm{rate}\ i/k) - \log s\bigr)
    = \sum_{i=1}^{s} G_i / i - \frac{\log s}{k}` with :math:`G_i \sim \mathrm{Gamma}(1/k, 1)`.
    Summed over k independent copies, :math:`\sum_i E_i / i - \log s` with :math:`E_i \sim
    \mathrm{Exp}(1)`, which is the maximum of s standard exponentials minus log s: a standard
    Gumbel as s grows (exactly Gumbel only in the limit), so the total perturbation of every
    k-subset is close to Gumbel.

    Args:
        shape: output shape.
        k: the subset size the noise is made for (k = 1: about Gumbel itself).
        s: terms of the sum (the approximation improves as s grows).
        generator: optional ``torch.Generator`` (keyword-only): same state, same noise.
        device: output device (default: the generator's, else CPU).
        dtype: output dtype, any floating dtype. The noise is drawn in float32 (float64 if asked)
            and only cast at the end: float16 / bfloat16 Gamma draws of shape 1/k would lose the
            small values that make the Gumbel's lower tail.

    Returns:
        Tensor of ``shape``.

    Examples:
        >>> e = gk.subsets.sum_of_gamma_noise((4, 6), 2, generator=torch.Generator().manual_seed(0))
        >>> e.shape
        torch.Size([4, 6])

    Reference: Niepert, Minervini, Franceschi, "Implicit MLE: Backpropagating Through Discrete
    Exponential Family Distributions", NeurIPS 2021 (Sum-of-Gamma perturbations).
    """
    fn = "sum_of_gamma_noise"
    shape = check_shape(shape, fn)
    k = check_int(k, "k", min=1, fn=fn)
    s = check_int(s, "s", min=1, fn=fn)
    cdt = compute_dtype(check_float_dtype(dtype, "dtype", fn))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise GumbelkitTypeError(f"{fn}: expected generator to be a torch.Generator, got {type(generator).__name__}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    check_generator(generator, device, fn)
    if k == 1:  # Gamma(1, 1) is Exp(1): the library's exact-tail exponential noise, cheaper than a Gamma draw
        gamma = exponential_noise((s,) + shape, generator=generator, device=device, dtype=cdt)
    else:
        alpha = torch.full((s,) + shape, 1.0 / k, dtype=cdt, device=device)
        gamma = torch._standard_gamma(alpha, generator=generator)  # takes a generator, unlike Gamma.sample
    i = torch.arange(1, s + 1, dtype=cdt, device=device).view((s,) + (1,) * len(shape))
    out = (gamma / i).sum(0) - math.log(s) / k
    return out if cdt == dtype else out.to(dtype)


def _khot_map(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k-hot of the k largest scores along the last dim (the MAP state of a k-subset family)."""
    return torch.zeros_like(scores).scatter(-1, scores.topk(k, -1).indices, 1.0)


class _IMLE(torch.autograd.Function):
    """Forward: MAP(theta + eps). Backward: (MAP(theta + eps) - MAP(theta - lam * dy + eps)) / lam.

    Written for torch.func (``setup_context``, a generated vmap rule: every op is batchable). The
    backward is a piecewise-constant function of theta and dy (two MAP states), so its own
    derivative is 0 almost everywhere: it is computed from detached tensors, and a double backward
    gives nothing further rather than an error.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(theta, noise, k: int, lam: float, out_dtype):
        return _khot_map(theta.detach() + noise, k).to(out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        theta, noise, k, lam, _ = inputs
        ctx.save_for_backward(theta.detach(), noise.detach(), output.detach())
        ctx.k, ctx.lam = k, lam

    @staticmethod
    def backward(ctx, dy):
        theta, noise, z = ctx.saved_tensors
        target = theta - ctx.lam * dy.detach().to(theta.dtype)  # -inf (masked) stays -inf
        z_target = _khot_map(target + noise, ctx.k)
        return (z.to(theta.dtype) - z_target) / ctx.lam, None, None, None, None


@register(
    "imle",
    family="subset",
    one_hot=True,
    default_tau=1.0,
    options=(
        OptionSpec(
            "lam",
            float,
            1.0,
            minimum=0.0,
            open_minimum=True,
            help="implicit-differentiation step lambda: target theta - lambda * dL/dz",
        ),
        OptionSpec("s", int, 10, minimum=1, help="terms of the Sum-of-Gamma noise"),
    ),
    traits={"law": "sum_of_gamma", "target": "conditional"},
    reference="Niepert, Minervini, Franceschi, Implicit MLE: Backpropagating Through Discrete Exponential "
    "Family Distributions, NeurIPS 2021",
)
def imle(
    logits: torch.Tensor,
    k: int,
    tau: Tau = 1.0,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
    lam: float = 1.0,
    s: int = 10,
) -> torch.Tensor:
    r"""I-MLE for k-subsets: an exactly k-hot perturb-and-MAP sample, the implicit-MLE gradient backward.

    Math: forward :math:`z = \mathrm{MAP}(\theta + \tau\epsilon)`, the k-hot of the k largest
    perturbed logits, with :math:`\epsilon` Sum-of-Gamma noise (:func:`sum_of_gamma_noise`, s
    terms) scaled by the temperature :math:`\tau`. Backward, for the downstream gradient
    :math:`\partial L / \partial z`: the target parameters
    :math:`\theta' = \theta - \lambda\, \partial L/\partial z`, their MAP state with the *same*
    noise :math:`z' = \mathrm{MAP}(\theta' + \tau\epsilon)`, and

    .. math::

        \nabla_\theta L \approx \frac{1}{\lambda}\,(z - z'),

    a finite-difference estimate of the gradient of :math:`\mathbb{E}[L]` for the exponential
    family :math:`p(z;\theta) \propto \exp\langle z, \theta\rangle` on k-subsets (the
    conditional law of :func:`simple`). k = 1 is one-of-K: the argmax of the perturbed logits.

    It is **biased**, twice: the MAP of Sum-of-Gamma-perturbed logits is not an exact sample of
    that family for k > 1 (for k = 1 its law tends to Categorical(softmax(theta / tau)) only as s
    grows: Gumbel-Max), and the finite difference is not the exact gradient for any lambda
    (measured on the k-subset toy: see the docs page "REBAR, RELAX and I-MLE"). Its forward law
    is neither Gumbel-top-k nor the conditional law (registry trait ``law = "sum_of_gamma"``;
    ``target = "conditional"`` is the law whose gradient it approximates).

    Masked (-inf) logits are never chosen and get a zero gradient. float16 / bfloat16 are
    computed in float32; the result has the logits' dtype. Its backward is piecewise constant in
    theta and in the downstream gradient, so a double backward gives it no further gradient.
    Works under ``torch.vmap(randomness="different")`` and ``torch.func.grad``.

    Args:
        logits: item scores :math:`\theta` (any floating dtype and batch shape); -inf masks an item.
        k: subset size, 1 <= k <= the number of unmasked items of every row.
        tau: noise temperature > 0 (a float).
        dim: the item dim.
        generator: optional ``torch.Generator`` for the noise (keyword-only).
        lam: :math:`\lambda > 0`, the step towards the target distribution (1, the authors'
            library default; its best value depends on the scale of the downstream gradient).
        s: terms of the Sum-of-Gamma noise.

    Returns:
        Tensor shaped and typed like ``logits``, exactly k-hot along ``dim``.

    Raises:
        GumbelkitError: a non-floating dtype, NaN / +inf / all-masked rows, a bad ``dim``, k
            outside [1, unmasked count], tau <= 0, lam <= 0 or s < 1.

    Examples:
        >>> logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, float("-inf")]], requires_grad=True)
        >>> z = gk.subsets.imle(logits, 2, generator=torch.Generator().manual_seed(0))
        >>> z.sum().item(), z[0, 4].item()
        (2.0, 0.0)
        >>> (z * torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0])).sum().backward()
        >>> logits.grad[0, 4].item()
        0.0

    Reference: Mathias Niepert, Pasquale Minervini, Luca Franceschi, "Implicit MLE:
    Backpropagating Through Discrete Exponential Family Distributions", NeurIPS 2021.
    """
    d = check_logits(logits, dim, fn=_FN)
    k = check_subset_size(k, logits, d, fn=_FN)
    if isinstance(tau, torch.Tensor):
        raise GumbelkitTypeError(f"{_FN}: expected tau to be a float, got a tensor of shape {tuple(tau.shape)}")
    tau = float(check_tau(tau, fn=_FN))
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (math.isfinite(lam) and lam > 0):
        raise GumbelkitValueError(f"{_FN}: expected lam to be a finite number > 0, got {lam!r}")
    s = check_int(s, "s", min=1, fn=_FN)
    check_generator(generator, logits.device, _FN)
    cdt = compute_dtype(logits.dtype)
    theta = logits.to(cdt).movedim(d, -1)
    # Shift each row to a maximum of 0 (the MAP state and the gradient do not change) so that
    # large logits do not round the noise away in float32.
    theta = theta - theta.detach().amax(-1, keepdim=True)
    noise = tau * sum_of_gamma_noise(theta.shape, k, s, generator=generator, device=logits.device, dtype=cdt)
    z = _IMLE.apply(theta, noise, k, float(lam), logits.dtype)
    return z.movedim(-1, d)
