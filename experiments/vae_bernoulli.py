"""The Bernoulli VAE (``python -m experiments vae --family bernoulli``): D independent bits.

The encoder gives D log-odds, the prior is Bernoulli(1/2)^D with the analytic KL, the decoder takes
the bits. Each method of the registry's ``bernoulli`` family trains it the way the binary lab runs
it (:func:`experiments.binary.surrogate_loss`): a pathwise method through
:func:`gumbelkit.binary.sample`, a score-function one through :func:`gumbelkit.binary.surrogate`
(REBAR / RELAX with their learnable control). This is the model of the REBAR and RELAX papers
(Tucker et al. 2017, Grathwohl et al. 2018: 200 bits, linear or two-layer nets on MNIST).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import gumbelkit as gk

from . import methods as M
from .vae_model import DecodedCodes, _mlp, bernoulli_nll

__all__ = ["BernoulliVAE", "bernoulli_objective"]


class BernoulliVAE(torch.nn.Module):
    """D independent bits, a Bernoulli(1/2) prior and a Bernoulli decoder; ``forward`` returns the
    per-example training objective. ``control``: the learnable state of a method that has one
    (``spec.new_control((D,))``), a submodule so that the optimiser trains it and the saved state
    holds it; None for a method without state."""

    def __init__(self, input_dim: int, bits: int, hidden: list[int], control=None):
        super().__init__()
        self.input_dim, self.bits = input_dim, bits
        self.encoder = _mlp([input_dim, *hidden, bits])
        self.decoder = _mlp([bits, *reversed(hidden), input_dim])
        self.control = control

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, b: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits (..., input_dim) of bits b (..., D)."""
        return self.decoder(b.reshape(-1, self.bits)).view(*b.shape[:-1], self.input_dim)

    def kl_to_prior(self, logits: torch.Tensor) -> torch.Tensor:
        """Analytic KL(Bern(sigmoid(logits)) || Bern(1/2))^D: shape (B,). A bit is a 2-class
        categorical with logits (0, theta), so the library's KL (exact for saturated logits) applies."""
        two = torch.stack([torch.zeros_like(logits), logits], -1)
        return gk.kl_categorical(two, logits.new_zeros(()).expand_as(two), dim=-1).sum(-1)

    @property
    def log_prior(self) -> float:
        """log p(b) of every code under Bernoulli(1/2)^D."""
        return -self.bits * math.log(2.0)

    def draw(self, logits: torch.Tensor, generator) -> torch.Tensor:
        return _bits(logits, generator)

    def log_q(self, logits: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _log_q(logits, b)

    def code_table(self, device) -> _CodeTable:
        return _CodeTable(self, device)

    def forward(self, x: torch.Tensor, method: M.Method, tau: float, *, generator=None) -> torch.Tensor:
        logits = self.encode(x)

        def reconstruction(b: torch.Tensor) -> torch.Tensor:  # b: (B, D) -> (B,)
            return bernoulli_nll(self.decode(b), x)

        rec = bernoulli_objective(method, logits, reconstruction, tau, generator=generator, control=self.control)
        return rec + self.kl_to_prior(logits)


def bernoulli_objective(method: M.Method, logits, f, tau: float, *, generator=None, control=None) -> torch.Tensor:
    """Per-row objective whose gradient is the method's estimate of grad E_b[f(b)] (the binary lab's
    calls): f of the family's sample for a pathwise method, the family's surrogate otherwise."""
    if method.spec.kind == "score_function":
        return gk.binary.surrogate(logits, f, method.name, generator=generator, control=control, **method.options)
    return f(gk.binary.sample(logits, method.name, tau if method.spec.uses_tau else None, generator=generator,
                              **method.options))  # fmt: skip


def _log_q(logits: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log q(b | x) summed over the bits (BCE with logits: log-sigmoid without underflow)."""
    return -F.binary_cross_entropy_with_logits(logits, b, reduction="none").sum(-1)


def _bits(logits: torch.Tensor, generator) -> torch.Tensor:
    """Exact Bernoulli(sigmoid(logits)) bits: 1[logits + L > 0] with L standard logistic."""
    noise = gk.logistic_noise(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    return (logits + noise > 0).to(logits.dtype)


class _CodeTable(DecodedCodes):
    """The 2^D codes; log q of each is two matrix products of log-sigmoids."""

    def __init__(self, model: BernoulliVAE, device):
        index = torch.arange(1 << model.bits, device=device)
        self.codes = ((index.unsqueeze(-1) >> torch.arange(model.bits, device=device)) & 1).double()  # (C, D)
        super().__init__(model, self.codes.float())

    def evaluate(self, xb, logits, kl, log_prior) -> tuple[float, float]:
        theta = logits.double()
        # log q(b|x) = sum_i b_i log sigma(theta_i) + (1 - b_i) log sigma(-theta_i), for every code at once
        log_q = F.logsigmoid(theta) @ self.codes.T + F.logsigmoid(-theta) @ (1 - self.codes).T
        return self.numbers(log_q, self.log_px(xb), kl, log_prior)
