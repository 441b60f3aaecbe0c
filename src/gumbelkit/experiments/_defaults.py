"""The default method lists of the experiments, in one place (the only method names they contain).

Every entry is ``NAME[:OPTION=VALUE,...]`` (see :mod:`._methods`); any registered method can be
asked for with ``--methods``. The lists are explicit, not "every registered method", because they
fix the order of the tables and the comparison each experiment was designed and measured for.
"""

from __future__ import annotations

__all__ = [
    "BENCH_COST_BASELINE",
    "BENCH_QUANTIZER_METHODS",
    "BINARY_CATEGORICAL_METHODS",
    "BINARY_METHODS",
    "DEMO_METHODS",
    "DVAE_METHODS",
    "GRADIENT_METHODS",
    "PRUNING_METHODS",
    "SORTING_METHODS",
    "SUBSET_ESTIMATORS",
    "VAE_METHODS",
    "VAE_OPTION_ALIASES",
]

#: ``gumbelkit vae``: the straight-through family, the relaxation and REINFORCE (six methods).
VAE_METHODS = ("st", "st_gumbel", "gumbel_softmax", "gumbel_rao", "reinmax", "reinforce")

#: ``gumbelkit dvae``: the one-hot straight-through family, the relaxation and Gumbel-Rao on a 512-code
#: Gumbel codebook (every method ``gumbelkit.sample`` draws is accepted with ``--methods``).
DVAE_METHODS = ("st_gumbel", "gumbel_softmax", "st", "gumbel_rao:k=10", "reinmax", "gapped_st")

#: ``gumbelkit gradients``: every built-in method, Gumbel-Rao and REINFORCE at two sizes each.
GRADIENT_METHODS = (
    "softmax",
    "gumbel_softmax",
    "st",
    "st_gumbel",
    "gumbel_rao:k=10",
    "gumbel_rao:k=100",
    "reinmax",
    "reinforce:n=2",
    "reinforce:n=8",
)

#: ``gumbelkit gradients`` 70/30 demonstration: the methods that ``gumbelkit.sample`` draws.
DEMO_METHODS = ("softmax", "st", "gumbel_softmax", "st_gumbel", "gumbel_rao", "reinmax")

#: Deprecated ``gumbelkit vae`` flags -> (method, option) they set: ``--gumbel-rao-k K`` is
#: ``--methods ...,gumbel_rao:k=K``; ``--reinforce-samples N`` is ``reinforce:n=N``.
VAE_OPTION_ALIASES = {"gumbel_rao_k": ("gumbel_rao", "k"), "reinforce_samples": ("reinforce", "n")}

#: ``gumbelkit bench --cost-shapes``: the method every other method's cost is divided by.
BENCH_COST_BASELINE = "st_gumbel"

#: ``gumbelkit bench --quantizer-shape``: GumbelQuantizer's method in each mode, the counterparts of
#: ``gumbel_softmax(..., hard=False)`` and ``hard=True`` in the hand-written layer.
BENCH_QUANTIZER_METHODS = {"soft": "gumbel_softmax", "hard": "st_gumbel"}

#: ``gumbelkit subsets``: the k-subset estimators of :mod:`gumbelkit.subsets` (not registry methods),
#: in this order: relaxed top-k with its exact k-hot forward (straight-through), relaxed top-k soft,
#: SIMPLE, and REINFORCE over SIMPLE's exact conditional law with a leave-one-out baseline.
SUBSET_ESTIMATORS = ("relaxed_topk_hard", "relaxed_topk_soft", "simple", "reinforce_loo")

#: ``gumbelkit l0``: Hard Concrete L0 unit gates, and magnitude pruning of the dense model to the
#: same units per layer (it needs the L0 models' counts).
PRUNING_METHODS = ("l0", "magnitude")

#: ``gumbelkit binary``: the Bernoulli methods of ``gumbelkit.binary`` (``NAME[:OPTION=VALUE][@TAU]``);
#: the unbiased ones at two evaluations of f per estimate.
BINARY_METHODS = (
    "st@1",
    "binary_concrete@0.5",
    "st_binary_concrete@0.5",
    "hard_concrete",
    "reinforce_loo:n=2",
    "arm:n=1",
    "disarm:n=1",
)
#: ``gumbelkit binary``: categorical methods on a 2-class latent, in this order, at these temperatures;
#: every other registered categorical method follows at its defaults and tau 1.
BINARY_CATEGORICAL_METHODS = (
    "st@1",
    "st_gumbel@0.5",
    "gumbel_rao:k=10@0.1",
    "gumbel_softmax@0.5",
    "reinmax@1",
    "gapped_st@1",
    "softmax@1",
    "reinforce:n=2",
)

#: ``gumbelkit sort``: the permutation relaxations of :mod:`gumbelkit.permutations` (not registry
#: methods): Gumbel-Sinkhorn, NeuralSort deterministic and stochastic, SoftSort.
SORTING_METHODS = ("gumbel_sinkhorn", "neural_sort", "stochastic_neural_sort", "soft_sort")
