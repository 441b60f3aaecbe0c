"""Token sampling for language models: exact, filter-complete, per-request reproducible.

:func:`sample_tokens` draws one token per row of B x V logits from the tempered softmax after
``transformers``-style top-k, top-p and min-p filters (each a number or a per-row tensor), by
Gumbel-Max on the library's exact-tail, counter-based noise. On the CPU it runs in torch ops
without any V-sized sort or noise tensor; on CUDA in Triton kernels with no host synchronisation.
"""

from ._sample import sample_tokens

__all__ = ["sample_tokens"]
