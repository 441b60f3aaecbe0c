r"""Building blocks for structured relaxations: k-subsets, permutations, several category dims.

The categorical samplers relax a one-hot vector along one ``dim``. Structured relaxations relax
richer discrete objects -- a k-hot subset of K items (relaxed top-k), an n x n permutation matrix
(Gumbel-Sinkhorn), a vector of independent bits (Binary Concrete) -- and need the same two
ingredients the categorical ones are built from:

* **checks** (:func:`check_structured`, :func:`check_square`, :func:`check_subset_size`,
  :func:`check_iterations`): the library's dtype, dim, value and integer policies, applied to
  several category dims at once, raising :mod:`gumbelkit.errors` types whose messages name the
  calling function (``fn=``) and the tensor's shape;
* **exact straight-through forwards** (:func:`khot_straight_through`,
  :func:`permutation_straight_through`): the exact discrete value in the forward pass, the
  gradient of the relaxation (``soft``) in the backward pass -- the structured counterparts of
  the one-hot straight-through behind ``gumbel_softmax(hard=True)``, safe under double backward
  and ``torch.vmap`` -- plus the index/mask builders (:func:`topk_indices`, :func:`khot`,
  :func:`permutation_matrix`) they need.

Example: a straight-through relaxed top-k (Gumbel-top-k forward, softmax gradient):

    >>> import gumbelkit as gk
    >>> logits = torch.randn(4, 6, requires_grad=True)
    >>> soft = torch.softmax(logits, -1) * 2            # any relaxation with the k-hot's shape
    >>> idx = gk.gumbel_topk(logits, 2, generator=torch.Generator().manual_seed(0))
    >>> y = gk.structured.khot_straight_through(soft, idx, dim=-1)
    >>> bool((y.sum(-1) == 2).all())
    True
    >>> (y * torch.arange(6.0)).sum().backward()
    >>> logits.grad.shape
    torch.Size([4, 6])
"""

from ._checks import check_iterations, check_square, check_structured, check_subset_size
from ._straight_through import (
    khot,
    khot_straight_through,
    permutation_matrix,
    permutation_straight_through,
    topk_indices,
)

__all__ = [
    "check_iterations",
    "check_square",
    "check_structured",
    "check_subset_size",
    "khot",
    "khot_straight_through",
    "permutation_matrix",
    "permutation_straight_through",
    "topk_indices",
]
