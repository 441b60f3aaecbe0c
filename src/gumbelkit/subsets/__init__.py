r"""k-subset sampling and its relaxations: relaxed top-k, exact conditional marginals, SIMPLE.

A k-subset of K items is a k-hot vector z (exactly k ones along ``dim``). This package relaxes or
differentiates through it:

* :func:`relaxed_topk` -- the continuous relaxation of Gumbel-top-k (Xie & Ermon, IJCAI 2019):
  k successive tempered softmaxes over the Gumbel keys, optionally with an exact k-hot forward
  equal to :func:`gumbelkit.gumbel_topk`'s sample;
* :func:`topk_marginals` -- the exact inclusion probabilities of independent Bernoullis
  conditioned on exactly k successes, by a log-space recursion over elementary symmetric
  polynomials (O(nk));
* :func:`simple` -- SIMPLE (Ahmed et al., ICLR 2023): an exact sample of that conditional law
  forwards, the gradient of its exact marginals backwards;
* :func:`reinforce_loo` -- REINFORCE over exact samples of that law with a leave-one-out baseline
  (unbiased);
* :func:`imle` -- I-MLE (Niepert et al., NeurIPS 2021): the exactly k-hot MAP of Sum-of-Gamma
  perturbed logits forwards, the implicit-MLE finite difference backwards (biased).

Each is declared in the estimator registry as family ``"subset"`` (``relaxed_topk_hard``,
``relaxed_topk_soft``, ``simple``, ``reinforce_loo``, ``imle``): ``gk.estimators.methods("subset")``.

Example:

    >>> logits = torch.randn(3, 6, requires_grad=True)
    >>> y = gk.subsets.simple(logits, 2, generator=torch.Generator().manual_seed(0))
    >>> y.sum(-1)
    tensor([2., 2., 2.], grad_fn=<SumBackward1>)
"""

from ._relaxed import relaxed_topk
from ._score_function import log_subset_normalizer, reinforce_loo
from ._simple import simple, topk_marginals

# isort: split
# Imported last, so that the registry lists I-MLE after the methods above.
from ._imle import imle, sum_of_gamma_noise

__all__ = [
    "imle",
    "log_subset_normalizer",
    "reinforce_loo",
    "relaxed_topk",
    "simple",
    "sum_of_gamma_noise",
    "topk_marginals",
]
