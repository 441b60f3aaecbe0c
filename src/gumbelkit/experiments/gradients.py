"""Gradient estimator lab: exact bias and variance of every estimator, and "when do I need Gumbel noise?".

Every problem is small enough to enumerate all K^N outcomes, so the true gradient of
E_{z ~ Cat(softmax theta)}[f(z)] is known exactly (:mod:`._enumerate`). Each estimator is run S
times in one vectorised batch (theta replicated along a batch dimension; the samples are
independent given theta, so one backward of the summed loss gives S per-sample gradients), and
its mean, covariance and error against the truth are reported with standard errors.

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
unchecksummed checkpoint is refused (``--fresh`` starts over). Entry points for :mod:`gumbelkit.cli`: ``add_arguments``,
``config_from_args``, ``main``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import statistics
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import gumbelkit

from ._common import (
    MAX_THREADS,
    MIN_TAU,
    UserError,
    atomic_write_json,
    atomic_write_text,
    check_path,
    environment_info,
    markdown_table,
    mean_std,
    parse_list,
    prepare_out_dir,
    progress,
    read_checked_json,
    resolve_device,
    save_figure,
    write_checked_json,
)
from ._enumerate import exact_expectation, exact_gradient

__all__ = [
    "DEFAULTS",
    "DEFAULT_METHODS",
    "PROBLEMS",
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
DEFAULT_METHODS = (
    "softmax",
    "gumbel_softmax",
    "st",
    "st_gumbel",
    "gumbel_rao_k10",
    "gumbel_rao_k100",
    "reinmax",
    "reinforce_n2",
    "reinforce_n8",
)
# Methods whose backward is the gradient of the Gumbel-Softmax relaxation at the same tau, so
# their bias with respect to the relaxed objective E_g[f(softmax((theta + g)/tau))] is meaningful.
RELAXED_FAMILY = ("gumbel_softmax", "st_gumbel", "gumbel_rao")
DEMO_METHODS = ("softmax", "st", "gumbel_softmax", "st_gumbel", "gumbel_rao", "reinmax")

DEFAULTS = {
    "out": "runs/gradients",
    "fig_dir": None,  # None: the out folder
    "problems": list(PROBLEMS),
    "methods": list(DEFAULT_METHODS),
    "taus": [0.1, 0.25, 0.5, 1.0, 2.0],
    "samples": "auto",
    "target_stderr": 0.01,
    "min_samples": 4096,
    "max_samples": 400_000,
    "chunk": 4096,
    "cell_seconds": 1.0,
    "seed": 0,
    "device": "auto",
    "threads": 1,
    "demo": True,
    "demo_methods": list(DEMO_METHODS),
    "demo_tau": 0.5,
    "demo_steps": 600,
    "demo_batch": 128,
    "demo_seeds": 3,
    "fresh": False,
    "plots": True,
    "progress": None,
}

# Keys of the config that change the numbers (a checkpoint is reused only when they match).
_RESULT_KEYS = (
    "problems", "methods", "taus", "samples", "target_stderr", "min_samples", "max_samples",
    "chunk", "cell_seconds", "seed", "device",
    "demo", "demo_methods", "demo_tau", "demo_steps", "demo_batch", "demo_seeds",
)


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
SEVENTY_THIRTY = {
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
    kyy = float((w[:, None] * w[None, :] * torch.exp(-torch.cdist(y, y) ** 2 / s2)).sum())
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


def _parse_method(label: str) -> tuple[str, dict]:
    """'gumbel_rao_k10' -> ('gumbel_rao', {'k': 10}); 'reinforce_n2' -> ('reinforce', {'n': 2})."""
    m = re.fullmatch(r"gumbel_rao_k(\d+)", label)
    if m:
        return "gumbel_rao", {"k": int(m.group(1))}
    m = re.fullmatch(r"reinforce_n(\d+)", label)
    if m:
        return "reinforce", {"n": int(m.group(1))}
    if label in ("softmax", "gumbel_softmax", "st", "st_gumbel", "reinmax"):
        return label, {}
    raise UserError(
        f"unknown method {label!r}; expected softmax, gumbel_softmax, st, st_gumbel, reinmax, "
        "gumbel_rao_k<k> (k >= 1) or reinforce_n<n> (n >= 2)"
    )


#: Largest k of gumbel_rao_k<k> and n of reinforce_n<n> (each multiplies the memory of a chunk).
MAX_DRAWS = 1000


def _check_method(label: str) -> str:
    base, opt = _parse_method(label)
    if base == "gumbel_rao" and not 1 <= opt["k"] <= MAX_DRAWS:
        raise UserError(f"expected gumbel_rao_k<k> with 1 <= k <= {MAX_DRAWS}, got {label!r}")
    if base == "reinforce" and opt["n"] < 2:
        raise UserError(f"expected reinforce_n<n> with n >= 2 (leave-one-out baseline), got {label!r}")
    if base == "reinforce" and opt["n"] > MAX_DRAWS:
        raise UserError(f"expected reinforce_n<n> with n <= {MAX_DRAWS}, got {label!r}")
    return label


def uses_tau(label: str) -> bool:
    return _parse_method(label)[0] != "reinforce"


def f_evals(label: str) -> int:
    """Evaluations of f (forward passes of the downstream model) one gradient estimate costs."""
    base, opt = _parse_method(label)
    return opt["n"] if base == "reinforce" else 1


def estimator_gradients(
    problem: Problem, label: str, tau: float | None, batch: int, *, generator: torch.Generator, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``batch`` independent gradient estimates of E[f(z)] with respect to ``problem.params``.

    Math: the parameters are replicated along a batch dimension; sample b only touches copy b,
    so the gradient of sum_b loss_b with respect to the copies is the stack of per-sample
    gradients. REINFORCE (``reinforce_n<n>``) draws n codes per estimate and uses
    :func:`gumbelkit.reinforce_surrogate` with the leave-one-out baseline.

    Args:
        problem: the problem.
        label: a method label (``softmax``, ``st_gumbel``, ``gumbel_rao_k10``, ``reinforce_n2``, ...).
        tau: temperature (ignored by REINFORCE).
        batch: number of independent estimates.
        generator: ``torch.Generator`` on the problem's device.

    Returns:
        (gradients (batch, P), losses (batch,)): P = params.numel(); the losses are f at the
        method's forward value (the mean over the n draws for REINFORCE).
    """
    base, opt = _parse_method(label)
    leaf = problem.params.to(dtype).expand(batch, *problem.params.shape).clone().requires_grad_(True)
    logits = problem.logits(leaf)  # (B, N, K)
    if base == "reinforce":
        n = opt["n"]
        rep = logits.unsqueeze(0).expand(n, *logits.shape)  # (n, B, N, K)
        index = gumbelkit.gumbel_max(rep, dim=-1, generator=generator)  # (n, B, N)
        codes = torch.nn.functional.one_hot(index, problem.k).to(dtype)
        losses = problem.f(codes.reshape(n * batch, problem.n, problem.k)).reshape(n, batch)
        log_q = gumbelkit.categorical_log_prob(rep, index, dim=-1).sum(-1)  # (n, B): independent variables
        surrogate = gumbelkit.reinforce_surrogate(losses, log_q, baseline="loo", dim=0)
        (grad,) = torch.autograd.grad(surrogate.sum(), leaf)
        return grad.reshape(batch, -1), losses.detach().mean(0)
    y = gumbelkit.sample(logits, base, tau, dim=-1, generator=generator, **opt)
    losses = problem.f(y)
    (grad,) = torch.autograd.grad(losses.sum(), leaf)
    return grad.reshape(batch, -1), losses.detach()


class _Moments:
    """Streaming mean / covariance trace of vectors, shifted by the first vector.

    Shifting by a sample near the mean avoids the cancellation of sum(x^2) - S mean^2; and when
    every sample is identical (the deterministic softmax) the deviations, hence the variance,
    are exactly zero.
    """

    def __init__(self):
        self.count = 0
        self.shift = None
        self.s1 = None  # sum of (x - shift), per coordinate, float64
        self.s2 = None  # sum of (x - shift)^2, per coordinate
        self.v1 = 0.0  # the same for the scalar losses
        self.v2 = 0.0
        self.vshift = None

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def estimate(
    problem: Problem,
    label: str,
    tau: float | None,
    scale: float,
    *,
    generator: torch.Generator,
    samples="auto",
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
    device = problem.params.device
    t_cell = time.perf_counter()
    mom = _Moments()
    times = []
    # Warm-up: the first call pays for lazy initialisation and allocator growth; not timed, not counted.
    estimator_gradients(problem, label, tau, min(chunk, 64), generator=generator)

    def run(b):
        _sync(device)
        t0 = time.perf_counter()
        g, v = estimator_gradients(problem, label, tau, b, generator=generator)
        _sync(device)
        times.append((time.perf_counter() - t0) / b)
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
    return {"moments": mom, "samples": mom.count, "us_per_grad": 1e6 * statistics.median(times),
            "wall_s": time.perf_counter() - t_cell}


# --------------------------------------------------------------------------- the lab


def _cell_generator(seed: int, *parts, device) -> torch.Generator:
    """An independent, reproducible stream per (problem, method, tau) cell; resumed runs match."""
    key = "|".join(str(p) for p in (seed, *parts))
    return torch.Generator(device=device).manual_seed(zlib.crc32(key.encode()))


def _norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x))


def _div(a: float, b: float) -> float:
    """a / b, NaN when b is 0 (e.g. a relaxed gradient that underflowed to exactly zero)."""
    return a / b if b != 0 else float("nan")


def _row(problem_name, label, tau, truth, res, ref=None) -> dict:
    mom = res["moments"]
    s = res["samples"]
    m = mom.mean()
    g_norm = _norm(truth)
    var = mom.variance_trace()
    mse = mom.sq_error(truth)
    m_norm = _norm(m)
    cosine = float((m * truth).sum()) / (m_norm * g_norm) if m_norm > 0 and g_norm > 0 else float("nan")
    base, opt = _parse_method(label)
    row = {
        "problem": problem_name,
        "method": label,
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
        "f_evals": f_evals(label),
        "rel_variance": _div(var, g_norm**2),
        "rel_mse": _div(mse, g_norm**2),
        # Variance per unit of work: averaging m independent estimates divides the variance by m,
        # so rel_variance x f_evals compares estimators at an equal number of f evaluations.
        "rel_variance_x_evals": _div(var, g_norm**2) * f_evals(label),
        "estimator": base,
        "options": opt,
        "rel_bias_relaxed": None,
        "stderr_bias_relaxed": None,
        "wall_s": res["wall_s"],
    }
    if ref is not None and base in RELAXED_FAMILY:
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
                out.append({"problem": problem, "method": label, "budget": e, "tau": best["tau"],
                            "rel_error": math.sqrt(err(best))})
    return out


def _config_key(cfg: dict) -> str:
    sub = {k: cfg[k] for k in _RESULT_KEYS}
    return hashlib.sha256(json.dumps(sub, sort_keys=True).encode()).hexdigest()[:16]


_ROW_FIELDS = (
    "rel_bias", "variance", "cosine", "mse", "stderr_bias", "us_per_grad", "samples", "f_evals", "rel_variance",
    "rel_mse", "rel_variance_x_evals", "wall_s",
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
        if not isinstance(ref.get("problem"), str) or not isinstance(ref.get("grad"), list) or not all(
            _num(v) for v in ref["grad"]
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
                if not isinstance(run.get(view), dict) or not all(_num(run[view].get(k)) for k in ("x1", "x2", "other")):
                    return f"demo run {rid!r} has no {view} fractions"
            for f in ("code_probs", "mean_output", "proj_hist"):
                if not isinstance(run.get(f), list) or not all(_num(v) for v in run[f]):
                    return f"demo run {rid!r} has no {f} list"
    return None


def _load_checkpoint(path: Path, key: str, fresh: bool) -> dict:
    """The finished cells of an earlier run of the same configuration (empty for another one).

    The file is verified first (SHA-256, then layout): a damaged or unchecksummed checkpoint is
    refused with one line (``--fresh`` ignores it), never silently reused.
    """
    empty = {"key": key, "cells": {}, "refs": {}, "demo": None}
    if fresh or not path.exists():
        return empty
    data = read_checked_json(path, what="checkpoint", hint=_CKPT_HINT)
    data.setdefault("demo", None)
    why = _check_checkpoint(data)
    if why:
        raise UserError(f"checkpoint {path} is unusable: it {why}; {_CKPT_HINT}")
    if data["key"] != key:
        return empty
    return data


# --------------------------------------------------------------------------- 70/30 demonstration


def _classify(x: torch.Tensor, data: torch.Tensor, radius: float) -> torch.Tensor:
    """0 near x1, 1 near x2, 2 elsewhere (a blend or a distractor)."""
    d = torch.cdist(x, data)
    near, which = d.min(-1)
    return torch.where(near < radius, which, torch.full_like(which, 2))


def _demo_run(method: str, tau: float, seed: int, steps: int, batch: int, device, n_eval: int = 20_000) -> dict:
    """Train the logits of the 70/30 generator with ``method``; report the generated outputs."""
    cb, y, w, s2, kyy = _mmd_parts()
    cb, y, w = (t.to(device=device, dtype=torch.float32) for t in (cb, y, w))
    k = cb.shape[0]
    gen = _cell_generator(seed, "demo", method, tau, device=device)
    theta = torch.zeros(k, device=device, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.1)
    # Cosine decay to zero: the last steps average out the sampling noise of the batch loss.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    off_diag = ~torch.eye(batch, dtype=torch.bool, device=device)
    for _ in range(steps):
        yb = gumbelkit.sample(theta.expand(batch, k), method, tau, generator=gen)
        x = yb @ cb
        kxx = torch.exp(-torch.cdist(x, x) ** 2 / s2)
        # Unbiased U-statistic of MMD^2: the mean over pairs i != j of the lab's pair loss f.
        loss = kxx[off_diag].mean() - 2 * (torch.exp(-torch.cdist(x, y) ** 2 / s2) @ w).mean() + kyy
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        yb = gumbelkit.sample(theta.expand(n_eval, k), method, tau, generator=gen)
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
        entry = {"seeds": len(seeds)}
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


_STYLE = {
    "softmax": ("tab:gray", "o"),
    "gumbel_softmax": ("tab:blue", "s"),
    "st": ("tab:brown", "v"),
    "st_gumbel": ("tab:orange", "^"),
    "gumbel_rao": ("tab:green", "D"),
    "reinmax": ("tab:purple", "P"),
    "reinforce": ("tab:red", None),
}


def _plot_problem(rows: list, name: str, description: str, grad_norm: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    panels = (("rel_bias", "relative bias  ‖E[ĝ] − g‖ / ‖g‖  (± s.e.)"),
              ("rel_variance", "relative variance  tr Cov[ĝ] / ‖g‖²"),
              ("rel_mse", "relative MSE  E‖ĝ − g‖² / ‖g‖²"))
    labels = list(dict.fromkeys(r["method"] for r in rows))
    ls_cycle = ["-", "--", ":", "-."]
    seen_base = {}
    for label in labels:
        base, _ = _parse_method(label)
        color, marker = _STYLE.get(base, ("black", "x"))
        ls = ls_cycle[seen_base.get(base, 0) % len(ls_cycle)]
        seen_base[base] = seen_base.get(base, 0) + 1
        sel = sorted((r for r in rows if r["method"] == label), key=lambda r: (r["tau"] is None, r["tau"] or 0))
        for ax, (key, _) in zip(axes, panels):
            vals = [r[key] for r in sel]
            if key == "rel_variance" and max(vals) == 0.0:
                continue  # the deterministic softmax: exactly zero, not drawable on a log axis
            vals = [max(v, 1e-12) for v in vals]
            if base == "reinforce":
                ax.axhline(vals[0], color=color, ls=ls, lw=1.4, label=f"{label} ({f_evals(label)} f-evals)")
                continue
            taus = [r["tau"] for r in sel]
            if key == "rel_bias":
                ax.errorbar(taus, vals, yerr=[r["stderr_bias"] for r in sel], color=color, marker=marker, ls=ls,
                            ms=4, lw=1.3, capsize=2, label=label)
            else:
                ax.plot(taus, vals, color=color, marker=marker, ls=ls, ms=4, lw=1.3, label=label)
    for ax, (key, title) in zip(axes, panels):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.autoscale_view()
    # REINFORCE is unbiased: its measured bias is Monte Carlo noise. Shade up to 2 standard errors.
    se_rf = [r["stderr_bias"] for r in rows if _parse_method(r["method"])[0] == "reinforce"]
    if se_rf:
        lo, hi = axes[0].get_ylim()
        lo = min(lo, 0.5 * min(r["rel_bias"] for r in rows if r["rel_bias"] > 0))
        axes[0].axhspan(lo, 2 * max(se_rf), color="tab:red", alpha=0.08, lw=0)
        axes[0].text(0.98, 0.03, "REINFORCE: 2 s.e. band", transform=axes[0].transAxes, ha="right", fontsize=7,
                     color="tab:red")
        axes[0].set_ylim(lo, hi)
    for ax, (key, title) in zip(axes, panels):
        ax.set_xlabel("temperature tau")
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    axes[1].text(0.02, 0.02, "softmax: variance exactly 0 (not drawn)", transform=axes[1].transAxes, fontsize=7,
                 color="gray")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"{name}: {description}  (‖g‖ = {grad_norm:.3g}; REINFORCE: horizontal lines)", fontsize=9)
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
    for ax, view, title in ((axes[0], "as_trained", "outputs as trained (the method's own forward)"),
                            (axes[1], "hard", "outputs of the trained logits sampled discretely")):
        for j, (key, name, color) in enumerate(cats):
            xs = [i + (j - 1) * width for i in range(len(methods))]
            ax.bar(xs, [summary[m][view][key]["mean"] for m in methods], width,
                   yerr=[summary[m][view][key]["std"] for m in methods], color=color, label=name, capsize=2)
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
    im = axes[2].imshow(grid, aspect="auto", cmap="viridis", norm=LogNorm(vmin=1e-4, vmax=1.0),
                        extent=(-0.05, 1.05, len(methods) - 0.5, -0.5), interpolation="nearest")
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
        f"of ‖g‖ within S <= {cfg['max_samples']} and, except REINFORCE, {cfg['cell_seconds']:g} s per cell); times "
        f"amortised over batches of {cfg['chunk']} on "
        f"{results['environment']['device']} with {cfg['threads']} thread(s). rel_bias_relaxed: bias with respect "
        "to the gradient of the Gumbel-Softmax objective E_g[f(softmax((theta+g)/tau))] at the same tau.\n"
    )
    for name, info in results["problems"].items():
        lines.append(f"\n## {name}\n\n{info['description']}; {info['outcomes']} outcomes; E[f] = {info['value']:.6g}, "
                     f"‖g‖ = {info['grad_norm']:.4g}.\n")
        rel = [r for r in results["relaxed_reference"] if r["problem"] == name]
        if rel:
            lines.append("\nRelaxed objective E_g[f(softmax((theta+g)/tau))] (Monte Carlo, ± standard error) and "
                         "its gradient's distance from the true gradient:\n\n")
            lines.append(markdown_table(
                ["tau", "relaxed E[f]", "± se", "true E[f]", "‖g_rel − g‖ / ‖g‖", "± se", "S"],
                [[_fmt_tau(r["tau"]), r["value"], r["value_stderr"], info["value"], r["rel_dist_true"],
                  r["stderr_rel_dist"], r["samples"]] for r in rel]))
        rows = [r for r in results["rows"] if r["problem"] == name]
        lines.append("\n")
        lines.append(markdown_table(
            ["method", "tau", "rel bias", "± se", "rel variance", "cosine", "rel MSE", "rel bias vs relaxed", "± se",
             "f-evals", "µs/grad", "S"],
            [[r["method"], _fmt_tau(r["tau"]), r["rel_bias"], r["stderr_bias"], r["rel_variance"], r["cosine"],
              r["rel_mse"], "-" if r["rel_bias_relaxed"] is None else r["rel_bias_relaxed"],
              "-" if r["stderr_bias_relaxed"] is None else r["stderr_bias_relaxed"], r["f_evals"], r["us_per_grad"],
              r["samples"]] for r in rows]))
    eq = results.get("equal_work", [])
    if eq:
        lines.append("\n## Equal work: relative error of the averaged gradient at each method's best tau\n\n"
                     "sqrt(bias² + variance × f-evals / E) / ‖g‖ when E evaluations of f are averaged "
                     "(best tau in brackets).\n")
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
        lines.append(f"\n## 70/30 training demonstration (tau = {demo['tau']}, {demo['steps']} steps, "
                     f"batch {demo['batch']}, {demo['seeds']} seeds)\n\n")
        table = []
        for m, e in demo["summary"].items():
            a, h = e["as_trained"], e["hard"]
            table.append([m, a["x1"]["mean"], a["x2"]["mean"], a["other"]["mean"], h["x1"]["mean"], h["x2"]["mean"],
                          h["other"]["mean"], e["mmd2_hard"]["mean"], str([round(v, 3) for v in e["mean_output"]])])
        lines.append(markdown_table(
            ["method", "as trained: x1", "x2", "other", "discrete: x1", "x2", "other", "MMD² (discrete)",
             "mean output"],
            table))
    lines.append(f"\nRun time: {results['runtime_s']:.1f} s in this process "
                 f"({results['cells_computed']} cells computed, "
                 f"{results['cells_resumed']} taken from the checkpoint; measured work in all cells: "
                 f"{results['compute_s']:.1f} s).\n")
    return "".join(lines)


# --------------------------------------------------------------------------- CLI layer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument("--out", default=d["out"], help="output folder (default: %(default)s)")
    parser.add_argument("--fig-dir", default=None, help="folder for the PNG plots (default: the --out folder)")
    parser.add_argument("--problems", default=",".join(d["problems"]), help=f"comma list of {', '.join(PROBLEMS)}")
    parser.add_argument("--methods", default=",".join(d["methods"]),
                        help="comma list: softmax, gumbel_softmax, st, st_gumbel, reinmax, gumbel_rao_k<k> "
                             f"(1 <= k <= {MAX_DRAWS}), reinforce_n<n> (2 <= n <= {MAX_DRAWS}) (default: %(default)s)")
    parser.add_argument("--taus", default=",".join(f"{t:g}" for t in d["taus"]),
                        help=f"temperatures, each finite and >= {MIN_TAU:g}: below that a float32 relaxed sample is "
                             "one-hot to the last bit and its gradient underflows to zero (default: %(default)s)")
    parser.add_argument("--samples", default=d["samples"],
                        help=f"gradient estimates per cell (2..{MAX_SAMPLES:.0e}), or 'auto': enough for a standard error of "
                             "--target-stderr x ||g|| (default: %(default)s)")
    parser.add_argument("--target-stderr", type=float, default=d["target_stderr"],
                        help="finite, > 0 (default: %(default)s)")
    parser.add_argument("--min-samples", type=int, default=d["min_samples"],
                        help=f"pilot size for 'auto', 2..{MAX_SAMPLES:.0e} (default: %(default)s)")
    parser.add_argument("--max-samples", type=int, default=d["max_samples"],
                        help=f"cap for 'auto', --min-samples..{MAX_SAMPLES:.0e} (default: %(default)s)")
    parser.add_argument("--chunk", type=int, default=d["chunk"],
                        help=f"estimates per vectorised batch, 1..{MAX_CHUNK} (default: %(default)s)")
    parser.add_argument("--cell-seconds", type=float, default=d["cell_seconds"],
                        help="with --samples auto, time cap per (method, tau) cell except REINFORCE "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=d["seed"], help="(default: %(default)s)")
    parser.add_argument("--device", default=d["device"], help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=d["threads"],
                        help=f"torch CPU threads while measuring, 1..{MAX_THREADS} (default: %(default)s, for stable timings)")
    parser.add_argument("--no-demo", dest="demo", action="store_false", help="skip the 70/30 training demonstration")
    parser.add_argument("--demo-methods", default=",".join(d["demo_methods"]), help="(default: %(default)s)")
    parser.add_argument("--demo-tau", type=float, default=d["demo_tau"], help=f">= {MIN_TAU:g} (default: %(default)s)")
    parser.add_argument("--demo-steps", type=int, default=d["demo_steps"], help="1..1e7 (default: %(default)s)")
    parser.add_argument("--demo-batch", type=int, default=d["demo_batch"],
                        help=f"2..{MAX_DEMO_BATCH} (default: %(default)s)")
    parser.add_argument("--demo-seeds", type=int, default=d["demo_seeds"], help="1..1000 (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore a checkpoint in --out and start over (a damaged checkpoint is otherwise refused)")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="write results.json/.md only")


def _positive_float(text, name, minimum=None):
    try:
        v = float(text)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"expected a number for {name}, got {text!r}") from None
    if not v > 0 or math.isinf(v):
        raise UserError(f"expected {name} > 0, got {v}")
    if minimum is not None and v < minimum:
        raise UserError(f"expected {name} >= {minimum:g} (the supported range), got {v:g}")
    return v


def _int_at_least(v, name, low, high=None):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise UserError(f"expected {name} >= {low}, got {v!r}")
    if high is not None and v > high:
        raise UserError(f"expected {name} <= {high}, got {v!r}")
    return v


#: Upper limits of the count options (far above a useful lab; a typo must not exhaust memory).
MAX_SAMPLES = 10**9
MAX_CHUNK = 65536
MAX_DEMO_BATCH = 8192


def validate_config(config: dict) -> dict:
    """Fill defaults and check every field; UserError with one clear line otherwise."""
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise UserError(f"unknown config key {min(unknown)!r}")
    cfg = {**DEFAULTS, **config}
    for key in ("problems", "methods", "demo_methods"):
        if isinstance(cfg[key], str):
            cfg[key] = parse_list(cfg[key], f"--{key.replace('_', '-')}")
    bad = [p for p in cfg["problems"] if p not in PROBLEMS]
    if bad or not cfg["problems"]:
        raise UserError(f"unknown problem {bad[0] if bad else ''!r}; expected some of {', '.join(PROBLEMS)}")
    cfg["methods"] = [_check_method(m) for m in cfg["methods"]]
    for m in cfg["demo_methods"]:
        if m not in gumbelkit.METHODS:
            raise UserError(f"unknown demo method {m!r}; expected some of {', '.join(gumbelkit.METHODS)}")
    taus = cfg["taus"]
    if isinstance(taus, str):
        taus = parse_list(taus, "--taus")
    cfg["taus"] = [_positive_float(t, "tau", MIN_TAU) for t in taus]
    s = cfg["samples"]
    if isinstance(s, str) and s.strip() == "auto":
        cfg["samples"] = "auto"
    else:
        try:
            s = int(s)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"expected --samples 'auto' or an integer >= 2, got {s!r}") from None
        cfg["samples"] = _int_at_least(s, "--samples", 2, MAX_SAMPLES)
    cfg["target_stderr"] = _positive_float(cfg["target_stderr"], "--target-stderr")
    cfg["cell_seconds"] = _positive_float(cfg["cell_seconds"], "--cell-seconds")
    _int_at_least(cfg["min_samples"], "--min-samples", 2, MAX_SAMPLES)
    _int_at_least(cfg["max_samples"], "--max-samples", cfg["min_samples"], MAX_SAMPLES)
    _int_at_least(cfg["chunk"], "--chunk", 1, MAX_CHUNK)
    _int_at_least(cfg["seed"], "--seed", 0)
    _int_at_least(cfg["threads"], "--threads", 1, MAX_THREADS)
    _int_at_least(cfg["demo_steps"], "--demo-steps", 1, 10**7)
    _int_at_least(cfg["demo_batch"], "--demo-batch", 2, MAX_DEMO_BATCH)
    _int_at_least(cfg["demo_seeds"], "--demo-seeds", 1, 1000)
    cfg["demo_tau"] = _positive_float(cfg["demo_tau"], "--demo-tau", MIN_TAU)
    cfg["demo"] = bool(cfg["demo"])
    cfg["plots"] = bool(cfg["plots"])
    cfg["out"] = check_path(cfg["out"], "--out")
    cfg["fig_dir"] = None if cfg["fig_dir"] is None else check_path(cfg["fig_dir"], "--fig-dir")
    return cfg


def config_from_args(args: argparse.Namespace) -> dict:
    config = {key: getattr(args, key) for key in DEFAULTS if hasattr(args, key)}
    return validate_config(config)


def main(config: dict) -> dict:
    """Run the lab; write results.json, results.md and the plots; return the results dict."""
    cfg = validate_config(config)
    t_start = time.perf_counter()
    device = resolve_device(cfg["device"])
    out = prepare_out_dir(cfg["out"], "--out")
    fig_dir = prepare_out_dir(cfg["fig_dir"], "--fig-dir") if cfg["fig_dir"] is not None and cfg["plots"] else out
    ckpt_path = out / "checkpoint.json"
    key = _config_key(cfg)
    ckpt = _load_checkpoint(ckpt_path, key, cfg["fresh"])

    taus = cfg["taus"]
    methods = cfg["methods"]
    need_ref = any(_parse_method(m)[0] in RELAXED_FAMILY for m in methods)
    n_cells = sum(len(taus) if uses_tau(m) else 1 for m in methods) + (len(taus) if need_ref else 0)
    n_total = n_cells * len(cfg["problems"]) + (len(cfg["demo_methods"]) * cfg["demo_seeds"] if cfg["demo"] else 0)
    bar = progress(n_total, "gradients", enabled=cfg["progress"])
    est_kw = {k: cfg[k] for k in ("samples", "target_stderr", "min_samples", "max_samples", "chunk")}

    def budget(label):
        # REINFORCE always runs to the stderr target (the definition of enough samples);
        # the other cells are capped in time, and report the standard error they reach.
        return None if _parse_method(label)[0] == "reinforce" else cfg["cell_seconds"]

    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg["threads"])
    try:
        problems_info, rows, refs = {}, [], []
        fresh_cells = 0
        for pname in cfg["problems"]:
            problem = make_problem(pname, cfg["seed"], device)
            value, truth64 = exact_gradient(problem.params, problem.logits, problem.f)
            truth = truth64.reshape(-1)
            g_norm = _norm(truth)
            problems_info[pname] = {
                "description": problem.description,
                "n": problem.n,
                "k": problem.k,
                "tied": problem.tied,
                "outcomes": problem.outcomes,
                "params": problem.params.tolist(),
                "value": float(value),
                "grad": truth.tolist(),
                "grad_norm": g_norm,
            }
            # Reference gradient of the relaxed objective at each tau: an independent Gumbel-Softmax run.
            ref_by_tau = {}
            if need_ref:
                for tau in taus:
                    cid = f"{pname}|ref|{tau!r}"
                    if cid not in ckpt["refs"]:
                        gen = _cell_generator(cfg["seed"], pname, "relaxed_reference", tau, device=device)
                        res = estimate(problem, "gumbel_softmax", tau, g_norm, generator=gen,
                                       max_seconds=budget("gumbel_softmax"), **est_kw)
                        mom = res["moments"]
                        g_rel = mom.mean()
                        v_mean, v_se = mom.value_mean_stderr()
                        var = mom.variance_trace()
                        ckpt["refs"][cid] = {
                            "problem": pname, "tau": tau, "grad": g_rel.tolist(), "variance": var,
                            "samples": res["samples"], "value": v_mean, "value_stderr": v_se,
                            "rel_dist_true": _norm(g_rel - truth) / g_norm,
                            "stderr_rel_dist": math.sqrt(var / res["samples"]) / g_norm,
                            "wall_s": res["wall_s"],
                        }
                        fresh_cells += 1
                        write_checked_json(ckpt_path, ckpt)
                    entry = ckpt["refs"][cid]
                    if len(entry["grad"]) != truth.numel():
                        raise UserError(f"checkpoint {ckpt_path} is unusable: reference {cid!r} has a gradient of "
                                        f"{len(entry['grad'])} numbers, expected {truth.numel()}; {_CKPT_HINT}")
                    ref_by_tau[tau] = {**entry, "grad": torch.tensor(entry["grad"], dtype=torch.float64, device=device)}
                    refs.append({k: v for k, v in entry.items() if k != "grad"})
                    bar.update(1)
            for label in methods:
                for tau in taus if uses_tau(label) else [None]:
                    cid = f"{pname}|{label}|{tau!r}"
                    if cid not in ckpt["cells"]:
                        gen = _cell_generator(cfg["seed"], pname, label, tau, device=device)
                        res = estimate(problem, label, tau, g_norm, generator=gen, max_seconds=budget(label), **est_kw)
                        ckpt["cells"][cid] = _row(pname, label, tau, truth, res, ref_by_tau.get(tau))
                        fresh_cells += 1
                        write_checked_json(ckpt_path, ckpt)
                    rows.append(ckpt["cells"][cid])
                    bar.update(1)

        demo = None
        if cfg["demo"]:
            if ckpt["demo"] is None:
                ckpt["demo"] = {"runs": {}}
            runs = ckpt["demo"]["runs"]
            for m in cfg["demo_methods"]:
                for s in range(cfg["demo_seeds"]):
                    rid = f"{m}|{s}"
                    if rid not in runs:
                        t_run = time.perf_counter()
                        runs[rid] = _demo_run(m, cfg["demo_tau"], cfg["seed"] + s, cfg["demo_steps"],
                                              cfg["demo_batch"], device)
                        runs[rid]["wall_s"] = time.perf_counter() - t_run
                        fresh_cells += 1
                        write_checked_json(ckpt_path, ckpt)
                    bar.update(1)
            by_method = {m: [runs[f"{m}|{s}"] for s in range(cfg["demo_seeds"])] for m in cfg["demo_methods"]}
            demo = {
                "tau": cfg["demo_tau"], "steps": cfg["demo_steps"], "batch": cfg["demo_batch"],
                "seeds": cfg["demo_seeds"], "setup": SEVENTY_THIRTY,
                "summary": _summarise_demo(by_method),
            }
    finally:
        torch.set_num_threads(old_threads)
        bar.close()

    figures = []
    for pname in cfg["problems"] if cfg["plots"] else []:
        prow = [r for r in rows if r["problem"] == pname]
        info = problems_info[pname]
        figures.append(str(_plot_problem(prow, pname, info["description"], info["grad_norm"],
                                         fig_dir / f"gradients_{pname}.png")))
    if demo is not None and cfg["plots"]:
        figures.append(str(_plot_demo(demo["summary"], cfg["demo_tau"], fig_dir / "gradients_70_30_demo.png")))

    results = {
        "rows": rows,
        "problems": problems_info,
        "relaxed_reference": refs,
        "equal_work": equal_work_errors(rows),
        "demo": demo,
        "figures": figures,
        "config": {k: v for k, v in cfg.items() if k != "progress"},
        "environment": environment_info(device) | {"threads": cfg["threads"]},
        "runtime_s": time.perf_counter() - t_start,
        # Sum of the measured work, including cells taken from a checkpoint of an earlier process.
        "compute_s": sum(r.get("wall_s", 0.0) for r in rows) + sum(r.get("wall_s", 0.0) for r in refs)
        + (sum(r.get("wall_s", 0.0) for r in ckpt["demo"]["runs"].values()) if demo is not None else 0.0),
        "cells_computed": fresh_cells,
        "cells_resumed": len(rows) + len(refs) + (len(ckpt["demo"]["runs"]) if demo is not None else 0) - fresh_cells,
        "definitions": {
            "rel_bias": "||mean of S estimates - g|| / ||g||, g the exact gradient by enumeration",
            "stderr_bias": "sqrt(tr Cov / S) / ||g||: Monte Carlo error of the mean; an unbiased estimator "
                           "shows rel_bias of about this size",
            "variance": "trace of the covariance of one gradient estimate",
            "mse": "mean over the S estimates of ||estimate - g||^2",
            "cosine": "cosine similarity of the mean estimate with g",
            "us_per_grad": "microseconds per gradient estimate, median over batches of `chunk` estimates "
                           "(sampling + f + backward), measured in this process after a warm-up",
            "f_evals": "evaluations of f per gradient estimate (n for REINFORCE with n samples)",
            "rel_bias_relaxed": "||mean estimate - g_relaxed|| / ||g_relaxed||, g_relaxed the gradient of "
                                "E_g[f(softmax((theta+g)/tau))] from an independent Gumbel-Softmax run "
                                "(relaxed_reference); stderr combines both runs",
        },
    }
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", _markdown(results))
    print(f"gumbelkit gradients: {len(rows)} rows in {results['runtime_s']:.1f} s; wrote {out / 'results.json'}, "
          f"{out / 'results.md'} and {len(figures)} plot(s) in {fig_dir}")
    return results


if __name__ == "__main__":  # python -m gumbelkit.experiments.gradients ... == gumbelkit gradients ...
    import sys

    from gumbelkit.cli import main as _cli_main

    sys.exit(_cli_main(["gradients", *sys.argv[1:]]))
