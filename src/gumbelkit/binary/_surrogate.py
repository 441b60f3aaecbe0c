r"""Unbiased score-function estimators for independent Bernoullis: REINFORCE-LOO, ARM, DisARM."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._core.noise import uniform_open
from .._core.policy import compute_dtype
from .._core.validation import check_generator, shape_str
from ..errors import GumbelkitDimError, GumbelkitTypeError, GumbelkitValueError
from ..estimators._registry import OptionSpec, get_spec, register
from ._sample import check_binary_logits, logistic_like

__all__ = ["surrogate"]

_FN = "binary.surrogate"
Loss = Callable[[torch.Tensor], torch.Tensor]


def _evaluate(f: Loss, b: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """f(b) with b cast to the logits' dtype, its shape and dtype checked.

    Integer or boolean losses (a count of wrong bits, a 0/1 reward) are real numbers too: they are
    cast to the logits' dtype, as the estimators average and subtract them.
    """
    out = f(b.to(logits.dtype))
    if not isinstance(out, torch.Tensor):
        raise GumbelkitTypeError(f"{_FN}: expected f to return a torch.Tensor, got {type(out).__name__}")
    if out.dtype.is_complex:
        raise GumbelkitTypeError(
            f"{_FN}: expected f to return real losses, got dtype {out.dtype} (losses of shape {shape_str(out.shape)})"
        )
    if not out.dtype.is_floating_point:
        out = out.to(logits.dtype)
    if out.shape != logits.shape[:-1]:
        raise GumbelkitValueError(
            f"{_FN}: expected f to return losses of shape {shape_str(logits.shape[:-1])} (logits.shape[:-1]), "
            f"got {shape_str(out.shape)} (logits of shape {shape_str(logits.shape)})"
        )
    return out


@register(
    "reinforce_loo",
    family="bernoulli",
    kind="score_function",
    one_hot=True,
    uses_tau=False,
    evaluations_option="n",
    options=(OptionSpec("n", int, 2, minimum=2, help="samples per row"),),
    reference="Kool, van Hoof, Welling, ICLR 2019 workshop (Buy 4 REINFORCE samples)",
)
def _reinforce_loo(phi, f, logits, generator, n):
    p = torch.sigmoid(phi)
    fs, grads = [], []
    for _ in range(n):
        b = (phi + logistic_like(logits, generator, phi.dtype) > 0).to(phi.dtype)
        fs.append(_evaluate(f, b, logits))
        grads.append(b - p)  # d/dphi log Bernoulli(b; sigmoid(phi))
    fd = torch.stack([v.detach().to(phi.dtype) for v in fs])  # (n, ...)
    centred = (fd - fd.mean(0)).unsqueeze(-1)
    g = (centred * torch.stack(grads)).sum(0) / (n - 1)
    return torch.stack(fs).mean(0), g


def _antithetic(phi, f, logits, generator, n, disarm: bool):
    p = torch.sigmoid(phi)
    q = torch.sigmoid(-phi)  # 1 - p, accurate for large phi
    fs, g = [], torch.zeros_like(phi)
    for _ in range(n):
        u = uniform_open(logits.shape, generator=generator, device=logits.device, dtype=phi.dtype)
        b1 = (u > q).to(phi.dtype)
        b2 = (u < p).to(phi.dtype)
        f1, f2 = _evaluate(f, b1, logits), _evaluate(f, b2, logits)
        fs += [f1, f2]
        diff = (f1.detach() - f2.detach()).to(phi.dtype).unsqueeze(-1)
        if disarm:
            sign = 1.0 - 2.0 * b2  # (-1)^{b2}
            g = g + 0.5 * diff * sign * (b1 != b2).to(phi.dtype) * torch.sigmoid(phi.abs())
        else:
            g = g + diff * (u - 0.5)
    return torch.stack(fs).mean(0), g / n


# ARM and DisARM share their one option: the number of antithetic pairs per row.
_PAIRS = OptionSpec("n", int, 2, minimum=1, help="antithetic pairs per row (2n evaluations of f)")


_ANTITHETIC: dict = {"family": "bernoulli", "kind": "score_function", "one_hot": True, "uses_tau": False}
_ANTITHETIC["options"] = (_PAIRS,)


@register("arm", reference="Yin and Zhou, ICLR 2019", **_ANTITHETIC)
def _arm(phi, f, logits, generator, n):
    return _antithetic(phi, f, logits, generator, n, disarm=False)


@register("disarm", reference="Dong, Mnih, Tucker, NeurIPS 2020", **_ANTITHETIC)
def _disarm(phi, f, logits, generator, n):
    return _antithetic(phi, f, logits, generator, n, disarm=True)


def surrogate(
    logits: torch.Tensor,
    f: Loss,
    method: str,
    *,
    n: int | None = None,
    generator: torch.Generator | None = None,
    control: torch.nn.Module | None = None,
    **options: Any,
) -> torch.Tensor:
    r"""An unbiased score-function surrogate for :math:`\nabla_\phi \mathbb{E}_{b \sim \mathrm{Bern}(\sigma(\phi))} f(b)`.

    ``logits`` :math:`\phi` has shape ``(..., D)``: each row (the last dim) holds the D bits of
    one sample; ``f`` maps a 0/1 tensor shaped like ``logits`` (in the logits' dtype) to losses
    shaped ``logits.shape[:-1]``. The result :math:`s` is shaped like ``f``'s output; the gradient
    of ``s[r]`` with respect to ``logits[r]`` is the row's estimate :math:`\hat g_r`, so
    ``s.sum().backward()`` gives every row its own estimate. Its *value* is the mean of all the
    evaluations of ``f`` the method made (an unbiased Monte-Carlo estimate of :math:`\mathbb{E}[f]`,
    every evaluated b being marginally :math:`\mathrm{Bern}(\sigma(\phi))`), carrying ``f``'s own
    graph, so parameters inside ``f`` also get their (pathwise) gradient.

    With :math:`u \sim U(0,1)^D`, :math:`b_1 = 1[u > 1 - \sigma(\phi)]`, :math:`b_2 = 1[u < \sigma(\phi)]`:

    * ``"reinforce_loo"``: n >= 2 independent samples :math:`b^{(k)}`, leave-one-out baseline:
      :math:`\hat g = \frac{1}{n-1}\sum_k (f(b^{(k)}) - \bar f)(b^{(k)} - \sigma(\phi))`, which equals
      :math:`\frac1n \sum_k (f(b^{(k)}) - \frac{1}{n-1}\sum_{j \ne k} f(b^{(j)}))(b^{(k)} - \sigma(\phi))`.
    * ``"arm"`` (Yin & Zhou 2019): :math:`\hat g_i = (f(b_1) - f(b_2))(u_i - \tfrac12)`, one u vector
      shared by the D coordinates of a row; averaged over n independent pairs (2n evaluations).
    * ``"disarm"`` (Dong, Mnih & Tucker 2020): :math:`\hat g_i = \tfrac12 (f(b_1) - f(b_2))
      (-1)^{b_{2,i}} 1[b_{1,i} \ne b_{2,i}]\, \sigma(|\phi_i|)`, ARM's estimator conditioned on
      :math:`(b_1, b_2)` (so its variance is at most ARM's); n pairs.
    * ``"rebar"`` (Tucker et al. 2017) and ``"relax"`` (Grathwohl et al. 2018): REINFORCE with the
      control variate :math:`c(\sigma(z/\lambda))` of the relaxed sample, corrected by its
      reparameterised gradients at z and at the conditional noise z~ ~ p(z | b) (see
      :mod:`gumbelkit.estimators._rebar`); c = eta f (REBAR) or f + a learned network (RELAX).
      ``control`` holds their learnable state: a :class:`gumbelkit.estimators.RebarControl`
      (eta, lambda) or the RELAX network (any ``nn.Module`` mapping the relaxed sample to one
      value per row, or a :class:`gumbelkit.estimators.RelaxControl`); the same backward then
      gives its parameters the gradient of the estimate's variance. Options: ``eta``,
      ``temperature``, ``noise`` (REBAR); ``temperature``, ``f_term``, ``hidden``, ``noise`` (RELAX).

    Logits of :math:`\pm\infty` give deterministic bits and a zero gradient.

    Args:
        logits: log-odds, shape ``(..., D)`` with at least one dim; any floating dtype
            (float16 / bfloat16 computed in float32).
        f: the loss, ``f(b) -> Tensor`` of shape ``logits.shape[:-1]`` (integer or boolean losses
            are cast to the logits' dtype).
        method: ``"reinforce_loo"``, ``"arm"``, ``"disarm"``, ``"rebar"``, ``"relax"`` (any
            ``"score_function"`` method of :data:`METHODS`).
        n: samples per row (``reinforce_loo``, >= 2) or antithetic pairs per row (``arm``,
            ``disarm``, >= 1); None: the method's default.
        generator: optional ``torch.Generator`` for the noise (keyword-only).
        control: the learnable state of a method that has one (``METHODS[m].new_control((D,))``);
            None: its fixed behaviour (REBAR at ``eta`` and ``temperature``; RELAX without network).
        **options: the method's other options (``METHODS[method].options``).

    Returns:
        Tensor shaped like ``f``'s output: value a Monte-Carlo estimate of E[f], gradient the estimator.

    Raises:
        GumbelkitError: a non-floating dtype, a 0-d tensor, NaN logits, an unknown method, a bad
            ``n`` or option, a non-callable ``f``, an ``f`` that returns the wrong shape, a control
            of the wrong kind or one whose output does not have one value per row.

    Examples:
        >>> logits = torch.zeros(4, 3, requires_grad=True)
        >>> f = lambda b: ((b - torch.tensor([1.0, 0.0, 1.0])) ** 2).sum(-1)
        >>> s = gk.binary.surrogate(logits, f, "disarm", generator=torch.Generator().manual_seed(0))
        >>> s.shape
        torch.Size([4])
        >>> s.sum().backward()
        >>> logits.grad.shape
        torch.Size([4, 3])
    """
    spec = get_spec(method, "bernoulli", kind="score_function", where=_FN)
    check_binary_logits(logits, _FN)
    if logits.dim() == 0:
        raise GumbelkitDimError(f"{_FN}: expected logits with at least one dimension (the bits), got a 0-d tensor")
    if not callable(f):
        raise GumbelkitTypeError(f"{_FN}: expected f to be callable, got {type(f).__name__}")
    opts = spec.resolve(options if n is None else {"n": n, **options}, where=f"{_FN}: ")
    if spec.has_control:
        opts["control"] = control
    elif control is not None:
        raise GumbelkitTypeError(f"{_FN}: method {method!r} has no learnable state: expected control=None")
    check_generator(generator, logits.device, _FN)
    cdt = compute_dtype(logits.dtype)
    x = logits.to(cdt)
    finite = torch.isfinite(x.detach())
    phi = x.detach()
    value, g, *extra = spec.fn(phi, f, logits, generator, **opts)
    g = torch.where(finite, g, torch.zeros_like(g))  # the true gradient at +-inf is 0
    # grad of sum_i g_i phi_i is g; +-inf entries are replaced by 0 so that 0 * inf is not NaN.
    term = (g * torch.where(finite, x, torch.zeros_like(x))).sum(-1)
    term = term - term.detach()  # exactly 0 forwards
    out = value + term.to(value.dtype)
    if extra and extra[0] is not None:  # a learnable control's training term, exactly 0 forwards
        out = out + extra[0].to(out.dtype)
    return out
