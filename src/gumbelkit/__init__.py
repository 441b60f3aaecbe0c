"""gumbelkit: exact Gumbel samplers, straight-through / Gumbel-Rao / ReinMax estimators,
Concrete distributions and temperature schedules for PyTorch."""

from . import (
    binary,
    decoding,
    distributions,
    errors,
    estimators,
    kernels,
    nn,
    permutations,
    schedules,
    structured,
    subsets,
)
from ._core.noise import exponential_noise, gumbel_noise, logistic_noise, uniform_open
from ._core.policy import get_validation, set_validation, validation
from ._kl import kl_categorical
from ._sampling import gumbel_max, gumbel_softmax, gumbel_topk, tempered_softmax
from .errors import (
    GumbelkitDimError,
    GumbelkitError,
    GumbelkitTypeError,
    GumbelkitValueError,
)
from .estimators import (
    METHODS,
    MethodSpec,
    MovingAverageBaseline,
    OptionSpec,
    categorical_log_prob,
    get_estimator,
    get_spec,
    is_one_hot,
    register,
    reinforce_surrogate,
    sample,
    surrogate,
)

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "GumbelkitDimError",
    "GumbelkitError",
    "GumbelkitTypeError",
    "GumbelkitValueError",
    "MethodSpec",
    "MovingAverageBaseline",
    "OptionSpec",
    "__version__",
    "binary",
    "categorical_log_prob",
    "decoding",
    "distributions",
    "errors",
    "estimators",
    "exponential_noise",
    "get_estimator",
    "get_spec",
    "get_validation",
    "gumbel_max",
    "gumbel_noise",
    "gumbel_softmax",
    "gumbel_topk",
    "is_one_hot",
    "kernels",
    "kl_categorical",
    "logistic_noise",
    "nn",
    "permutations",
    "register",
    "reinforce_surrogate",
    "sample",
    "schedules",
    "set_validation",
    "structured",
    "subsets",
    "surrogate",
    "tempered_softmax",
    "uniform_open",
    "validation",
]
