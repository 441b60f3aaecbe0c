"""The public entry point: :func:`sample_tokens`."""

from __future__ import annotations

from typing import Literal, overload

import torch

from .._core.policy import check_mode, in_vmap
from ..errors import GumbelkitValueError
from ._params import check_logits_2d, raise_bad_rows, row_keys, row_params
from ._torch import row_maxima, sample_rows

__all__ = ["sample_tokens"]


def _use_triton(logits: torch.Tensor) -> bool:
    if not logits.is_cuda:
        return False
    from . import _triton

    return _triton.is_available()


@overload
def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor | None = None,
    top_p: float | torch.Tensor | None = None,
    min_p: float | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seeds: int | torch.Tensor | None = None,
    offsets: int | torch.Tensor | None = None,
    return_logprobs: Literal[False] = False,
) -> torch.Tensor: ...


@overload
def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor | None = None,
    top_p: float | torch.Tensor | None = None,
    min_p: float | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seeds: int | torch.Tensor | None = None,
    offsets: int | torch.Tensor | None = None,
    return_logprobs: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor | None = None,
    top_p: float | torch.Tensor | None = None,
    min_p: float | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seeds: int | torch.Tensor | None = None,
    offsets: int | torch.Tensor | None = None,
    return_logprobs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""One token per row of B x V logits: an exact draw from the tempered, filtered softmax.

    Math: with y = (x - max x) / T, the filters keep K = {t : y_t >= t*} (finite y_t), where
    t* = max(t_k, t_p, t_min) is built in ``transformers``' order (temperature, top-k, top-p,
    min-p) with its semantics:

    * top-k: t_k = the k-th largest y; every token tied with it is kept (as ``TopKLogitsWarper``).
    * top-p (nucleus), on the top-k set: a token is kept when the tokens strictly more probable
      weigh less than p of the mass, i.e. the smallest set of most probable tokens reaching p,
      plus every token tied with its last one (``TopPLogitsWarper`` keeps a sort-order-dependent
      subset of a tie there). The most probable token is always kept.
    * min-p: t_min = log(min_p), i.e. p_t >= min_p * p_max (as ``MinPLogitsWarper``).

    The token follows softmax(y) restricted to K exactly: hierarchical Gumbel-Max over blocks of
    256 token ids with exact-tail counter-based noise (a block by its log-mass, then a token
    inside it), never a float32 cumulative sum. ``temperature=0`` is greedy: the lowest id among
    the largest logits, filters ignored.

    Reproducibility: with ``seeds`` (and ``offsets``, e.g. the decode step), a row's noise is a
    pure function of (seed, offset, token id): its token is the same whatever else is in the
    batch and in any order, bitwise on the same device. Without seeds, each row's 128-bit key is
    drawn from ``generator`` (or the default generator) by one random op on the logits' device;
    the global RNG is untouched when a generator or seeds are given.

    Not for ``torch.vmap`` (refused with a :class:`~gumbelkit.errors.GumbelkitError`): one call
    already samples every row independently.

    Bad input: a number out of range raises at once (``top_k < 0``, ``top_p`` outside (0, 1],
    ``min_p`` outside [0, 1), ``temperature`` < 0, NaN or inf). A row whose logits hold a NaN or
    a +inf, or no finite value, never gets a plausible token: where the value checks raise (the
    CPU default) the error names the row; on CUDA (no host read) its token is -1 and its
    log-probability NaN. Out-of-range values inside a parameter tensor are treated the same way.

    Args:
        logits: (B, V) unnormalised log-probabilities, any floating dtype (computed in float32,
            float64 for float64).
        temperature: >= 0, a number or a (B,) tensor; 0 = greedy for that row.
        top_k: None or 0 (off), or k >= 1 (k >= V is off too); a number or a (B,) integer tensor.
        top_p: None or 1 (off), or p in (0, 1); a number or a (B,) tensor.
        min_p: None or 0 (off), or a value in (0, 1); a number or a (B,) tensor.
        generator: ``torch.Generator`` for the per-row keys when no seeds are given.
        seeds: an integer or a (B,) integer tensor: per-request 64-bit seeds.
        offsets: an integer or a (B,) integer tensor (default 0): a 64-bit stream per seed, e.g.
            the decode step, so that each step of a request gets fresh noise.
        return_logprobs: also return each token's log-probability under the final (tempered,
            filtered) distribution; 0 for greedy rows.

    Returns:
        The tokens, int64 of shape (B,); with ``return_logprobs``, the pair ``(tokens, logprobs)``,
            logprobs in float32 (float64 for float64 logits).

    Examples:
        >>> logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 0.0, 3.0, 0.0]])
        >>> tok = gk.decoding.sample_tokens(logits, top_k=2, seeds=torch.tensor([7, 8]))
        >>> bool(torch.equal(tok, gk.decoding.sample_tokens(logits, top_k=2, seeds=torch.tensor([7, 8]))))
        True
        >>> gk.decoding.sample_tokens(logits, temperature=0.0)
        tensor([0, 2])

    References: Gumbel (1954); Maddison, Tarlow, Minka, "A* Sampling", NeurIPS 2014 (Gumbel-Max);
    Fan, Lewis, Dauphin, "Hierarchical Neural Story Generation", ACL 2018 (top-k); Holtzman et
    al., "The Curious Case of Neural Text Degeneration", ICLR 2020 (top-p); Nguyen et al., "Turning
    Up the Heat: Min-p Sampling for Creative and Coherent LLM Outputs", ICLR 2025 (min-p); Salmon
    et al., "Parallel Random Numbers: As Easy as 1, 2, 3", SC 2011 (Philox).
    """
    if in_vmap():
        # One call already samples a batch of rows, each from its own key drawn in place (or from
        # its seed), and the value checks read the tokens on the host: neither can be batched.
        raise GumbelkitValueError(
            "sample_tokens: expected a call outside torch.vmap, got one under torch.vmap: one call already "
            "samples every row of its (B, V) logits independently; pass the rows stacked as one (B, V) tensor"
        )
    check_logits_2d(logits)
    mode = check_mode(logits)
    rp = row_params(logits, temperature, top_k, top_p, min_p, mode)
    keys = row_keys(logits, seeds, offsets, generator)
    if _use_triton(logits):
        from ._triton import sample_rows_triton

        tokens, logp = sample_rows_triton(logits, rp, keys, bool(return_logprobs))
        if mode == "raise" and bool((tokens < 0).any()):
            m = row_maxima(logits.detach(), torch.float32)[1]
            raise_bad_rows(logits, m, tokens < 0)
    else:
        tokens, logp, bad, m = sample_rows(logits, rp, keys, bool(return_logprobs))
        if mode == "raise" and bool(bad.any()):
            raise_bad_rows(logits, m, bad)
    if return_logprobs:
        return tokens, logp
    return tokens
