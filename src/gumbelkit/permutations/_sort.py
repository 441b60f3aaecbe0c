r"""Relaxed sorting permutations: NeuralSort (Grover et al., ICLR 2019) and SoftSort (Prillo & Eisenschlos, ICML 2020)."""

from __future__ import annotations

import math
import numbers

import torch

from .._core.autograd import divide_by_tau
from .._core.numerics import log_exp_noise, prepare_tau
from .._core.policy import compute_dtype
from .._core.validation import Tau, check_dtype, check_generator, normalize_dim, prefixed, shape_str
from ..errors import GumbelkitTypeError, GumbelkitValueError
from ..estimators._registry import OptionSpec, register
from ..structured import permutation_straight_through
from ._common import check_batch_tau, check_finite

__all__ = ["neural_sort", "soft_sort"]


def _check_scores(scores: torch.Tensor, tau: Tau, fn: str) -> Tau:
    check_dtype(scores, "scores", fn)
    if scores.dim() < 1:
        raise GumbelkitValueError(prefixed(fn, "expected scores with at least one dim (..., n), got a 0-d tensor"))
    normalize_dim(scores, -1, "scores", fn)  # rejects n = 0
    check_finite(scores, "scores", fn)
    return check_batch_tau(tau, scores.shape[:-1] + (1,), "scores", scores.shape, fn)


def _batch_tau(tau: Tau, cdt: torch.dtype) -> Tau:
    """tau in the compute dtype; a tensor one (..., 1) gets a trailing dim to divide (..., n, n)."""
    t = prepare_tau(tau, cdt)
    return t.unsqueeze(-1) if isinstance(t, torch.Tensor) else t


_GROVER = (
    "Grover, Wang, Zweig, Ermon, Stochastic Optimization of Sorting Networks via Continuous Relaxations, ICLR 2019"
)
_HARD = OptionSpec("hard", bool, False, help="exact permutation forward, relaxed backward")


@register(
    "stochastic_neural_sort",
    family="permutation",
    one_hot=False,
    options=(_HARD,),
    fixed={"stochastic": True},
    traits={"input": "scores", "stochastic": True},
    reference=_GROVER,
)
@register(
    "neural_sort",
    family="permutation",
    one_hot=False,
    options=(_HARD,),
    traits={"input": "scores", "stochastic": False},
    reference=_GROVER,
)
def neural_sort(
    scores: torch.Tensor,
    tau: Tau = 1.0,
    hard: bool = False,
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""NeuralSort: a row-stochastic relaxation of the (descending) sorting permutation of ``scores``.

    Math: for scores :math:`s \in \mathbb{R}^n`, :math:`A_s[j, l] = |s_j - s_l|` and
    :math:`i = 1, \dots, n`,

    .. math::

        \hat P[i, :] = \operatorname{softmax}\Bigl(\bigl((n + 1 - 2i)\, s - A_s \mathbf{1}\bigr) / \tau\Bigr).

    Row i is a distribution over the items concentrating on the i-th largest score; as
    :math:`\tau \to 0`, :math:`\hat P` tends to the sorting permutation matrix :math:`P` with
    :math:`P[i, \pi(i)] = 1`, :math:`s_{\pi(1)} \ge \dots \ge s_{\pi(n)}` (Grover et al.,
    Theorem 4; distinct scores). Rows sum to 1; columns need not.

    With ``stochastic=True`` the scores are perturbed first, :math:`s + g` with g i.i.d. standard
    Gumbel (the library's exact-tail noise): the sorting permutation of :math:`s + g` is an exact
    sample of the Plackett-Luce law with weights :math:`e^{s}`, and :math:`\hat P` is its relaxation.
    With ``hard=True`` the forward value is exactly the permutation matrix of the descending
    ``argsort`` of the (perturbed) scores (ties to the lower index) and the backward is the
    gradient of :math:`\hat P` (straight-through, through
    :func:`gumbelkit.structured.permutation_straight_through`).

    Numerics: the softmax of row i is invariant to a constant added to the row, and with
    :math:`t = \operatorname{sort}_\downarrow(s)` and the row constant
    :math:`\sum_{m > i} t_m - \sum_{m < i} t_m` taken away, the logits become

    .. math::

        -2 \sum_{m > i} (t_m - s_j)_+ \; - \; 2 \sum_{m < i} (s_j - t_m)_+ \; - \; |s_j - t_i|,

    sums of non-negative differences of scores: no term of size :math:`n \max|s|` is formed, so
    nothing cancels (scores of 1e30 keep the order of items that differ by 1) or overflows
    into inf - inf, and the item holding :math:`t_i` gets exactly 0, the top of its row. A small
    tau then gives -inf (weight 0) rather than NaN. Same values and gradients as the formula above.

    Args:
        scores: finite scores (..., n), any floating dtype (float16 / bfloat16 computed in float32).
        tau: temperature > 0 and finite: a float, or a tensor broadcastable to
            ``scores.shape[:-1] + (1,)`` (one temperature per score vector).
        hard: exact permutation-matrix forward with the relaxed gradient.
        stochastic: perturb the scores with Gumbel noise (a relaxed Plackett-Luce sample; keyword-only).
        generator: optional ``torch.Generator`` for the noise (keyword-only).

    Returns:
        Tensor (..., n, n) of ``scores``' dtype; ``P @ scores[..., None]`` approximates the scores
        sorted in descending order.

    Raises:
        GumbelkitError: a non-floating dtype, a 0-d or empty ``scores``, NaN or infinite scores,
            tau <= 0 / inf / NaN or of a bad shape, or a bad ``generator``.

    Examples:
        >>> s = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
        >>> P = gk.permutations.neural_sort(s, tau=0.1)
        >>> P.detach().argmax(-1)
        tensor([2, 0, 1])
        >>> H = gk.permutations.neural_sort(s, hard=True)
        >>> H.detach()
        tensor([[0., 0., 1.],
                [1., 0., 0.],
                [0., 1., 0.]])
        >>> (H @ torch.tensor([3.0, 2.0, 1.0])).sum().backward()
        >>> s.grad.shape
        torch.Size([3])

    Reference: Aditya Grover, Eric Wang, Aaron Zweig and Stefano Ermon, "Stochastic Optimization
    of Sorting Networks via Continuous Relaxations", ICLR 2019.
    """
    fn = "neural_sort"
    tau = _check_scores(scores, tau, fn)
    check_generator(generator, scores.device, fn)
    cdt = compute_dtype(scores.dtype)
    s = scores.to(cdt).contiguous()  # layout-independent rounding of the reductions
    if bool(stochastic):
        s = s - log_exp_noise(scores.shape, generator, scores.device, cdt)  # s + g, g = -log E
    t, perm = torch.sort(s, dim=-1, descending=True, stable=True)
    diff = t.unsqueeze(-1) - s.unsqueeze(-2)  # (..., m, j): t_m - s_j
    zero = diff.new_zeros(diff.shape[:-2] + (1,) + diff.shape[-1:])
    # sum_{m > i} (t_m - s_j)_+ and sum_{m < i} (s_j - t_m)_+ as exclusive cumulative sums along m
    # (the zero row first, never a total minus a partial sum, which would cancel)
    above = torch.cat([zero, diff.clamp_min(0).flip(-2).cumsum(-2)[..., :-1, :]], -2).flip(-2)
    below = torch.cat([zero, (-diff).clamp_min(0).cumsum(-2)[..., :-1, :]], -2)
    logits = -2.0 * (above + below) - diff.abs()  # (..., i, j), exactly 0 at j = perm[i]
    # divide_by_tau: a tensor tau gets exactly 0 gradient from the entries at -inf or overflowed
    p = torch.softmax(divide_by_tau(logits, _batch_tau(tau, cdt)), -1).to(scores.dtype)
    if not bool(hard):
        return p
    return permutation_straight_through(p, perm)


@register(
    "soft_sort",
    family="permutation",
    one_hot=False,
    options=(OptionSpec("p", float, 1.0, minimum=1.0, help="power of the distance |s_i - s_j|^p"),),
    traits={"input": "scores", "stochastic": False},
    reference="Prillo, Eisenschlos, SoftSort: A Continuous Relaxation for the argsort Operator, ICML 2020",
)
def soft_sort(scores: torch.Tensor, tau: Tau = 1.0, p: float = 1) -> torch.Tensor:
    r"""SoftSort: a row-stochastic relaxation of the (descending) sorting permutation of ``scores``.

    Math: with :math:`\bar s = \operatorname{sort}_\downarrow(s)` (the scores in descending order),

    .. math::

        \hat P[i, j] = \operatorname{softmax}_j\bigl(-|\bar s_i - s_j|^p / \tau\bigr).

    Row i concentrates on the item holding the i-th largest score; as :math:`\tau \to 0`,
    :math:`\hat P` tends to the sorting permutation matrix (distinct scores). Rows sum to 1.
    Differentiable in ``scores`` (through both :math:`\bar s` and s) and in a tensor ``tau``.

    Numerics: the largest logit of row i is exactly 0 (the item equal to :math:`\bar s_i`), so
    dividing by a tiny tau only sends the others to -inf, never to inf - inf = NaN.

    Args:
        scores: finite scores (..., n), any floating dtype (float16 / bfloat16 computed in float32).
        tau: temperature > 0 and finite: a float, or a tensor broadcastable to
            ``scores.shape[:-1] + (1,)``.
        p: the exponent of the distance, a finite number >= 1 (below 1 the gradient at a zero
            distance is infinite); 1 in the paper's experiments, 2 also common.

    Returns:
        Tensor (..., n, n) of ``scores``' dtype.

    Raises:
        GumbelkitError: a non-floating dtype, a 0-d or empty ``scores``, NaN or infinite scores,
            tau <= 0 / inf / NaN or of a bad shape, or p < 1.

    Examples:
        >>> s = torch.tensor([0.5, -1.0, 2.0])
        >>> P = gk.permutations.soft_sort(s, tau=0.01)
        >>> P
        tensor([[0., 0., 1.],
                [1., 0., 0.],
                [0., 1., 0.]])
        >>> bool(torch.allclose(gk.permutations.soft_sort(s, tau=1.0).sum(-1), torch.ones(3)))
        True

    Reference: Sebastian Prillo and Julian Eisenschlos, "SoftSort: A Continuous Relaxation for
    the argsort Operator", ICML 2020.
    """
    fn = "soft_sort"
    tau = _check_scores(scores, tau, fn)
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise GumbelkitTypeError(prefixed(fn, f"expected p to be a number, got {type(p).__name__}"))
    if not (float(p) >= 1 and math.isfinite(float(p))):
        raise GumbelkitValueError(
            prefixed(fn, f"expected p >= 1 and finite, got {p} (scores of shape {shape_str(scores.shape)})")
        )
    cdt = compute_dtype(scores.dtype)
    s = scores.to(cdt).contiguous()  # layout-independent rounding of the reductions
    top = s.sort(-1, descending=True).values
    d = (top.unsqueeze(-1) - s.unsqueeze(-2)).abs()
    if float(p) != 1.0:
        d = d.pow(float(p))
    # divide_by_tau: a tensor tau gets exactly 0 gradient from the entries that overflowed
    return torch.softmax(divide_by_tau(-d, _batch_tau(tau, cdt)), -1).to(scores.dtype)
