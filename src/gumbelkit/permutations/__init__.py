r"""Relaxed permutations: Sinkhorn, Gumbel-Sinkhorn, NeuralSort and SoftSort.

An n x n permutation matrix P (one 1 per row and per column) reorders n items. This package
relaxes it:

* :func:`sinkhorn` -- log-space Sinkhorn normalisation (Mena et al., ICLR 2018): alternately
  normalise the rows and the columns of exp(log_alpha), converging to a doubly stochastic matrix;
* :func:`gumbel_sinkhorn` -- Sinkhorn of Gumbel-perturbed, tempered scores: a relaxed sample of
  a random permutation, optionally with the exact (Hungarian) permutation forward and the
  relaxed gradient;
* :func:`neural_sort` -- NeuralSort (Grover et al., ICLR 2019): a row-stochastic relaxation of
  the sorting permutation of a score vector, stochastic (relaxed Plackett-Luce) or not;
* :func:`soft_sort` -- SoftSort (Prillo & Eisenschlos, ICML 2020): a simpler row-stochastic
  relaxation of the sorting permutation.

Row i of every sorting relaxation corresponds to the i-th largest score (descending order), so
``P @ scores`` approximates ``scores.sort(descending=True).values``.

Example:

    >>> s = torch.tensor([0.3, 2.0, -1.0])
    >>> P = gk.permutations.neural_sort(s, tau=0.01)
    >>> P @ s
    tensor([ 2.0000,  0.3000, -1.0000])
"""

from ._sinkhorn import gumbel_sinkhorn, sinkhorn
from ._sort import neural_sort, soft_sort

__all__ = ["gumbel_sinkhorn", "neural_sort", "sinkhorn", "soft_sort"]
