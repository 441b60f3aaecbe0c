"""Methods and their options on the command line, read from the estimator registry.

``--methods`` takes ``NAME[:OPTION=VALUE[,OPTION=VALUE...]]`` items separated by commas, e.g.
``st,gumbel_rao:k=100,reinforce:n=8``; an item that contains ``=`` but no ``:`` continues the
options of the method before it. Every registered method is accepted (plugins included), every
option is checked against its :class:`~gumbelkit.estimators.OptionSpec`; the experiments never
name a method themselves.

Each parsed item is a :class:`MethodChoice`: the method's spec, the options given explicitly, and
two names derived from them:

- ``label``: how results call it, the canonical form of what was written (``gumbel_rao`` or
  ``gumbel_rao:k=100``): a method with non-default options is labelled with them;
- ``tag``: the same in a file-name- and seed-friendly form (``gumbel_rao_k100``). Random streams
  are keyed by the tag, which is exactly the label format the experiments used before the
  ``name:option=value`` syntax, so a configuration draws the same numbers as before.

The former syntax ``NAME_<option><value>`` (``gumbel_rao_k10``, ``reinforce_n2``) is still read,
as a deprecated alias of ``NAME:<option>=<value>``.

The same syntax reads the methods of another registry, e.g. the binary methods of
:data:`gumbelkit.binary.METHODS`: pass ``registry=`` (a mapping from name to a declaration with
``options``, a tuple of :class:`~gumbelkit.estimators.OptionSpec`, and ``kind``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..estimators import SPECS, MethodSpec, OptionSpec, registered_methods
from ._common import UserError
from ._harness import parse_list

__all__ = ["MethodChoice", "apply_option_aliases", "describe_methods", "method_items", "parse_method", "parse_methods"]

#: A registry other than the estimator registry: name -> declaration (with ``options`` and ``kind``).
Registry = Mapping[str, Any]


def _option(spec: MethodSpec, name: str) -> OptionSpec:
    """The option ``name`` of a declaration (TypeError listing the valid ones)."""
    return spec.option(name)


@dataclasses.dataclass(frozen=True)
class MethodChoice:
    """One method with its options, as chosen on a command line.

    Examples:
        >>> from gumbelkit.experiments._methods import parse_method
        >>> m = parse_method("gumbel_rao:k=100")
        >>> m.label, m.tag, m.options, m.uses_tau
        ('gumbel_rao:k=100', 'gumbel_rao_k100', {'k': 100}, True)
        >>> parse_method("reinforce").options
        {'n': 4}
        >>> import gumbelkit as gk
        >>> parse_method("disarm:n=1", registry=gk.binary.METHODS).label
        'disarm:n=1'
    """

    #: The declaration: a :class:`~gumbelkit.MethodSpec`, or the declaration of the registry the
    #: method was parsed from (e.g. a :class:`gumbelkit.binary.BinaryMethod`).
    spec: MethodSpec
    given: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def explicit(self) -> dict:
        """The options written explicitly."""
        return dict(self.given)

    @property
    def options(self) -> dict:
        """Every option (explicit over defaults), in declaration order (explicit values were
        checked when they were parsed)."""
        given = self.explicit
        return {o.name: given.get(o.name, o.default) for o in self.spec.options}

    @property
    def label(self) -> str:
        if not self.given:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_option(self.spec, k).format(v)}" for k, v in self.given)

    @property
    def tag(self) -> str:
        return self.name + "".join(f"_{k}{_option(self.spec, k).format(v)}" for k, v in self.given)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def uses_tau(self) -> bool:
        return self.spec.uses_tau

    @property
    def one_hot(self) -> bool:
        """Whether the forward value is exactly one-hot (a binary method: exactly 0/1)."""
        return self.spec.one_hot

    def _estimator_spec(self) -> MethodSpec:
        if not isinstance(self.spec, MethodSpec):
            raise TypeError(f"method {self.name!r} is not an estimator-registry method")
        return self.spec

    @property
    def loss_evaluations(self) -> int:
        """Evaluations of the loss one estimate costs (n for REINFORCE with n samples)."""
        return self._estimator_spec().loss_evaluations(self.options)

    def objective(
        self,
        logits: torch.Tensor,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        tau: Any,
        *,
        generator: torch.Generator | None = None,
        dim: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`MethodSpec.objective` with this choice's options."""
        return self._estimator_spec().objective(logits, loss_fn, tau, dim=dim, generator=generator, **self.options)


def describe_methods(kinds: Sequence[str] | None = None, *, registry: Registry | None = None) -> str:
    """The registered methods with their options, for ``--help`` (read when the parser is built,
    so plugins are listed); ``registry``: another registry's methods instead.

    Examples:
        >>> from gumbelkit.experiments._methods import describe_methods
        >>> "gumbel_rao[:k=int >= 1, default 10]" in describe_methods()
        True
    """
    out = []
    for name, spec in (SPECS if registry is None else registry).items():
        if kinds is None or spec.kind in kinds:
            opts = ",".join(_short(o) for o in spec.options)
            out.append(f"{name}[:{opts}]" if opts else name)
    return ", ".join(out)


def _short(opt: Any) -> str:
    """``k=int >= 1, default 10``: an option in a few words."""
    if opt.choices:
        rng = "|".join(map(str, opt.choices))
    else:
        rng = " ".join(
            b
            for b in (
                f">= {opt.minimum:g}" if opt.minimum is not None else "",
                f"<= {opt.maximum:g}" if opt.maximum is not None else "",
            )
            if b
        )
    return f"{opt.name}={opt.type.__name__}{' ' + rng if rng else ''}, default {opt.format(opt.default)}"


def _names(kinds: Sequence[str] | None, registry: Registry | None = None) -> tuple[str, ...]:
    if registry is None:
        return tuple(n for n in registered_methods(None) if kinds is None or SPECS[n].kind in kinds)
    return tuple(n for n, spec in registry.items() if kinds is None or spec.kind in kinds)


def _legacy(token: str, kinds: Sequence[str] | None, registry: Registry) -> tuple[str, str, str] | None:
    """``gumbel_rao_k10`` -> ("gumbel_rao", "k", "10") when that is a method and one of its options."""
    for name in sorted(_names(kinds, registry), key=len, reverse=True):
        if not token.startswith(name + "_"):
            continue
        rest = token[len(name) + 1 :]
        for opt in sorted(registry[name].options, key=lambda o: len(o.name), reverse=True):
            if rest.startswith(opt.name) and len(rest) > len(opt.name):
                return name, opt.name, rest[len(opt.name) :]
    return None


def parse_method(
    item: str,
    *,
    flag: str = "--methods",
    cap: int | None = None,
    kinds: Sequence[str] | None = None,
    registry: Registry | None = None,
) -> MethodChoice:
    """One ``NAME[:OPTION=VALUE,...]`` item; UserError (one line) for an unknown method or option
    or a value out of range.

    Args:
        item: the text.
        flag: the option it came from (for messages).
        cap: an upper bound on numeric options (an experiment's memory limit).
        kinds: the kinds of method accepted (``None``: every kind).
        registry: the methods to choose from (default: the estimator registry).
    """
    text = str(item).strip()
    name, sep, rest = text.partition(":")
    name = name.strip()
    pairs: list[tuple[str, str]] = []
    if sep:
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise UserError(f"expected {flag} items like NAME or NAME:OPTION=VALUE[,OPTION=VALUE], got {text!r}")
            pairs.append((key.strip(), value.strip()))
    names = _names(kinds, registry)
    if name not in names:
        legacy = _legacy(name, kinds, SPECS if registry is None else registry) if not sep else None
        if legacy is None:
            raise UserError(f"unknown {flag} {name!r}; expected some of {', '.join(names)} (NAME[:OPTION=VALUE,...])")
        name, key, value = legacy
        pairs = [(key, value)]
    spec = SPECS[name] if registry is None else registry[name]
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise UserError(f"{flag} {text!r}: option {key!r} is given twice")
        try:
            seen[key] = _option(spec, key).parse(value, name, cap=cap)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{flag} {text!r}: {exc}") from None
    given = tuple((o.name, seen[o.name]) for o in spec.options if o.name in seen)
    return MethodChoice(spec, given)


def method_items(value: Any, flag: str) -> list[str]:
    """Split a method-list value into items: an ``OPTION=VALUE`` part without ``:`` continues the item
    before it (``"gumbel_rao:k=10,tau=0.5"`` is one item); a list or tuple is taken item by item."""
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    items: list[str] = []
    for part in parse_list(value, flag):
        if "=" in part and ":" not in part:
            if not items:
                raise UserError(f"expected {flag} to start with a method name, got {value!r}")
            items[-1] += "," + part
        else:
            items.append(part)
    return items


def parse_methods(
    value: Any,
    flag: str = "--methods",
    *,
    cap: int | None = None,
    kinds: Sequence[str] | None = None,
    registry: Registry | None = None,
) -> list[MethodChoice]:
    """Every method of a ``--methods`` value (text or a list of items), duplicates dropped.

    Examples:
        >>> from gumbelkit.experiments._methods import parse_methods
        >>> [m.label for m in parse_methods("st,gumbel_rao:k=100,reinforce:n=2,st")]
        ['st', 'gumbel_rao:k=100', 'reinforce:n=2']
    """
    items = method_items(value, flag)
    if not items or any(not i for i in items):
        raise UserError(f"expected a comma-separated list for {flag}, got {value!r}")
    out: dict[str, MethodChoice] = {}
    for item in items:
        choice = parse_method(item, flag=flag, cap=cap, kinds=kinds, registry=registry)
        out.setdefault(choice.label, choice)
    return list(out.values())


def apply_option_aliases(
    labels: Sequence[str],
    values: Mapping[str, Any],
    aliases: Mapping[str, tuple[str, str]],
    *,
    cap: int | None = None,
) -> list[str]:
    """Apply deprecated per-method flags (``--gumbel-rao-k 20``): each given value sets that option
    of every listed method of that name which does not give it (unless it equals the default).

    Returns:
        The method labels with the options written out.
    """
    from ._harness import Int

    choices = parse_methods(list(labels), cap=cap)
    for key, (method, option) in aliases.items():
        if values.get(key) is None or method not in SPECS:
            continue
        opt = SPECS[method].option(option)
        v = Int(int(opt.minimum or 0), cap)(values[key], "--" + key.replace("_", "-"))
        if v == opt.default:
            continue
        choices = [_with(c, option, v) if c.name == method and option not in c.explicit else c for c in choices]
    return list(dict.fromkeys(c.label for c in choices))


def _with(choice: MethodChoice, option: str, value: Any) -> MethodChoice:
    """``choice`` with one more explicit option (kept in declaration order)."""
    given = {**choice.explicit, option: value}
    return MethodChoice(choice.spec, tuple((o.name, given[o.name]) for o in choice.spec.options if o.name in given))
