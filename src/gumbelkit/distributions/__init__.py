"""Concrete (Gumbel-Softmax) distributions as ``torch.distributions.Distribution`` subclasses."""

from ._concrete import BinaryConcrete, Concrete, ExpConcrete, StraightThroughConcrete
from ._hard_concrete import HardConcrete

__all__ = ["BinaryConcrete", "Concrete", "ExpConcrete", "HardConcrete", "StraightThroughConcrete"]
