"""The default method lists of the experiments, in one place (the only method names they contain).

Every entry is ``NAME[:OPTION=VALUE,...]`` (see :mod:`._methods`); any registered method can be
asked for with ``--methods``. The lists are explicit, not "every registered method", because they
fix the order of the tables and the comparison each experiment was designed and measured for.
"""

from __future__ import annotations

__all__ = ["DEMO_METHODS", "GRADIENT_METHODS", "SUBSET_ESTIMATORS", "VAE_METHODS", "VAE_OPTION_ALIASES"]

#: ``gumbelkit vae``: the straight-through family, the relaxation and REINFORCE (the issue's six).
VAE_METHODS = ("st", "st_gumbel", "gumbel_softmax", "gumbel_rao", "reinmax", "reinforce")

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

#: ``gumbelkit subsets``: the k-subset estimators of :mod:`gumbelkit.subsets` (not registry methods),
#: in this order: relaxed top-k with its exact k-hot forward (straight-through), relaxed top-k soft,
#: SIMPLE, and REINFORCE over SIMPLE's exact conditional law with a leave-one-out baseline.
SUBSET_ESTIMATORS = ("relaxed_topk_hard", "relaxed_topk_soft", "simple", "reinforce_loo")
