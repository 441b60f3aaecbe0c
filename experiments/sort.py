r"""Number sorting: learn to sort x ~ U[0, 1]^N through a relaxed permutation, evaluate the hard one.

The benchmark of Mena et al. (Gumbel-Sinkhorn, ICLR 2018) with the authors' defaults, for every
method of the ``permutation`` family (``--methods``, default: all). A shared MLP 1 -> 32 -> n_out
(ReLU) reads each number: a method whose trait ``input`` is ``log_alpha`` gets row i of an N x N
log alpha (item i, position j), so its relaxed sorted sequence is :math:`\hat P^\top x`; a
``scores`` method gets one score per number, its rows are the scores in descending order, so
``P.flip(-2) @ x`` is the relaxed ascending sort. Every method minimises the MSE between sorted(x)
and its relaxed sort, averaged over ``--samples`` noise draws when it is stochastic; Adam (lr 0.1),
batch 10, 500 steps, one model per N. Evaluation on ``--test-sequences`` fresh sequences per (N,
seed) (the same for every method) uses the hard permutation without noise (the exact assignment for
log alpha, the ranks of the scores): the fraction of wrong positions, of sequences with any error,
and Kendall's tau, mean ± std over ``--seeds`` models.

Temperatures: ``--sinkhorn-tau`` for Gumbel-Sinkhorn (the authors' 1), ``--neuralsort-tau`` for
NeuralSort (both variants), ``--softsort-tau`` for SoftSort (1: their papers tune tau per task and
give no default here); a method of another function runs at its declared default (or 1).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import torch

import gumbelkit as gk

from . import methods as M
from .config import MIN_TAU, Config, Float, Int, PathText, UserError, option, parse_list
from .runner import Run, Timer, generator, means, save_figure, table

__all__ = ["SortConfig", "any_wrong_fraction", "ascending_ranks", "evaluate", "kendall_tau", "main", "train"]

MAX_N = 1000
EVAL_CHUNK = 250  # test sequences at once (bounds the N x N matrices and Kendall's pairs)


def _sizes(value: Any, flag: str) -> list[int]:
    return list(dict.fromkeys(Int(2, MAX_N)(v, f"each {flag} entry") for v in parse_list(value, flag)))


def _tau(what: str) -> Any:
    return option(1.0, f"temperature of {what}", Float(positive=True, lo=MIN_TAU, hi=1e6))


@dataclasses.dataclass(frozen=True)
class SortConfig(Config):
    """Every option of ``python -m experiments sort``."""

    COMMAND, HELP = "sort", "learn to sort numbers with each permutation relaxation"

    out: str = option("runs/sort", "output folder", PathText(), role="run")
    methods: list = M.option("permutation")
    sizes: list = option([5, 10, 15, 50, 80, 100, 120], "sequence lengths N (one model per N)", _sizes, role="grid")
    steps: int = option(500, "training steps (Adam)", Int(1, 10**7))
    batch_size: int = option(10, "fresh sequences per training step", Int(1, 10**6))
    lr: float = option(0.1, "Adam learning rate", Float(positive=True, hi=100.0))
    hidden: int = option(32, "hidden units of the per-number MLP", Int(1, 4096))
    samples: int = option(5, "noise samples per sequence (stochastic methods)", Int(1, 10**4))
    sinkhorn_iters: int = option(10, "Sinkhorn rounds (option n_iters)", Int(1, 10**5))
    sinkhorn_tau: float = _tau("Gumbel-Sinkhorn")
    noise: float = option(1.0, "scale of the Gumbel noise in training (option noise)", Float(lo=0.0, hi=1e6))
    neuralsort_tau: float = _tau("NeuralSort (deterministic and stochastic)")
    softsort_tau: float = _tau("SoftSort")
    test_sequences: int = option(1000, "fresh test sequences per N and seed", Int(1, 10**7))
    seeds: int = option(3, "independently trained models per method and N", Int(1, 1000), role="grid")
    seed: int = option(0, "base seed of the data, the initialisation and the noise", Int(0, 2**62))

    @classmethod
    def cross_check(cls, values: dict) -> dict:
        n = max(values["sizes"])
        if values["batch_size"] * values["samples"] * n * n > 10**9:  # about 4 GB of float32 matrices a step
            raise UserError(
                f"expected --batch-size x --samples x N^2 <= 1e+09 (the relaxed matrices of one step), "
                f"got {values['batch_size']} x {values['samples']} x {n}^2"
            )
        return values

    choices = M.Chosen("permutation")

    def requirements(self) -> list[tuple[str, str, str]]:
        need = any(m.spec.traits.get("input") == "log_alpha" for m in self.choices)
        return super().requirements() + [("scipy", "scipy", "the exact assignment of a log_alpha method")] * need

    def tau(self, method: M.Method) -> float:
        """The temperature of a method: its function's flag, else its declared default."""
        flags = {gk.permutations.gumbel_sinkhorn: self.sinkhorn_tau, gk.permutations.neural_sort: self.neuralsort_tau,
                 gk.permutations.soft_sort: self.softsort_tau}  # fmt: skip
        return flags.get(method.spec.fn, method.spec.default_tau or 1.0)

    def options(self, method: M.Method, **override: Any) -> dict:
        """The method's options, with the legacy flags for the options it declares (unless given explicitly)."""
        flags = {"n_iters": self.sinkhorn_iters, "noise": self.noise} | override
        given = dict(method.given)
        return method.options | {k: v for k, v in flags.items() if k in method.options and k not in given}


# --------------------------------------------------------------------------- metrics


def ascending_ranks(x: torch.Tensor) -> torch.Tensor:
    """The position of each entry of ``x`` (..., n) in its ascending sort (ties: lower index first)."""
    return x.argsort(dim=-1, stable=True).argsort(dim=-1)


def _check(positions: torch.Tensor, truth: torch.Tensor) -> None:
    if (
        positions.shape != truth.shape
        or positions.dim() < 1
        or positions.is_floating_point()
        or truth.is_floating_point()
    ):
        raise ValueError(
            f"expected integer positions and truth of one shape (..., n), got {positions.dtype} "
            f"{tuple(positions.shape)} and {truth.dtype} {tuple(truth.shape)}"
        )


def wrong_fraction(positions: torch.Tensor, truth: torch.Tensor) -> float:
    """The fraction of entries whose predicted position differs from the true one."""
    _check(positions, truth)
    return float((positions != truth).to(torch.float64).mean())


def any_wrong_fraction(positions: torch.Tensor, truth: torch.Tensor) -> float:
    """The fraction of sequences (rows) with at least one entry at a wrong position."""
    _check(positions, truth)
    return float((positions != truth).any(-1).to(torch.float64).mean())


def kendall_tau(positions: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    r"""Kendall's rank correlation per sequence: :math:`\binom{n}{2}^{-1} \sum_{i<j} \mathrm{sign}(p_i - p_j)
    \mathrm{sign}(t_i - t_j)`, 1 for the same order, -1 for the reversed one (float64, shape (...))."""
    _check(positions, truth)
    n = positions.shape[-1]
    if n < 2:
        raise ValueError(f"expected sequences of length n >= 2, got n = {n}")
    dp = torch.sign(positions.unsqueeze(-1) - positions.unsqueeze(-2))
    dt = torch.sign(truth.unsqueeze(-1) - truth.unsqueeze(-2))
    return (dp * dt).sum((-2, -1)).to(torch.float64) / (n * (n - 1))  # each pair counted twice


# --------------------------------------------------------------------------- the model


def _init_mlp(n_out: int, hidden: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A 1 -> hidden -> n_out ReLU MLP with nn.Linear's default law U(+-1/sqrt(fan_in))."""

    def uniform(*shape: int, fan_in: int) -> torch.Tensor:
        return ((torch.rand(*shape, generator=gen) * 2 - 1) * (1.0 / math.sqrt(fan_in))).requires_grad_(True)

    return [
        uniform(1, hidden, fan_in=1),
        uniform(hidden, fan_in=1),
        uniform(hidden, n_out, fan_in=hidden),
        uniform(n_out, fan_in=hidden),
    ]


def _mlp(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Each number of x (B, n) through the MLP: (B, n, n_out)."""
    w1, b1, w2, b2 = params
    return torch.relu(x.unsqueeze(-1) @ w1 + b1) @ w2 + b2


def _log_alpha(method: M.Method) -> bool:
    return method.spec.traits.get("input") == "log_alpha"


def _relaxed(method: M.Method, out: torch.Tensor, x: torch.Tensor, cfg: SortConfig, gen) -> torch.Tensor:
    """The relaxed ascending sort of x, one row per (noise sample, sequence)."""
    s = cfg.samples if method.spec.traits.get("stochastic") else 1
    inputs = out.repeat(s, 1, 1) if _log_alpha(method) else out.squeeze(-1).repeat(s, 1)
    p = method.spec.call(inputs, tau=cfg.tau(method), generator=gen, **cfg.options(method))
    if _log_alpha(method):
        return torch.einsum("bij,bi->bj", p, x.repeat(s, 1))  # P^T x: the number at each position
    return (p.flip(-2) @ x.repeat(s, 1).unsqueeze(-1)).squeeze(-1)  # rows flipped: ascending


def _positions(method: M.Method, out: torch.Tensor, cfg: SortConfig) -> torch.Tensor:
    """The hard, noise-free position of each number (B, n)."""
    if not _log_alpha(method):
        return ascending_ranks(out.squeeze(-1))
    return method.spec.call(out, tau=cfg.tau(method), **cfg.options(method, hard=True, noise=0.0)).argmax(-1)


def train(method: M.Method, n: int, seed: int, cfg: SortConfig) -> tuple[list[torch.Tensor], list[float]]:
    """Train one model on sequences of length n: (parameters, loss per step). The training data depend
    on (cfg.seed, n, seed) only (every method sees the same), the initialisation and noise on the method too."""
    data, gen = generator(cfg.seed, "train", n, seed), generator(cfg.seed, method.label, n, seed)
    params = _init_mlp(n if _log_alpha(method) else 1, cfg.hidden, gen)
    opt, losses = torch.optim.Adam(params, lr=cfg.lr), []
    for _ in range(cfg.steps):
        x = torch.rand(cfg.batch_size, n, generator=data)
        pred = _relaxed(method, _mlp(params, x), x, cfg, gen)
        loss = ((pred - x.sort(-1).values.repeat(pred.shape[0] // cfg.batch_size, 1)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return [p.detach() for p in params], losses


@torch.no_grad()
def evaluate(method: M.Method, params: list[torch.Tensor], n: int, seed: int, cfg: SortConfig) -> dict:
    """The three metrics of the hard permutation on the (cfg.seed, n, seed) test sequences."""
    gen, wrong, any_wrong, taus, done = generator(cfg.seed, "test", n, seed), 0.0, 0.0, [], 0
    while done < cfg.test_sequences:
        m = min(EVAL_CHUNK, cfg.test_sequences - done)
        x = torch.rand(m, n, generator=gen)
        pos, truth = _positions(method, _mlp(params, x), cfg), ascending_ranks(x)
        wrong += wrong_fraction(pos, truth) * m
        any_wrong += any_wrong_fraction(pos, truth) * m
        taus.append(kendall_tau(pos, truth))
        done += m
    return {"wrong": wrong / done, "any_wrong": any_wrong / done, "kendall_tau": float(torch.cat(taus).mean())}


def _cell(method: M.Method, n: int, seed: int, cfg: SortConfig) -> dict:
    with Timer() as t_train:
        params, losses = train(method, n, seed, cfg)
    with Timer() as t_eval:
        metrics = evaluate(method, params, n, seed, cfg)
    tail = losses[-max(1, len(losses) // 10) :]
    return metrics | {
        "final_loss": sum(tail) / len(tail),
        "train_s": t_train.seconds,
        "eval_s": t_eval.seconds,
        "ms_per_step": 1e3 * t_train.seconds / cfg.steps,
    }


_FIELDS = ("wrong", "any_wrong", "kendall_tau", "final_loss", "ms_per_step")


def main(cfg: SortConfig) -> dict:
    """Train and evaluate every (method, N, seed); write the results and the plot; return them."""
    grid = [(m, n, s) for n in cfg.sizes for m in cfg.choices for s in range(cfg.seeds)]
    with Run(cfg, len(grid)) as run:
        rows = [
            {"method": m.label, "n": n, "seed": s}
            | run.cell(f"{m.label}|{n}|{s}", functools.partial(_cell, m, n, s, cfg))
            for m, n, s in grid
        ]
    summary = []
    for m in cfg.choices:
        for n in cfg.sizes:
            cells = [r for r in rows if r["method"] == m.label and r["n"] == n]
            entry = {"method": m.label, "n": n, "tau": cfg.tau(m), "seeds": len(cells)}
            summary.append(entry | means(cells, _FIELDS))
    results = {
        "summary": summary,
        "rows": rows,
        **run.meta(definitions=DEFINITIONS, compute_s=sum(r["train_s"] + r["eval_s"] for r in rows)),
    }
    run.write(results, _markdown, [("sort.png", _plot)])
    return results


DEFINITIONS = {
    "wrong": "fraction of the numbers put at a wrong position by the hard, noise-free permutation",
    "any_wrong": "fraction of the test sequences with at least one number at a wrong position",
    "kendall_tau": "Kendall's rank correlation between the predicted and the true order, mean over sequences",
    "final_loss": "training loss (MSE of the relaxed sort) averaged over the last 10% of the steps",
    "ms_per_step": "wall-clock milliseconds per training step (forward, backward, Adam)",
    "std": "standard deviation over the seeds (independently trained models)",
}


def _pm(key: str) -> Any:  # significant digits: one error in 120,000 positions must not print as 0.000
    return lambda e: f"{e[key]:.4g} ± {e[key + '_std']:.2g}"


def _markdown(res: dict) -> str:
    summary, cfg = res["summary"], res["config"]
    methods, sizes = list(dict.fromkeys(e["method"] for e in summary)), list(dict.fromkeys(e["n"] for e in summary))
    by = {(e["method"], e["n"]): e for e in summary}
    out = [
        f"# Sorting\n\nCommand: `{res['command']}`  \nRuntime: {res['runtime_s']:.1f} s ({res['cells_computed']} "
        f"models trained, {res['cells_resumed']} reused)\n\nMean ± standard deviation over {cfg['seeds']} seeds; "
        f"hard, noise-free permutation on {cfg['test_sequences']} test sequences per N and seed.\n"
    ]
    for key, title in (("wrong", "Fraction of numbers at a wrong position"), ("any_wrong", "Fraction of sequences "
                       "with any error"), ("kendall_tau", "Kendall's tau")):  # fmt: skip
        per_n: list[tuple[str, Any]] = [("N", lambda n: n)]
        per_n += [(m, lambda n, m=m, k=key: _pm(k)(by[m, n])) for m in methods]
        out.append(f"\n## {title}\n\n" + table(sizes, per_n))
    cols: list[tuple[str, Any]] = [
        ("method", "method"),
        ("tau", "tau"),
        ("N", "n"),
        ("wrong", _pm("wrong")),
        ("any wrong", _pm("any_wrong")),
        ("Kendall tau", _pm("kendall_tau")),
        ("final loss", lambda e: f"{e['final_loss']:.2e}"),
        ("ms / step", lambda e: f"{e['ms_per_step']:.2f}"),
    ]
    return "".join(out) + "\n## Every cell\n\n" + table(summary, cols)


def _plot(res: dict, path: Any) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for method in dict.fromkeys(e["method"] for e in res["summary"]):
        es = [e for e in res["summary"] if e["method"] == method]
        for ax, key in zip(axes, ("wrong", "kendall_tau")):
            ax.errorbar(
                [e["n"] for e in es],
                [e[key] for e in es],
                yerr=[e[key + "_std"] for e in es],
                marker="o",
                capsize=3,
                label=method,
            )
    axes[0].set(xlabel="N", ylabel="fraction of numbers at a wrong position", title="hard permutation, no noise")
    axes[1].set(xlabel="N", ylabel="Kendall's tau", title="rank correlation")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)
