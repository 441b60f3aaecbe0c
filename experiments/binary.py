r"""Binary lab: every Bernoulli estimator on the Bernoulli toy and on polynomial programming.

Two families of the registry are measured side by side: the ``bernoulli`` methods
(``--binary-methods``: pathwise samples of :func:`gumbelkit.binary.sample`, unbiased surrogates of
:func:`gumbelkit.binary.surrogate`) and the ``categorical`` ones (``--methods``) on a 2-class latent
with logits :math:`[0, \theta]`, whose class 1 is the bit: :math:`P(b = 1) = \sigma(\theta)` exactly.
An item is ``NAME[:OPTION=VALUE,...][@TAU]``; without ``@TAU`` a method runs at its declared default
temperature (1 when it declares none). Default: every method of each family.

- **toy** (REBAR; RELAX): :math:`\min \mathbb{E}[(b - t)^2]`, exact gradient
  :math:`\sigma'(\theta)((1-t)^2 - t^2)`; per target t and theta, ``--toy-samples`` single-sample
  estimates in float64: bias with its standard error, variance, P(wrong sign), P(0).
- **train**: RELAX's ``toy.py`` (batch 1, Adam 0.01, 5000 steps, theta from 0), ``--train-seeds``
  seeds at once: the exact expected loss and the first step from which theta keeps the optimum's sign.
- **poly** (ReinMax's polynomial programming): 128 bits, :math:`\min \frac1D \sum_i |z_i - 0.45|^p`,
  theta ~ U(-0.01, 0.01), batch 64, Adam 1e-3; the exact expected loss after training.

A method with learnable state (``spec.has_control``, a learned control variate) gets one control
per seed from its declaration (``spec.new_control``), trained with theta by the same backward (the
surrogate carries its variance gradient), its own Adam group at ``--control-lr`` times the rate;
such a method runs its seeds one after the other. The training reports the variance of single
estimates at each seed's final theta, with the seed's trained control.

Seeds (and targets, powers) of a method without state are rows of one tensor: each row's loss depends on its row only and
Adam is elementwise, so one Adam over the stack takes exactly the steps separate ones would.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from collections.abc import Callable
from typing import Any

import torch

import gumbelkit as gk

from . import methods as M
from .binary_report import DEFINITIONS, markdown, plot
from .config import Config, Float, Floats, Int, Names, OneOf, PathText, UserError, option
from .runner import Run, Timer, generator

__all__ = ["BinaryConfig", "estimates", "fit", "main", "new_control", "poly_loss", "surrogate_loss", "toy_gradient"]
__all__ += ["toy_loss", "train"]

PARTS = ("toy", "train", "poly")
POLY_TARGET = 0.45
#: How results name each family (the Bernoulli methods are "binary" in the tables, as before).
FAMILY = {"bernoulli": "binary", "categorical": "categorical"}


def _target(value: Any, flag: str) -> list[float]:
    ts = Floats(Float(lo=0.0, hi=1.0), "t")(value, flag)
    if 0.5 in ts:
        raise UserError(f"expected {flag} != 0.5 (every theta is optimal there), got 0.5")
    return ts


@dataclasses.dataclass(frozen=True)
class BinaryConfig(Config):
    """Every option of ``python -m experiments binary``."""

    COMMAND, HELP = "binary", "Bernoulli toy and polynomial programming with every binary estimator"

    out: str = option("runs/binary", "output folder", PathText(), role="run")
    parts: list = option(list(PARTS), "measurements to run", Names(PARTS, what="part"), role="grid")
    binary_methods: list = M.option(
        "bernoulli", what="Bernoulli methods ('none': no binary method)", taus=True, none=True
    )
    methods: list = M.option(
        "categorical", what="categorical methods on a 2-class latent ('none': none)", taus=True, none=True
    )
    targets: list = option([0.45, 0.499], "targets t of the Bernoulli toy", _target)
    toy_thetas: list = option(
        [-2.0, 0.0, 2.0], "theta at which the toy gradients are measured", Floats(Float(), "theta")
    )
    toy_samples: int = option(100_000, "single-sample estimates per toy cell", Int(2, 10**7))
    train_steps: int = option(5000, "training steps of the toy (batch 1)", Int(1, 10**7))
    train_lr: float = option(0.01, "Adam learning rate of the toy training", Float(positive=True))
    train_seeds: int = option(20, "seeds of the toy training (vectorised)", Int(1, 10_000))
    poly_powers: list = option([1.5, 2.0, 3.0], "powers p of polynomial programming", Floats(Float(lo=1.0), "p"))
    poly_latents: int = option(128, "binary latents of polynomial programming", Int(1, 10**6))
    poly_batch: int = option(64, "samples per step and seed", Int(1, 10**6))
    poly_steps: int = option(8000, "training steps of polynomial programming", Int(1, 10**7))
    poly_lr: float = option(1e-3, "Adam learning rate of polynomial programming", Float(positive=True))
    poly_seeds: int = option(10, "seeds of polynomial programming (vectorised)", Int(1, 10_000))
    poly_init: float = option(0.01, "theta starts uniform in [-init, init]", Float(lo=0.0))
    poly_logits: str = option(
        "one",
        "parameters per bit: one (theta) or two (free logits l0, l1, theta = l1 - l0, as in ReinMax's setup)",
        OneOf(("one", "two")),
    )
    control_lr: float = option(
        1.0,
        "learning rate of a method's learnable control, as a multiple of the parameters' one",
        Float(positive=True),
    )
    final_samples: int = option(2000, "single-sample estimates at the final theta (variance)", Int(2, 10**7))
    record_every: int = option(50, "steps between two points of the training curves", Int(1, 10**7))
    seed: int = option(0, "seed of every random stream", Int(0, 2**63 - 1))

    @classmethod
    def cross_check(cls, values: dict) -> dict:
        if not values["binary_methods"] and not values["methods"]:
            raise UserError("expected at least one method in --binary-methods or --methods")
        return values

    @functools.cached_property
    def estimators(self) -> list[tuple[str, M.Method]]:
        """(family, method) of every estimator measured: the Bernoulli methods, then the categorical ones."""
        return [
            (f, m)
            for f, v in (("bernoulli", self.binary_methods), ("categorical", self.methods))
            if v
            for m in M.choices(v, f, taus=True)
        ]


# --------------------------------------------------------------------------- exact quantities


def toy_loss(theta: torch.Tensor, t: float) -> torch.Tensor:
    r""":math:`\mathbb{E}[(b - t)^2] = (1 - \sigma(\theta)) t^2 + \sigma(\theta)(1 - t)^2`, elementwise."""
    p = torch.sigmoid(theta)
    return (1 - p) * t**2 + p * (1 - t) ** 2


def toy_gradient(theta: torch.Tensor, t: float) -> torch.Tensor:
    r""":math:`\sigma'(\theta)((1-t)^2 - t^2)`; sigma(x) sigma(-x), not s (1 - s): no cancellation in the tail."""
    return torch.sigmoid(theta) * torch.sigmoid(-theta) * ((1 - t) ** 2 - t**2)


def poly_loss(theta: torch.Tensor, p: float | torch.Tensor, target: float = POLY_TARGET) -> torch.Tensor:
    r""":math:`\frac1D \sum_i (1-\sigma(\theta_i))c^p + \sigma(\theta_i)(1-c)^p` over the last dim (p per row)."""
    s = torch.sigmoid(theta)
    lo, hi = (torch.as_tensor(v, dtype=theta.dtype) ** p for v in (target, 1 - target))
    return ((1 - s) * lo + s * hi).mean(-1)


# --------------------------------------------------------------------------- one estimate


def surrogate_loss(family: str, method: M.Method, theta: torch.Tensor, f: Callable, gen, control=None):
    """A scalar whose gradient with respect to ``theta`` (..., D) is, row by row, the method's
    estimate of grad E_{b ~ Bern(sigmoid(theta))} f(b) (``f``: bits (..., D) -> losses (...)).
    ``control``: the method's learnable state (:func:`new_control`), which the same backward trains."""
    if family == "bernoulli":
        if method.spec.kind == "score_function":
            return gk.binary.surrogate(theta, f, method.name, generator=gen, control=control, **method.options).sum()
        return f(gk.binary.sample(theta, method.name, method.tau, generator=gen, **method.options)).sum()
    # class 1 of the 2-class latent is the bit: P(class 1) = softmax([0, theta])_1 = sigmoid(theta)
    logits = torch.stack([torch.zeros_like(theta), theta], dim=-1)
    tau = 1.0 if method.tau is None else method.tau
    return method.objective(logits, lambda z: f(z[..., 1]), tau, generator=gen, control=control)[0].sum()


def new_control(family: str, method: M.Method, bits: int, *parts: Any) -> torch.nn.Module | None:
    """The method's learnable state for one row of ``bits`` bits, from its declaration
    (``spec.new_control``; None for a method without state), initialised from a stream seeded by
    ``parts`` (the global RNG is left as it was)."""
    if not method.spec.has_control:
        return None
    shape = (bits,) if family == "bernoulli" else (bits, 2)  # the 2-class latent: (D, 2) per row
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(generator(*parts).initial_seed()))
        return method.spec.new_control(shape, **method.options)


def estimates(family: str, method: M.Method, theta: torch.Tensor, f: Callable, gen, control=None) -> torch.Tensor:
    """Independent estimates, one per row of ``theta`` (..., D) (``control``: held as it is)."""
    th = theta.detach().clone().requires_grad_(True)
    return torch.autograd.grad(surrogate_loss(family, method, th, f, gen, control), th)[0].detach()


def train(family, method, theta0, f, *, batch, steps, lr, gen, record, two_logits=False, control=None, control_lr=1.0):
    """Adam on the stacked parameters ``theta0`` (rows x D); each step a row's gradient is the mean of
    its ``batch`` estimates. With ``two_logits`` a bit has two parameters (l0, l1) from (0, theta0),
    theta = l1 - l0: Adam then moves theta twice as fast. ``record(step, theta)`` after each step.
    ``control``: the method's state, trained by the same backward (its variance gradient, carried by
    the surrogate) with its own Adam group at ``control_lr`` times ``lr``."""
    start = theta0.detach()
    param = (torch.stack([torch.zeros_like(start), start], -1) if two_logits else start.clone()).requires_grad_(True)
    groups = [{"params": [param]}]
    groups += [{"params": list(control.parameters()), "lr": lr * control_lr}] if control is not None else []
    opt = torch.optim.Adam(groups, lr=lr)

    def current() -> torch.Tensor:
        return param[..., 1] - param[..., 0] if two_logits else param

    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        theta = current()
        rows = theta.unsqueeze(1).expand(theta.shape[0], batch, theta.shape[1])
        (surrogate_loss(family, method, rows, f, gen, control) / batch).backward()
        opt.step()
        record(step, current().detach())
    return current().detach()


def fit(family: str, method: M.Method, theta0, make_f: Callable, record: Callable, *, parts: tuple, control_lr, **kw):
    """:func:`train` on the rows of ``theta0``: all at once for a method without state (one stream,
    keyed by ``parts``); one row at a time for a method with state, each row with its own control
    (:func:`new_control`) and stream, as separate runs would have them. ``make_f(rows)``: the loss of
    those rows (a slice); ``record(step, rows, theta)``. Returns (final theta, the controls)."""
    if not method.spec.has_control:
        rec = functools.partial(record, rows=slice(None))
        return train(family, method, theta0, make_f(slice(None)), gen=generator(*parts), record=rec, **kw), []
    finals, controls = [], []
    for i in range(theta0.shape[0]):
        rows = slice(i, i + 1)
        controls.append(new_control(family, method, theta0.shape[-1], *parts, "control", i))
        finals.append(train(family, method, theta0[rows], make_f(rows), gen=generator(*parts, "row", i),
                            record=functools.partial(record, rows=rows), control=controls[-1],
                            control_lr=control_lr, **kw))  # fmt: skip
    return torch.cat(finals), controls


def final_variance(family, method, theta, make_f, controls, cfg, *parts) -> list[float]:
    """Per row of ``theta``: the variance of ``cfg.final_samples`` single estimates there (float64),
    with the row's trained control (None: the method's fixed behaviour)."""
    out = []
    for i in range(theta.shape[0]):
        rows = theta[i : i + 1, None].to(torch.float64).expand(1, cfg.final_samples, theta.shape[-1])
        ctl = controls[i] if controls else None
        g = estimates(family, method, rows, make_f(slice(i, i + 1)), generator(*parts, "final", i), ctl)
        out.append(float(g.sum(-1).var()))
    return out


# --------------------------------------------------------------------------- the three parts


def _toy_row(family: str, method: M.Method, t: float, theta: float, cfg: BinaryConfig) -> dict:
    exact = float(toy_gradient(torch.tensor(theta, dtype=torch.float64), t))
    gen = generator(cfg.seed, "toy", FAMILY[family], method.tag, method.tau, t, theta)
    with Timer() as timer:
        # float64: at t = 0.499, f(1) - f(0) = 0.002 is a difference of numbers near 0.25
        rows = torch.full((cfg.toy_samples, 1), theta, dtype=torch.float64)
        g = estimates(family, method, rows, lambda b: ((b - t) ** 2).sum(-1), gen)[:, 0]
    mean, var = float(g.mean()), float(g.var())
    se = math.sqrt(var / cfg.toy_samples)
    floor = max(se, 1e-6 * abs(exact))  # a zero-variance estimator still carries rounding: z measures bias
    row = {"family": FAMILY[family], "method": method.label, "t": t, "theta": theta, "samples": cfg.toy_samples}
    row |= {"exact": exact, "mean": mean, "bias": mean - exact, "stderr": se, "variance": var}
    row["z"] = (mean - exact) / floor if floor > 0 else 0.0
    row["p_wrong_sign"] = float((g * exact < 0).to(torch.float64).mean())
    return row | {"p_zero": float((g == 0).to(torch.float64).mean()), "wall_s": timer.seconds}


def _stable_step(thetas: torch.Tensor, direction: float) -> list[int | None]:
    """Per seed: the first step from which ``direction * theta > 0`` holds until the end (None: never)."""
    right = (thetas * direction) > 0
    out: list[int | None] = []
    for col in right.T:
        wrong = (~col).nonzero()
        out.append(None if not bool(col[-1]) else int(wrong[-1]) + 2 if wrong.numel() else 1)
    return out


def _marks(steps: int, every: int) -> list[int]:
    marks = list(range(every, steps + 1, every))
    return marks if marks and marks[-1] == steps else [*marks, steps]


def _train_run(family: str, method: M.Method, cfg: BinaryConfig) -> dict:
    """The toy training for every target: rows are (target, seed) pairs."""
    n_s = cfg.train_seeds
    t_col = torch.tensor(cfg.targets).repeat_interleave(n_s).view(-1, 1, 1)
    thetas = torch.empty(cfg.train_steps, len(cfg.targets) * n_s, dtype=torch.float64)

    def record(step: int, theta: torch.Tensor, rows: slice) -> None:
        thetas[step - 1, rows] = theta[:, 0]

    def make_f(rows: slice) -> Callable:
        return lambda b: ((b - t_col[rows]) ** 2).sum(-1)

    parts = (cfg.seed, "train", FAMILY[family], method.tag, method.tau)
    with Timer() as timer:
        final, controls = fit(family, method, torch.zeros(len(cfg.targets) * n_s, 1), make_f, record, parts=parts,
                              control_lr=cfg.control_lr, batch=1, steps=cfg.train_steps, lr=cfg.train_lr)  # fmt: skip
    variances = final_variance(family, method, final, make_f, controls, cfg, *parts)
    rows, every = [], _marks(cfg.train_steps, cfg.record_every)
    for i, t in enumerate(cfg.targets):
        th = thetas[:, i * n_s : (i + 1) * n_s]
        losses = toy_loss(th, t)
        stable = _stable_step(th, -1.0 if t < 0.5 else 1.0)
        reached = [s for s in stable if s is not None]
        row = {"family": FAMILY[family], "method": method.label, "t": t, "seeds": n_s, "steps": cfg.train_steps}
        row |= {"optimum": min(t, 1 - t) ** 2, "final_loss_mean": float(losses[-1].mean())}
        row |= {"final_loss_std": float(losses[-1].std()) if n_s > 1 else 0.0, "stable_step": stable}
        row |= {"final_p_mean": float(torch.sigmoid(th[-1]).mean()), "seeds_stable": len(reached)}
        row |= {"final_p": torch.sigmoid(th[-1]).tolist(), "trained_control": bool(controls)}
        row |= {"final_variance_median": statistics.median(variances[i * n_s : (i + 1) * n_s])}
        row["stable_step_median"] = statistics.median(reached) if reached else None
        row |= {"curve_steps": every, "curve_loss": [float(losses[s - 1].mean()) for s in every]}
        rows.append(row | {"wall_s": timer.seconds / len(cfg.targets)})
    return {"rows": rows}


def _poly_run(family: str, method: M.Method, cfg: BinaryConfig) -> dict:
    """Polynomial programming for every power: rows are (power, seed) pairs, the same start."""
    n_p, n_s = len(cfg.poly_powers), cfg.poly_seeds
    init = generator(cfg.seed, "poly-init")
    theta0 = ((torch.rand(n_s, cfg.poly_latents, generator=init, dtype=torch.float64) * 2 - 1) * cfg.poly_init).repeat(
        n_p, 1
    )
    p_col = torch.tensor(cfg.poly_powers, dtype=torch.float64).repeat_interleave(n_s).view(-1, 1)
    marks = _marks(cfg.poly_steps, cfg.record_every)
    curves = torch.empty(len(marks), n_p * n_s, dtype=torch.float64)

    def record(step: int, theta: torch.Tensor, rows: slice) -> None:
        if step in marks:
            curves[marks.index(step), rows] = poly_loss(theta.to(torch.float64), p_col[rows])

    def make_f(rows: slice) -> Callable:  # each row's own p; z in [0, 1], p >= 1: differentiable
        return lambda b: (b - POLY_TARGET).abs().pow(p_col[rows].to(torch.float32).view(-1, 1, 1)).mean(-1)

    with Timer() as timer:
        kwargs = {"batch": cfg.poly_batch, "steps": cfg.poly_steps, "lr": cfg.poly_lr, "control_lr": cfg.control_lr}
        final, _ = fit(family, method, theta0.to(torch.float32), make_f, record, two_logits=cfg.poly_logits == "two",
                       parts=(cfg.seed, "poly", FAMILY[family], method.tag, method.tau), **kwargs)  # fmt: skip
    per_row, start = poly_loss(final.to(torch.float64), p_col), poly_loss(theta0, p_col)
    rows = []
    for i, p in enumerate(cfg.poly_powers):
        sl = slice(i * n_s, (i + 1) * n_s)
        row = {"family": FAMILY[family], "method": method.label, "p": p, "seeds": n_s, "steps": cfg.poly_steps}
        row |= {"start": float(start[sl].mean()), "optimum": POLY_TARGET**p, "final_loss": per_row[sl].tolist()}
        row |= {
            "final_loss_mean": float(per_row[sl].mean()),
            "final_loss_std": float(per_row[sl].std()) if n_s > 1 else 0.0,
        }
        rows.append(
            row | {"curve_steps": marks, "curve_loss": curves[:, sl].mean(1).tolist(), "wall_s": timer.seconds / n_p}
        )
    return {"rows": rows}


def main(cfg: BinaryConfig) -> dict:
    """Run the chosen parts for every estimator; write the results and the plots; return them."""
    ests = cfg.estimators
    toy, runs, poly = [], [], []  # type: list[dict], list[dict], list[dict]
    units = len(ests) * (
        len(cfg.targets) * len(cfg.toy_thetas) * ("toy" in cfg.parts) + ("train" in cfg.parts) + ("poly" in cfg.parts)
    )
    with Run(cfg, units) as run:
        for family, m in ests if "toy" in cfg.parts else []:
            for t in cfg.targets:
                toy += [
                    run.cell(
                        f"toy|{FAMILY[family]}/{m.label}|{t!r}|{th!r}",
                        functools.partial(_toy_row, family, m, t, th, cfg),
                    )
                    for th in cfg.toy_thetas
                ]
        for part, table_, compute in (("train", runs, _train_run), ("poly", poly, _poly_run)):
            for family, m in ests if part in cfg.parts else []:
                table_ += run.cell(f"{part}|{FAMILY[family]}/{m.label}", functools.partial(compute, family, m, cfg))[
                    "rows"
                ]
    results = {
        "estimators": [
            {
                "family": FAMILY[f],
                "method": m.label,
                "kind": m.spec.kind,
                "tau": m.tau,
                "unbiased": m.spec.kind != "sample",
                "has_control": m.spec.has_control,
            }
            for f, m in ests
        ],
        "toy": toy,
        "train": runs,
        "poly": poly,
        **run.meta(definitions=DEFINITIONS, compute_s=sum(r["wall_s"] for r in (*toy, *runs, *poly))),
    }
    plots = [("binary_toy.png", functools.partial(plot, "train", "t", "Bernoulli toy, t"))] * bool(runs)
    run.write(
        results,
        markdown,
        plots + [("poly.png", functools.partial(plot, "poly", "p", "polynomial programming, p"))] * bool(poly),
    )
    return results
