"""Concrete (Gumbel-Softmax) distributions as ``torch.distributions.Distribution`` subclasses."""

from ._concrete import BinaryConcrete, Concrete, ExpConcrete, StraightThroughConcrete

__all__ = ["Concrete", "ExpConcrete", "BinaryConcrete", "StraightThroughConcrete"]
