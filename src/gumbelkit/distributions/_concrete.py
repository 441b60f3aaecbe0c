"""Concrete, ExpConcrete, BinaryConcrete and a straight-through Concrete.

Thin classes over the functional API: sampling reuses the library's finite float32 noise, and
every log-density is evaluated in log-space so it stays finite at small temperatures and
extreme logits (tau = 0.05, logits +-200).
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, constraints
from torch.distributions.utils import broadcast_all, lazy_property, logits_to_probs, probs_to_logits

from .._noise import gumbel_noise, logistic_noise
from .._sampling import one_hot_straight_through

__all__ = ["Concrete", "ExpConcrete", "BinaryConcrete", "StraightThroughConcrete"]


def _check_temperature(temperature) -> torch.Tensor:
    t = torch.as_tensor(temperature, dtype=torch.get_default_dtype()) if not isinstance(temperature, torch.Tensor) else temperature
    if not t.dtype.is_floating_point:
        raise TypeError(f"expected temperature with a floating dtype, got {t.dtype}")
    if t.numel() and not bool((t.detach() > 0).all()):
        raise ValueError(f"expected temperature > 0, got {t.detach().min().item()}")
    return t


def _logits_probs(logits, probs, vector: bool):
    if (logits is None) == (probs is None):
        raise ValueError("expected exactly one of logits or probs, got " + ("both" if logits is not None else "neither"))
    if logits is not None:
        if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point:
            raise TypeError(f"expected logits as a floating tensor, got {getattr(logits, 'dtype', type(logits).__name__)}")
        if torch.isnan(logits).any():
            raise ValueError("expected logits without NaN, got NaN entries")
        if vector:
            return logits - logits.logsumexp(-1, keepdim=True), None
        return logits, None
    if not isinstance(probs, torch.Tensor) or not probs.dtype.is_floating_point:
        raise TypeError(f"expected probs as a floating tensor, got {getattr(probs, 'dtype', type(probs).__name__)}")
    if vector:
        return None, probs / probs.sum(-1, keepdim=True)
    return None, probs


class ExpConcrete(Distribution):
    r"""ExpConcrete: the log of a Concrete sample, x = log_softmax((theta + g) / lambda).

    Math (K classes, temperature lambda):
    log p(x) = log (K-1)! + (K-1) log lambda + sum_k (theta_k - lambda x_k) - K LSE_k(theta_k - lambda x_k).
    Working in log-space keeps samples and densities finite where y = exp(x) underflows to 0.

    Args:
        temperature: lambda > 0 (tensor broadcastable to the batch shape).
        logits / probs: exactly one of them, categories on the last dimension.

    Example:
        >>> d = ExpConcrete(torch.tensor(0.5), logits=torch.zeros(3))
        >>> x = d.rsample(); d.log_prob(x)

    Reference: Maddison, Mnih, Teh, "The Concrete Distribution", ICLR 2017, Appendix C.
    """

    arg_constraints = {"temperature": constraints.positive, "logits": constraints.real_vector, "probs": constraints.simplex}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        self.temperature = _check_temperature(temperature)
        lg, pr = _logits_probs(logits, probs, vector=True)
        param = lg if lg is not None else pr
        if lg is not None:
            self.logits = lg
        else:
            self.probs = pr
        self._param = param
        batch_shape = param.shape[:-1]
        event_shape = param.shape[-1:]
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    @lazy_property
    def logits(self):
        return probs_to_logits(self.probs)

    @lazy_property
    def probs(self):
        return logits_to_probs(self.logits)

    @property
    def param_shape(self):
        return self._param.size()

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        new.temperature = self.temperature
        if "logits" in self.__dict__:
            new.logits = self.logits.expand(batch_shape + self.event_shape)
            new._param = new.logits
        if "probs" in self.__dict__:
            new.probs = self.probs.expand(batch_shape + self.event_shape)
            new._param = new.probs if "logits" not in self.__dict__ else new.logits
        super(type(self), new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _temperature(self, ref: torch.Tensor) -> torch.Tensor:
        # Temperature over the batch, with a trailing event axis for broadcasting against K.
        return self.temperature.to(ref).unsqueeze(-1) if self.temperature.dim() else self.temperature.to(ref)

    def rsample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        theta = self.logits
        cdt = torch.float64 if theta.dtype == torch.float64 else torch.float32
        g = gumbel_noise(shape, generator=generator, device=theta.device, dtype=cdt).to(theta.dtype)
        lam = self._temperature(theta)
        return torch.log_softmax((theta + g) / lam, -1)

    def sample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        theta = self.logits
        lam = self._temperature(theta)
        K = theta.shape[-1]
        lam_b = lam.squeeze(-1) if lam.dim() else lam
        log_norm = math.lgamma(K) + (K - 1) * torch.log(lam_b)
        s = theta - lam * value
        return log_norm + s.sum(-1) - K * torch.logsumexp(s, -1)


class Concrete(Distribution):
    r"""Concrete / Gumbel-Softmax distribution on the simplex: y = softmax((theta + g) / lambda).

    Math: log p(y) = log (K-1)! + (K-1) log lambda + sum_k (theta_k - (lambda+1) log y_k)
    - K LSE_k(theta_k - lambda log y_k), evaluated as ExpConcrete.log_prob(log y) - sum_k log y_k.
    ``log y`` is floored at the smallest normal number so a coordinate that rounded to 0 gives a
    large but finite density instead of NaN.

    Args:
        temperature: lambda > 0.
        logits / probs: exactly one of them.

    Example:
        >>> d = Concrete(torch.tensor(0.5), logits=torch.zeros(3))
        >>> y = d.rsample(); d.log_prob(y)

    Reference: Maddison, Mnih, Teh, ICLR 2017; Jang, Gu, Poole, ICLR 2017.
    """

    arg_constraints = ExpConcrete.arg_constraints
    support = constraints.simplex
    has_rsample = True

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        self.base = ExpConcrete(temperature, probs=probs, logits=logits, validate_args=False)
        super().__init__(self.base.batch_shape, self.base.event_shape, validate_args=validate_args)

    temperature = property(lambda self: self.base.temperature)
    logits = property(lambda self: self.base.logits)
    probs = property(lambda self: self.base.probs)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        new.base = self.base.expand(batch_shape)
        super(type(self), new).__init__(new.base.batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.base.rsample(sample_shape, generator=generator).exp()

    def sample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_y = torch.log(value.clamp_min(torch.finfo(value.dtype).tiny))
        return self.base.log_prob(log_y) - log_y.sum(-1)


class StraightThroughConcrete(Concrete):
    r"""Concrete with a hard forward: ``rsample`` is one_hot(argmax(theta + g)) with the Concrete gradient.

    The forward value is an exact Categorical(softmax(theta)) sample, so ``log_prob`` of a one-hot
    value is the categorical log-probability log softmax(theta)_k -- a function of the value alone,
    with no soft sample hidden on the tensor.

    Example:
        >>> d = StraightThroughConcrete(torch.tensor(0.5), logits=torch.randn(4, 3, requires_grad=True))
        >>> y = d.rsample(); d.log_prob(y)

    Reference: Jang, Gu, Poole, ICLR 2017 (straight-through Gumbel-Softmax).
    """

    support = constraints.one_hot

    def rsample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
        soft = super().rsample(sample_shape, generator=generator)
        index = soft.detach().argmax(-1, keepdim=True)
        return one_hot_straight_through(soft, index, -1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_p = torch.log_softmax(self.logits, -1).expand(value.shape)
        return log_p.gather(-1, value.argmax(-1, keepdim=True)).squeeze(-1)


class BinaryConcrete(Distribution):
    r"""Binary Concrete (relaxed Bernoulli): y = sigmoid((theta + L) / lambda), L ~ Logistic(0, 1).

    Math: in logit space l = logit(y), log p(l) = log lambda + (theta - lambda l) - 2 softplus(theta - lambda l);
    on (0, 1), log p(y) = log p(l) - log y - log(1 - y) with log y = -softplus(-l) and
    log(1 - y) = -softplus(l), all stable for large |l|.

    Args:
        temperature: lambda > 0.
        logits / probs: exactly one of them (probability of 1).

    Example:
        >>> d = BinaryConcrete(torch.tensor(0.5), logits=torch.zeros(4))
        >>> y = d.rsample(); d.log_prob(y)

    Reference: Maddison, Mnih, Teh, ICLR 2017, Section 3.3.
    """

    arg_constraints = {"temperature": constraints.positive, "logits": constraints.real, "probs": constraints.unit_interval}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        t = _check_temperature(temperature)
        lg, pr = _logits_probs(logits, probs, vector=False)
        if lg is not None:
            self.temperature, self.logits = broadcast_all(t, lg)
            param = self.logits
        else:
            self.temperature, self.probs = broadcast_all(t, pr)
            param = self.probs
        self._param = param
        super().__init__(param.shape, validate_args=validate_args)

    @lazy_property
    def logits(self):
        return probs_to_logits(self.probs, is_binary=True)

    @lazy_property
    def probs(self):
        return logits_to_probs(self.logits, is_binary=True)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        new.temperature = self.temperature.expand(batch_shape)
        if "logits" in self.__dict__:
            new.logits = self.logits.expand(batch_shape)
        if "probs" in self.__dict__:
            new.probs = self.probs.expand(batch_shape)
        super(type(self), new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample_logit(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
        """A sample of l = (theta + L) / lambda, the logit of the relaxed Bernoulli (finite always)."""
        shape = self._extended_shape(sample_shape)
        theta = self.logits
        cdt = torch.float64 if theta.dtype == torch.float64 else torch.float32
        noise = logistic_noise(shape, generator=generator, device=theta.device, dtype=cdt).to(theta.dtype)
        return (theta + noise) / self.temperature

    def rsample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.sigmoid(self.rsample_logit(sample_shape, generator=generator))

    def sample(self, sample_shape=torch.Size(), *, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def log_prob_logit(self, logit: torch.Tensor) -> torch.Tensor:
        """log density of the logit l: log lambda + (theta - lambda l) - 2 softplus(theta - lambda l)."""
        lam = self.temperature
        s = self.logits - lam * logit
        return torch.log(lam) + s - 2.0 * torch.nn.functional.softplus(s)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # Keep y strictly inside (0, 1) so logit(y) is finite when a sample rounded to 0 or 1.
        eps = torch.finfo(value.dtype).eps
        y = value.clamp(torch.finfo(value.dtype).tiny, 1.0 - eps)
        logit = torch.log(y) - torch.log1p(-y)
        sp = torch.nn.functional.softplus
        return self.log_prob_logit(logit) + sp(-logit) + sp(logit)
