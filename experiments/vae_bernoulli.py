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
from .vae_model import _mlp, bernoulli_nll

__all__ = ["BernoulliVAE", "bernoulli_objective", "evaluate_bits"]


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


@torch.no_grad()
def evaluate_bits(model: BernoulliVAE, x: torch.Tensor, *, generator, iw_samples: int = 0, exact: bool = False):
    r"""The numbers of :func:`experiments.vae_model.evaluate` (nats per image, discrete bits):
    ``neg_elbo``, ``iw_bound`` (m = ``iw_samples``) and, with ``exact``, ``exact_neg_elbo`` and
    ``exact_nll`` summed over all 2^D codes."""
    model.eval()
    device, m = next(model.parameters()).device, int(iw_samples)
    log_prior = -model.bits * math.log(2.0)  # log p(b) of every code under Bernoulli(1/2)^D
    sums = dict.fromkeys(["neg_elbo"] + ["iw_bound"] * bool(m) + ["exact_neg_elbo", "exact_nll"] * exact, 0.0)
    table = _CodeTable(model, device) if exact else None
    per_chunk = min(max(1, 16384 // max(1, m)), table.rows_per_chunk if table else 1 << 30)
    for start in range(0, x.shape[0], per_chunk):
        xb = x[start : start + per_chunk].to(device)
        logits = model.encode(xb)
        kl = model.kl_to_prior(logits)
        sums["neg_elbo"] += float((bernoulli_nll(model.decode(_bits(logits, generator)), xb) + kl).double().sum())
        if m:
            rep = logits.unsqueeze(0).expand(m, *logits.shape)
            b = _bits(rep, generator)
            log_px = -bernoulli_nll(model.decode(b), xb.unsqueeze(0).expand(m, *xb.shape))
            log_w = (log_px + log_prior - _log_q(rep, b)).double()
            # log-mean-exp over the m samples: logsumexp keeps the largest weight at exp(0)
            sums["iw_bound"] += float(-(torch.logsumexp(log_w, 0) - math.log(m)).sum())
        if table is not None:
            e_elbo, e_nll = table.evaluate(xb, logits, kl, log_prior)
            sums["exact_neg_elbo"] += e_elbo
            sums["exact_nll"] += e_nll
    return {key: v / x.shape[0] for key, v in sums.items()}


class _CodeTable:
    """Every code (2^D of them) decoded once: log p(x|b) and log q(b|x) of a batch are matrix products."""

    def __init__(self, model: BernoulliVAE, device):
        index = torch.arange(1 << model.bits, device=device)
        self.codes = ((index.unsqueeze(-1) >> torch.arange(model.bits, device=device)) & 1).double()  # (C, D)
        codes = self.codes.float()
        # float64 for the sums over codes: each log p(x|b) is a difference of terms of size ~input_dim
        self.logits = torch.cat([model.decode(codes[i : i + 8192]) for i in range(0, codes.shape[0], 8192)]).double()
        self.softplus_sum = F.softplus(self.logits).sum(-1)  # log p(x|b) = x @ l - sum softplus(l)
        self.rows_per_chunk = max(1, (1 << 22) // codes.shape[0])

    def evaluate(self, xb, logits, kl, log_prior) -> tuple[float, float]:
        log_px = xb.double() @ self.logits.T - self.softplus_sum  # (b, C)
        theta = logits.double()
        # log q(b|x) = sum_i b_i log sigma(theta_i) + (1 - b_i) log sigma(-theta_i), for every code at once
        log_q = F.logsigmoid(theta) @ self.codes.T + F.logsigmoid(-theta) @ (1 - self.codes).T
        neg_elbo = -(log_q.exp() * log_px).sum(-1) + kl.double()
        return float(neg_elbo.sum()), float(-torch.logsumexp(log_px + log_prior, -1).sum())
