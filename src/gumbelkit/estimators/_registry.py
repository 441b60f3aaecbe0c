"""The method registry: one typed declaration (:class:`MethodSpec`) per method, in families.

A method is declared once, where its function is defined::

    @register("gumbel_rao", one_hot=True, options=(OptionSpec("k", int, 10, minimum=1, help="..."),),
              reference="Paulus et al., ICLR 2021")
    def gumbel_rao_estimator(logits, tau=1.0, *, dim=-1, generator=None, k=10): ...

**Families.** Every method belongs to one family, which fixes what it samples and how its
function is called; names are unique within a family (``st`` is both a categorical and a
Bernoulli method). The built-in families:

- ``"categorical"`` (the default): one-of-K samples. ``"sample"`` methods are
  ``fn(logits, tau, *, dim, generator, **options) -> Tensor`` (:func:`gumbelkit.sample` calls them);
  ``"score_function"`` methods are ``fn(logits, loss_fn, *, dim, generator, **options) ->
  (surrogate, losses)`` (REINFORCE: they need the loss; :meth:`MethodSpec.objective` runs either kind).
- ``"bernoulli"``: independent bits, run by :func:`gumbelkit.binary.sample`
  (``fn(theta, tau, noise, **options)``, ``noise`` standard logistic) and
  :func:`gumbelkit.binary.surrogate` (``fn(phi, f, logits, generator, **options) -> (value, grad)``,
  or ``(value, grad, extra)`` with ``extra`` shaped like ``value`` and exactly 0 forwards: it is
  added to the surrogate, e.g. to train a learnable control).
- ``"subset"``: k-subsets. ``fn(logits, k, tau, *, dim, generator, **options)`` returns a k-hot
  (``one_hot``) or relaxed sample; a ``"score_function"`` method is ``fn(logits, k, loss_fn, *,
  dim, generator, **options) -> (surrogate, losses)``. Trait ``law``: the distribution the forward
  samples (``"gumbel_topk"``: Gumbel-top-k; ``"conditional"``: Bernoullis given exactly k ones).
- ``"permutation"``: ``fn(x, tau, *, generator, **options)`` returns an (..., n, n) relaxed (or,
  ``one_hot``, exact) permutation matrix. Trait ``input``: ``"log_alpha"`` (x is an n x n score
  matrix, row i = item i, column j = position j) or ``"scores"`` (x holds n scores, row i of the
  result = the item with the i-th largest score); trait ``stochastic``: whether it draws noise.

Any other family name is allowed (plugins may add families); :meth:`MethodSpec.call` calls a
method the same way whatever its family. ``fixed`` keywords are passed on every call (one function
can be registered twice, e.g. a ``hard`` flag fixed to True and to False).

**Learnable state.** A method that owns parameters (REBAR's scale and temperature, RELAX's
control network) declares ``control=builder``: ``builder(event_shape, **options)`` returns the
``torch.nn.Module`` holding them for samples whose one row has ``event_shape``
(:meth:`MethodSpec.new_control` builds it with the options resolved). Its function takes the
module as the keyword ``control`` (None: the method's fixed, untrained behaviour), and the
surrogate it returns carries a term that is exactly 0 forwards and whose gradient reaches only the
module's parameters: the gradient of the method's auxiliary objective (for a control variate,
the squared norm of the estimate, i.e. its variance up to a constant). One ``.backward()`` of
the surrogate therefore gives the logits the estimate and the module its training gradient; the
caller adds ``module.parameters()`` to an optimiser.

Plugins: every entry point of the group ``gumbelkit.estimators`` names a module of another
package; each is imported once, lazily, the first time the registry is read (:func:`get_spec`,
:func:`methods`, :data:`gumbelkit.METHODS`, :func:`gumbelkit.sample`, ...), so its ``@register``
decorators add methods of any family that every experiment then accepts. A plugin that fails to
import is reported with a :class:`RuntimeWarning` naming it, and whatever it had registered is
removed again; it never stops gumbelkit from working.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from ..errors import GumbelkitTypeError as _TypeError
from ..errors import GumbelkitValueError as _ValueError

__all__ = [
    "ENTRY_POINT_GROUP",
    "FAMILIES",
    "KINDS",
    "SPECS",
    "Estimator",
    "MethodSpec",
    "MethodsView",
    "OptionSpec",
    "SpecsView",
    "families",
    "get_estimator",
    "get_spec",
    "is_one_hot",
    "load_plugins",
    "methods",
    "register",
    "registered_methods",
    "specs",
    "unregister",
]

Estimator = Callable[..., Any]

#: The entry-point group plugins declare their modules in.
ENTRY_POINT_GROUP = "gumbelkit.estimators"
#: The kinds of method (see the module docstring).
KINDS = ("sample", "score_function")
#: The built-in families (a plugin may register a method of any other family).
FAMILIES = ("categorical", "bernoulli", "subset", "permutation")
_OPTION_TYPES = (int, float, bool, str)
# Method and option names appear in the command line syntax ``name:option=value,...``.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
_OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# --------------------------------------------------------------------------- declarations


def _num(v: float) -> str:
    """A bound as written in messages: 10000, not 1e+04; 0.5 as 0.5."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e16 else f"{v:g}"


@dataclass(frozen=True)
class OptionSpec:
    """One option of a method: its name, type, default, valid range or choices and a one-line help.

    Bounds are inclusive (``open_minimum=True`` excludes the minimum itself, e.g. a temperature
    or a margin that must be > 0); ``None`` means unbounded. ``choices`` (if given) lists every
    valid value.

    Examples:
        >>> from gumbelkit.estimators import OptionSpec
        >>> k = OptionSpec("k", int, 10, minimum=1, help="conditional noise draws")
        >>> k.describe()
        'an integer >= 1'
        >>> k.check(20, "gumbel_rao")
        20
        >>> k.parse("7", "gumbel_rao")
        7
    """

    name: str
    type: type
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple = ()
    help: str = ""
    open_minimum: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _OPTION_NAME.match(self.name):
            raise _ValueError(f"OptionSpec: expected an identifier as the option name, got {self.name!r}")
        if self.type not in _OPTION_TYPES:
            raise _TypeError(
                f"OptionSpec: expected type in (int, float, bool, str) for option {self.name!r}, got {self.type!r}"
            )
        object.__setattr__(self, "choices", tuple(self.choices))
        self.check(self.default, "<declaration>")  # a default outside its own range is a declaration bug

    def describe(self, cap: float | None = None) -> str:
        """The valid values in words, e.g. ``an integer >= 1`` or ``an integer with 2 <= n <= 1000``.

        Args:
            cap: an extra upper bound (an experiment's memory cap), combined with :attr:`maximum`.
        """
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        what = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}[self.type]
        hi = self._upper(cap)
        lo = self.minimum
        if lo is not None and hi is not None:
            return f"{what} with {_num(lo)} {'<' if self.open_minimum else '<='} {self.name} <= {_num(hi)}"
        if lo is not None:
            return f"{what} {'>' if self.open_minimum else '>='} {_num(lo)}"
        if hi is not None:
            return f"{what} <= {_num(hi)}"
        return what

    def _upper(self, cap: float | None) -> float | None:
        if cap is None or self.type not in (int, float):
            return self.maximum
        return cap if self.maximum is None else min(cap, self.maximum)

    def check(self, value: Any, method: str, *, cap: float | None = None, where: str = "") -> Any:
        """``value`` unchanged if it is valid for this option, else a clear error.

        Args:
            value: the option's value.
            method: the method's name (for the message).
            cap: an extra upper bound for numbers (see :meth:`describe`).
            where: prefix of the message (the calling function), e.g. ``"sample: "``.

        Returns:
            ``value``.

        Raises:
            TypeError: a value of the wrong type; ValueError: a value out of range.
        """
        expected = f"{where}expected {self.name} to be {self.describe(cap)} for method {method!r}, got {value!r}"
        ok_type = {
            int: isinstance(value, numbers.Integral) and not isinstance(value, bool),
            float: isinstance(value, numbers.Real) and not isinstance(value, bool),
            bool: isinstance(value, bool),
            str: isinstance(value, str),
        }[self.type]
        if not ok_type:
            raise _TypeError(expected)
        if self.choices and value not in self.choices:
            raise _ValueError(expected)
        if self.type in (int, float):
            hi = self._upper(cap)
            if (
                (self.type is float and not math.isfinite(value))
                or (self.minimum is not None and (value <= self.minimum if self.open_minimum else value < self.minimum))
                or (hi is not None and value > hi)
            ):
                raise _ValueError(expected)
        return value

    def parse(self, text: str, method: str, *, cap: float | None = None, where: str = "") -> Any:
        """The value written as ``text`` (on a command line), checked as by :meth:`check`."""
        raw = str(text).strip()
        try:
            if self.type is bool:
                low = raw.lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value: Any = low in ("true", "1", "yes")
            elif self.type is int:
                value = int(raw)
            elif self.type is float:
                value = float(raw)
            else:
                value = raw
        except ValueError:
            raise _ValueError(
                f"{where}expected {self.name} to be {self.describe(cap)} for method {method!r}, got {raw!r}"
            ) from None
        return self.check(value, method, cap=cap, where=where)

    def format(self, value: Any) -> str:
        """``value`` as it is written on a command line (``parse(format(v)) == v``)."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return repr(value)
        return str(value)


@dataclass(frozen=True)
class MethodSpec:
    """The declaration of one registered method.

    Attributes:
        name: the registry name, unique within its family (``gumbelkit.sample(logits, name)``).
        fn: the function (see the module docstring for each family's signature).
        one_hot: whether its forward value is exactly discrete: one-hot (categorical), 0/1
            (Bernoulli), k-hot (subset) or a permutation matrix (each sample, for ``"score_function"``).
        uses_tau: whether the temperature changes what it computes.
        options: the :class:`OptionSpec` of each keyword option.
        reference: the paper(s) it comes from.
        kind: ``"sample"`` or ``"score_function"``.
        relaxed: its backward is the gradient of the Gumbel-Softmax relaxation softmax((theta + g) / tau)
            at the same tau (for the sampled noise, or averaged over the noise given the sample), so its
            bias against the relaxed objective's gradient is a meaningful number.
        evaluations_option: the option that says how many times one estimate evaluates the loss
            (``"n"`` for REINFORCE with n samples); ``None``: once (unless ``evaluations`` says).
        evaluations: for a count that other options decide, ``evaluations(options) -> int`` of the
            resolved options (REBAR: 2, or 3 with independent conditional noise); at most one of
            ``evaluations_option`` and ``evaluations``.
        summary: a one-line description (the first line of ``fn``'s docstring).
        family: ``"categorical"``, ``"bernoulli"``, ``"subset"``, ``"permutation"`` or a plugin's own.
        default_tau: the temperature used when none is given (None: the caller's default, 1).
        fixed: keyword arguments passed to ``fn`` on every call (not options: they cannot be changed).
        traits: what else the family needs to know (subset: ``law``; permutation: ``input``).
        control: for a method with learnable state, ``control(event_shape, **options) -> nn.Module``
            (see :meth:`new_control`); ``None`` for a method without state.

    Examples:
        >>> import gumbelkit as gk
        >>> spec = gk.get_spec("gumbel_rao")
        >>> spec.family, spec.kind, spec.one_hot, spec.defaults()
        ('categorical', 'sample', True, {'k': 10})
        >>> gk.get_spec("hard_concrete", family="bernoulli").default_tau == 2 / 3
        True
    """

    name: str
    fn: Estimator
    one_hot: bool
    uses_tau: bool = True
    options: tuple[OptionSpec, ...] = ()
    reference: str = ""
    kind: str = "sample"
    relaxed: bool = False
    evaluations_option: str | None = None
    summary: str = field(default="", compare=False)
    evaluations: Callable[[Mapping[str, Any]], int] | None = field(default=None, compare=False)
    family: str = "categorical"
    default_tau: float | None = None
    fixed: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False)
    traits: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False)
    control: Callable[..., torch.nn.Module] | None = field(default=None, compare=False)

    @property
    def has_control(self) -> bool:
        """Whether the method owns learnable state (a control module it takes as ``control=``)."""
        return self.control is not None

    def new_control(
        self,
        event_shape: Sequence[int] | torch.Size,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **options: Any,
    ) -> torch.nn.Module:
        """A fresh learnable control of this method for samples whose one row has ``event_shape``.

        ``event_shape`` is the shape of the part of a sample that one loss value covers: ``(D,)``
        for D Bernoulli bits per row, ``(N, K)`` for N one-of-K variables per row. ``options`` are
        the method's options (checked, defaults filled in; the builder reads the ones it needs,
        e.g. the initial temperature). Add ``module.parameters()`` to an optimiser and pass the
        module as ``control=`` on every call.

        Raises:
            TypeError: the method has no learnable state; ValueError / TypeError: bad options.

        Examples:
            >>> import gumbelkit as gk
            >>> spec = gk.get_spec("rebar", family="bernoulli")
            >>> control = spec.new_control((3,), temperature=0.5)
            >>> sorted(name for name, _ in control.named_parameters())
            ['eta', 'log_temperature']
        """
        if self.control is None:
            raise _TypeError(f"new_control: method {self.name!r} ({self.family}) has no learnable state")
        shape = tuple(int(s) for s in event_shape)
        if not shape or any(s < 1 for s in shape):
            raise _ValueError(f"new_control: expected event_shape of sizes >= 1, got {tuple(event_shape)}")
        module = self.control(shape, **self.resolve(options, where="new_control: "))
        return module.to(device=device, dtype=dtype) if device is not None or dtype is not None else module

    def _control_kwargs(self, control: Any) -> dict:
        """``{"control": control}`` for a method with state, ``{}`` otherwise (a control given to a
        method without state is refused)."""
        if self.control is not None:
            return {"control": control}
        if control is not None:
            raise _TypeError(f"method {self.name!r} has no learnable state: expected control=None, got {control!r}")
        return {}

    def option(self, name: str) -> OptionSpec:
        """The :class:`OptionSpec` called ``name``; TypeError listing the valid ones otherwise."""
        for opt in self.options:
            if opt.name == name:
                return opt
        raise _TypeError(f"unknown option {name!r} for method {self.name!r}; {self._valid_options()}")

    def _valid_options(self) -> str:
        if not self.options:
            return f"{self.name} takes no options"
        return "valid options: " + ", ".join(
            f"{o.name} ({o.describe()}, default {o.format(o.default)})" for o in self.options
        )

    def defaults(self) -> dict:
        """Every option at its default value."""
        return {o.name: o.default for o in self.options}

    def check_options(self, options: Mapping[str, Any], *, cap: float | None = None, where: str = "") -> dict:
        """``options`` validated: unknown names are a TypeError listing the valid ones, values out
        of range a ValueError naming the method, option, range and value.

        Returns:
            A new dict with the same items (defaults are not filled in: see :meth:`resolve`).
        """
        out = {}
        for key, value in options.items():
            if not any(o.name == key for o in self.options):
                raise _TypeError(f"{where}unknown option {key!r} for method {self.name!r}; {self._valid_options()}")
            out[key] = self.option(key).check(value, self.name, cap=cap, where=where)
        return out

    def resolve(self, options: Mapping[str, Any], *, where: str = "") -> dict:
        """Every option: ``options`` (checked) over the defaults, in declaration order."""
        given = self.check_options(options, where=where)
        return {o.name: given.get(o.name, o.default) for o in self.options}

    def loss_evaluations(self, options: Mapping[str, Any]) -> int:
        """How many times one estimate evaluates the loss with these options."""
        if self.evaluations is not None:
            return int(self.evaluations(self.resolve(options)))
        if self.evaluations_option is None:
            return 1
        return int(self.resolve(options)[self.evaluations_option])

    def call(self, *args: Any, tau: Any = None, **kwargs: Any) -> Any:
        """``fn(*args, tau=tau, **fixed, **kwargs)``: the method called as its family calls it.

        ``tau`` is passed only to a method that uses it (None: :attr:`default_tau`, else 1), and
        ``generator`` only to a function that takes one (a deterministic relaxation may not).

        Examples:
            >>> import torch, gumbelkit as gk
            >>> spec = gk.get_spec("relaxed_topk_hard", family="subset")
            >>> spec.call(torch.zeros(2, 5), 2, tau=0.5, generator=torch.Generator().manual_seed(0)).sum(-1)
            tensor([2., 2.])
        """
        if self.uses_tau:
            kwargs["tau"] = (1.0 if self.default_tau is None else self.default_tau) if tau is None else tau
        if "generator" in kwargs and not _accepts(self.fn, "generator"):
            del kwargs["generator"]
        kwargs.update(self._control_kwargs(kwargs.pop("control", None)))
        return self.fn(*args, **self.fixed, **kwargs)

    def objective(
        self,
        logits: torch.Tensor,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        tau: Any = 1.0,
        *,
        dim: int = -1,
        generator: torch.Generator | None = None,
        control: torch.nn.Module | None = None,
        **options: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""A training objective whose gradient is this method's estimate of grad E_z[loss_fn(z)].

        For a ``"sample"`` method: z = the method's sample of ``logits``, objective = loss_fn(z).
        For a ``"score_function"`` method: the method draws its own samples and returns its
        surrogate. ``loss_fn`` maps samples shaped like ``logits`` (with any leading sample
        dimensions) to per-example losses shaped like those leading dimensions.

        Args:
            logits: unnormalised log-probabilities.
            loss_fn: samples -> losses (see above).
            tau: temperature (ignored by methods with ``uses_tau=False``).
            dim: the category dimension.
            generator: optional ``torch.Generator``.
            control: the learnable control of a method with state (:meth:`new_control`); the
                objective's gradient then also trains it. None: the method's fixed behaviour.
            **options: the method's options.

        Returns:
            (objective, losses): the objective per example, and the loss at the method's forward
            value (the mean over its samples for a score-function method), both with the batch shape.

        Examples:
            >>> import torch, gumbelkit as gk
            >>> logits = torch.zeros(5, 3, requires_grad=True)
            >>> target = torch.tensor([0.0, 1.0, 0.0])
            >>> loss = lambda z: ((z - target) ** 2).sum(-1)
            >>> for name in ("st_gumbel", "reinforce"):
            ...     obj, value = gk.get_spec(name).objective(logits, loss, 0.5, generator=torch.Generator().manual_seed(0))
            ...     obj.sum().backward()
            ...     print(name, tuple(obj.shape), tuple(value.shape))
            st_gumbel (5,) (5,)
            reinforce (5,) (5,)
        """
        opts = self.check_options(options, where="objective: ")
        opts.update(self._control_kwargs(control))
        if self.kind == "score_function":
            surrogate, losses = self.fn(logits, loss_fn, dim=dim, generator=generator, **self.fixed, **opts)
            return surrogate, losses.mean(0)
        z = self.fn(logits, tau, dim=dim, generator=generator, **self.fixed, **opts)
        losses = loss_fn(z)
        return losses, losses


def _accepts(fn: Estimator, keyword: str) -> bool:
    """Whether ``fn`` takes the keyword argument ``keyword`` (a builtin without a signature: assumed)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return keyword in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


# --------------------------------------------------------------------------- the registry

# (family, name) -> spec, in registration order.
_REGISTRY: dict[tuple[str, str], MethodSpec] = {}


def _check_signature(name: str, fn: Estimator, keywords: Sequence[str]) -> None:
    """Every declared option (and fixed keyword) must be a keyword the function accepts (caught at
    registration, not at the first call)."""
    for key in keywords:
        if not _accepts(fn, key):
            raise _ValueError(
                f"register: option {key!r} of method {name!r} is not a parameter of {getattr(fn, '__name__', fn)!r}"
            )


def _check_declaration(name: str, family: str, kind: str, opts: tuple, fixed: dict, default_tau: Any) -> None:
    """The parts of a declaration that do not need the function (ValueError / TypeError naming ``register``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise _ValueError(f"register: expected a method name of letters, digits, '_', '.' or '-', got {name!r}")
    if not isinstance(family, str) or not _OPTION_NAME.match(family):
        raise _ValueError(f"register: expected a family name of letters, digits and '_', got {family!r}")
    if kind not in KINDS:
        raise _ValueError(f"register: expected kind in {KINDS}, got {kind!r}")
    if not all(isinstance(o, OptionSpec) for o in opts):
        raise _TypeError(f"register: expected options to be OptionSpec instances for method {name!r}")
    names = [o.name for o in opts]
    if len(set(names)) != len(names) or set(names) & set(fixed):
        raise _ValueError(f"register: method {name!r} declares an option twice: {names + sorted(fixed)}")
    if default_tau is not None and not (
        isinstance(default_tau, numbers.Real) and math.isfinite(default_tau) and float(default_tau) > 0
    ):
        raise _ValueError(f"register: expected default_tau to be a finite number > 0 or None, got {default_tau!r}")


def register(
    name: str,
    *,
    one_hot: bool,
    family: str = "categorical",
    kind: str = "sample",
    uses_tau: bool = True,
    options: Sequence[OptionSpec] = (),
    reference: str = "",
    relaxed: bool = False,
    evaluations_option: str | None = None,
    evaluations: Callable[[Mapping[str, Any]], int] | None = None,
    default_tau: float | None = None,
    fixed: Mapping[str, Any] | None = None,
    traits: Mapping[str, Any] | None = None,
    control: Callable[..., torch.nn.Module] | None = None,
) -> Callable[[Estimator], Estimator]:
    """Decorator: declare ``fn`` as method ``name`` of ``family`` (see :class:`MethodSpec` for the arguments).

    The function is returned unchanged, so one function can carry several declarations (with
    different ``fixed`` keywords). Registering takes effect at once: a categorical ``"sample"``
    method appears in :data:`gumbelkit.METHODS`, and every experiment that reads the family accepts it.

    Raises:
        ValueError: a name already registered in the family or not usable on a command line, an
            unknown kind, an option or fixed keyword the function does not accept.

    Examples:
        >>> import torch, gumbelkit as gk
        >>> from gumbelkit.estimators import OptionSpec, one_hot_straight_through
        >>> @gk.register("doc_st_identity", one_hot=True,
        ...              options=(OptionSpec("scale", float, 1.0, minimum=0.0, help="gradient scale"),))
        ... def st_identity(logits, tau=1.0, *, dim=-1, generator=None, scale=1.0):
        ...     index = gk.gumbel_max(logits, dim, generator=generator).unsqueeze(dim)
        ...     return one_hot_straight_through(scale * logits, index, dim)
        >>> "doc_st_identity" in gk.METHODS
        True
        >>> gk.sample(torch.zeros(2, 3), "doc_st_identity", scale=2.0).sum(-1)
        tensor([1., 1.])
        >>> gk.estimators.unregister("doc_st_identity")
    """
    opts, bound = tuple(options), dict(fixed or {})
    _check_declaration(name, family, kind, opts, bound, default_tau)
    if control is not None and not callable(control):
        raise _TypeError(f"register: expected control to be a callable building an nn.Module or None, got {control!r}")
    if evaluations_option is not None and evaluations_option not in [o.name for o in opts]:
        raise _ValueError(f"register: evaluations_option {evaluations_option!r} is not an option of method {name!r}")
    if evaluations is not None and (evaluations_option is not None or not callable(evaluations)):
        raise _TypeError(
            f"register: expected evaluations to be a callable of the options (and no evaluations_option), "
            f"got evaluations={evaluations!r}, evaluations_option={evaluations_option!r} for method {name!r}"
        )

    def deco(fn: Estimator) -> Estimator:
        if (family, name) in _REGISTRY:
            raise _ValueError(f"expected a new method name, got {name!r} (already registered in family {family!r})")
        _check_signature(name, fn, [o.name for o in opts] + list(bound) + (["control"] if control is not None else []))
        doc = inspect.getdoc(fn) or ""
        _REGISTRY[family, name] = MethodSpec(
            name=name,
            fn=fn,
            one_hot=bool(one_hot),
            uses_tau=bool(uses_tau),
            options=opts,
            reference=str(reference),
            kind=kind,
            relaxed=bool(relaxed),
            evaluations_option=evaluations_option,
            evaluations=evaluations,
            summary=doc.strip().splitlines()[0] if doc.strip() else "",
            family=family,
            default_tau=None if default_tau is None else float(default_tau),
            fixed=MappingProxyType(bound),
            traits=MappingProxyType(dict(traits or {})),
            control=control,
        )
        return fn

    return deco


def unregister(name: str, family: str = "categorical") -> None:
    """Remove method ``name`` of ``family`` (for tests and interactive work); KeyError if it is not registered."""
    del _REGISTRY[family, name]


# --------------------------------------------------------------------------- plugins

_plugins_loaded = False
_plugin_names: list[str] = []


def _entry_points() -> list:
    from importlib import metadata

    eps = metadata.entry_points()
    selected = eps.select(group=ENTRY_POINT_GROUP) if hasattr(eps, "select") else eps.get(ENTRY_POINT_GROUP, ())
    seen, out = set(), []
    for ep in selected:  # one distribution found twice on sys.path lists its entry points twice
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            out.append(ep)
    return out


def load_plugins() -> tuple[str, ...]:
    """Import every ``gumbelkit.estimators`` entry point once (later calls do nothing).

    Called by every read of the registry, so a plugin's methods are there before anyone looks.
    A plugin that raises while importing becomes a :class:`RuntimeWarning` naming it, and the
    methods it registered before failing are removed again.

    Returns:
        The names of the entry points that loaded.
    """
    global _plugins_loaded
    # Under torch.compile the first read may happen while tracing: never import there (the
    # registry of built-in methods is complete without plugins).
    if _plugins_loaded or torch.compiler.is_compiling():
        return tuple(_plugin_names)
    _plugins_loaded = True  # first, so that a plugin reading the registry does not recurse
    try:
        eps = _entry_points()
    except Exception as exc:  # broken metadata of some installed distribution
        warnings.warn(
            f"gumbelkit: cannot list estimator plugins ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2
        )
        return ()
    for ep in eps:
        before = set(_REGISTRY)
        try:
            ep.load()
        except Exception as exc:  # any failure of foreign code: warn, never crash
            for added in set(_REGISTRY) - before:
                del _REGISTRY[added]
            warnings.warn(
                f"gumbelkit: estimator plugin {ep.name!r} ({ep.value}) failed to load and is ignored: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            _plugin_names.append(ep.name)
    return tuple(_plugin_names)


def _reset_plugins() -> None:
    """Forget that plugins were loaded (tests: load them again with other entry points)."""
    global _plugins_loaded
    _plugins_loaded = False
    _plugin_names.clear()


# --------------------------------------------------------------------------- reading the registry


def specs(family: str | None = None, kind: str | None = None) -> tuple[MethodSpec, ...]:
    """Every registered :class:`MethodSpec` of ``family`` and ``kind`` (None: any), in registration order.

    Examples:
        >>> import gumbelkit as gk
        >>> [s.name for s in gk.estimators.specs("subset", kind="sample")]
        ['relaxed_topk_hard', 'relaxed_topk_soft', 'simple', 'imle']
    """
    load_plugins()
    return tuple(
        s for s in _REGISTRY.values() if (family is None or s.family == family) and (kind is None or s.kind == kind)
    )


def methods(family: str | None = None, kind: str | None = None) -> tuple[str, ...]:
    """The names of the registered methods of ``family`` and ``kind`` (None: any), in registration order.

    With ``family=None`` a name registered in several families is listed once.

    Examples:
        >>> import gumbelkit as gk
        >>> gk.estimators.methods("bernoulli", kind="score_function")
        ('reinforce_loo', 'arm', 'disarm', 'rebar', 'relax')
        >>> gk.estimators.methods("permutation")
        ('gumbel_sinkhorn', 'neural_sort', 'stochastic_neural_sort', 'soft_sort')
    """
    return tuple(dict.fromkeys(s.name for s in specs(family, kind)))


def families() -> tuple[str, ...]:
    """The families that have at least one registered method, in registration order."""
    return tuple(dict.fromkeys(s.family for s in specs()))


def get_spec(
    name: str, family: str = "categorical", *, kind: str | None = None, where: str | None = None
) -> MethodSpec:
    """The :class:`MethodSpec` of method ``name`` of ``family``; ValueError listing the choices otherwise.

    Args:
        name: the method's name.
        family: its family.
        kind: only methods of this kind are accepted (None: any).
        where: the public function asking, named in the error (``"binary.sample"``).

    Examples:
        >>> import gumbelkit as gk
        >>> gk.get_spec("reinforce").kind
        'score_function'
        >>> gk.get_spec("arm", family="bernoulli").options[0].name
        'n'
    """
    load_plugins()
    valid = methods(family, kind)
    spec = _REGISTRY.get((family, name)) if isinstance(name, str) else None
    if spec is not None and (kind is None or spec.kind == kind):
        return spec
    if where is None:
        raise _ValueError(f"expected method in {valid}, got {name!r}")
    listed = ", ".join(sorted(valid))
    if not isinstance(name, str):
        raise _TypeError(f"{where}: expected method to be a str (one of {listed}), got {name!r}")
    raise _ValueError(f"{where}: expected method to be one of {listed}, got {name!r}")


def get_estimator(name: str) -> Estimator:
    """The registered function of categorical method ``name``; ValueError listing the choices otherwise."""
    return get_spec(name).fn


def registered_methods(kind: str | None = "sample") -> tuple[str, ...]:
    """The registered categorical names of one kind (``None``: every kind), in registration order."""
    return methods("categorical", kind)


def is_one_hot(name: str) -> bool:
    """Whether categorical method ``name`` returns an exactly one-hot forward value (each sample, for REINFORCE)."""
    return get_spec(name).one_hot


class MethodsView(Sequence):
    """A live, read-only view of the registered names of one family and kind.

    It is a sequence of names in registration order that reflects every later registration:
    ``in``, iteration, ``len``, indexing and ``sorted`` work, and it compares equal to a list or
    tuple of the same names.

    Examples:
        >>> import gumbelkit as gk
        >>> "st_gumbel" in gk.METHODS, "reinforce" in gk.METHODS
        (True, False)
        >>> sorted(gk.METHODS)[:2]
        ['decoupled_st_gumbel', 'gapped_st']
    """

    __slots__ = ("_family", "_kind")

    def __init__(self, kind: str | None = "sample", family: str = "categorical"):
        self._kind, self._family = kind, family

    def _names(self) -> tuple[str, ...]:
        return methods(self._family, self._kind)

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MethodsView):
            return self._names() == other._names()
        if isinstance(other, (list, tuple)):
            return list(self._names()) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable contents

    def __repr__(self) -> str:
        return repr(self._names())


class SpecsView(Mapping):
    """A live, read-only mapping name -> :class:`MethodSpec` of every method of one family.

    Examples:
        >>> import gumbelkit as gk
        >>> gk.binary.METHODS["hard_concrete"].options[0].name, "reinforce" in gk.estimators.SPECS
        ('gamma', True)
    """

    __slots__ = ("_family",)

    def __init__(self, family: str = "categorical"):
        self._family = family

    def __getitem__(self, name: str) -> MethodSpec:
        load_plugins()
        return _REGISTRY[self._family, name]

    def __iter__(self) -> Iterator[str]:
        return iter(methods(self._family))

    def __len__(self) -> int:
        return len(methods(self._family))

    def __repr__(self) -> str:
        return f"SpecsView({self._family!r}: {', '.join(methods(self._family))})"


#: Every registered categorical method of every kind: a live read-only mapping name -> :class:`MethodSpec`.
SPECS: Mapping[str, MethodSpec] = SpecsView("categorical")
