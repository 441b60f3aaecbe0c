"""k-subset lab: the law each subset method samples, and the bias and variance of its gradient.

The methods are the ``subset`` family of the registry (``--methods``, default: all); each declares
the law it samples (trait ``law``: ``gumbel_topk``, Plackett-Luce without replacement, or
``conditional``, independent Bernoulli(sigmoid(logits)) given exactly k ones).

- **Subset histogram** (Xie & Ermon, IJCAI 2019): n = 4 items with weights 1, 2, 3, 4, k = 2. For
  each tau, ``--hist-samples`` subsets from every sample method (a relaxed one: the top k of its
  output; beside it, how often that differs from its exact k-hot counterpart on the same noise),
  and the total variation to both exact laws (enumerated); ``tv_noise`` is the expected TV of an
  exact sampler at that sample size.
- **Exact-gradient toy** (SIMPLE, Ahmed et al., ICLR 2023): n = 10, k = 5, theta ~ N(0, 1),
  b = |N(0, 1)|, f(z) = ||z - b||^2; the exact gradient under both laws by enumerating the 252
  subsets (float64); per method ``--grad-samples`` estimates: bias = 1 - cos(mean, exact gradient of
  its law), relative variance, relative error of the mean with its standard error.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any

import torch

import gumbelkit as gk

from . import methods as M
from .config import MIN_TAU, Config, Float, Floats, Int, PathText, option
from .runner import Run, Timer, save_figure, table

__all__ = ["SubsetsConfig", "enumerate_subsets", "exact_gradient", "law_log_probs", "main"]

HIST_WEIGHTS, HIST_K, TOY_N, TOY_K = (1.0, 2.0, 3.0, 4.0), 2, 10, 5
LAWS = ("gumbel_topk", "conditional")


@dataclasses.dataclass(frozen=True)
class SubsetsConfig(Config):
    """Every option of ``python -m experiments subsets``."""

    COMMAND, HELP = "subsets", "subset laws and gradient bias/variance of the k-subset methods"

    out: str = option("runs/subsets", "output folder", PathText(), role="run")
    methods: list = M.option("subset")
    hist_samples: int = option(10_000, "subsets drawn per method and tau (histogram)", Int(10, 10**7))
    hist_taus: list = option(
        [10.0, 1.0, 0.1], "temperatures of the histogram", Floats(Float(positive=True, lo=MIN_TAU), "tau")
    )
    grad_taus: list = option(
        [0.1, 0.5, 1.0], "temperatures of the gradient toy", Floats(Float(positive=True, lo=MIN_TAU), "tau")
    )
    grad_samples: int = option(2000, "gradient estimates per method and tau", Int(2, 10**7))
    seed: int = option(0, "seed of theta, b and every sampler", Int(0, 2**63 - 1))

    choices = M.Chosen("subset")


def enumerate_subsets(n: int, k: int) -> torch.Tensor:
    """Every k-subset of n items as k-hot rows (lexicographic order of the index tuples), float64."""
    combos = list(itertools.combinations(range(n), k))
    z = torch.zeros(len(combos), n, dtype=torch.float64)
    for row, c in enumerate(combos):
        z[row, list(c)] = 1.0
    return z


def law_log_probs(law: str, theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log P(z) of the k-hot rows ``z`` under ``law``: ``conditional`` is theta.z - log e_k(exp theta);
    ``gumbel_topk`` sums over the k! orders in which Plackett-Luce can draw the subset."""
    k = round(float(z[0].sum()))
    if law == "conditional":
        return z @ theta - gk.subsets.log_subset_normalizer(theta, k)
    idx = z.nonzero()[:, 1].view(z.shape[0], k)
    ordered = idx[:, torch.tensor(list(itertools.permutations(range(k))), dtype=torch.long)]  # (m, k!, k)
    lw = (theta - torch.logsumexp(theta, -1))[ordered]
    prev = torch.cumsum(lw.exp(), -1) - lw.exp()  # the weight drawn before each step
    return torch.logsumexp((lw - torch.log1p(-prev)).sum(-1), -1)


def exact_gradient(theta: torch.Tensor, b: torch.Tensor, k: int, law: str) -> tuple[torch.Tensor, float]:
    """(gradient of E[||z - b||^2] w.r.t. theta, the expectation), every subset enumerated under ``law``."""
    th = theta.detach().clone().requires_grad_(True)
    z = enumerate_subsets(th.shape[-1], k)
    value = (law_log_probs(law, th, z).exp() * ((z - b) ** 2).sum(-1)).sum()
    return torch.autograd.grad(value, th)[0], float(value.detach())


def _counterpart(method: M.Method) -> M.Method | None:
    """The exactly k-hot method of the same function (the hard twin of a relaxed method), if any."""
    twins = [s for s in gk.estimators.specs("subset", "sample") if s.fn is method.spec.fn and s.one_hot]
    return M.Method(twins[0]) if twins and not method.spec.one_hot else None


def _draw(method: M.Method, logits: torch.Tensor, tau, seed: int) -> torch.Tensor:
    y = method.spec.call(logits, HIST_K, tau=tau, generator=torch.Generator().manual_seed(seed), **method.options)
    if method.spec.one_hot:
        return y.detach()
    return torch.zeros_like(y).scatter_(-1, y.topk(HIST_K, -1).indices, 1.0).detach()  # the top k of a relaxed sample


def _target(method: M.Method) -> str:
    """The exact law a method is compared with: its declared ``target`` (a method whose own law has no
    closed form, e.g. I-MLE's Sum-of-Gamma perturb-and-MAP, names the law it approximates), else its ``law``."""
    traits = method.spec.traits
    return str(traits.get("target", traits["law"]))


def _hist_row(method: M.Method, tau, index: int, cfg: SubsetsConfig, laws: dict) -> dict:
    batch = torch.tensor(HIST_WEIGHTS, dtype=torch.float64).log().expand(cfg.hist_samples, -1)
    # one noise stream per tau, shared by a relaxed method and its exact twin (common random numbers)
    seed, subsets = cfg.seed + 1 + index, enumerate_subsets(len(HIST_WEIGHTS), HIST_K)
    powers = 2 ** torch.arange(len(HIST_WEIGHTS))
    with Timer() as timer:
        z = _draw(method, batch, tau, seed)
        codes = (z.round().long() * powers).sum(-1)
        p = (codes[:, None] == (subsets.long() * powers).sum(-1)[None, :]).sum(0).to(torch.float64) / z.shape[0]
    twin = _counterpart(method)
    differs = None if twin is None else float((z != _draw(twin, batch, tau, seed)).any(-1).to(torch.float64).mean())
    law = _target(method)
    tv = {name: 0.5 * float((p - q).abs().sum()) for name, q in laws.items()}
    noise = 0.5 * float(torch.sqrt(2 * laws[law] * (1 - laws[law]) / (math.pi * cfg.hist_samples)).sum())
    return {
        "estimator": method.label,
        "tau": tau,
        "samples": cfg.hist_samples,
        "target": law,
        "tv_target": tv[law],
        "tv_gumbel_topk": tv["gumbel_topk"],
        "tv_conditional": tv["conditional"],
        "tv_noise": noise,
        "differs_from_hard": differs,
        "empirical": p.tolist(),
        "wall_s": timer.seconds,
    }


def _gradients(method: M.Method, theta, b, tau, samples: int, gen: torch.Generator) -> torch.Tensor:
    """``samples`` independent gradient estimates of E[||z - b||^2] w.r.t. theta, shape (samples, n)."""
    th = theta.detach().expand(samples, -1).clone().requires_grad_(True)
    if method.spec.kind == "score_function":
        loss = method.spec.call(th, TOY_K, lambda z: ((z - b) ** 2).sum(-1), generator=gen, **method.options)[0].sum()
    else:
        loss = ((method.spec.call(th, TOY_K, tau=tau, generator=gen, **method.options) - b) ** 2).sum()
    return torch.autograd.grad(loss, th)[0]


def _grad_row(method: M.Method, tau, seed: int, cfg: SubsetsConfig, toy: dict) -> dict:
    theta, b = (torch.tensor(toy[k], dtype=torch.float64) for k in ("theta", "b"))
    with Timer() as timer:
        grads = _gradients(method, theta, b, tau, cfg.grad_samples, torch.Generator().manual_seed(seed))
    law = _target(method)
    truth, other = (torch.tensor(toy["exact"][x]["grad"], dtype=torch.float64) for x in (law, *set(LAWS) - {law}))
    mean = grads.mean(0)
    tr_cov, g2 = float(((grads - mean) ** 2).sum() / (grads.shape[0] - 1)), float((truth**2).sum())
    cos = torch.nn.functional.cosine_similarity
    return {
        "estimator": method.label,
        "tau": tau,
        "target": law,
        "samples": cfg.grad_samples,
        "bias": 1.0 - float(cos(mean, truth, dim=0)),
        "bias_other_law": 1.0 - float(cos(mean, other, dim=0)),
        "rel_var": tr_cov / g2,
        "rel_err": float((mean - truth).norm()) / math.sqrt(g2),
        "stderr": math.sqrt(tr_cov / grads.shape[0] / g2),
        "wall_s": timer.seconds,
    }


def main(cfg: SubsetsConfig) -> dict:
    """Both measurements; write the results and the plot; return them."""
    w = torch.tensor(HIST_WEIGHTS, dtype=torch.float64)
    subsets = enumerate_subsets(len(HIST_WEIGHTS), HIST_K)
    laws = {law: law_log_probs(law, w.log(), subsets).exp() for law in LAWS}
    gen = torch.Generator().manual_seed(cfg.seed)
    theta, b = (
        torch.randn(TOY_N, generator=gen, dtype=torch.float64),
        torch.randn(TOY_N, generator=gen, dtype=torch.float64).abs(),
    )
    exact = {law: exact_gradient(theta, b, TOY_K, law) for law in LAWS}
    toy = {
        "n": TOY_N,
        "k": TOY_K,
        "theta": theta.tolist(),
        "b": b.tolist(),
        "exact": {law: {"grad": g.tolist(), "value": v, "norm": float(g.norm())} for law, (g, v) in exact.items()},
        "cos_between_laws": float(
            torch.nn.functional.cosine_similarity(exact["gumbel_topk"][0], exact["conditional"][0], dim=0)
        ),
    }
    hist_grid = [
        (m, t, i)
        for m in cfg.choices
        if m.spec.kind == "sample"
        for i, t in enumerate(cfg.hist_taus if m.spec.uses_tau else [None])
    ]
    grad_grid = [(m, t, i) for i, m in enumerate(cfg.choices) for t in (cfg.grad_taus if m.spec.uses_tau else [None])]
    with Run(cfg, len(hist_grid) + len(grad_grid)) as run:
        hist = [
            run.cell(f"hist|{m.label}|{i}|{t!r}", functools.partial(_hist_row, m, t, i, cfg, laws))
            for m, t, i in hist_grid
        ]
        # a cell's stream depends on its place in the grid (the method's index and the rows before it)
        grads = [
            run.cell(f"grad|{m.label}|{t!r}", functools.partial(_grad_row, m, t, cfg.seed + 1 + 1000 * i + j, cfg, toy))
            for j, (m, t, i) in enumerate(grad_grid)
        ]
    results = {
        "histogram": {
            "weights": list(HIST_WEIGHTS),
            "k": HIST_K,
            "subsets": [[int(i) for i in s.nonzero().flatten()] for s in subsets],
            "exact": {law: p.tolist() for law, p in laws.items()},
            "tv_between_laws": 0.5 * float((laws["gumbel_topk"] - laws["conditional"]).abs().sum()),
            "rows": hist,
        },
        "gradients": toy | {"rows": grads},
        **run.meta(definitions=DEFINITIONS),
    }
    run.write(results, _markdown, [("subsets.png", _plot)])
    return results


DEFINITIONS = {
    "tv": "total variation 0.5 * sum |p_empirical - p_exact| over the subsets",
    "differs_from_hard": "a relaxed method: fraction of draws whose top-k of the relaxed output is not the exact "
    "k-hot of its exact twin on the same Gumbel keys (same noise stream)",
    "tv_noise": "expected TV of an exact sampler at this sample size, 0.5 * sum sqrt(2 p (1 - p) / (pi n)) "
    "(normal approximation)",
    "bias": "1 - cos(mean of the estimates, exact gradient of the law the estimator samples)",
    "bias_other_law": "1 - cos(mean of the estimates, exact gradient of the other law)",
    "rel_var": "tr Cov(estimate) / ||g||^2, g the exact gradient of the target law",
    "rel_err": "||mean estimate - g|| / ||g||",
    "stderr": "sqrt(tr Cov / S) / ||g||: an unbiased estimator has rel_err of about this size",
}
_HIST = [
    ("estimator", "estimator"),
    ("tau", "tau"),
    ("samples", "samples"),
    ("target law", "target"),
    ("TV vs target", "tv_target"),
    ("TV vs Gumbel-top-k", "tv_gumbel_topk"),
    ("TV vs conditional", "tv_conditional"),
    ("exact-sampler TV", "tv_noise"),
    ("soft != hard (same noise)", "differs_from_hard"),
]
_GRAD = [
    ("estimator", "estimator"),
    ("tau", "tau"),
    ("S", "samples"),
    ("target law", "target"),
    ("bias 1-cos", "bias"),
    ("bias vs other law", "bias_other_law"),
    ("rel. variance", "rel_var"),
    ("rel. error", "rel_err"),
    ("stderr", "stderr"),
]


def _markdown(res: dict) -> str:
    h, g = res["histogram"], res["gradients"]
    return (
        f"# k-subsets\n\nCommand: `{res['command']}`  \nRuntime: {res['runtime_s']:.1f} s\n\n"
        f"## Subset histogram (n = {len(h['weights'])}, k = {h['k']}, weights {h['weights']})\n\n"
        f"TV between the two exact laws: {h['tv_between_laws']:.4f}.\n\n"
        + table(h["rows"], _HIST)
        + f"\n## Exact-gradient toy (n = {g['n']}, k = {g['k']}, f(z) = ||z - b||^2)\n\n"
        f"||g|| Gumbel-top-k: {g['exact']['gumbel_topk']['norm']:.4g}; ||g|| conditional: "
        f"{g['exact']['conditional']['norm']:.4g}; cos between them: {g['cos_between_laws']:.4f}.\n\n"
        + table(g["rows"], _GRAD)
    )


def _plot(res: dict, path: Any) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    for ax, rows, key, title in zip(
        fig.subplots(1, 2),
        (res["histogram"]["rows"], res["gradients"]["rows"]),
        ("tv_target", "bias"),
        ("subset histogram: TV vs target law", "gradient bias 1 - cos"),
    ):
        ax.bar(range(len(rows)), [max(r[key], 1e-12) for r in rows])
        if key == "tv_target":
            ax.plot(range(len(rows)), [r["tv_noise"] for r in rows], "k_", markersize=20, label="exact-sampler TV")
            ax.legend(fontsize=7)
        else:
            ax.set_yscale("log")
        ax.set_xticks(range(len(rows)), [f"{r['estimator']}\ntau={r['tau']}" for r in rows], fontsize=6, rotation=45)
        ax.set_title(title)
    save_figure(fig, path)
