"""Gradient estimator lab: exact bias and variance of every estimator, and "when do I need Gumbel noise?".

Every problem is small enough to enumerate all K^N outcomes, so the true gradient of
E_{z ~ Cat(softmax theta)}[f(z)] is known exactly (:mod:`.exact`). Each estimator runs S times in one
vectorised batch (theta replicated along a batch dimension: one backward of the summed objective
gives S per-sample gradients); its mean, covariance and error against the truth are reported with
standard errors. Methods are the categorical family of the registry (``--methods``, default: all),
run through :meth:`gumbelkit.MethodSpec.objective`; what the lab needs to know about a method comes
from its declaration: whether it uses tau (else one cell, not one per tau), its loss evaluations per
estimate, whether its backward is the Gumbel-Softmax relaxation's (then its bias against that
relaxation is reported too, from an independent run of the relaxation itself) and its kind
(score-function cells are unbiased and always run to the standard-error target).

Problems: ``quadratic`` f(z) = ||z - t||^2 over N one-hot blocks; ``decoder`` f(z) = BCE(x,
sigmoid(MLP(z))) for a fixed random MLP and target; ``70_30``: the squared MMD (Gaussian kernel)
between generated points and data {x1: 0.7, x2: 0.3}, written over a pair of independent codes
(E[f] = MMD^2 >= 0, zero exactly when the codes reproduce 70/30). Also a training demonstration on
70/30 (softmax collapses to a blend; Gumbel methods reproduce 70/30) and plots.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from typing import Any

import torch

import gumbelkit as gk

from . import methods as M
from .config import MIN_TAU, Config, Flag, Float, Floats, Int, Names, PathText, UserError, option
from .exact import exact_gradient
from .gradients_problems import SEVENTY_THIRTY, Problem, demo_run, make_problem, tuned_control
from .gradients_report import DEFINITIONS, markdown, plot_demo, plot_problem
from .runner import Run, Timer, generator, mean_std, prepare_folder, resolve_device

__all__ = ["PROBLEMS", "GradientsConfig", "Problem", "equal_work_errors", "estimate", "estimator_gradients", "main"]

PROBLEMS = ("quadratic", "decoder", "70_30")
MAX_DRAWS = 1000  # largest integer method option: k draws and n samples each multiply a chunk's memory
MAX_SAMPLES = 10**9
BUDGETS = (1, 10, 100, 1000)


def _samples(value: Any, flag: str) -> str | int:
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    try:
        return Int(2, MAX_SAMPLES)(value, flag)
    except UserError:
        raise UserError(f"expected {flag} 'auto' or an integer >= 2, got {value!r}") from None


@dataclasses.dataclass(frozen=True)
class GradientsConfig(Config):
    """Every option of ``python -m experiments gradients``."""

    COMMAND, HELP = "gradients", "exact bias and variance of every gradient estimator"

    out: str = option("runs/gradients", "output folder", PathText(), role="run")
    problems: list = option(list(PROBLEMS), "problems", Names(PROBLEMS, what="problem"), role="grid")
    methods: list = M.option("categorical", cap=MAX_DRAWS)
    taus: list = option(
        [0.1, 0.25, 0.5, 1.0, 2.0],
        f"temperatures, each >= {MIN_TAU:g} (below, a float32 relaxed gradient underflows to zero)",
        Floats(Float(positive=True, lo=MIN_TAU), "tau"),
        role="grid",
    )
    samples: str | int = option("auto", "estimates per cell, or 'auto': enough for --target-stderr x ||g||", _samples)
    target_stderr: float = option(0.01, "relative standard error 'auto' aims for", Float(positive=True))
    min_samples: int = option(4096, "pilot size for 'auto'", Int(2, MAX_SAMPLES))
    max_samples: int = option(400_000, "cap for 'auto' (at least --min-samples)", Int(2, MAX_SAMPLES))
    chunk: int = option(4096, "estimates per vectorised batch", Int(1, 65536))
    cell_seconds: float = option(
        1.0, "with 'auto', time cap per cell except score-function methods", Float(positive=True)
    )
    control_steps: int = option(300, "Adam steps tuning a method's control before it is measured", Int(0, 10**6))
    control_lr: float = option(0.01, "learning rate of that tuning", Float(positive=True))
    seed: int = option(0, "seed of the problems and of every cell's stream", Int(0))
    device: str = option("auto", "cpu, cuda or auto", lambda v, f: str(resolve_device(str(v))))
    fig_dir: str | None = option(None, "folder for the plots (default: --out)", PathText(), role="run")
    demo: bool = option(True, "run the 70/30 training demonstration", Flag(), role="grid")
    demo_methods: list = M.option("categorical", "sample", what="methods trained in the demonstration:", cap=MAX_DRAWS)
    demo_tau: float = option(0.5, "temperature of the demonstration", Float(positive=True, lo=MIN_TAU))
    demo_steps: int = option(600, "training steps of the demonstration", Int(1, 10**7))
    demo_batch: int = option(128, "batch of the demonstration", Int(2, 8192))
    demo_seeds: int = option(3, "seeds of the demonstration", Int(1, 1000), role="grid")

    @classmethod
    def cross_check(cls, values: dict) -> dict:
        if values["max_samples"] < values["min_samples"]:
            raise UserError(f"expected --max-samples >= {values['min_samples']}, got {values['max_samples']}")
        return values

    choices = M.Chosen("categorical", cap=MAX_DRAWS)

    @functools.cached_property
    def demo_choices(self) -> list[M.Method]:
        return M.choices(self.demo_methods, "categorical", kind="sample", cap=MAX_DRAWS)


# --------------------------------------------------------------------------- estimates


def estimator_gradients(
    problem: Problem, method: M.Method, tau, batch: int, *, generator, dtype=torch.float32, control=None
):
    """``batch`` independent gradient estimates (batch, P) and the losses at the method's forward value
    (``control``: a method's frozen control, :func:`tuned_control`)."""
    leaf = problem.params.to(dtype).expand(batch, *problem.params.shape).clone().requires_grad_(True)

    def loss_fn(z: torch.Tensor) -> torch.Tensor:  # codes (..., B, N, K) -> f per code (..., B)
        return problem.f(z.reshape(-1, problem.n, problem.k)).reshape(z.shape[:-2])

    objective, losses = method.objective(problem.logits(leaf), loss_fn, tau, generator=generator, control=control)
    (grad,) = torch.autograd.grad(objective.sum(), leaf)
    return grad.reshape(batch, -1), losses.detach()


class _Moments:
    """Streaming mean / covariance trace of vectors, shifted by the first one: no cancellation in
    sum(x^2) - S mean^2, and an exactly zero variance when every sample is the same (softmax)."""

    def __init__(self):
        self.count, self.vshift, self.v1, self.v2 = 0, 0.0, 0.0, 0.0
        self.shift: Any = None  # the first vector; s1, s2: sums of (x - shift) and its square
        self.s1: Any = None
        self.s2: Any = None

    def add(self, x: torch.Tensor, values: torch.Tensor) -> None:
        x, values = x.detach().to(torch.float64), values.detach().to(torch.float64)
        if self.shift is None:
            self.shift, self.vshift = x[0].clone(), float(values[0])
            self.s1, self.s2 = torch.zeros_like(self.shift), torch.zeros_like(self.shift)
        d, dv = x - self.shift, values - self.vshift
        self.s1 += d.sum(0)
        self.s2 += (d * d).sum(0)
        self.v1 += float(dv.sum())
        self.v2 += float((dv * dv).sum())
        self.count += x.shape[0]

    def mean(self) -> torch.Tensor:
        return self.shift + self.s1 / self.count

    def variance_trace(self) -> float:
        """Trace of the sample covariance (divisor S - 1; clamped: rounding can leave a tiny negative)."""
        if self.count < 2:
            return float("nan")
        return float(((self.s2 - self.s1 * self.s1 / self.count) / (self.count - 1)).clamp_min(0).sum())

    def sq_error(self, truth: torch.Tensor) -> float:
        """(1/S) sum_s ||x_s - truth||^2, from the shifted sums."""
        c = self.shift - truth
        return float((self.s2.sum() + 2 * (c * self.s1).sum() + self.count * (c * c).sum()) / self.count)

    def value_mean_stderr(self) -> tuple[float, float]:
        m = self.vshift + self.v1 / self.count
        return m, math.sqrt(max(0.0, (self.v2 - self.v1 * self.v1 / self.count) / max(self.count - 1, 1)) / self.count)


def estimate(
    problem,
    method,
    tau,
    scale,
    *,
    generator,
    samples="auto",
    target_stderr=0.01,
    min_samples=4096,
    max_samples=400_000,
    chunk=4096,
    max_seconds=None,
    control=None,
) -> dict:
    """One estimator run S times in chunks: its moments, S and the median microseconds per estimate.

    With ``samples="auto"``, S = clamp(1.05 V / (target_stderr * scale)^2, min, max) with V, the
    covariance trace, re-estimated as samples accumulate (a pilot under-reports heavy tails), and
    ``max_seconds`` capping S at what the measured speed allows.
    """
    cell, mom, times = Timer().start(), _Moments(), []
    grads = functools.partial(estimator_gradients, problem, method, tau, generator=generator, control=control)
    grads(min(chunk, 64))  # warm-up, not counted

    def run_to(total: int) -> None:
        while mom.count < total:
            b = min(chunk, total - mom.count)
            with Timer(problem.params.device) as timer:
                g, v = grads(b)
            times.append(timer.seconds / b)
            mom.add(g, v)

    if samples != "auto":
        run_to(int(samples))
    else:
        run_to(min_samples)
        for _ in range(5):
            need = 1.05 * mom.variance_trace() / (target_stderr * scale) ** 2 if scale > 0 else float(max_samples)
            total = int(min(max(math.ceil(need), min_samples), max_samples))
            if max_seconds is not None:
                total = min(total, int(max_seconds / max(statistics.median(times), 1e-9)))
            if mom.count >= total:
                break
            run_to(total)
    return {"moments": mom, "samples": mom.count, "us_per_grad": 1e6 * statistics.median(times), "wall_s": cell.stop()}


def _norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x))


def _div(a: float, b: float) -> float:
    """a / b, NaN when b is 0 (a relaxed gradient that underflowed to exactly zero)."""
    return a / b if b != 0 else float("nan")


def _row(problem: str, method: M.Method, tau, truth: torch.Tensor, res: dict, ref: dict | None) -> dict:
    mom, s, g_norm = res["moments"], res["samples"], _norm(truth)
    m, var, mse = mom.mean(), mom.variance_trace(), mom.sq_error(truth)
    cosine = float((m * truth).sum()) / (_norm(m) * g_norm) if _norm(m) > 0 and g_norm > 0 else float("nan")
    evals = method.spec.loss_evaluations(method.options)
    row = {
        "problem": problem,
        "method": method.label,
        "tau": tau,
        "rel_bias": _div(_norm(m - truth), g_norm),
        "variance": var,
        "cosine": cosine,
        "mse": mse,
        # Monte Carlo error of the mean relative to ||g||: an unbiased estimator's rel_bias is about this
        "stderr_bias": _div(math.sqrt(var / s), g_norm),
        "us_per_grad": res["us_per_grad"],
        "samples": s,
        "f_evals": evals,
        "rel_variance": _div(var, g_norm**2),
        "rel_mse": _div(mse, g_norm**2),
        # averaging m estimates divides the variance by m: this compares methods at equal work
        "rel_variance_x_evals": _div(var, g_norm**2) * evals,
        "estimator": method.name,
        "options": method.options,
        "rel_bias_relaxed": None,
        "stderr_bias_relaxed": None,
        "wall_s": res["wall_s"],
        "control_steps": res.get("control_steps"),  # a method's control, tuned before it is measured
    }
    if ref is not None and method.spec.relaxed:
        g_rel = torch.tensor(ref["grad"], dtype=torch.float64, device=truth.device)
        row["rel_bias_relaxed"] = _div(_norm(m - g_rel), _norm(g_rel))
        row["stderr_bias_relaxed"] = _div(math.sqrt(var / s + ref["variance"] / ref["samples"]), _norm(g_rel))
    return row


def equal_work_errors(rows: list, budgets=BUDGETS) -> list:
    """Relative error of each method at its best tau when E evaluations of f are averaged:
    sqrt(max(rel_bias^2 - stderr_bias^2, 0) + rel_variance * f_evals / E) (the measured bias^2
    carries Monte Carlo noise of about stderr_bias^2, which is subtracted)."""
    out = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        for label in dict.fromkeys(r["method"] for r in rows if r["problem"] == problem):
            cand = [r for r in rows if r["problem"] == problem and r["method"] == label]
            for e in budgets:

                def err(r, e=e):
                    return max(r["rel_bias"] ** 2 - r["stderr_bias"] ** 2, 0.0) + r["rel_variance"] * r["f_evals"] / e

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


# --------------------------------------------------------------------------- cells


def _estimate(cfg: GradientsConfig, problem: Problem, method: M.Method, tau, scale: float, *stream) -> dict:
    tune = generator(cfg.seed, "control", *stream, device=problem.params.device)
    control = tuned_control(problem, method, tau, cfg.control_steps, cfg.control_lr, 256, generator=tune)
    return estimate(
        problem,
        method,
        tau,
        scale,
        generator=generator(cfg.seed, *stream, device=problem.params.device),
        samples=cfg.samples,
        target_stderr=cfg.target_stderr,
        min_samples=cfg.min_samples,
        max_samples=cfg.max_samples,
        chunk=cfg.chunk,
        # a score-function estimator is unbiased: it always runs to the standard-error target
        max_seconds=None if method.spec.kind == "score_function" else cfg.cell_seconds,
        control=control,
    )


def _reference(cfg: GradientsConfig, problem: Problem, truth: torch.Tensor, tau: float) -> dict:
    """The gradient of the relaxed objective at ``tau``: an independent run of the relaxation itself."""
    relaxation = next(s for s in gk.estimators.specs("categorical", "sample") if s.relaxed and not s.one_hot)
    res = _estimate(cfg, problem, M.Method(relaxation), tau, _norm(truth), problem.name, "relaxed_reference", tau)
    mom, g_norm = res["moments"], _norm(truth)
    value, value_se = mom.value_mean_stderr()
    return {
        "problem": problem.name,
        "tau": tau,
        "grad": mom.mean().tolist(),
        "variance": mom.variance_trace(),
        "samples": res["samples"],
        "value": value,
        "value_stderr": value_se,
        "rel_dist_true": _norm(mom.mean() - truth) / g_norm,
        "stderr_rel_dist": math.sqrt(mom.variance_trace() / res["samples"]) / g_norm,
        "wall_s": res["wall_s"],
        "control_steps": res.get("control_steps"),  # a method's control, tuned before it is measured
    }


def _cell(cfg: GradientsConfig, problem: Problem, method: M.Method, tau, truth: torch.Tensor, ref) -> dict:
    res = _estimate(cfg, problem, method, tau, _norm(truth), problem.name, method.tag, tau)
    res["control_steps"] = cfg.control_steps if method.spec.has_control else None
    return _row(problem.name, method, tau, truth, res, ref)


def _measure(cfg: GradientsConfig, run: Run, device) -> tuple[dict, list, list]:
    """Every problem: the exact gradient, the relaxed references (when a method needs them), the cells."""
    problems, rows, refs = {}, [], []
    for name in cfg.problems:
        problem = make_problem(name, cfg.seed, device)
        value, truth = exact_gradient(problem.params, problem.logits, problem.f)
        truth = truth.reshape(-1)
        problems[name] = {
            "description": problem.description,
            "n": problem.n,
            "k": problem.k,
            "tied": problem.tied,
            "outcomes": problem.k**problem.n,
            "params": problem.params.tolist(),
            "value": float(value),
            "grad": truth.tolist(),
            "grad_norm": _norm(truth),
        }
        by_tau: dict = {}
        for tau in cfg.taus if any(m.spec.relaxed for m in cfg.choices) else []:
            by_tau[tau] = run.cell(f"{name}|ref|{tau!r}", functools.partial(_reference, cfg, problem, truth, tau))
            refs.append({k: v for k, v in by_tau[tau].items() if k != "grad"})
        for method in cfg.choices:
            for tau in cfg.taus if method.spec.uses_tau else [None]:
                compute = functools.partial(_cell, cfg, problem, method, tau, truth, by_tau.get(tau))
                rows.append(run.cell(f"{name}|{method.label}|{tau!r}", compute))
    return problems, rows, refs


def _demo(cfg: GradientsConfig, run: Run, device) -> tuple[dict, list]:
    summary, runs = {}, []
    for method in cfg.demo_choices:
        runs += [
            seeds := [
                run.cell(
                    f"demo|{method.label}|{s}",
                    functools.partial(
                        demo_run, method, cfg.demo_tau, cfg.seed + s, cfg.demo_steps, cfg.demo_batch, device
                    ),
                )
                for s in range(cfg.demo_seeds)
            ]
        ]
        entry: dict[str, Any] = {"seeds": len(seeds)}
        for view in ("as_trained", "hard"):
            entry[view] = {
                k: dict(zip(("mean", "std"), mean_std(r[view][k] for r in seeds))) for k in ("x1", "x2", "other")
            }
        entry["mmd2_hard"] = dict(zip(("mean", "std"), mean_std(r["mmd2_hard"] for r in seeds)))
        entry["mean_output"] = seeds[0]["mean_output"]
        entry["proj_hist"] = [statistics.fmean(v) for v in zip(*(r["proj_hist"] for r in seeds))]
        summary[method.label] = entry
    demo = {
        "tau": cfg.demo_tau,
        "steps": cfg.demo_steps,
        "batch": cfg.demo_batch,
        "seeds": cfg.demo_seeds,
        "setup": SEVENTY_THIRTY,
        "summary": summary,
    }
    return demo, [r for seeds in runs for r in seeds]


def main(cfg: GradientsConfig) -> dict:
    """Measure every problem, run the demonstration; write the results and the plots; return them."""
    device = torch.device(cfg.device)
    cells = sum(len(cfg.taus) if m.spec.uses_tau else 1 for m in cfg.choices) + len(cfg.taus)
    with Run(cfg, cells * len(cfg.problems) + len(cfg.demo_choices) * cfg.demo_seeds * cfg.demo) as run:
        plot_dir = prepare_folder(cfg.fig_dir, "--fig-dir") if cfg.fig_dir and cfg.plots is not False else None
        problems, rows, refs = _measure(cfg, run, device)
        demo, demo_runs = _demo(cfg, run, device) if cfg.demo else (None, [])
    results = {
        "rows": rows,
        "problems": problems,
        "relaxed_reference": refs,
        "equal_work": equal_work_errors(rows),
        "demo": demo,
        **run.meta(device, DEFINITIONS, compute_s=sum(r["wall_s"] for r in rows + refs + demo_runs)),
    }
    plots = [(f"gradients_{p}.png", functools.partial(plot_problem, p)) for p in cfg.problems]
    run.write(results, markdown, plots + [("gradients_70_30_demo.png", plot_demo)] * bool(demo), plot_dir=plot_dir)
    return results
