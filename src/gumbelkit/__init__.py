"""gumbelkit: exact Gumbel samplers, straight-through / Gumbel-Rao / ReinMax estimators,
Concrete distributions and temperature schedules for PyTorch."""

from . import distributions, nn, schedules
from ._kl import kl_categorical
from ._noise import exponential_noise, gumbel_noise, logistic_noise, uniform_open
from ._sampling import gumbel_max, gumbel_softmax, gumbel_topk, tempered_softmax
from ._validation import DimError
from .estimators import (
    METHODS,
    MovingAverageBaseline,
    categorical_log_prob,
    get_estimator,
    is_one_hot,
    register,
    reinforce_surrogate,
    sample,
)

__version__ = "0.1.0"

__all__ = [
    "gumbel_noise",
    "exponential_noise",
    "logistic_noise",
    "uniform_open",
    "gumbel_max",
    "gumbel_topk",
    "gumbel_softmax",
    "tempered_softmax",
    "sample",
    "METHODS",
    "register",
    "get_estimator",
    "is_one_hot",
    "reinforce_surrogate",
    "categorical_log_prob",
    "MovingAverageBaseline",
    "kl_categorical",
    "distributions",
    "schedules",
    "nn",
    "DimError",
    "__version__",
]
