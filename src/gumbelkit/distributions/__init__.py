"""Concrete (Gumbel-Softmax) distributions as ``torch.distributions.Distribution`` subclasses."""

from ._concrete import BinaryConcrete, Concrete, ExpConcrete, StraightThroughConcrete

__all__ = ["BinaryConcrete", "Concrete", "ExpConcrete", "StraightThroughConcrete"]
