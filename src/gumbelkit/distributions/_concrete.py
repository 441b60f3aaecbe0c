"""Concrete, ExpConcrete, BinaryConcrete and a straight-through Concrete.

Thin classes over the functional API: sampling reuses the library's finite float32 noise, and
every log-density is evaluated in log-space so it stays finite at small temperatures and
extreme logits (tau = 0.05, logits +-200).

Conventions (as in ``torch.distributions``):

* Shapes: the temperature is a batch parameter. For the categorical classes
  ``batch_shape = broadcast(temperature.shape, logits.shape[:-1])`` and ``event_shape = (K,)``;
  for :class:`BinaryConcrete` ``batch_shape = broadcast(temperature.shape, logits.shape)``.
  Both parameters are stored expanded to the batch shape, so ``rsample(s).shape ==
  s + batch_shape + event_shape`` and ``log_prob`` of it has shape ``s + batch_shape``.
* Checks: structural ones (exactly one of logits/probs, floating dtypes, shapes that broadcast)
  always run; value checks (temperature > 0 and finite, logits without NaN/+inf/all-masked rows,
  valid probs) and support checks run only under ``validate_args`` (default:
  ``torch.distributions.Distribution._validate_args``), since each costs a reduction and a sync.
* Masking: a logit of -inf removes its class. Samples put x = -inf (y = 0) there, and
  ``log_prob`` is the density of the reduced distribution over the K' remaining classes.
* Errors: every argument error is a :class:`gumbelkit.errors.GumbelkitError` (also the
  ``ValueError`` / ``TypeError`` it was before) whose message starts with the class name, e.g.
  ``Concrete: expected temperature > 0 and finite, got ...``; torch's own checks under
  ``validate_args`` (support of a ``log_prob`` value, parameter constraints) are re-raised the same
  way, as ``Concrete.log_prob: ...`` / ``Concrete: ...``.
* Sampling: ``rsample`` / ``sample`` take an extra keyword ``generator=`` and draw the library's
  noise (:func:`gumbelkit.gumbel_noise`, :func:`gumbelkit.logistic_noise`) in the library's
  compute dtype (float64 for float64 parameters, else float32), then cast to the parameters' dtype.

Composition with ``torch.distributions`` building blocks:

* :class:`Concrete` *is* a ``TransformedDistribution``: its ``base_dist`` is the
  :class:`ExpConcrete` with the same parameters and its ``transforms`` are ``[ExpTransform()]``,
  exactly as torch builds ``RelaxedOneHotCategorical`` from ``ExpRelaxedCategorical``. Two
  methods are overridden: ``rsample`` (to take ``generator=``; it applies the same transforms to
  the base sample, so the values are those of ``base_dist.rsample(...).exp()``) and ``log_prob``.
  The generic change of variables would compute log y = log 0 = -inf for a masked class and turn
  the density into NaN, and a coordinate of a sample that rounded to 0 (small temperatures)
  would give -inf; the override floors log y at the smallest normal number and leaves masked
  classes out of the Jacobian.
* :class:`ExpConcrete` is written out: torch's ``ExpRelaxedCategorical`` draws its own noise
  (``Tensor.exponential_``-based, no ``generator``, the float32 tail cut at g ~ 16.6) and has no
  masked-class density, so there is nothing to compose it from without changing its samples.
* :class:`BinaryConcrete` is not ``TransformedDistribution(LogitBinaryConcrete, SigmoidTransform())``
  as torch's ``RelaxedBernoulli`` is: ``SigmoidTransform`` clamps its output to
  [tiny, 1 - eps] (our ``rsample`` returns the unclamped ``sigmoid``, so samples would change at
  the extremes) and the generic ``log_prob`` sums the Jacobian terms in another order (the
  densities would change in the last bits). Both would move the numbers of existing experiments.
"""

from __future__ import annotations

import numbers
from typing import ClassVar, cast

import torch
from torch.distributions import Distribution, TransformedDistribution, constraints
from torch.distributions.transforms import ExpTransform
from torch.distributions.utils import lazy_property, logits_to_probs, probs_to_logits

from .._core.autograd import divide_by_tau, one_hot_straight_through
from .._core.noise import gumbel_noise, logistic_noise
from .._core.policy import compute_dtype, skip_value_checks
from .._core.validation import check_dtype, check_generator, check_values, shape_str
from ..errors import GumbelkitError, GumbelkitTypeError, GumbelkitValueError

__all__ = ["BinaryConcrete", "Concrete", "ExpConcrete", "StraightThroughConcrete"]

_NEG_INF = float("-inf")
_NO_SAMPLE_DIMS = torch.Size()  # the default sample_shape, one shared immutable instance


# --------------------------------------------------------------------------- argument handling


def _resolve_validate(dist: Distribution, validate_args) -> bool:
    # Before Distribution.__init__ runs, the instance lookup finds the class default
    # (Distribution._validate_args unless changed by set_default_validate_args).
    return bool(dist._validate_args) if validate_args is None else bool(validate_args)


def _torch_checked(owner: str, call, *args, **kwargs):
    """Run a torch.distributions method whose own checks raise a plain ValueError; re-raise it as ours."""
    try:
        return call(*args, **kwargs)
    except ValueError as exc:
        if isinstance(exc, GumbelkitError):
            raise
        raise GumbelkitValueError(f"{owner}: {exc}") from None


class _Checked:
    """Mixin: ``log_prob``'s support/shape check (torch's, under validate_args) raises our error type."""

    def _validate_sample(self, value):
        _torch_checked(f"{type(self).__name__}.log_prob", super()._validate_sample, value)  # type: ignore[misc]


def _param(owner: str, logits, probs, vector: bool) -> tuple[str, torch.Tensor]:
    """Structural checks (always run): exactly one parameter, a floating tensor, an event axis."""
    if (logits is None) == (probs is None):
        raise GumbelkitValueError(
            f"{owner}: expected exactly one of logits or probs, got " + ("both" if logits is not None else "neither")
        )
    name, value = ("logits", logits) if logits is not None else ("probs", probs)
    check_dtype(value, name, fn=owner)
    if vector and (value.dim() == 0 or value.shape[-1] == 0):
        raise GumbelkitValueError(
            f"{owner}: expected {name} with at least one category on the last dimension, "
            f"got {name} of shape {shape_str(value.shape)}"
        )
    return name, value


def _temperature(owner: str, temperature, ref: torch.Tensor) -> torch.Tensor:
    """The temperature as a floating tensor; numbers take the dtype and device of the parameter."""
    if isinstance(temperature, torch.Tensor):
        if not temperature.dtype.is_floating_point:
            raise GumbelkitTypeError(
                f"{owner}: expected temperature with a floating dtype, got {temperature.dtype} "
                f"(temperature of shape {shape_str(temperature.shape)})"
            )
        return temperature
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise GumbelkitTypeError(
            f"{owner}: expected temperature to be a float or a floating tensor, got {type(temperature).__name__}"
        )
    return torch.tensor(float(temperature), dtype=ref.dtype, device=ref.device)


def _batch_shape(owner: str, temperature: torch.Tensor, batch: torch.Size, what: str) -> torch.Size:
    try:
        return torch.broadcast_shapes(temperature.shape, batch)
    except RuntimeError:
        raise GumbelkitValueError(
            f"{owner}: expected temperature broadcastable with the batch shape {what} = {shape_str(batch)}, "
            f"got temperature of shape {shape_str(temperature.shape)}"
        ) from None


def _check_temperature_values(owner: str, t: torch.Tensor) -> None:
    # data-dependent: skipped while compiling and under vmap (the library's value-check rule)
    if skip_value_checks() or t.numel() == 0:
        return
    td = t.detach()
    ok = (td > 0) & torch.isfinite(td)  # `> 0` is False for NaN
    if not bool(ok.all()):
        bad = td[~ok]
        raise GumbelkitValueError(
            f"{owner}: expected temperature > 0 and finite, got {bad.numel()} invalid value(s) "
            f"(the first {bad[0].item()}) in temperature of shape {shape_str(t.shape)}"
        )


def _check_param_values(owner: str, name: str, value: torch.Tensor, vector: bool) -> None:
    if skip_value_checks() or value.numel() == 0:
        return
    v = value.detach()
    if name == "logits":
        if vector:
            # NaN, +inf and fully masked rows; -inf alone masks its class (the message has the shape)
            check_values(v, v.dim() - 1, fn=owner)
        elif not bool(torch.isfinite(v).all()):
            n = int((~torch.isfinite(v)).sum())
            raise GumbelkitValueError(
                f"{owner}: expected finite logits, got {n} NaN or infinite entries in logits of shape {shape_str(v.shape)}"
            )
        return
    bad = ~torch.isfinite(v) | (v < 0)
    if not vector:
        bad |= v > 1
    n_bad = int(bad.sum())
    if n_bad:
        want = "probs >= 0 and finite" if vector else "probs in [0, 1]"
        raise GumbelkitValueError(
            f"{owner}: expected {want}, got {n_bad} invalid entries in probs of shape {shape_str(v.shape)}"
        )
    if vector and not bool((v.sum(-1) > 0).all()):
        raise GumbelkitValueError(
            f"{owner}: expected probs with a positive sum over the last dimension, "
            f"got a row summing to 0 in probs of shape {shape_str(v.shape)}"
        )


def _check_rsample_generator(dist: Distribution, generator, device: torch.device) -> None:
    """A bad ``generator`` is reported under ``<Class>.rsample``, not under the noise function that draws."""
    check_generator(generator, device, f"{type(dist).__name__}.rsample")


def _relaxed_bits(dist, sample_shape, generator, squash, *, logit: bool = False) -> torch.Tensor:
    """squash((theta + L) / lambda) (or the logit itself) for a binary relaxation, L ~ Logistic(0, 1).

    Computed in float32 (float64 for float64) and cast back to the parameters' dtype (the
    library's dtype rule: float16 logits give float16 samples, not float16 arithmetic); the
    logits are made contiguous first, since elementwise kernels round some values differently on
    strided memory (SIMD body against scalar tail) and the sample must not depend on the layout.
    divide_by_tau: a tiny temperature saturates the squash, and its gradient stays exactly 0.
    """
    shape = dist._extended_shape(sample_shape)
    _check_rsample_generator(dist, generator, dist.logits.device)
    dtype = torch.promote_types(dist.logits.dtype, dist.temperature.dtype)
    cdt = compute_dtype(dtype)
    theta = dist.logits.to(cdt).contiguous()
    noise = logistic_noise(shape, generator=generator, device=theta.device, dtype=cdt)
    x = divide_by_tau(theta + noise, dist.temperature.to(cdt))
    return (x if logit else squash(x)).to(dtype)


def _expanded_batch(owner: str, batch_shape, old: torch.Size) -> torch.Size:
    try:
        batch_shape = torch.Size(batch_shape)
    except TypeError:
        raise GumbelkitTypeError(
            f"{owner}.expand: expected batch_shape to be a sequence of ints, got {batch_shape!r}"
        ) from None
    try:
        ok = torch.broadcast_shapes(old, batch_shape) == batch_shape
    except RuntimeError:
        ok = False
    if not ok:
        raise GumbelkitValueError(
            f"{owner}.expand: expected a batch_shape that {shape_str(old)} expands to, got {shape_str(batch_shape)}"
        )
    return batch_shape


# --------------------------------------------------------------------------- ExpConcrete density


def _exp_concrete_log_prob(theta: torch.Tensor, lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""log p(x) of ExpConcrete(lam, theta), with masked (-inf) classes treated as absent.

    Over the K' classes with a finite logit (the reduced distribution, which is what the sampler
    draws: a masked class adds exp(-inf) = 0 to the softmax denominator):
    log p(x) = log (K'-1)! + (K'-1) log lam + sum_k s_k - K' LSE_k s_k,  s_k = theta_k - lam x_k,
    sums over unmasked k only. A masked class must have x_k = -inf (its only value on the
    support); a finite x_k there, or x_k = -inf at an unmasked class (the density's limit there
    is 0), gives -inf.
    """
    unmasked = theta > _NEG_INF
    lam = lam.to(theta).unsqueeze(-1)
    k = unmasked.sum(-1).to(theta.dtype)
    keep = unmasked & (x != _NEG_INF)
    # Zero the dropped coordinates *before* the arithmetic: there theta - lam * x is
    # -inf + inf = NaN, and torch.where on the result would still send NaN gradients
    # (0 * inf) into theta, lam and x.
    s = torch.where(keep, theta, 0.0) - lam * torch.where(keep, x, 0.0)
    s_sum = torch.where(keep, s, 0.0).sum(-1)
    lse = torch.where(keep, s, _NEG_INF).logsumexp(-1)
    lp = torch.lgamma(k) + (k - 1) * torch.log(lam.squeeze(-1)) + s_sum - k * lse
    # On the support exactly when x_k = -inf at the masked classes and only there.
    off_support = (unmasked != (x != _NEG_INF)).any(-1)
    return torch.where(off_support, _NEG_INF, lp)


class ExpConcrete(_Checked, Distribution):
    r"""ExpConcrete: the log of a Concrete sample, x = log_softmax((theta + g) / lambda).

    Math (K classes, temperature lambda):
    log p(x) = log (K-1)! + (K-1) log lambda + sum_k (theta_k - lambda x_k) - K LSE_k(theta_k - lambda x_k).
    Working in log-space keeps samples and densities finite where y = exp(x) underflows to 0.
    Masked classes (logit -inf) get x = -inf and are left out: K is then the number of
    finite logits in the row.

    Args:
        temperature: lambda > 0, a number or a tensor broadcastable with ``logits.shape[:-1]``;
            the batch shape is the broadcast of the two.
        probs: class probabilities (categories on the last dimension); give this or ``logits``.
        logits: unnormalised log-probabilities (categories on the last dimension); or ``probs``.
        validate_args: check parameter values and ``log_prob`` arguments (default: torch's).

    Examples:
        >>> d = ExpConcrete(torch.tensor(0.5), logits=torch.zeros(3))
        >>> x = d.rsample((2,), generator=torch.Generator().manual_seed(0))
        >>> x.shape, d.log_prob(x).shape
        (torch.Size([2, 3]), torch.Size([2]))
        >>> bool(torch.allclose(x.exp().sum(-1), torch.ones(2)))
        True

    Reference: Maddison, Mnih, Teh, "The Concrete Distribution", ICLR 2017, Appendix C.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "temperature": constraints.positive,
        "logits": constraints.real_vector,
        "probs": constraints.simplex,
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        temperature: float | torch.Tensor,
        probs: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        self._setup(
            type(self).__name__, temperature, probs, logits, validate_args, _resolve_validate(self, validate_args)
        )

    def _setup(self, owner, temperature, probs, logits, validate_args, check_values_: bool) -> None:
        name, param = _param(owner, logits, probs, vector=True)
        t = _temperature(owner, temperature, param)
        batch_shape = _batch_shape(owner, t, param.shape[:-1], f"{name}.shape[:-1]")
        if check_values_:
            _check_temperature_values(owner, t)
            _check_param_values(owner, name, param, vector=True)
        event_shape = param.shape[-1:]
        # Normalise before expanding: one reduction per distinct row, not per broadcast copy.
        if name == "logits":
            # Normalised in the compute dtype and kept there for rsample: a float16 gradient of a
            # tiny temperature overflows to +-inf, and the normalisation's backward (g - p * sum g)
            # would turn +inf and -inf in one row into NaN; in float32 it stays finite until the
            # last cast to the parameter's dtype (where it may be inf, never NaN).
            lc = param.to(compute_dtype(param.dtype))
            self._logits_c = (lc - lc.logsumexp(-1, keepdim=True)).expand(batch_shape + event_shape)
            self.logits = self._logits_c.to(param.dtype)
            self._param = self.logits
        else:
            self.probs = (param / param.sum(-1, keepdim=True)).expand(batch_shape + event_shape)
            self._param = self.probs
        self.temperature = t.expand(batch_shape)
        _torch_checked(owner, super().__init__, batch_shape, event_shape, validate_args=validate_args)

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
        new = self._get_checked_instance(ExpConcrete, _instance)
        batch_shape = _expanded_batch(type(self).__name__, batch_shape, self.batch_shape)
        param_shape = batch_shape + self.event_shape
        new.temperature = self.temperature.expand(batch_shape)
        if "probs" in self.__dict__:
            new.probs = self.probs.expand(param_shape)
            new._param = new.probs
        if "logits" in self.__dict__:
            new.logits = self.logits.expand(param_shape)
            new._param = new.logits
        if "_logits_c" in self.__dict__:
            new._logits_c = self._logits_c.expand(param_shape)
        super(ExpConcrete, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=_NO_SAMPLE_DIMS, *, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        dtype = self.logits.dtype
        _check_rsample_generator(self, generator, self.logits.device)
        # computed in float32 (float64 for float64), cast back: the library's dtype rule (a float16
        # softmax of perturbed logits loses the argmax, and its gradients overflow at 65,504);
        # contiguous: elementwise kernels round some values differently on strided memory (SIMD
        # body against scalar tail), and the sample must not depend on the parameters' layout
        cdt = compute_dtype(dtype)
        theta = self.__dict__.get("_logits_c", self.logits).to(cdt).contiguous()
        g = gumbel_noise(shape, generator=generator, device=theta.device, dtype=cdt)
        lam = self.temperature.to(theta).unsqueeze(-1)
        unmasked = theta > _NEG_INF
        # Masked classes: perturb 0 instead of -inf and put -inf back afterwards. (-inf + g) / lam
        # has the lambda-derivative +inf, and the zero gradient a masked y = 0 sends back would
        # turn it into 0 * inf = NaN in temperature.grad.
        u = torch.where(unmasked, theta, 0.0) + g
        # Shift the row's top to exactly 0 first (log_softmax is invariant to it, in value and
        # gradient): a tiny lam then sends the others to -inf, never two entries to +inf (inf - inf);
        # divide_by_tau gives the temperature exactly 0 gradient from the entries at -inf.
        top = torch.where(unmasked, u, _NEG_INF).detach().amax(-1, keepdim=True)
        z = torch.where(unmasked, divide_by_tau(u - top, lam), _NEG_INF)
        return torch.log_softmax(z, -1).to(dtype)

    def sample(self, sample_shape=_NO_SAMPLE_DIMS, *, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return _exp_concrete_log_prob(self.logits, self.temperature, value)


class Concrete(_Checked, TransformedDistribution):
    r"""Concrete / Gumbel-Softmax distribution on the simplex: y = softmax((theta + g) / lambda).

    Math: log p(y) = log (K-1)! + (K-1) log lambda + sum_k (theta_k - (lambda+1) log y_k)
    - K LSE_k(theta_k - lambda log y_k), evaluated as ExpConcrete.log_prob(log y) - sum_k log y_k.
    ``log y`` is floored at the smallest normal number so a coordinate that rounded to 0 gives a
    large but finite density instead of NaN. Masked classes (logit -inf) have y = 0 and are left
    out of both terms (the density of the reduced Concrete over the finite logits).

    A ``TransformedDistribution`` of :class:`ExpConcrete` (``base_dist``) by ``ExpTransform()``
    (``transforms``), as torch's ``RelaxedOneHotCategorical``; ``rsample`` takes ``generator=``
    and ``log_prob`` handles masked classes and underflowed coordinates (see the module notes).

    Args:
        temperature: lambda > 0, a number or a tensor broadcastable with ``logits.shape[:-1]``.
        probs: class probabilities; give this or ``logits``.
        logits: unnormalised log-probabilities; or ``probs``.
        validate_args: check parameter values and ``log_prob`` arguments (default: torch's).

    Examples:
        >>> d = Concrete(torch.tensor(0.5), logits=torch.zeros(3))
        >>> y = d.rsample((2,), generator=torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(y.sum(-1), torch.ones(2))), d.log_prob(y).shape
        (True, torch.Size([2]))
        >>> type(d.base_dist).__name__, d.transforms
        ('ExpConcrete', [ExpTransform()])

    Reference: Maddison, Mnih, Teh, ICLR 2017; Jang, Gu, Poole, ICLR 2017.
    """

    arg_constraints = ExpConcrete.arg_constraints
    support = constraints.simplex
    has_rsample = True

    def __init__(
        self,
        temperature: float | torch.Tensor,
        probs: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        owner = type(self).__name__
        base = ExpConcrete.__new__(ExpConcrete)
        # The value checks run once, here, with this class's name in the messages.
        base._setup(owner, temperature, probs, logits, False, _resolve_validate(self, validate_args))
        _torch_checked(owner, super().__init__, base, [ExpTransform()], validate_args=validate_args)

    temperature = property(lambda self: self.base_dist.temperature)

    # Lazy, as in ExpConcrete: torch's validate_args then checks neither (base_dist's checks already
    # ran on the one given) instead of computing the other one just to check it -- a float16
    # softmax misses torch's simplex tolerance of 1e-6 and refused valid float16 logits.
    @lazy_property
    def logits(self):
        return cast(ExpConcrete, self.base_dist).logits

    @lazy_property
    def probs(self):
        return cast(ExpConcrete, self.base_dist).probs

    param_shape = property(lambda self: self.base_dist.param_shape)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Concrete, _instance)
        batch_shape = _expanded_batch(type(self).__name__, batch_shape, self.batch_shape)
        return super().expand(batch_shape, _instance=new)

    def __repr__(self) -> str:
        return type(self).__name__ + repr(self.base_dist)[len("ExpConcrete") :]

    def rsample(self, sample_shape=_NO_SAMPLE_DIMS, *, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_rsample_generator(self, generator, self.logits.device)
        base = cast(ExpConcrete, self.base_dist)
        y = base.rsample(sample_shape, generator=generator)
        for transform in self.transforms:
            y = transform(y)
        return y

    def sample(self, sample_shape=_NO_SAMPLE_DIMS, *, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # Floor y at the smallest normal number: a coordinate that rounded to 0 gets a large but
        # finite log y instead of -inf (whose ExpConcrete density would be -inf or NaN).
        log_y = torch.log(value.clamp_min(torch.finfo(value.dtype).tiny))
        unmasked = self.logits > _NEG_INF
        # A masked class is on the support only at y = 0, i.e. x = -inf; y > 0 there stays finite
        # and ExpConcrete.log_prob returns -inf for it. The Jacobian of x = log y covers the K'
        # unmasked coordinates only.
        log_x = torch.where(unmasked | (value > 0), log_y, _NEG_INF)
        return self.base_dist.log_prob(log_x) - torch.where(unmasked, log_y, 0.0).sum(-1)


class StraightThroughConcrete(Concrete):
    r"""Concrete with a hard forward: ``rsample`` is one_hot(argmax(theta + g)) with the Concrete gradient.

    The forward value is an exact Categorical(softmax(theta)) sample, so ``log_prob`` of a one-hot
    value is the categorical log-probability log softmax(theta)_k -- a function of the value alone,
    with no soft sample hidden on the tensor.

    Examples:
        >>> d = StraightThroughConcrete(torch.tensor(0.5), logits=torch.randn(4, 3, requires_grad=True))
        >>> y = d.rsample(generator=torch.Generator().manual_seed(0))
        >>> bool((y.sum(-1) == 1).all()), d.log_prob(y).shape
        (True, torch.Size([4]))

    Reference: Jang, Gu, Poole, ICLR 2017 (straight-through Gumbel-Softmax).
    """

    support = constraints.one_hot  # type: ignore[assignment]  # a one-hot value is a point of the simplex

    def rsample(self, sample_shape=_NO_SAMPLE_DIMS, *, generator: torch.Generator | None = None) -> torch.Tensor:
        soft = super().rsample(sample_shape, generator=generator)
        index = soft.detach().argmax(-1, keepdim=True)
        return one_hot_straight_through(soft, index, -1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_p, value = torch.broadcast_tensors(torch.log_softmax(self.logits, -1), value)
        return log_p.gather(-1, value.argmax(-1, keepdim=True)).squeeze(-1)


class BinaryConcrete(_Checked, Distribution):
    r"""Binary Concrete (relaxed Bernoulli): y = sigmoid((theta + L) / lambda), L ~ Logistic(0, 1).

    Math: in logit space l = logit(y), log p(l) = log lambda + (theta - lambda l) - 2 softplus(theta - lambda l);
    on (0, 1), log p(y) = log p(l) - log y - log(1 - y) with log y = -softplus(-l) and
    log(1 - y) = -softplus(l), all stable for large |l|.

    Args:
        temperature: lambda > 0, a number or a tensor broadcastable with the logits;
            the batch shape is the broadcast of the two.
        probs: probability of 1; give this or ``logits``.
        logits: log-odds of 1; or ``probs``.
        validate_args: check parameter values and ``log_prob`` arguments (default: torch's).

    Examples:
        >>> d = BinaryConcrete(torch.tensor(0.5), logits=torch.zeros(4))
        >>> y = d.rsample(generator=torch.Generator().manual_seed(0))
        >>> bool(((y > 0) & (y < 1)).all()), d.log_prob(y).shape
        (True, torch.Size([4]))

    Reference: Maddison, Mnih, Teh, ICLR 2017, Section 3.3.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "temperature": constraints.positive,
        "logits": constraints.real,
        "probs": constraints.unit_interval,
    }
    support = constraints.unit_interval
    has_rsample = True

    def __init__(
        self,
        temperature: float | torch.Tensor,
        probs: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        owner = type(self).__name__
        name, param = _param(owner, logits, probs, vector=False)
        t = _temperature(owner, temperature, param)
        batch_shape = _batch_shape(owner, t, param.shape, f"{name}.shape")
        if _resolve_validate(self, validate_args):
            _check_temperature_values(owner, t)
            _check_param_values(owner, name, param, vector=False)
        self.temperature = t.expand(batch_shape)
        if name == "logits":
            self.logits = param.expand(batch_shape)
            self._param = self.logits
        else:
            self.probs = param.expand(batch_shape)
            self._param = self.probs
        _torch_checked(owner, super().__init__, batch_shape, validate_args=validate_args)

    @lazy_property
    def logits(self):
        return probs_to_logits(self.probs, is_binary=True)

    @lazy_property
    def probs(self):
        return logits_to_probs(self.logits, is_binary=True)

    @property
    def param_shape(self):
        return self._param.size()

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(BinaryConcrete, _instance)
        batch_shape = _expanded_batch(type(self).__name__, batch_shape, self.batch_shape)
        new.temperature = self.temperature.expand(batch_shape)
        if "probs" in self.__dict__:
            new.probs = self.probs.expand(batch_shape)
            new._param = new.probs
        if "logits" in self.__dict__:
            new.logits = self.logits.expand(batch_shape)
            new._param = new.logits
        super(BinaryConcrete, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample_logit(self, sample_shape=_NO_SAMPLE_DIMS, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """A sample of l = (theta + L) / lambda, the logit of the relaxed Bernoulli (finite always)."""
        return _relaxed_bits(self, sample_shape, generator, torch.sigmoid, logit=True)

    def rsample(self, sample_shape=_NO_SAMPLE_DIMS, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return _relaxed_bits(self, sample_shape, generator, torch.sigmoid)

    def sample(self, sample_shape=_NO_SAMPLE_DIMS, *, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def log_prob_logit(self, logit: torch.Tensor) -> torch.Tensor:
        """log density of the logit l: log lambda + (theta - lambda l) - 2 softplus(theta - lambda l)."""
        lam = self.temperature
        s = self.logits - lam * logit
        # 2 softplus(s) rather than 2 log(1 + e^s): finite and exact for |s| in the hundreds.
        return torch.log(lam) + s - 2.0 * torch.nn.functional.softplus(s)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # Keep y strictly inside (0, 1) so logit(y) is finite when a sample rounded to 0 or 1.
        eps = torch.finfo(value.dtype).eps
        y = value.clamp(torch.finfo(value.dtype).tiny, 1.0 - eps)
        logit = torch.log(y) - torch.log1p(-y)
        # -log y - log(1 - y) = softplus(-l) + softplus(l): no cancellation for large |l|.
        sp = torch.nn.functional.softplus
        return self.log_prob_logit(logit) + sp(-logit) + sp(logit)
