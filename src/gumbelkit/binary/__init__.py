r"""Independent Bernoulli bits: pathwise relaxations and unbiased score-function estimators.

* :func:`sample` -- a differentiable sample of Bernoulli(sigmoid(logits)) bits, elementwise:
  straight-through (``"st"``), Binary Concrete (``"binary_concrete"``), straight-through Binary
  Concrete (``"st_binary_concrete"``) and the Hard Concrete of Louizos et al. (``"hard_concrete"``);
* :func:`surrogate` -- a surrogate whose gradient is an unbiased estimate of
  :math:`\nabla_\phi \mathbb{E}[f(b)]`: REINFORCE with a leave-one-out baseline, ARM, DisARM,
  REBAR and RELAX (the last two with a learnable control, ``control=``);
* :data:`METHODS` -- every method, declared once in the estimator registry as family
  ``"bernoulli"`` (a :class:`gumbelkit.MethodSpec`: kind, exact 0/1 forward, default temperature,
  options, reference); a live view, so a plugin's Bernoulli methods are in it too.

Example:

    >>> logits = torch.randn(2, 5, requires_grad=True)
    >>> b = gk.binary.sample(logits, "st_binary_concrete", tau=0.5, generator=torch.Generator().manual_seed(0))
    >>> sorted(set(b.detach().flatten().tolist())) in ([0.0], [1.0], [0.0, 1.0])
    True
    >>> gk.binary.METHODS["hard_concrete"].default_tau == 2 / 3
    True
"""

from collections.abc import Mapping

from ..estimators._registry import MethodSpec, SpecsView
from . import _rebar  # noqa: F401  (importing registers REBAR and RELAX)
from ._sample import sample
from ._surrogate import surrogate

#: Every Bernoulli method (family ``"bernoulli"`` of the registry): a live read-only mapping name -> spec.
METHODS: Mapping[str, MethodSpec] = SpecsView("bernoulli")

__all__ = ["METHODS", "sample", "surrogate"]
