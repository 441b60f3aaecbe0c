"""Gradient estimator lab: exact bias and variance of every estimator, and "when do I need Gumbel noise?".

Every problem is small enough to enumerate all K^N outcomes, so the true gradient of
E_{z ~ Cat(softmax theta)}[f(z)] is known exactly (:mod:`._enumerate`). Each estimator is run S
times in one vectorised batch (theta replicated along a batch dimension; the samples are
independent given theta, so one backward of the summed loss gives S per-sample gradients), and
its mean, covariance and error against the truth are reported with standard errors.

Methods come from the estimator registry: ``--methods NAME[:OPTION=VALUE,...]`` (any registered
method, plugins included, each with its declared options), run through
:meth:`gumbelkit.MethodSpec.objective`, so a score-function method (REINFORCE) and a sampling
method are measured the same way and nothing here depends on a method's name. What the lab
needs to know about a method it reads from its spec: whether it uses tau (else one cell, not one
per tau), how many loss evaluations one estimate costs, whether its backward is the gradient of
the Gumbel-Softmax relaxation (then its bias against that relaxation is reported too), and its
kind (score-function cells are unbiased and always run to the standard-error target).

Problems (``--problems``):
- ``quadratic``: f(z) = ||z - t||^2 over N one-hot blocks (on one-hot z this is linear in z;
  a relaxed y pays ||y||^2 < 1, which is where relaxations get biased).
- ``decoder``: f(z) = BCE(x, sigmoid(decoder(z))) for a random fixed MLP decoder and a fixed
  binary target x.
- ``70_30``: a generator emits a one-hot code, a fixed decoder maps codes to points, and the data
  are x1 with probability 0.7 and x2 with probability 0.3. The loss is the squared maximum mean
  discrepancy (Gaussian kernel) written over a pair of independent codes,
  f(z, z') = k(x(z), x(z')) - E_y[k(x(z), y) + k(x(z'), y)] + E k(y, y'), so E[f] = MMD^2 >= 0,
  zero exactly when the codes reproduce 70/30. A single-code loss E_z[f(z)] is linear in the
  probabilities and is minimised by a point mass, so the pair is the smallest honest form.

Also: a training demonstration on ``70_30`` (softmax collapses to a constant blend; Gumbel
methods reproduce 70/30) and plots. Finished cells are checkpointed to ``--out/checkpoint.json``
with a SHA-256 checksum and reused by the next run of the same configuration; a damaged or
unchecksummed checkpoint is refused (``--fresh`` starts over).

Structure: :func:`main` validates the :class:`GradientsConfig` and runs the phases: prepare the
folders and the checkpoint, measure every problem (exact gradient, relaxed references, one cell
per method and tau), run the demonstration, assemble, write the results and then the plots.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import statistics
import sys
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

import gumbelkit

from ..estimators import SPECS
from . import _harness as H
from ._common import (
    MAX_THREADS,
    MIN_TAU,
    UserError,
    environment_info,
    markdown_table,
    mean_std,
    resolve_device,
    save_figure,
    write_checked_json,
)
from ._defaults import DEMO_METHODS, GRADIENT_METHODS
from ._enumerate import exact_expectation, exact_gradient
from ._methods import MethodChoice, describe_methods, parse_method, parse_methods

__all__ = [
    "DEFAULTS",
    "DEFAULT_METHODS",
    "PROBLEMS",
    "GradientsConfig",
    "Problem",
    "add_arguments",
    "config_from_args",
    "equal_work_errors",
    "estimate",
    "estimator_gradients",
    "main",
    "make_problem",
    "validate_config",
]

PROBLEMS = ("quadratic", "decoder", "70_30")
#: The methods measured by default (see :mod:`._defaults`).
DEFAULT_METHODS = GRADIENT_METHODS

#: Largest value of an integer method option (k draws, n samples: each multiplies a chunk's memory).
MAX_DRAWS = 1000
#: Upper limits of the count options (far above a useful lab; a typo must not exhaust memory).
MAX_SAMPLES = 10**9
MAX_CHUNK = 65536
MAX_DEMO_BATCH = 8192
_SAMPLE_KIND = ("sample",)


# --------------------------------------------------------------------------- config


def _check_samples(value: Any, flag: str) -> str | int:
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    try:
        if isinstance(value, bool):
            raise TypeError
        v = value if isinstance(value, int) else int(str(value).strip())
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"expected {flag} 'auto' or an integer >= 2, got {value!r}") from None
    return H.Int(2, MAX_SAMPLES)(v, flag)


def _check_methods(value: Any, flag: str) -> list[str]:
    return [m.label for m in parse_methods(value, flag, cap=MAX_DRAWS)]


def _check_demo_methods(value: Any, flag: str) -> list[str]:
    return [m.label for m in parse_methods(value, flag, cap=MAX_DRAWS, kinds=_SAMPLE_KIND)]


def _methods_help() -> str:
    return (
        "comma-separated methods NAME[:OPTION=VALUE,...] (the same method may appear with different options), "
        f"any of: {describe_methods()}; integer options at most {MAX_DRAWS}"
    )


def _demo_methods_help() -> str:
    return f"methods trained in the 70/30 demonstration (drawn by gumbelkit.sample), any of: {describe_methods(_SAMPLE_KIND)}"


@dataclasses.dataclass(frozen=True)
class GradientsConfig(H.Config):
    """Everything ``gumbelkit gradients`` does, as validated values (see :func:`validate_config`)."""

    COMMAND: ClassVar[str] = "gradients"

    out: str = H.setting("runs/gradients", "output folder", H.Path(), fingerprint=False)
    fig_dir: str | None = H.setting(
        None, "folder for the PNG plots (default: the --out folder)", H.Path(), fingerprint=False, show_default=False
    )
    problems: list = dataclasses.field(
        default_factory=lambda: list(PROBLEMS), metadata=H.meta("problems", H.Names(PROBLEMS, what="problem"))
    )
    methods: list = dataclasses.field(
        default_factory=lambda: list(DEFAULT_METHODS), metadata=H.meta(_methods_help, H.Custom(_check_methods))
    )
    taus: list = dataclasses.field(
        default_factory=lambda: [0.1, 0.25, 0.5, 1.0, 2.0],
        metadata=H.meta(
            f"temperatures, each finite and >= {MIN_TAU:g}: below that a float32 relaxed sample is "
            "one-hot to the last bit and its gradient underflows to zero",
            H.Floats(H.Float(positive=True, minimum=MIN_TAU), "tau"),
        ),
    )
    samples: str | int = H.setting(
        "auto",
        f"gradient estimates per cell (2..{MAX_SAMPLES:.0e}), or 'auto': enough for a "
        "standard error of --target-stderr x ||g||",
        H.Custom(_check_samples),
    )
    target_stderr: float = H.setting(0.01, "relative standard error 'auto' aims for", H.Float(positive=True))
    min_samples: int = H.setting(4096, "pilot size for 'auto'", H.Int(2, MAX_SAMPLES))
    max_samples: int = H.setting(400_000, "cap for 'auto' (at least --min-samples)", H.Int(2, MAX_SAMPLES))
    chunk: int = H.setting(4096, "estimates per vectorised batch", H.Int(1, MAX_CHUNK))
    cell_seconds: float = H.setting(
        1.0,
        "with --samples auto, time cap per (method, tau) cell except score-function methods",
        H.Float(positive=True),
    )
    seed: int = H.setting(0, "seed of the problems and of every cell's random stream", H.Int(0))
    device: str = H.setting("auto", "cpu, cuda or auto", H.Custom(lambda v, f: str(v)))
    threads: int = H.setting(
        1, "torch CPU threads while measuring (1 for stable timings)", H.Int(1, MAX_THREADS), fingerprint=False
    )
    demo: bool = H.setting(True, "run the 70/30 training demonstration", H.Flag())
    demo_methods: list = dataclasses.field(
        default_factory=lambda: list(DEMO_METHODS), metadata=H.meta(_demo_methods_help, H.Custom(_check_demo_methods))
    )
    demo_tau: float = H.setting(0.5, "temperature of the demonstration", H.Float(positive=True, minimum=MIN_TAU))
    demo_steps: int = H.setting(600, "training steps of the demonstration", H.Int(1, 10**7))
    demo_batch: int = H.setting(128, "batch of the demonstration", H.Int(2, MAX_DEMO_BATCH))
    demo_seeds: int = H.setting(3, "seeds of the demonstration", H.Int(1, 1000))
    fresh: bool = H.fresh_setting()
    plots: bool | None = H.plots_setting()
    progress: bool | None = H.progress_setting()

    @classmethod
    def cross_check(cls, values: dict, given: Mapping[str, Any]) -> dict:
        if values["max_samples"] < values["min_samples"]:
            raise UserError(f"expected --max-samples >= {values['min_samples']}, got {values['max_samples']}")
        return values

    @functools.cached_property
    def method_choices(self) -> list[MethodChoice]:
        return parse_methods(self.methods, cap=MAX_DRAWS)

    @functools.cached_property
    def demo_choices(self) -> list[MethodChoice]:
        return parse_methods(self.demo_methods, "--demo-methods", cap=MAX_DRAWS, kinds=_SAMPLE_KIND)


#: Every default, as a dict; the config's entry points (see :func:`._harness.command_api`).
DEFAULTS, validate_config, add_arguments, config_from_args = H.command_api(GradientsConfig)


def requirements(cfg: GradientsConfig) -> list[H.Requirement]:
    """The optional packages this configuration needs (checked at start; plots: see :func:`H.plots_plan`)."""
    return H.common_requirements(cfg.progress)


def _choice(method: str | MethodChoice, kinds: tuple[str, ...] | None = None) -> MethodChoice:
    """A method label (or a parsed choice) as a :class:`MethodChoice`."""
    return method if isinstance(method, MethodChoice) else parse_method(method, cap=MAX_DRAWS, kinds=kinds)


def relaxation_choice() -> MethodChoice:
    """The method whose forward *is* the Gumbel-Softmax relaxation (relaxed backward, not one-hot):
    its gradient is exactly that of the relaxed objective, the reference of the relaxed bias."""
    for spec in SPECS.values():
        if spec.kind == "sample" and spec.relaxed and not spec.one_hot:
            return MethodChoice(spec)
    raise UserError("no registered method is the Gumbel-Softmax relaxation itself (relaxed=True, one_hot=False)")


# --------------------------------------------------------------------------- problems


@dataclass
class Problem:
    """One enumerable problem: N categorical variables with K classes and a loss f of their codes.

    ``params`` are the free logits, (N, K), or (K,) when ``tied`` (all N variables share them,
    as independent draws from one generator). ``f`` maps codes (M, N, K) (one-hot or relaxed,
    any floating dtype) to losses (M,); its own parameters are fixed.
    """

    name: str
    description: str
    n: int
    k: int
    tied: bool
    params: torch.Tensor
    f: Callable[[torch.Tensor], torch.Tensor]

    def logits(self, p: torch.Tensor) -> torch.Tensor:
        """Free parameters (..., K) or (..., N, K) -> logits (..., N, K)."""
        if self.tied:
            return p.unsqueeze(-2).expand(*p.shape[:-1], self.n, self.k)
        return p

    @property
    def outcomes(self) -> int:
        return self.k**self.n


class _Cast:
    """Holds float64 tensors and hands out copies in any dtype/device (cached), for f."""

    def __init__(self, **tensors):
        self._base = tensors
        self._cache = {}

    def __call__(self, name, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = self._base[name].to(device=like.device, dtype=like.dtype)
        return self._cache[key]


def _quadratic(gen: torch.Generator, device) -> Problem:
    n, k = 3, 6
    # A soft target t in [0, 1]^(N x K) (the categorical version of the REBAR toy f(b) = (b - t)^2).
    t = torch.rand(n, k, generator=gen, dtype=torch.float64).to(device)
    theta = (0.5 * torch.randn(n, k, generator=gen, dtype=torch.float64)).to(device)
    c = _Cast(t=t)

    def f(z):
        return ((z - c("t", z)) ** 2).sum((-1, -2))

    return Problem("quadratic", f"f(z) = ‖z − t‖², N={n} variables, K={k} classes", n, k, False, theta, f)


def _decoder(gen: torch.Generator, device) -> Problem:
    n, k, hidden, d = 4, 8, 64, 20

    def w(shape, fan_in, gain):
        return gain * torch.randn(*shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)

    w1, b1 = w((n * k, hidden), n, 1.5), w((hidden,), 1, 0.1)
    w2, b2 = w((hidden, d), hidden, 2.0), w((d,), 1, 0.1)
    theta = 0.5 * torch.randn(n, k, generator=gen, dtype=torch.float64)
    # Target: a sample of the decoder's own Bernoulli output for a random code, so the loss is in range.
    code = torch.nn.functional.one_hot(torch.randint(0, k, (n,), generator=gen), k).to(torch.float64)
    logits_x = torch.relu(code.reshape(-1) @ w1 + b1) @ w2 + b2
    x = torch.bernoulli(torch.sigmoid(logits_x), generator=gen)
    c = _Cast(w1=w1.to(device), b1=b1.to(device), w2=w2.to(device), b2=b2.to(device), x=x.to(device))

    def f(z):
        h = torch.relu(z.reshape(*z.shape[:-2], -1) @ c("w1", z) + c("b1", z))
        out = h @ c("w2", z) + c("b2", z)
        target = c("x", z).expand_as(out)
        return torch.nn.functional.binary_cross_entropy_with_logits(out, target, reduction="none").sum(-1)

    desc = f"f(z) = BCE(x, sigmoid(MLP(z))), MLP {n * k}-{hidden}-{d} fixed random, N={n}, K={k}"
    return Problem("decoder", desc, n, k, False, theta.to(device), f)


# The 70/30 task: codes -> points (fixed decoder); data x1 (70%) and x2 (30%).
SEVENTY_THIRTY: dict[str, Any] = {
    "codebook": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 1.0]],  # x1, x2, their midpoint, a distractor
    "data": [[1.0, 0.0], [0.0, 1.0]],
    "weights": [0.7, 0.3],
    "bandwidth": math.sqrt(2.0),  # sigma = ||x1 - x2||
}


def _mmd_parts():
    cb = torch.tensor(SEVENTY_THIRTY["codebook"], dtype=torch.float64)
    y = torch.tensor(SEVENTY_THIRTY["data"], dtype=torch.float64)
    w = torch.tensor(SEVENTY_THIRTY["weights"], dtype=torch.float64)
    s2 = 2.0 * SEVENTY_THIRTY["bandwidth"] ** 2
    kyy = float((w[:, None] * w[None, :] * torch.exp(-(torch.cdist(y, y) ** 2) / s2)).sum())
    return cb, y, w, s2, kyy


def _seventy_thirty_loss(device) -> Callable[[torch.Tensor], torch.Tensor]:
    cb, y, w, s2, kyy = _mmd_parts()
    c = _Cast(cb=cb.to(device), y=y.to(device), w=w.to(device))

    def f(z):  # z: (M, 2, K) -> pair MMD^2 term (M,)
        x = z @ c("cb", z)  # (M, 2, 2): the two generated points
        k12 = torch.exp(-((x[..., 0, :] - x[..., 1, :]) ** 2).sum(-1) / s2)
        kxy = torch.exp(-((x.unsqueeze(-2) - c("y", z)) ** 2).sum(-1) / s2) @ c("w", z)  # (M, 2)
        return k12 - kxy.sum(-1) + kyy

    return f


def _seventy_thirty(gen: torch.Generator, device) -> Problem:
    k = len(SEVENTY_THIRTY["codebook"])
    theta = (0.5 * torch.randn(k, generator=gen, dtype=torch.float64)).to(device)
    desc = (
        "pair MMD^2 (Gaussian kernel) between generated points and data {x1: 0.7, x2: 0.3}; "
        f"K={k} codes -> fixed points, N=2 independent draws sharing the logits"
    )
    return Problem("70_30", desc, 2, k, True, theta, _seventy_thirty_loss(device))


_BUILDERS = {"quadratic": _quadratic, "decoder": _decoder, "70_30": _seventy_thirty}


def make_problem(name: str, seed: int = 0, device="cpu") -> Problem:
    """Build problem ``name`` (one of :data:`PROBLEMS`) deterministically from ``seed``."""
    if name not in _BUILDERS:
        raise UserError(f"unknown problem {name!r}; expected some of {', '.join(PROBLEMS)}")
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}|{name}".encode()))
    return _BUILDERS[name](gen, torch.device(device))


# --------------------------------------------------------------------------- estimators


def estimator_gradients(
    problem: Problem,
    method: str | MethodChoice,
    tau: float | None,
    batch: int,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``batch`` independent gradient estimates of E[f(z)] with respect to ``problem.params``.

    Math: the parameters are replicated along a batch dimension; sample b only touches copy b,
    so the gradient of sum_b objective_b with respect to the copies is the stack of per-sample
    gradients. The objective is the method's own (:meth:`gumbelkit.MethodSpec.objective`): f at
    its sample, or a score-function method's surrogate over its n samples.

    Args:
        problem: the problem.
        method: a method label (``softmax``, ``gumbel_rao:k=10``, ``reinforce:n=2``, ...) or choice.
        tau: temperature (ignored by methods that do not use it).
        batch: number of independent estimates.
        generator: ``torch.Generator`` on the problem's device.
        dtype: the dtype the estimator runs in.

    Returns:
        (gradients (batch, P), losses (batch,)): P = params.numel(); the losses are f at the
        method's forward value (the mean over its samples for a score-function method).
    """
    choice = _choice(method)
    leaf = problem.params.to(dtype).expand(batch, *problem.params.shape).clone().requires_grad_(True)
    logits = problem.logits(leaf)  # (B, N, K)

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        # codes (..., B, N, K), any leading sample dimensions -> f per code (..., B)
        return problem.f(z.reshape(-1, problem.n, problem.k)).reshape(z.shape[:-2])

    objective, losses = choice.objective(logits, loss_fn, tau, generator=generator)
    (grad,) = torch.autograd.grad(objective.sum(), leaf)
    return grad.reshape(batch, -1), losses.detach()


class _Moments:
    """Streaming mean / covariance trace of vectors, shifted by the first vector.

    Shifting by a sample near the mean avoids the cancellation of sum(x^2) - S mean^2; and when
    every sample is identical (the deterministic softmax) the deviations, hence the variance,
    are exactly zero.
    """

    def __init__(self):
        self.count = 0
        self.shift: Any = None  # set by the first add()
        self.s1: Any = None  # sum of (x - shift), per coordinate, float64
        self.s2: Any = None  # sum of (x - shift)^2, per coordinate
        self.v1 = 0.0  # the same for the scalar losses
        self.v2 = 0.0
        self.vshift: Any = None

    def add(self, x: torch.Tensor, values: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        values = values.detach().to(torch.float64)
        if self.shift is None:
            self.shift = x[0].clone()
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros_like(self.shift)
            self.vshift = float(values[0])
        d = x - self.shift
        self.s1 += d.sum(0)
        self.s2 += (d * d).sum(0)
        dv = values - self.vshift
        self.v1 += float(dv.sum())
        self.v2 += float((dv * dv).sum())
        self.count += x.shape[0]

    def mean(self) -> torch.Tensor:
        return self.shift + self.s1 / self.count

    def variances(self) -> torch.Tensor:
        """Per-coordinate sample variances (unbiased, divisor S - 1)."""
        if self.count < 2:
            return torch.full_like(self.s1, float("nan"))
        # clamp: rounding can leave a tiny negative where the true variance is 0.
        return ((self.s2 - self.s1 * self.s1 / self.count) / (self.count - 1)).clamp_min(0)

    def variance_trace(self) -> float:
        """Trace of the sample covariance (unbiased, divisor S - 1)."""
        return float(self.variances().sum())

    def sq_error(self, truth: torch.Tensor) -> float:
        """(1/S) sum_s ||x_s - truth||^2, from the shifted sums."""
        c = self.shift - truth
        return float((self.s2.sum() + 2 * (c * self.s1).sum() + self.count * (c * c).sum()) / self.count)

    def value_mean_stderr(self) -> tuple[float, float]:
        m = self.vshift + self.v1 / self.count
        var = max(0.0, (self.v2 - self.v1 * self.v1 / self.count) / max(self.count - 1, 1))
        return m, math.sqrt(var / self.count)


def estimate(
    problem: Problem,
    method: str | MethodChoice,
    tau: float | None,
    scale: float,
    *,
    generator: torch.Generator,
    samples: str | int = "auto",
    target_stderr: float = 0.01,
    min_samples: int = 4096,
    max_samples: int = 400_000,
    chunk: int = 4096,
    max_seconds: float | None = None,
) -> dict:
    """Run one estimator S times (in chunks) and return its moments and timing.

    With ``samples="auto"`` a pilot of ``min_samples`` estimates the covariance trace V, then
    S = clamp(1.05 V / (target_stderr * scale)^2, min_samples, max_samples), with V re-estimated
    as samples accumulate: enough for the Monte Carlo error of the mean gradient, sqrt(V / S),
    to be below ``target_stderr`` of ``scale`` (= ||g||).
    ``max_seconds`` (auto only) further caps S at what the pilot's speed allows in that time;
    the standard error actually reached is what the caller reports.

    Returns:
        dict with ``moments`` (:class:`_Moments`), ``samples`` and ``us_per_grad`` (median over
        chunks of chunk time / chunk size, after one untimed warm-up call).
    """
    choice = _choice(method)
    device = problem.params.device
    cell = H.Timer().start()
    mom = _Moments()
    times: list[float] = []
    # Warm-up: the first call pays for lazy initialisation and allocator growth; not timed, not counted.
    estimator_gradients(problem, choice, tau, min(chunk, 64), generator=generator)

    def run(b: int) -> None:
        with H.Timer(device) as timer:
            g, v = estimator_gradients(problem, choice, tau, b, generator=generator)
        times.append(timer.seconds / b)
        mom.add(g, v)

    if samples == "auto":
        while mom.count < min_samples:
            run(min(chunk, min_samples - mom.count))
        # Re-estimate V as samples accumulate (the pilot's estimate is itself noisy, and heavy-tailed
        # estimators under-report it), so the reported standard error ends below the target.
        for _ in range(5):
            v = mom.variance_trace()
            need = 1.05 * v / (target_stderr * scale) ** 2 if scale > 0 else float(max_samples)
            total = int(min(max(math.ceil(need), min_samples), max_samples))
            if max_seconds is not None:
                total = min(total, int(max_seconds / max(statistics.median(times), 1e-9)))
            if mom.count >= total:
                break
            while mom.count < total:
                run(min(chunk, total - mom.count))
    else:
        while mom.count < int(samples):
            run(min(chunk, int(samples) - mom.count))
    return {"moments": mom, "samples": mom.count, "us_per_grad": 1e6 * statistics.median(times), "wall_s": cell.stop()}


# --------------------------------------------------------------------------- cells


def _cell_generator(seed: int, *parts, device) -> torch.Generator:
    """An independent, reproducible stream per (problem, method, tau) cell; resumed runs match.

    Methods are keyed by their tag (``gumbel_rao_k10``; see :mod:`._methods`)."""
    key = "|".join(str(p) for p in (seed, *parts))
    return torch.Generator(device=device).manual_seed(zlib.crc32(key.encode()))


def _norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x))


def _div(a: float, b: float) -> float:
    """a / b, NaN when b is 0 (e.g. a relaxed gradient that underflowed to exactly zero)."""
    return a / b if b != 0 else float("nan")


def _row(
    problem_name: str,
    method: str | MethodChoice,
    tau: float | None,
    truth: torch.Tensor,
    res: dict,
    ref: dict | None = None,
) -> dict:
    choice = _choice(method)
    mom = res["moments"]
    s = res["samples"]
    m = mom.mean()
    g_norm = _norm(truth)
    var = mom.variance_trace()
    mse = mom.sq_error(truth)
    m_norm = _norm(m)
    cosine = float((m * truth).sum()) / (m_norm * g_norm) if m_norm > 0 and g_norm > 0 else float("nan")
    f_evals = choice.loss_evaluations
    row = {
        "problem": problem_name,
        "method": choice.label,
        "tau": tau,
        "rel_bias": _div(_norm(m - truth), g_norm),
        "variance": var,
        "cosine": cosine,
        "mse": mse,
        # Root-mean-square Monte Carlo error of the mean gradient, relative to ||g||: an unbiased
        # estimator shows rel_bias of about this size.
        "stderr_bias": _div(math.sqrt(var / s), g_norm),
        "us_per_grad": res["us_per_grad"],
        "samples": s,
        "f_evals": f_evals,
        "rel_variance": _div(var, g_norm**2),
        "rel_mse": _div(mse, g_norm**2),
        # Variance per unit of work: averaging m independent estimates divides the variance by m,
        # so rel_variance x f_evals compares estimators at an equal number of f evaluations.
        "rel_variance_x_evals": _div(var, g_norm**2) * f_evals,
        "estimator": choice.name,
        "options": choice.options,
        "rel_bias_relaxed": None,
        "stderr_bias_relaxed": None,
        "wall_s": res["wall_s"],
    }
    if ref is not None and choice.spec.relaxed:
        g_rel = ref["grad"]
        r_norm = _norm(g_rel)
        row["rel_bias_relaxed"] = _div(_norm(m - g_rel), r_norm)
        row["stderr_bias_relaxed"] = _div(math.sqrt(var / s + ref["variance"] / ref["samples"]), r_norm)
    return row


BUDGETS = (1, 10, 100, 1000)


def equal_work_errors(rows: list, budgets=BUDGETS) -> list:
    """Relative error of each method at its best tau when E evaluations of f are averaged.

    Averaging E / f_evals independent estimates keeps the bias and divides the variance:
    err(E) = rel_bias^2 + rel_variance * f_evals / E (the squared relative error of the averaged
    gradient). The measured rel_bias^2 carries Monte Carlo noise of about stderr_bias^2, which is
    subtracted. A larger E stands for more averaging (bigger batches, or more steps at a small
    learning rate); the best tau moving down as E grows is the case for annealing.
    """
    out = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        for label in dict.fromkeys(r["method"] for r in rows if r["problem"] == problem):
            cand = [r for r in rows if r["problem"] == problem and r["method"] == label]
            for e in budgets:

                def err(r, e=e):
                    bias2 = max(r["rel_bias"] ** 2 - r["stderr_bias"] ** 2, 0.0)
                    return bias2 + r["rel_variance"] * r["f_evals"] / e

                best = min(cand, key=err)
                out.append(
                    {
                        "problem": problem,
                        "method": label,
                        "budget": e,
                        "tau": best["tau"],
                        "rel_error": math.sqrt(err(best)),
                    }
                )
    return out


_ROW_FIELDS = (
    "rel_bias",
    "variance",
    "cosine",
    "mse",
    "stderr_bias",
    "us_per_grad",
    "samples",
    "f_evals",
    "rel_variance",
    "rel_mse",
    "rel_variance_x_evals",
    "wall_s",
)
_REF_FIELDS = ("variance", "samples", "value", "value_stderr", "rel_dist_true", "stderr_rel_dist", "wall_s")
_DEMO_FIELDS = ("mmd2_hard", "final_loss", "wall_s")
_CKPT_HINT = "delete it or pass --fresh to start over"


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_checkpoint(data: dict) -> str | None:
    """What is wrong with the layout of a (checksum-verified) checkpoint, or None."""
    if not isinstance(data.get("key"), str):
        return "has no configuration key"
    for part in ("cells", "refs"):
        if not isinstance(data.get(part), dict):
            return f"has no {part!r} table"
    for cid, row in data["cells"].items():
        if not isinstance(row, dict) or not all(_num(row.get(f)) for f in _ROW_FIELDS):
            return f"cell {cid!r} lacks a number it needs"
        if not all(isinstance(row.get(f), str) for f in ("problem", "method", "estimator")) or not (
            row.get("tau") is None or _num(row.get("tau"))
        ):
            return f"cell {cid!r} has no problem, method or tau"
        if not all(row.get(f) is None or _num(row.get(f)) for f in ("rel_bias_relaxed", "stderr_bias_relaxed")):
            return f"cell {cid!r} has a relaxed bias that is not a number"
        if not isinstance(row.get("options"), dict):
            return f"cell {cid!r} has no options"
    for cid, ref in data["refs"].items():
        if not isinstance(ref, dict) or not all(_num(ref.get(f)) for f in _REF_FIELDS) or not _num(ref.get("tau")):
            return f"reference {cid!r} lacks a number it needs"
        if (
            not isinstance(ref.get("problem"), str)
            or not isinstance(ref.get("grad"), list)
            or not all(_num(v) for v in ref["grad"])
        ):
            return f"reference {cid!r} has no gradient"
    demo = data.get("demo")
    if demo is not None:
        if not isinstance(demo, dict) or not isinstance(demo.get("runs"), dict):
            return "has a demo entry without runs"
        for rid, run in demo["runs"].items():
            if not isinstance(run, dict) or not all(_num(run.get(f)) for f in _DEMO_FIELDS):
                return f"demo run {rid!r} lacks a number it needs"
            for view in ("as_trained", "hard"):
                if not isinstance(run.get(view), dict) or not all(
                    _num(run[view].get(k)) for k in ("x1", "x2", "other")
                ):
                    return f"demo run {rid!r} has no {view} fractions"
            for f in ("code_probs", "mean_output", "proj_hist"):
                if not isinstance(run.get(f), list) or not all(_num(v) for v in run[f]):
                    return f"demo run {rid!r} has no {f} list"
    return None


def _config_key(cfg: GradientsConfig) -> str:
    """The fields that change the numbers, hashed: a checkpoint is reused only when they match."""
    return hashlib.sha256(json.dumps(cfg.fingerprint(), sort_keys=True).encode()).hexdigest()[:16]


def _load_checkpoint(path: Path, key: str, fresh: bool) -> dict:
    """The finished cells of an earlier run of the same configuration (empty for another one).

    The file is verified first (SHA-256, then layout): a damaged or unchecksummed checkpoint is
    refused with one line (``--fresh`` ignores it), never silently reused.
    """

    def layout(data: dict) -> str | None:
        data.setdefault("demo", None)
        why = _check_checkpoint(data)
        return f"it {why}" if why else None

    data = H.load_checked_table(path, use=not fresh, matches=lambda d: d["key"] == key, layout=layout, hint=_CKPT_HINT)
    return data if data is not None else {"key": key, "cells": {}, "refs": {}, "demo": None}


# --------------------------------------------------------------------------- the lab


@dataclass
class _Lab:
    """What one run of the lab produces, and the checkpoint it keeps up to date."""

    ckpt_path: Path
    ckpt: dict
    problems: dict = dataclasses.field(default_factory=dict)
    rows: list = dataclasses.field(default_factory=list)
    refs: list = dataclasses.field(default_factory=list)
    demo: dict | None = None
    fresh_cells: int = 0

    def save(self) -> None:
        self.fresh_cells += 1
        write_checked_json(self.ckpt_path, self.ckpt)


def _estimate_kwargs(cfg: GradientsConfig) -> dict:
    return {
        "samples": cfg.samples,
        "target_stderr": cfg.target_stderr,
        "min_samples": cfg.min_samples,
        "max_samples": cfg.max_samples,
        "chunk": cfg.chunk,
    }


def _budget(cfg: GradientsConfig, choice: MethodChoice) -> float | None:
    # A score-function estimator is unbiased: it always runs to the stderr target (the issue's
    # definition of enough samples); the other cells are capped in time, and report the standard
    # error they reach.
    return None if choice.kind == "score_function" else cfg.cell_seconds


def _taus_of(cfg: GradientsConfig, choice: MethodChoice) -> list:
    return cfg.taus if choice.uses_tau else [None]


def _needs_reference(cfg: GradientsConfig) -> bool:
    return any(c.spec.relaxed for c in cfg.method_choices)


def _problem_info(problem: Problem, value: torch.Tensor, truth: torch.Tensor) -> dict:
    return {
        "description": problem.description,
        "n": problem.n,
        "k": problem.k,
        "tied": problem.tied,
        "outcomes": problem.outcomes,
        "params": problem.params.tolist(),
        "value": float(value),
        "grad": truth.tolist(),
        "grad_norm": _norm(truth),
    }


def _relaxed_references(cfg: GradientsConfig, lab: _Lab, problem: Problem, truth: torch.Tensor, device, bar) -> dict:
    """The gradient of the relaxed objective at each tau: an independent run of the relaxation itself."""
    ref_by_tau = {}
    g_norm = _norm(truth)
    reference = relaxation_choice()
    for tau in cfg.taus:
        cid = f"{problem.name}|ref|{tau!r}"
        if cid not in lab.ckpt["refs"]:
            gen = _cell_generator(cfg.seed, problem.name, "relaxed_reference", tau, device=device)
            res = estimate(
                problem,
                reference,
                tau,
                g_norm,
                generator=gen,
                max_seconds=_budget(cfg, reference),
                **_estimate_kwargs(cfg),
            )
            mom = res["moments"]
            g_rel = mom.mean()
            v_mean, v_se = mom.value_mean_stderr()
            var = mom.variance_trace()
            lab.ckpt["refs"][cid] = {
                "problem": problem.name,
                "tau": tau,
                "grad": g_rel.tolist(),
                "variance": var,
                "samples": res["samples"],
                "value": v_mean,
                "value_stderr": v_se,
                "rel_dist_true": _norm(g_rel - truth) / g_norm,
                "stderr_rel_dist": math.sqrt(var / res["samples"]) / g_norm,
                "wall_s": res["wall_s"],
            }
            lab.save()
        entry = lab.ckpt["refs"][cid]
        if len(entry["grad"]) != truth.numel():
            raise UserError(
                f"checkpoint {lab.ckpt_path} is unusable: reference {cid!r} has a gradient of "
                f"{len(entry['grad'])} numbers, expected {truth.numel()}; {_CKPT_HINT}"
            )
        ref_by_tau[tau] = {**entry, "grad": torch.tensor(entry["grad"], dtype=torch.float64, device=device)}
        lab.refs.append({k: v for k, v in entry.items() if k != "grad"})
        bar.update(1)
    return ref_by_tau


def _cells(
    cfg: GradientsConfig, lab: _Lab, problem: Problem, truth: torch.Tensor, ref_by_tau: dict, device, bar
) -> None:
    """One cell per (method, tau): its estimates against the exact gradient (from the checkpoint if done)."""
    g_norm = _norm(truth)
    for choice in cfg.method_choices:
        for tau in _taus_of(cfg, choice):
            cid = f"{problem.name}|{choice.label}|{tau!r}"
            if cid not in lab.ckpt["cells"]:
                gen = _cell_generator(cfg.seed, problem.name, choice.tag, tau, device=device)
                res = estimate(
                    problem,
                    choice,
                    tau,
                    g_norm,
                    generator=gen,
                    max_seconds=_budget(cfg, choice),
                    **_estimate_kwargs(cfg),
                )
                lab.ckpt["cells"][cid] = _row(problem.name, choice, tau, truth, res, ref_by_tau.get(tau))
                lab.save()
            lab.rows.append(lab.ckpt["cells"][cid])
            bar.update(1)


def _measure(cfg: GradientsConfig, lab: _Lab, device, bar) -> None:
    """Every problem: the exact gradient, the relaxed references (when a method needs them), the cells."""
    for pname in cfg.problems:
        problem = make_problem(pname, cfg.seed, device)
        value, truth64 = exact_gradient(problem.params, problem.logits, problem.f)
        truth = truth64.reshape(-1)
        lab.problems[pname] = _problem_info(problem, value, truth)
        ref_by_tau = _relaxed_references(cfg, lab, problem, truth, device, bar) if _needs_reference(cfg) else {}
        _cells(cfg, lab, problem, truth, ref_by_tau, device, bar)


def _run_demo(cfg: GradientsConfig, lab: _Lab, device, bar) -> None:
    """The 70/30 demonstration: every demo method and seed trained (from the checkpoint if done)."""
    if lab.ckpt["demo"] is None:
        lab.ckpt["demo"] = {"runs": {}}
    runs = lab.ckpt["demo"]["runs"]
    for choice in cfg.demo_choices:
        for s in range(cfg.demo_seeds):
            rid = f"{choice.label}|{s}"
            if rid not in runs:
                with H.Timer() as timer:
                    runs[rid] = _demo_run(choice, cfg.demo_tau, cfg.seed + s, cfg.demo_steps, cfg.demo_batch, device)
                runs[rid]["wall_s"] = timer.seconds
                lab.save()
            bar.update(1)
    by_method = {c.label: [runs[f"{c.label}|{s}"] for s in range(cfg.demo_seeds)] for c in cfg.demo_choices}
    lab.demo = {
        "tau": cfg.demo_tau,
        "steps": cfg.demo_steps,
        "batch": cfg.demo_batch,
        "seeds": cfg.demo_seeds,
        "setup": SEVENTY_THIRTY,
        "summary": _summarise_demo(by_method),
    }


def _total_units(cfg: GradientsConfig) -> int:
    n_cells = sum(len(_taus_of(cfg, c)) for c in cfg.method_choices) + (len(cfg.taus) if _needs_reference(cfg) else 0)
    return n_cells * len(cfg.problems) + (len(cfg.demo_choices) * cfg.demo_seeds if cfg.demo else 0)


def main(config: dict | GradientsConfig) -> dict:
    """Run the lab; write results.json and results.md, then the plots; return the results dict.

    Phases: check the options and the optional packages, prepare the folders and the checkpoint,
    measure every problem, run the demonstration, assemble and write.
    """
    cfg = validate_config(config)
    H.check_requirements(requirements(cfg))
    plots = H.plots_plan(cfg.plots)
    wall = H.Timer().start()
    device = resolve_device(cfg.device)
    out = H.prepare_out_dir(cfg.out, "--out")
    fig_dir = H.prepare_out_dir(cfg.fig_dir, "--fig-dir") if cfg.fig_dir is not None and plots[0] else out
    lab = _Lab(out / "checkpoint.json", _load_checkpoint(out / "checkpoint.json", _config_key(cfg), cfg.fresh))
    bar = H.progress(_total_units(cfg), "gradients", enabled=cfg.progress)
    try:
        with H.compute_settings(cfg.threads):
            _measure(cfg, lab, device, bar)
            if cfg.demo:
                _run_demo(cfg, lab, device, bar)
    finally:
        bar.close()
    results = _results(cfg, lab, device, wall.stop())
    figures = _write(cfg, out, fig_dir, results, plots)
    print(
        f"gumbelkit gradients: {len(lab.rows)} rows in {results['runtime_s']:.1f} s; wrote {out / 'results.json'}, "
        f"{out / 'results.md'} and {len(figures)} plot(s) in {fig_dir}"
    )
    return results


def _results(cfg: GradientsConfig, lab: _Lab, device, runtime_s: float) -> dict:
    """The results dict (every number; the plots are added by :func:`_write`)."""
    rows, refs, demo = lab.rows, lab.refs, lab.demo
    demo_runs = lab.ckpt["demo"]["runs"] if demo is not None else {}
    return {
        "rows": rows,
        "problems": lab.problems,
        "relaxed_reference": refs,
        "equal_work": equal_work_errors(rows),
        "demo": demo,
        "figures": [],
        "config": {k: v for k, v in cfg.to_dict().items() if k != "progress"},
        "environment": environment_info(device) | {"threads": cfg.threads},
        "runtime_s": runtime_s,
        # Sum of the measured work, including cells taken from a checkpoint of an earlier process.
        "compute_s": sum(r.get("wall_s", 0.0) for r in rows)
        + sum(r.get("wall_s", 0.0) for r in refs)
        + sum(r.get("wall_s", 0.0) for r in demo_runs.values()),
        "cells_computed": lab.fresh_cells,
        "cells_resumed": len(rows) + len(refs) + len(demo_runs) - lab.fresh_cells,
        "definitions": {
            "rel_bias": "||mean of S estimates - g|| / ||g||, g the exact gradient by enumeration",
            "stderr_bias": "sqrt(tr Cov / S) / ||g||: Monte Carlo error of the mean; an unbiased estimator "
            "shows rel_bias of about this size",
            "variance": "trace of the covariance of one gradient estimate",
            "mse": "mean over the S estimates of ||estimate - g||^2",
            "cosine": "cosine similarity of the mean estimate with g",
            "us_per_grad": "microseconds per gradient estimate, median over batches of `chunk` estimates "
            "(sampling + f + backward), measured in this process after a warm-up",
            "f_evals": "evaluations of f per gradient estimate (the number of samples of a score-function method)",
            "rel_bias_relaxed": "||mean estimate - g_relaxed|| / ||g_relaxed||, g_relaxed the gradient of "
            "E_g[f(softmax((theta+g)/tau))] from an independent Gumbel-Softmax run "
            "(relaxed_reference); stderr combines both runs",
        },
    }


def _write(cfg: GradientsConfig, out: Path, fig_dir: Path, results: dict, plots: tuple[bool, str | None]) -> list:
    """results.json and results.md first, then the plots (their paths recorded under ``figures``)."""
    draw = []
    for pname in cfg.problems:
        prow = [r for r in results["rows"] if r["problem"] == pname]
        info = results["problems"][pname]
        draw.append(
            (
                f"gradients_{pname}.png",
                functools.partial(_plot_problem, prow, pname, info["description"], info["grad_norm"]),
            )
        )
    if results["demo"] is not None:
        draw.append(
            ("gradients_70_30_demo.png", functools.partial(_plot_demo, results["demo"]["summary"], cfg.demo_tau))
        )
    return H.write_results(
        out,
        results,
        command="gradients",
        plan=plots,
        markdown=_markdown,
        plots=draw,
        plot_dir=fig_dir,
        key="figures",
        full_paths=True,
    )


# --------------------------------------------------------------------------- 70/30 demonstration


def _classify(x: torch.Tensor, data: torch.Tensor, radius: float) -> torch.Tensor:
    """0 near x1, 1 near x2, 2 elsewhere (a blend or a distractor)."""
    d = torch.cdist(x, data)
    near, which = d.min(-1)
    return torch.where(near < radius, which, torch.full_like(which, 2))


def _demo_run(
    method: str | MethodChoice, tau: float, seed: int, steps: int, batch: int, device, n_eval: int = 20_000
) -> dict:
    """Train the logits of the 70/30 generator with ``method`` (a sample method); report the generated outputs."""
    choice = _choice(method, _SAMPLE_KIND)
    cb, y, w, s2, kyy = _mmd_parts()
    cb, y, w = (t.to(device=device, dtype=torch.float32) for t in (cb, y, w))
    k = cb.shape[0]
    gen = _cell_generator(seed, "demo", choice.tag, tau, device=device)
    theta = torch.zeros(k, device=device, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.1)
    # Cosine decay to zero: the last steps average out the sampling noise of the batch loss.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    off_diag = ~torch.eye(batch, dtype=torch.bool, device=device)
    for _ in range(steps):
        yb = gumbelkit.sample(theta.expand(batch, k), choice.name, tau, generator=gen, **choice.options)
        x = yb @ cb
        kxx = torch.exp(-(torch.cdist(x, x) ** 2) / s2)
        # Unbiased U-statistic of MMD^2: the mean over pairs i != j of the lab's pair loss f.
        loss = kxx[off_diag].mean() - 2 * (torch.exp(-(torch.cdist(x, y) ** 2) / s2) @ w).mean() + kyy
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        yb = gumbelkit.sample(theta.expand(n_eval, k), choice.name, tau, generator=gen, **choice.options)
        x = yb @ cb
        radius = 0.1 * float(torch.linalg.vector_norm(y[0] - y[1]))
        cls = _classify(x, y, radius)
        frac = [float((cls == c).float().mean()) for c in range(3)]
        d = y[1] - y[0]
        proj = ((x - y[0]) @ d) / float(d @ d)  # 0 at x1, 1 at x2
        hist = torch.histc(proj, bins=44, min=-0.05, max=1.05) / n_eval
        p = torch.softmax(theta.detach().double(), 0)
    # Deploying the trained logits as a discrete generator: exact code probabilities and exact MMD^2.
    f = _seventy_thirty_loss(device)
    mmd_hard = float(exact_expectation(theta.detach().double().expand(2, k), f))
    return {
        "as_trained": {"x1": frac[0], "x2": frac[1], "other": frac[2]},
        "hard": {"x1": float(p[0]), "x2": float(p[1]), "other": float(p[2:].sum())},
        "code_probs": p.tolist(),
        "mean_output": x.mean(0).tolist(),
        "proj_hist": hist.tolist(),
        "mmd2_hard": mmd_hard,
        "final_loss": float(loss.detach()),
    }


def _summarise_demo(runs: dict) -> dict:
    out = {}
    for method, seeds in runs.items():
        entry: dict[str, Any] = {"seeds": len(seeds)}
        for view in ("as_trained", "hard"):
            entry[view] = {}
            for key in ("x1", "x2", "other"):
                mean, std = mean_std([r[view][key] for r in seeds])
                entry[view][key] = {"mean": mean, "std": std}
        entry["mmd2_hard"] = dict(zip(("mean", "std"), mean_std([r["mmd2_hard"] for r in seeds])))
        entry["mean_output"] = seeds[0]["mean_output"]
        entry["proj_hist"] = [statistics.fmean(v) for v in zip(*(r["proj_hist"] for r in seeds))]
        out[method] = entry
    return out


# --------------------------------------------------------------------------- outputs


# (colour, marker) by registration order: the built-in methods keep the colours of the published
# figures (softmax grey, gumbel_softmax blue, st_gumbel orange, st brown, gumbel_rao green, reinmax
# purple, reinforce red); later registrations take the next ones.
_PALETTE = (
    ("tab:gray", "o"),
    ("tab:blue", "s"),
    ("tab:orange", "^"),
    ("tab:brown", "v"),
    ("tab:green", "D"),
    ("tab:purple", "P"),
    ("tab:red", None),
    ("tab:olive", "X"),
    ("tab:cyan", "<"),
    ("tab:pink", ">"),
    ("black", "x"),
)


def _style(name: str) -> tuple[str, str | None]:
    order = list(SPECS)
    return _PALETTE[min(order.index(name), len(_PALETTE) - 1)] if name in order else _PALETTE[-1]


def _plot_problem(rows: list, name: str, description: str, grad_norm: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    panels = (
        ("rel_bias", "relative bias  ‖E[ĝ] − g‖ / ‖g‖  (± s.e.)"),
        ("rel_variance", "relative variance  tr Cov[ĝ] / ‖g‖²"),
        ("rel_mse", "relative MSE  E‖ĝ − g‖² / ‖g‖²"),
    )
    labels = list(dict.fromkeys(r["method"] for r in rows))
    ls_cycle = ["-", "--", ":", "-."]
    seen_base: dict[str, int] = {}
    for label in labels:
        choice = _choice(label)
        color, marker = _style(choice.name)
        ls = ls_cycle[seen_base.get(choice.name, 0) % len(ls_cycle)]
        seen_base[choice.name] = seen_base.get(choice.name, 0) + 1
        sel = sorted((r for r in rows if r["method"] == label), key=lambda r: (r["tau"] is None, r["tau"] or 0))
        for ax, (key, _) in zip(axes, panels):
            vals = [r[key] for r in sel]
            if key == "rel_variance" and max(vals) == 0.0:
                continue  # the deterministic softmax: exactly zero, not drawable on a log axis
            vals = [max(v, 1e-12) for v in vals]
            if not choice.uses_tau:  # one value for every tau: a horizontal line
                ax.axhline(vals[0], color=color, ls=ls, lw=1.4, label=f"{label} ({choice.loss_evaluations} f-evals)")
                continue
            taus = [r["tau"] for r in sel]
            if key == "rel_bias":
                ax.errorbar(
                    taus,
                    vals,
                    yerr=[r["stderr_bias"] for r in sel],
                    color=color,
                    marker=marker,
                    ls=ls,
                    ms=4,
                    lw=1.3,
                    capsize=2,
                    label=label,
                )
            else:
                ax.plot(taus, vals, color=color, marker=marker, ls=ls, ms=4, lw=1.3, label=label)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.autoscale_view()
    # A score-function estimator is unbiased: its measured bias is Monte Carlo noise. Shade up to 2 standard errors.
    se_sf = [r["stderr_bias"] for r in rows if _choice(r["method"]).kind == "score_function"]
    if se_sf:
        lo, hi = axes[0].get_ylim()
        lo = min(lo, 0.5 * min(r["rel_bias"] for r in rows if r["rel_bias"] > 0))
        axes[0].axhspan(lo, 2 * max(se_sf), color="tab:red", alpha=0.08, lw=0)
        axes[0].text(
            0.98,
            0.03,
            "score-function (unbiased): 2 s.e. band",
            transform=axes[0].transAxes,
            ha="right",
            fontsize=7,
            color="tab:red",
        )
        axes[0].set_ylim(lo, hi)
    for ax, (_, title) in zip(axes, panels):
        ax.set_xlabel("temperature tau")
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    axes[1].text(
        0.02,
        0.02,
        "deterministic methods: variance exactly 0 (not drawn)",
        transform=axes[1].transAxes,
        fontsize=7,
        color="gray",
    )
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"{name}: {description}  (‖g‖ = {grad_norm:.3g}; methods without tau: horizontal lines)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _plot_demo(summary: dict, tau: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1.0, 1.0, 1.2]})
    cats = (("x1", "near x1", "tab:blue"), ("x2", "near x2", "tab:orange"), ("other", "blend / other", "tab:gray"))
    width = 0.26
    for ax, view, title in (
        (axes[0], "as_trained", "outputs as trained (the method's own forward)"),
        (axes[1], "hard", "outputs of the trained logits sampled discretely"),
    ):
        for j, (key, name, color) in enumerate(cats):
            xs = [i + (j - 1) * width for i in range(len(methods))]
            ax.bar(
                xs,
                [summary[m][view][key]["mean"] for m in methods],
                width,
                yerr=[summary[m][view][key]["std"] for m in methods],
                color=color,
                label=name,
                capsize=2,
            )
        ax.axhline(0.7, color="tab:blue", ls="--", lw=0.8)
        ax.axhline(0.3, color="tab:orange", ls="--", lw=0.8)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("fraction of generated outputs")
    axes[0].legend(fontsize=7, loc="upper right")
    from matplotlib.colors import LogNorm

    grid = [[max(v, 1e-4) for v in summary[m]["proj_hist"]] for m in methods]
    im = axes[2].imshow(
        grid,
        aspect="auto",
        cmap="viridis",
        norm=LogNorm(vmin=1e-4, vmax=1.0),
        extent=(-0.05, 1.05, len(methods) - 0.5, -0.5),
        interpolation="nearest",
    )
    axes[2].set_yticks(range(len(methods)))
    axes[2].set_yticklabels(methods, fontsize=8)
    axes[2].set_xlabel("output projected on the segment x1 (0) → x2 (1)")
    axes[2].set_title("where the as-trained outputs land (data: 0.7 at 0, 0.3 at 1)", fontsize=9)
    fig.colorbar(im, ax=axes[2], label="fraction", fraction=0.05)
    fig.suptitle(f"70/30 generator trained with each estimator (tau = {tau}); mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _fmt_tau(t):
    return "-" if t is None else f"{t:g}"


def _markdown(results: dict) -> str:
    lines = ["# Gradient estimator lab\n\n"]
    cfg = results["config"]
    lines.append(
        f"Exact gradients by enumeration; S estimates per cell (auto: standard error <= {cfg['target_stderr']:.0%} "
        f"of ‖g‖ within S <= {cfg['max_samples']} and, except score-function methods, {cfg['cell_seconds']:g} s per cell); times "
        f"amortised over batches of {cfg['chunk']} on "
        f"{results['environment']['device']} with {cfg['threads']} thread(s). rel_bias_relaxed: bias with respect "
        "to the gradient of the Gumbel-Softmax objective E_g[f(softmax((theta+g)/tau))] at the same tau.\n"
    )
    for name, info in results["problems"].items():
        lines.append(
            f"\n## {name}\n\n{info['description']}; {info['outcomes']} outcomes; E[f] = {info['value']:.6g}, "
            f"‖g‖ = {info['grad_norm']:.4g}.\n"
        )
        rel = [r for r in results["relaxed_reference"] if r["problem"] == name]
        if rel:
            lines.append(
                "\nRelaxed objective E_g[f(softmax((theta+g)/tau))] (Monte Carlo, ± standard error) and "
                "its gradient's distance from the true gradient:\n\n"
            )
            lines.append(
                markdown_table(
                    ["tau", "relaxed E[f]", "± se", "true E[f]", "‖g_rel − g‖ / ‖g‖", "± se", "S"],
                    [
                        [
                            _fmt_tau(r["tau"]),
                            r["value"],
                            r["value_stderr"],
                            info["value"],
                            r["rel_dist_true"],
                            r["stderr_rel_dist"],
                            r["samples"],
                        ]
                        for r in rel
                    ],
                )
            )
        rows = [r for r in results["rows"] if r["problem"] == name]
        lines.append("\n")
        lines.append(
            markdown_table(
                [
                    "method",
                    "tau",
                    "rel bias",
                    "± se",
                    "rel variance",
                    "cosine",
                    "rel MSE",
                    "rel bias vs relaxed",
                    "± se",
                    "f-evals",
                    "µs/grad",
                    "S",
                ],
                [
                    [
                        r["method"],
                        _fmt_tau(r["tau"]),
                        r["rel_bias"],
                        r["stderr_bias"],
                        r["rel_variance"],
                        r["cosine"],
                        r["rel_mse"],
                        "-" if r["rel_bias_relaxed"] is None else r["rel_bias_relaxed"],
                        "-" if r["stderr_bias_relaxed"] is None else r["stderr_bias_relaxed"],
                        r["f_evals"],
                        r["us_per_grad"],
                        r["samples"],
                    ]
                    for r in rows
                ],
            )
        )
    eq = results.get("equal_work", [])
    if eq:
        lines.append(
            "\n## Equal work: relative error of the averaged gradient at each method's best tau\n\n"
            "sqrt(bias² + variance × f-evals / E) / ‖g‖ when E evaluations of f are averaged "
            "(best tau in brackets).\n"
        )
        budgets = sorted({r["budget"] for r in eq})
        for name in results["problems"]:
            sel = [r for r in eq if r["problem"] == name]
            table = []
            for label in dict.fromkeys(r["method"] for r in sel):
                cells = {r["budget"]: r for r in sel if r["method"] == label}
                table.append([label] + [f"{cells[b]['rel_error']:.3g} ({_fmt_tau(cells[b]['tau'])})" for b in budgets])
            lines.append(f"\n{name}:\n\n")
            lines.append(markdown_table(["method"] + [f"E = {b}" for b in budgets], table))
    demo = results.get("demo")
    if demo:
        lines.append(
            f"\n## 70/30 training demonstration (tau = {demo['tau']}, {demo['steps']} steps, "
            f"batch {demo['batch']}, {demo['seeds']} seeds)\n\n"
        )
        table = []
        for m, e in demo["summary"].items():
            a, h = e["as_trained"], e["hard"]
            table.append(
                [
                    m,
                    a["x1"]["mean"],
                    a["x2"]["mean"],
                    a["other"]["mean"],
                    h["x1"]["mean"],
                    h["x2"]["mean"],
                    h["other"]["mean"],
                    e["mmd2_hard"]["mean"],
                    str([round(v, 3) for v in e["mean_output"]]),
                ]
            )
        lines.append(
            markdown_table(
                [
                    "method",
                    "as trained: x1",
                    "x2",
                    "other",
                    "discrete: x1",
                    "x2",
                    "other",
                    "MMD² (discrete)",
                    "mean output",
                ],
                table,
            )
        )
    lines.append(
        f"\nRun time: {results['runtime_s']:.1f} s in this process "
        f"({results['cells_computed']} cells computed, "
        f"{results['cells_resumed']} taken from the checkpoint; measured work in all cells: "
        f"{results['compute_s']:.1f} s).\n"
    )
    return "".join(lines)


if __name__ == "__main__":  # python -m gumbelkit.experiments.gradients ... == gumbelkit gradients ...
    from gumbelkit.cli import main as _cli_main

    sys.exit(_cli_main(["gradients", *sys.argv[1:]]))
