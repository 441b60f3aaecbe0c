"""The private core every sampler and estimator imports directly.

``policy`` (validation switch, compute dtype, tracing state), ``validation`` (argument checks),
``noise`` (exact-tail Gumbel/exponential/logistic noise), ``numerics`` (stable shifts, one-hot,
argmax), ``autograd`` (the straight-through and tempered-softmax functions) and ``gpu`` (the
Triton host glue). Nothing here is public API: the public names live in ``gumbelkit.__all__``
and each subpackage's ``__all__``.
"""
