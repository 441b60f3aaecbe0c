r"""Binary lab: every Bernoulli estimator on the Bernoulli toy and on polynomial programming.

Two families of estimators are measured side by side, both read from their registries:

- the Bernoulli methods of :mod:`gumbelkit.binary` (``--binary-methods``): pathwise samples
  (:func:`gumbelkit.binary.sample`: straight-through, Binary Concrete, ...) and unbiased
  score-function surrogates (:func:`gumbelkit.binary.surrogate`: REINFORCE-LOO, ARM, DisARM);
- the categorical methods of the estimator registry (``--methods``), on a 2-class latent with
  logits :math:`[0, \theta]`: class 1 is the bit, :math:`P(b = 1) = \mathrm{softmax}([0, \theta])_1
  = \sigma(\theta)` exactly, and the gradient reaches :math:`\theta` through the second logit.
  (The centred form :math:`[-\theta/2, \theta/2]` gives the same estimates for every method whose
  backward is a softmax Jacobian, since those logit gradients sum to zero.)

Items are ``NAME[:OPTION=VALUE,...][@TAU]``: ``gumbel_rao:k=10@0.1`` is Gumbel-Rao with 10 draws
at temperature 0.1. Without ``@TAU`` a binary method runs at its declared default temperature and a
categorical one at 1. The default categorical list is the fixed comparison of
:data:`._defaults.BINARY_CATEGORICAL_METHODS` followed by every other registered categorical
method (plugins included) at its defaults.

Three measurements (``--parts``):

- **toy** (REBAR, Tucker et al. 2017; RELAX, Grathwohl et al. 2018): minimise
  :math:`\mathbb{E}_{b \sim \mathrm{Bern}(\sigma(\theta))}[(b - t)^2]`, whose exact gradient is
  :math:`\sigma'(\theta)((1-t)^2 - t^2)`. For each target t and each theta of ``--toy-thetas``,
  ``--toy-samples`` independent single-sample estimates in one vectorised float64 batch: bias
  (mean - exact, with its standard error), variance, and the probability that one estimate has
  the wrong sign.
- **train**: the RELAX toy training setup (its ``toy.py``: batch 1, Adam with learning rate 0.01,
  5000 steps, theta starts at 0), ``--train-seeds`` seeds trained at once; the exact expected loss
  :math:`(1-\sigma)t^2 + \sigma(1-t)^2` along the way, and the first step from which theta keeps
  the sign of the optimum (:math:`-\infty` for t < 1/2) until the end.
- **poly** (polynomial programming, Liu et al., ReinMax, NeurIPS 2023): 128 independent bits,
  minimise :math:`\frac{1}{128}\sum_i |z_i - 0.45|^p`; theta ~ U(-0.01, 0.01), batch 64, Adam 1e-3.
  The latents are independent, so the exact expected loss is closed form,
  :math:`\frac{1}{128}\sum_i (1-\sigma(\theta_i))\,0.45^p + \sigma(\theta_i)\,0.55^p`, reported
  after training (mean and standard deviation over seeds).

Seeds are vectorised: the parameters of S seeds are one (S, D) tensor, every seed's loss depends
on its own row only, and Adam is elementwise, so one Adam over the stacked tensor takes exactly
the steps S separate Adams would (see :func:`adam_matches_per_seed`).

Results go to ``--out/results.json`` and ``results.md`` (atomic writes), then the plots
``binary_toy.png`` and ``poly.png``. Finished cells are checkpointed in ``--out/checkpoint.json``
(SHA-256 checksummed) and reused by a rerun of the same configuration (``--fresh`` starts over).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import statistics
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import binary as gkb
from ..estimators import SPECS
from . import _harness as H
from ._common import MIN_TAU, UserError, environment_info, markdown_table, save_figure, write_checked_json
from ._defaults import BINARY_CATEGORICAL_METHODS, BINARY_METHODS
from ._methods import MethodChoice, describe_methods, method_items, parse_method

__all__ = [
    "BINARY",
    "CATEGORICAL",
    "DEFAULTS",
    "PARTS",
    "BinaryConfig",
    "Estimator",
    "adam_matches_per_seed",
    "add_arguments",
    "config_from_args",
    "default_categorical_methods",
    "estimates",
    "main",
    "parse_estimators",
    "poly_init",
    "poly_loss",
    "resolve_config",
    "surrogate_loss",
    "toy_gradient",
    "toy_loss",
    "train",
]

BINARY, CATEGORICAL = "binary", "categorical"
PARTS = ("toy", "train", "poly")
#: The target of polynomial programming.
POLY_TARGET = 0.45
MAX_SAMPLES = 10**7
MAX_STEPS = 10**7
_CKPT_HINT = "delete it or pass --fresh to start over"


# --------------------------------------------------------------------------- estimators


@dataclass(frozen=True)
class Estimator:
    """One method of either family at one temperature.

    Attributes:
        family: ``"binary"`` (:mod:`gumbelkit.binary`) or ``"categorical"`` (the estimator registry).
        choice: the method and its options.
        tau: the temperature (None: the method uses none).
    """

    family: str
    choice: MethodChoice

    tau: float | None

    @property
    def label(self) -> str:
        """``NAME[:OPTION=VALUE,...][@TAU]``, as written on the command line."""
        return self.choice.label + ("" if self.tau is None else f"@{self.tau:g}")

    @property
    def key(self) -> str:
        """Family and label: unique across both families (which share some names)."""
        return f"{self.family}/{self.label}"

    @property
    def unbiased(self) -> bool:
        """A score-function estimator (unbiased by construction)."""
        return self.choice.kind not in ("sample",)


def _registry(family: str) -> Mapping[str, Any]:
    return gkb.METHODS if family == BINARY else SPECS


def _parse_item(item: str, family: str, flag: str) -> Estimator:
    text = str(item).strip()
    head, at, tau_text = text.rpartition("@")
    if not at:
        head, tau_text = text, ""
    choice = parse_method(head, flag=flag, registry=_registry(family))
    spec = choice.spec
    if not spec.uses_tau:
        if at:
            raise UserError(f"{flag} {text!r}: method {choice.name!r} uses no temperature; drop @{tau_text}")
        return Estimator(family, choice, None)
    if at:
        tau = H.Float(positive=True, minimum=MIN_TAU)(tau_text, f"the temperature of {flag} {text!r}")
    else:
        declared = getattr(spec, "default_tau", None)
        tau = 1.0 if declared is None else float(declared)
    return Estimator(family, choice, tau)


def parse_estimators(value: Any, family: str, flag: str) -> list[Estimator]:
    """Every item of a method list (text or a list of items), duplicates dropped.

    Examples:
        >>> from gumbelkit.experiments.binary import parse_estimators
        >>> [e.label for e in parse_estimators("arm:n=1,binary_concrete@0.5", "binary", "--binary-methods")]
        ['arm:n=1', 'binary_concrete@0.5']
    """
    out: dict[str, Estimator] = {}
    for item in method_items(value, flag):
        est = _parse_item(item, family, flag)
        out.setdefault(est.label, est)
    return list(out.values())


def default_categorical_methods() -> list[str]:
    """The default ``--methods``: the fixed list (methods registered now), then every other registered
    categorical method at its defaults, so a newly registered method is measured too."""
    listed = [m for m in BINARY_CATEGORICAL_METHODS if m.split("@")[0].split(":")[0] in SPECS]
    named = {m.split("@")[0].split(":")[0] for m in listed}
    return listed + [n for n in SPECS if n not in named]


def _is_none(value: Any) -> bool:
    """'none' on the command line, the empty list it becomes (a resolved config is checked again), or
    the empty text that list is written as in the recorded command line."""
    return (isinstance(value, str) and value.strip() in ("none", "")) or (
        isinstance(value, (list, tuple)) and not value
    )


def _check_binary(value: Any, flag: str) -> list[str]:
    if _is_none(value):
        return []
    return [e.label for e in parse_estimators(value, BINARY, flag)]


def _check_categorical(value: Any, flag: str) -> list[str]:
    if _is_none(value):
        return []
    return [e.label for e in parse_estimators(value, CATEGORICAL, flag)]


def _check_target(value: Any, flag: str) -> float:
    t = H.Float(minimum=0.0, maximum=1.0)(value, flag)
    if t == 0.5:
        raise UserError(f"expected {flag} != 0.5 (every theta is optimal there), got 0.5")
    return t


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class BinaryConfig(H.Config):
    """Every option of ``gumbelkit binary`` (flags generated by :func:`add_arguments`)."""

    COMMAND: ClassVar[str] = "binary"

    out: str = H.setting("runs/binary", "output folder", H.Path(), fingerprint=False)
    parts: list = dataclasses.field(
        default_factory=lambda: list(PARTS), metadata=H.meta("measurements to run", H.Names(PARTS, what="part"))
    )
    binary_methods: list = dataclasses.field(
        default_factory=lambda: list(BINARY_METHODS),
        metadata=H.meta(
            lambda: (
                "Bernoulli methods NAME[:OPTION=VALUE,...][@TAU] of gumbelkit.binary ('none': no binary "
                "method), any of: " + describe_methods(registry=gkb.METHODS)
            ),
            H.Custom(_check_binary),
        ),
    )
    methods: list = dataclasses.field(
        default_factory=default_categorical_methods,
        metadata=H.meta(
            lambda: (
                "categorical methods NAME[:OPTION=VALUE,...][@TAU] on a 2-class latent ('none': no "
                "categorical method), any of: " + describe_methods()
            ),
            H.Custom(_check_categorical),
        ),
    )
    targets: list = dataclasses.field(
        default_factory=lambda: [0.45, 0.499],
        metadata=H.meta("targets t of the Bernoulli toy", H.Floats(H.Float(), "t")),
    )
    toy_thetas: list = dataclasses.field(
        default_factory=lambda: [-2.0, 0.0, 2.0],
        metadata=H.meta("logits theta at which the toy gradients are measured", H.Floats(H.Float(), "theta")),
    )
    toy_samples: int = H.setting(100_000, "single-sample estimates per toy cell", H.Int(2, MAX_SAMPLES))
    train_steps: int = H.setting(5000, "training steps of the toy (batch 1)", H.Int(1, MAX_STEPS))
    train_lr: float = H.setting(0.01, "Adam learning rate of the toy training", H.Float(positive=True))
    train_seeds: int = H.setting(20, "seeds of the toy training (vectorised)", H.Int(1, 10_000))
    poly_powers: list = dataclasses.field(
        default_factory=lambda: [1.5, 2.0, 3.0],
        metadata=H.meta("powers p of polynomial programming, each >= 1", H.Floats(H.Float(minimum=1.0), "p")),
    )
    poly_latents: int = H.setting(128, "binary latents of polynomial programming", H.Int(1, 10**6))
    poly_batch: int = H.setting(64, "samples per step and seed", H.Int(1, 10**6))
    poly_steps: int = H.setting(8000, "training steps of polynomial programming", H.Int(1, MAX_STEPS))
    poly_lr: float = H.setting(1e-3, "Adam learning rate of polynomial programming", H.Float(positive=True))
    poly_seeds: int = H.setting(10, "seeds of polynomial programming (vectorised)", H.Int(1, 10_000))
    poly_init: float = H.setting(0.01, "theta starts uniform in [-init, init]", H.Float(minimum=0.0))
    poly_logits: str = H.setting(
        "one",
        "parameters per bit in polynomial programming: one (theta) or two (free logits l0, l1 with "
        "theta = l1 - l0, as in ReinMax's published setup; Adam then moves theta twice as fast)",
        H.Choice(("one", "two")),
    )
    record_every: int = H.setting(50, "steps between two points of the training curves", H.Int(1, MAX_STEPS))
    seed: int = H.setting(0, "seed of every random stream", H.Int(0, 2**63 - 1))
    threads: int = H.threads_setting()
    fresh: bool = H.fresh_setting()
    plots: bool | None = H.plots_setting()
    progress: bool | None = H.progress_setting()

    @classmethod
    def cross_check(cls, values: dict, given: Mapping[str, Any]) -> dict:
        values["targets"] = [_check_target(t, "t") for t in values["targets"]]
        if not values["binary_methods"] and not values["methods"]:
            raise UserError("expected at least one method in --binary-methods or --methods")
        return values

    @functools.cached_property
    def estimators(self) -> list[Estimator]:
        """Every estimator measured: the binary methods, then the categorical ones."""
        return (parse_estimators(self.binary_methods, BINARY, "--binary-methods") if self.binary_methods else []) + (
            parse_estimators(self.methods, CATEGORICAL, "--methods") if self.methods else []
        )


#: Every default, as a dict; the config's entry points (see :func:`._harness.command_api`).
DEFAULTS, resolve_config, add_arguments, config_from_args = H.command_api(BinaryConfig)


def requirements(cfg: BinaryConfig) -> list[H.Requirement]:
    """The optional packages this configuration needs (checked at start)."""
    return H.common_requirements(cfg.progress)


# --------------------------------------------------------------------------- exact quantities


def toy_loss(theta: torch.Tensor, t: float) -> torch.Tensor:
    r"""Exact :math:`\mathbb{E}[(b - t)^2] = (1 - \sigma(\theta))\,t^2 + \sigma(\theta)(1 - t)^2`, elementwise.

    Examples:
        >>> round(float(toy_loss(torch.tensor(0.0), 0.45)), 6)
        0.2525
    """
    p = torch.sigmoid(theta)
    return (1 - p) * t**2 + p * (1 - t) ** 2


def toy_gradient(theta: torch.Tensor, t: float) -> torch.Tensor:
    r"""Exact :math:`\frac{d}{d\theta}\mathbb{E}[(b - t)^2] = \sigma'(\theta)((1-t)^2 - t^2)`, elementwise.

    Examples:
        >>> round(float(toy_gradient(torch.tensor(0.0), 0.45)), 6)
        0.025
    """
    # sigma(x) sigma(-x) rather than s (1 - s): no cancellation in the upper tail.
    return torch.sigmoid(theta) * torch.sigmoid(-theta) * ((1 - t) ** 2 - t**2)


def poly_loss(theta: torch.Tensor, p: float | torch.Tensor, target: float = POLY_TARGET) -> torch.Tensor:
    r"""Exact :math:`\frac1D \sum_i \mathbb{E}|z_i - c|^p` for independent :math:`z_i \sim
    \mathrm{Bern}(\sigma(\theta_i))`: :math:`\frac1D \sum_i (1-\sigma(\theta_i))c^p + \sigma(\theta_i)(1-c)^p`,
    over the last dim; ``p`` a number or a tensor broadcastable to ``theta`` (one p per row).

    Examples:
        >>> round(float(poly_loss(torch.zeros(128), 2.0)), 6)
        0.2525
    """
    s = torch.sigmoid(theta)
    lo = torch.as_tensor(target, dtype=theta.dtype) ** p
    hi = torch.as_tensor(1 - target, dtype=theta.dtype) ** p
    return ((1 - s) * lo + s * hi).mean(-1)


# --------------------------------------------------------------------------- one estimate


def surrogate_loss(
    est: Estimator,
    theta: torch.Tensor,
    f: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator,
) -> torch.Tensor:
    r"""A scalar whose gradient with respect to ``theta`` is, row by row, ``est``'s estimate of
    :math:`\nabla_\theta \mathbb{E}_{b \sim \mathrm{Bern}(\sigma(\theta))} f(b)`.

    Args:
        est: the estimator.
        theta: logits of shape ``(..., D)``: each row holds the D bits of one sample.
        f: the loss, 0/1 (or relaxed) bits of shape ``(..., D)`` -> losses of shape ``(...)``.
        generator: the random stream.

    Returns:
        The sum over rows of the estimator's objective (its value is a sample of the loss).
    """
    opts = est.choice.options
    if est.family == BINARY:
        if est.unbiased:
            return gkb.surrogate(theta, f, est.choice.name, generator=generator, **opts).sum()
        b = gkb.sample(theta, est.choice.name, est.tau, generator=generator, **opts)
        return f(b).sum()
    # Class 1 of the 2-class latent is the bit: P(class 1) = softmax([0, theta])_1 = sigmoid(theta).
    logits = torch.stack([torch.zeros_like(theta), theta], dim=-1)
    objective, _ = est.choice.objective(
        logits, lambda z: f(z[..., 1]), 1.0 if est.tau is None else est.tau, generator=generator
    )
    return objective.sum()


def estimates(est: Estimator, theta: torch.Tensor, f: Callable, generator: torch.Generator) -> torch.Tensor:
    """Independent estimates, one per row of ``theta`` (shape ``(..., D)``), each of shape D."""
    th = theta.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(surrogate_loss(est, th, f, generator), th)
    return grad.detach()


def _generator(seed: int, *parts: Any) -> torch.Generator:
    """An independent, reproducible stream per cell (keyed by the method's tag and the cell)."""
    key = "|".join(str(p) for p in (seed, *parts))
    return torch.Generator().manual_seed(zlib.crc32(key.encode()))


# --------------------------------------------------------------------------- vectorised seeds


def adam_matches_per_seed(
    grads: torch.Tensor,
    start: torch.Tensor,
    lr: float,
    optimizer: Callable[[list[torch.Tensor], float], torch.optim.Optimizer] | None = None,
) -> float:
    """Largest difference between one optimizer over the stacked (S, D) parameters and S separate
    ones over the rows, fed the same gradient sequence ``grads`` of shape (steps, S, D).

    With Adam (the default) it is zero up to the last bit, because Adam's update is elementwise:
    the property that makes training S seeds as one tensor exactly equivalent to S separate runs.
    An optimizer whose update mixes entries (Adafactor's factored second moment) gives a
    difference.

    Args:
        grads: the gradients, (steps, S, D).
        start: the initial parameters, (S, D).
        lr: the learning rate.
        optimizer: ``(params, lr) -> torch.optim.Optimizer`` (default Adam).

    Returns:
        max |stacked - separate| after the last step.
    """
    make = optimizer or (lambda params, lr: torch.optim.Adam(params, lr=lr))
    stacked = start.clone().requires_grad_(True)
    opt = make([stacked], lr)
    rows = [start[s].clone().requires_grad_(True) for s in range(start.shape[0])]
    opts = [make([r], lr) for r in rows]
    for g in grads:
        stacked.grad = g.clone()
        opt.step()
        for s, (r, o) in enumerate(zip(rows, opts)):
            r.grad = g[s].clone()
            o.step()
    return float((stacked.detach() - torch.stack([r.detach() for r in rows])).abs().max())


def train(
    est: Estimator,
    theta0: torch.Tensor,
    f: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch: int,
    steps: int,
    lr: float,
    generator: torch.Generator,
    record: Callable[[int, torch.Tensor], None],
    two_logits: bool = False,
) -> torch.Tensor:
    """Train the stacked parameters ``theta0`` (S seeds x D bits) with Adam on ``est``'s estimates.

    Each step draws ``batch`` samples per seed; a seed's gradient is the mean of its batch's
    estimates, so its update depends on its own row only. ``record(step, theta)`` is called after
    every step (step 1 is after the first update).

    With ``two_logits`` each bit has two free parameters (l0, l1), starting at (0, theta0), and
    theta = l1 - l0 (the bit's probability is softmax([l0, l1])_1 = sigmoid(theta)). Their
    gradients are (-g, g), so Adam, which normalises each coordinate, moves theta by twice the
    step of one parameter per bit: the same run as one logit at twice the learning rate.

    Returns:
        The final theta (S, D).
    """
    start = theta0.detach()
    param = torch.stack([torch.zeros_like(start), start], -1) if two_logits else start.clone()
    param.requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)

    def current() -> torch.Tensor:
        return param[..., 1] - param[..., 0] if two_logits else param

    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        theta = current()
        rows = theta.unsqueeze(1).expand(theta.shape[0], batch, theta.shape[1])
        (surrogate_loss(est, rows, f, generator) / batch).backward()
        opt.step()
        record(step, current().detach())
    return current().detach()


# --------------------------------------------------------------------------- the three parts


def _toy_row(est: Estimator, t: float, theta: float, samples: int, seed: int) -> dict:
    exact = float(toy_gradient(torch.tensor(theta, dtype=torch.float64), t))
    gen = _generator(seed, "toy", est.family, est.choice.tag, est.tau, t, theta)

    def f(b: torch.Tensor) -> torch.Tensor:
        return ((b - t) ** 2).sum(-1)

    with H.Timer() as timer:
        # float64: at t = 0.499 f(1) - f(0) = 0.002 is a difference of two numbers near 0.25, and
        # float32 rounding alone would move a zero-variance estimator's mean by ~1e-8.
        g = estimates(est, torch.full((samples, 1), theta, dtype=torch.float64), f, gen)[:, 0]
    mean = float(g.mean())
    var = float(g.var())
    se = math.sqrt(var / samples)
    # A zero-variance estimator (DisARM at theta = 0 with one bit) still carries rounding: the
    # standard error is floored at 1e-6 relative so that z measures bias, not rounding.
    floor = max(se, 1e-6 * abs(exact))
    return {
        "family": est.family,
        "method": est.label,
        "t": t,
        "theta": theta,
        "samples": samples,
        "exact": exact,
        "mean": mean,
        "bias": mean - exact,
        "stderr": se,
        "z": (mean - exact) / floor if floor > 0 else 0.0,
        "variance": var,
        "p_wrong_sign": float((g * exact < 0).to(torch.float64).mean()),
        "p_zero": float((g == 0).to(torch.float64).mean()),
        "wall_s": timer.seconds,
    }


def _stable_step(thetas: torch.Tensor, direction: float) -> list[int | None]:
    """Per seed: the first step from which ``direction * theta > 0`` holds until the end (None: never)."""
    right = (thetas * direction) > 0  # (steps, S)
    out: list[int | None] = []
    for s in range(right.shape[1]):
        col = right[:, s]
        if not bool(col[-1]):
            out.append(None)
            continue
        wrong = (~col).nonzero()
        out.append(int(wrong[-1]) + 2 if wrong.numel() else 1)
    return out


def _train_run(est: Estimator, cfg: BinaryConfig) -> dict:
    """The toy training of ``est`` for every target at once: rows are (target, seed) pairs."""
    gen = _generator(cfg.seed, "train", est.family, est.choice.tag, est.tau)
    n_t, n_s = len(cfg.targets), cfg.train_seeds
    # One row per (target, seed): each row's loss uses its own target, so the rows stay independent.
    t_col = torch.tensor(cfg.targets).repeat_interleave(n_s).view(-1, 1, 1)
    thetas = torch.empty(cfg.train_steps, n_t * n_s, dtype=torch.float64)

    def record(step: int, theta: torch.Tensor) -> None:
        thetas[step - 1] = theta[:, 0]

    def f(b: torch.Tensor) -> torch.Tensor:
        return ((b - t_col) ** 2).sum(-1)

    with H.Timer() as timer:
        train(
            est,
            torch.zeros(n_t * n_s, 1),
            f,
            batch=1,
            steps=cfg.train_steps,
            lr=cfg.train_lr,
            generator=gen,
            record=record,
        )
    every = _record_steps(cfg.train_steps, cfg.record_every)
    rows = []
    for i, t in enumerate(cfg.targets):
        th = thetas[:, i * n_s : (i + 1) * n_s]
        losses = toy_loss(th, t)  # (steps, seeds)
        final = losses[-1]
        stable = _stable_step(th, -1.0 if t < 0.5 else 1.0)
        reached = [s for s in stable if s is not None]
        rows.append(
            {
                "family": est.family,
                "method": est.label,
                "t": t,
                "seeds": n_s,
                "steps": cfg.train_steps,
                "optimum": min(t, 1 - t) ** 2,
                "final_loss_mean": float(final.mean()),
                "final_loss_std": float(final.std()) if n_s > 1 else 0.0,
                "final_p_mean": float(torch.sigmoid(th[-1]).mean()),
                "stable_step": stable,
                "stable_step_median": statistics.median(reached) if reached else None,
                "seeds_stable": len(reached),
                "curve_steps": every,
                "curve_loss": [float(losses[s - 1].mean()) for s in every],
                "wall_s": timer.seconds / n_t,
            }
        )
    return {"rows": rows}


def _record_steps(steps: int, every: int) -> list[int]:
    marks = list(range(every, steps + 1, every))
    return marks if marks and marks[-1] == steps else [*marks, steps]


def poly_init(cfg: BinaryConfig) -> torch.Tensor:
    """The initial parameters (seeds, latents), uniform in [-init, init]: the same for every method
    and power (a paired comparison)."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{cfg.seed}|poly-init".encode()))
    return (torch.rand(cfg.poly_seeds, cfg.poly_latents, generator=gen, dtype=torch.float64) * 2 - 1) * cfg.poly_init


def _poly_run(est: Estimator, cfg: BinaryConfig) -> dict:
    """Polynomial programming with ``est`` for every power at once: rows are (power, seed) pairs."""
    n_p, n_s = len(cfg.poly_powers), cfg.poly_seeds
    theta0 = poly_init(cfg).repeat(n_p, 1)  # (powers * seeds, latents)
    p_col = torch.tensor(cfg.poly_powers, dtype=torch.float64).repeat_interleave(n_s).view(-1, 1)
    p_col32 = p_col.to(torch.float32).view(-1, 1, 1)
    gen = _generator(cfg.seed, "poly", est.family, est.choice.tag, est.tau)
    marks = _record_steps(cfg.poly_steps, cfg.record_every)
    wanted = set(marks)
    curve: list[torch.Tensor] = []

    def record(step: int, theta: torch.Tensor) -> None:
        if step in wanted:
            curve.append(poly_loss(theta.to(torch.float64), p_col))

    def f(b: torch.Tensor) -> torch.Tensor:
        # |z - 0.45|^p per row's own p; every z used here is in [0, 1] and p >= 1, so the power is
        # differentiable (the 0.45 kink has measure zero).
        return (b - POLY_TARGET).abs().pow(p_col32).mean(-1)

    with H.Timer() as timer:
        final = train(
            est,
            theta0.to(torch.float32),
            f,
            batch=cfg.poly_batch,
            steps=cfg.poly_steps,
            lr=cfg.poly_lr,
            generator=gen,
            record=record,
            two_logits=cfg.poly_logits == "two",
        )
    per_row = poly_loss(final.to(torch.float64), p_col)
    start = poly_loss(theta0, p_col)
    curves = torch.stack(curve)  # (marks, rows)
    rows = []
    for i, p in enumerate(cfg.poly_powers):
        sl = slice(i * n_s, (i + 1) * n_s)
        rows.append(
            {
                "family": est.family,
                "method": est.label,
                "p": p,
                "seeds": n_s,
                "steps": cfg.poly_steps,
                "start": float(start[sl].mean()),
                "optimum": POLY_TARGET**p,
                "final_loss": per_row[sl].tolist(),
                "final_loss_mean": float(per_row[sl].mean()),
                "final_loss_std": float(per_row[sl].std()) if n_s > 1 else 0.0,
                "curve_steps": marks,
                "curve_loss": curves[:, sl].mean(1).tolist(),
                "wall_s": timer.seconds / n_p,
            }
        )
    return {"rows": rows}


# --------------------------------------------------------------------------- checkpoint

_TOY_FIELDS = ("bias", "variance", "stderr", "p_wrong_sign")
_RUN_FIELDS = ("final_loss_mean", "final_loss_std")


def _bad_row(row: Any, fields: tuple[str, ...]) -> bool:
    return not isinstance(row, dict) or not all(
        isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool) for k in fields
    )


def _layout(data: dict) -> str | None:
    """What is wrong with a (checksum-verified) checkpoint's structure, or None."""
    if not isinstance(data.get("key"), str):
        return "it has no configuration key"
    for table in ("toy", "train", "poly"):
        if not isinstance(data.get(table), dict):
            return f"it has no {table!r} table"
    for cid, row in data["toy"].items():
        if _bad_row(row, _TOY_FIELDS):
            return f"its toy cell {cid!r} lacks a number it needs"
    for table in ("train", "poly"):
        for cid, cell in data[table].items():
            rows = cell.get("rows") if isinstance(cell, dict) else None
            if not isinstance(rows, list) or not rows or any(_bad_row(r, _RUN_FIELDS) for r in rows):
                return f"its {table} cell {cid!r} lacks a number it needs"
    return None


def _config_key(cfg: BinaryConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.fingerprint(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class _Lab:
    path: Path
    ckpt: dict
    computed: int = 0

    def cell(self, table: str, cid: str, compute: Callable[[], dict]) -> dict:
        rows = self.ckpt[table]
        if cid not in rows:
            rows[cid] = compute()
            self.computed += 1
            write_checked_json(self.path, self.ckpt)
        return rows[cid]


def _load(path: Path, key: str, fresh: bool) -> dict:
    data = H.load_checked_table(path, use=not fresh, matches=lambda d: d["key"] == key, layout=_layout, hint=_CKPT_HINT)
    return data if data is not None else {"key": key, "toy": {}, "train": {}, "poly": {}}


# --------------------------------------------------------------------------- main


def _units(cfg: BinaryConfig) -> int:
    n = len(cfg.estimators)
    per = {"toy": len(cfg.targets) * len(cfg.toy_thetas), "train": 1, "poly": 1}
    return n * sum(per[p] for p in cfg.parts)


def main(config: dict | BinaryConfig) -> dict:
    """Run the chosen parts; write results.json and results.md, then the plots; return the results dict."""
    cfg = resolve_config(config)
    H.check_requirements(requirements(cfg))
    plots = H.plots_plan(cfg.plots)
    wall = H.Timer().start()
    out = H.prepare_out_dir(cfg.out, "--out")
    lab = _Lab(out / "checkpoint.json", _load(out / "checkpoint.json", _config_key(cfg), cfg.fresh))
    toy: list[dict] = []
    runs: list[dict] = []
    poly: list[dict] = []
    bar = H.progress(_units(cfg), "binary", enabled=cfg.progress)
    try:
        with H.compute_settings(cfg.threads):
            for est in cfg.estimators if "toy" in cfg.parts else []:
                for t in cfg.targets:
                    for theta in cfg.toy_thetas:
                        cid = f"{est.key}|{t!r}|{theta!r}"
                        toy.append(
                            lab.cell("toy", cid, functools.partial(_toy_row, est, t, theta, cfg.toy_samples, cfg.seed))
                        )
                        bar.update()
            for est in cfg.estimators if "train" in cfg.parts else []:
                runs += lab.cell("train", est.key, functools.partial(_train_run, est, cfg))["rows"]
                bar.update()
            for est in cfg.estimators if "poly" in cfg.parts else []:
                poly += lab.cell("poly", est.key, functools.partial(_poly_run, est, cfg))["rows"]
                bar.update()
    finally:
        bar.close()
    cells = len(toy) + (len(cfg.estimators) if runs else 0) + (len(cfg.estimators) if poly else 0)
    cached = cells - lab.computed
    results = {
        "command": H.command_line(cfg),
        "estimators": [
            {"family": e.family, "method": e.label, "kind": e.choice.kind, "tau": e.tau, "unbiased": e.unbiased}
            for e in cfg.estimators
        ],
        "toy": toy,
        "train": runs,
        "poly": poly,
        "plots": [],
        "config": {k: v for k, v in cfg.to_dict().items() if k != "progress"},
        "environment": environment_info(torch.device("cpu")) | {"threads": cfg.threads},
        "runtime_s": wall.stop(),
        "compute_s": sum(r["wall_s"] for r in (*toy, *runs, *poly)),
        "cells_computed": lab.computed,
        "cells_resumed": cached,
        "definitions": {
            "latent": "categorical methods: a 2-class latent with logits [0, theta]; the bit is class 1",
            "bias": "mean of the single-sample estimates - exact gradient sigma'(theta)((1-t)^2 - t^2)",
            "stderr": "standard deviation of one estimate / sqrt(samples)",
            "z": "bias / max(stderr, 1e-6 |exact|) (the floor absorbs float32 rounding of a zero-variance "
            "estimator): beyond about 5 the estimator is biased at this sample size",
            "p_wrong_sign": "fraction of single estimates whose sign is opposite to the exact gradient's",
            "p_zero": "fraction of single estimates that are exactly 0",
            "stable_step": "first step from which theta keeps the optimum's sign (< 0 for t < 1/2) "
            "until the last step; None: not at the end",
            "final_loss": "exact expected loss at the final parameters (closed form)",
        },
    }
    drawn = H.write_results(
        out,
        results,
        command="binary",
        plan=plots,
        markdown=_markdown,
        # A plot only for the parts that ran (the toy table has no curve).
        plots=[("binary_toy.png", functools.partial(_plot_toy, results))] * bool(runs)
        + [("poly.png", functools.partial(_plot_poly, results))] * bool(poly),
    )
    print(
        f"gumbelkit binary: {len(toy)} toy cells, {len(runs)} training runs and {len(poly)} poly runs in "
        f"{results['runtime_s']:.1f} s ({cached} from the checkpoint); {H.results_written(out, drawn)}"
    )
    return results


# --------------------------------------------------------------------------- outputs


def _pm(mean: float, std: float, digits: int = 4) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _markdown(results: dict) -> str:
    parts = [
        "# gumbelkit binary\n\n",
        f"Command: `{results['command']}`  \n",
        f"Runtime: {results['runtime_s']:.1f} s on {results['environment']['threads']} thread(s)\n",
    ]
    toy = results["toy"]
    for t in dict.fromkeys(r["t"] for r in toy):
        rows = [r for r in toy if r["t"] == t]
        parts.append(f"\n## Bernoulli toy, t = {t:g} ({rows[0]['samples']} single-sample estimates per cell)\n\n")
        parts.append(
            markdown_table(
                [
                    "family",
                    "method",
                    "theta",
                    "exact",
                    "mean",
                    "bias",
                    "stderr",
                    "z",
                    "variance",
                    "P(wrong sign)",
                    "P(0)",
                ],
                [
                    [
                        r["family"],
                        r["method"],
                        f"{r['theta']:g}",
                        f"{r['exact']:.4g}",
                        f"{r['mean']:.4g}",
                        f"{r['bias']:.3g}",
                        f"{r['stderr']:.2g}",
                        f"{r['z']:.3g}",
                        f"{r['variance']:.3g}",
                        f"{r['p_wrong_sign']:.3f}",
                        f"{r['p_zero']:.3f}",
                    ]
                    for r in rows
                ],
            )
        )
    runs = results["train"]
    for t in dict.fromkeys(r["t"] for r in runs):
        rows = [r for r in runs if r["t"] == t]
        r0 = rows[0]
        parts.append(
            f"\n## Toy training, t = {t:g} (batch 1, Adam lr {results['config']['train_lr']:g}, "
            f"{r0['steps']} steps, {r0['seeds']} seeds; optimum {r0['optimum']:.6f}, start {float(toy_loss(torch.tensor(0.0), t)):.6f})\n\n"
        )
        parts.append(
            markdown_table(
                [
                    "family",
                    "method",
                    "final loss (mean ± std)",
                    "final P(b=1)",
                    "stable right sign: median step",
                    "seeds",
                ],
                [
                    [
                        r["family"],
                        r["method"],
                        _pm(r["final_loss_mean"], r["final_loss_std"], 6),
                        f"{r['final_p_mean']:.4f}",
                        "-" if r["stable_step_median"] is None else f"{r['stable_step_median']:g}",
                        f"{r['seeds_stable']}/{r['seeds']}",
                    ]
                    for r in rows
                ],
            )
        )
    poly = results["poly"]
    if poly:
        powers = list(dict.fromkeys(r["p"] for r in poly))
        r0 = poly[0]
        parts.append(
            f"\n## Polynomial programming ({results['config']['poly_latents']} latents, batch "
            f"{results['config']['poly_batch']}, Adam lr {results['config']['poly_lr']:g}, {r0['steps']} steps, "
            f"{r0['seeds']} seeds): exact expected loss after training, mean ± std over seeds\n\n"
        )
        by = {(r["family"], r["method"], r["p"]): r for r in poly}
        keys = list(dict.fromkeys((r["family"], r["method"]) for r in poly))
        first = {p: next(r for r in poly if r["p"] == p) for p in powers}
        table = [["(optimum)", "", *[f"{POLY_TARGET**p:.4f}" for p in powers]]]
        table.append(["(start)", "", *[f"{first[p]['start']:.4f}" for p in powers]])
        for fam, m in keys:
            table.append(
                [
                    fam,
                    m,
                    *[
                        _pm(by[(fam, m, p)]["final_loss_mean"], by[(fam, m, p)]["final_loss_std"])
                        if (fam, m, p) in by
                        else "-"
                        for p in powers
                    ],
                ]
            )
        parts.append(markdown_table(["family", "method", *[f"p = {p:g}" for p in powers]], table))
    return "".join(parts)


def _curve_axes(ax: Any, rows: list[dict], title: str) -> None:
    """Excess loss (exact expected loss - optimum) against the step, log scale: the curves of a
    converging and a stalling estimator differ by orders of magnitude, not by a few per cent."""
    for r in rows:
        style = "-" if r["family"] == BINARY else "--"
        excess = [max(v - r["optimum"], 1e-12) for v in r["curve_loss"]]
        ax.plot(r["curve_steps"], excess, style, lw=1, label=f"{r['method']} ({r['family'][:3]})")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("exact expected loss - optimum")


def _plot_panels(rows: list[dict], key: str, title: str, width: float, path: Path) -> Path:
    """Training curves, one panel per value of ``rows[i][key]`` (in order of appearance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = list(dict.fromkeys(r[key] for r in rows)) or [None]
    fig, axes = plt.subplots(1, len(values), figsize=(width * len(values), 4.5), squeeze=False)
    for ax, v in zip(axes[0], values):
        panel = [r for r in rows if r[key] == v]
        if panel:
            _curve_axes(ax, panel, f"{title} = {v:g} (mean of {panel[0]['seeds']} seeds)")
    axes[0][-1].legend(fontsize=6, ncol=2)
    save_figure(fig, path)
    return path


def _plot_toy(results: dict, path: Path) -> Path:
    return _plot_panels(results["train"], "t", "Bernoulli toy, t", 6, path)


def _plot_poly(results: dict, path: Path) -> Path:
    return _plot_panels(results["poly"], "p", "polynomial programming, p", 5.5, path)
