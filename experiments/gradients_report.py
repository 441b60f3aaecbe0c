"""The gradient lab's report: its Markdown tables and its plots (see :mod:`.gradients`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gumbelkit as gk

from .runner import save_figure, table

__all__ = ["DEFINITIONS", "markdown", "plot_demo", "plot_problem"]

DEFINITIONS = {
    "control_steps": "a method with learnable state: Adam steps (256 estimates each) tuning its control's "
    "variance at the problem's logits before it is measured, frozen; None: a method without state",
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
}


def _tau(t: float | None) -> str:
    return "-" if t is None else f"{t:g}"


_CELLS = [
    ("method", "method"), ("tau", lambda r: _tau(r["tau"])), ("rel bias", "rel_bias"), ("± se", "stderr_bias"),
    ("rel variance", "rel_variance"), ("cosine", "cosine"), ("rel MSE", "rel_mse"),
    ("rel bias vs relaxed", "rel_bias_relaxed"), ("± se", "stderr_bias_relaxed"), ("f-evals", "f_evals"),
    ("µs/grad", "us_per_grad"), ("S", "samples"), ("control tuned (steps)", lambda r: r.get("control_steps")),
]  # fmt: skip
_REFS = [
    ("tau", lambda r: _tau(r["tau"])), ("relaxed E[f]", "value"), ("± se", "value_stderr"),
    ("‖g_rel − g‖ / ‖g‖", "rel_dist_true"), ("± se", "stderr_rel_dist"), ("S", "samples"),
]  # fmt: skip
_DEMO = [
    ("method", "method"), ("as trained: x1", ("as_trained", "x1")), ("x2", ("as_trained", "x2")),
    ("other", ("as_trained", "other")), ("discrete: x1", ("hard", "x1")), ("x2", ("hard", "x2")),
    ("other", ("hard", "other")), ("MMD² (discrete)", ("mmd2_hard", None)),
]  # fmt: skip


def markdown(res: dict) -> str:
    cfg = res["config"]
    out = [
        "# Gradient estimator lab\n\n"
        f"Exact gradients by enumeration; S estimates per cell (auto: standard error <= {cfg['target_stderr']:.0%} "
        f"of ‖g‖ within S <= {cfg['max_samples']} and, except score-function methods, {cfg['cell_seconds']:g} s "
        f"per cell); times amortised over batches of {cfg['chunk']} on {res['environment']['device']} with "
        f"{cfg['threads']} thread(s). rel bias vs relaxed: bias with respect to the gradient of the Gumbel-Softmax "
        "objective E_g[f(softmax((theta+g)/tau))] at the same tau.\n"
    ]
    for name, info in res["problems"].items():
        out.append(
            f"\n## {name}\n\n{info['description']}; {info['outcomes']} outcomes; E[f] = {info['value']:.6g}, "
            f"‖g‖ = {info['grad_norm']:.4g}.\n\n"
        )
        refs = [r for r in res["relaxed_reference"] if r["problem"] == name]
        if refs:
            out.append("Relaxed objective (Monte Carlo) and its gradient's distance from the true gradient:\n\n")
            out.append(table(refs, _REFS) + "\n")
        out.append(table([r for r in res["rows"] if r["problem"] == name], _CELLS))
    if res["equal_work"]:
        out.append(
            "\n## Equal work: relative error of the averaged gradient at each method's best tau\n\n"
            "sqrt(bias² + variance × f-evals / E) / ‖g‖ when E evaluations of f are averaged (best tau "
            "in brackets).\n"
        )
        budgets = sorted({r["budget"] for r in res["equal_work"]})
        for name in res["problems"]:
            cells = {(r["method"], r["budget"]): r for r in res["equal_work"] if r["problem"] == name}
            labels = list(dict.fromkeys(m for m, _ in cells))
            by_budget: list[tuple[str, Any]] = [("method", lambda m: m)] + [
                (f"E = {b}", lambda m, b=b, c=cells: f"{c[m, b]['rel_error']:.3g} ({_tau(c[m, b]['tau'])})")
                for b in budgets
            ]
            out.append(f"\n{name}:\n\n" + table(labels, by_budget))
    if res["demo"]:
        d = res["demo"]
        out.append(
            f"\n## 70/30 training demonstration (tau = {d['tau']}, {d['steps']} steps, batch {d['batch']}, "
            f"{d['seeds']} seeds)\n\n"
        )
        rows = [{"method": m, **e} for m, e in d["summary"].items()]
        cols: list[tuple[str, Any]] = [
            (h, k if isinstance(k, str) else (lambda r, k=k: r[k[0]][k[1]]["mean"] if k[1] else r[k[0]]["mean"]))
            for h, k in _DEMO
        ]
        out.append(table(rows, cols))
    out.append(
        f"\nRun time: {res['runtime_s']:.1f} s in this process ({res['cells_computed']} cells computed, "
        f"{res['cells_resumed']} reused; measured work in all cells: {res['compute_s']:.1f} s).\n"
    )
    return "".join(out)


# (colour, marker) by registration order: the built-in methods keep the colours of the published
# figures; later registrations take the next ones.
_PALETTE = [
    ("tab:gray", "o"),
    ("tab:blue", "s"),
    ("tab:orange", "^"),
    ("tab:brown", "v"),
    ("tab:olive", "X"),
    ("tab:cyan", "<"),
    ("tab:green", "D"),
    ("tab:purple", "P"),
    ("tab:red", None),
    ("tab:pink", ">"),
]


def _style(name: str) -> tuple[str, str | None]:
    order = list(gk.estimators.methods("categorical"))
    return _PALETTE[order.index(name) % len(_PALETTE)] if name in order else ("black", "x")


def plot_problem(name: str, res: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    rows = [r for r in res["rows"] if r["problem"] == name]
    fig = Figure(figsize=(12, 3.3))
    axes = fig.subplots(1, 3)
    panels = (
        ("rel_bias", "relative bias ‖E[ĝ] − g‖ / ‖g‖ (± s.e.)"),
        ("rel_variance", "relative variance tr Cov[ĝ] / ‖g‖²"),
        ("rel_mse", "relative MSE E‖ĝ − g‖² / ‖g‖²"),
    )
    seen: dict[str, int] = {}
    for label in dict.fromkeys(r["method"] for r in rows):
        sel = sorted((r for r in rows if r["method"] == label), key=lambda r: r["tau"] or 0)
        color, marker = _style(sel[0]["estimator"])
        ls = ["-", "--", ":", "-."][seen.get(sel[0]["estimator"], 0) % 4]
        seen[sel[0]["estimator"]] = seen.get(sel[0]["estimator"], 0) + 1
        for ax, (key, _) in zip(axes, panels):
            vals = [max(r[key], 1e-12) for r in sel]
            if key == "rel_variance" and max(r[key] for r in sel) == 0.0:
                continue  # a deterministic method: exactly zero, not drawable on a log axis
            if sel[0]["tau"] is None:  # no temperature: one value, a horizontal line
                ax.axhline(vals[0], color=color, ls=ls, lw=1.4, label=f"{label} ({sel[0]['f_evals']} f-evals)")
            else:
                yerr = [r["stderr_bias"] for r in sel] if key == "rel_bias" else None
                ax.errorbar(
                    [r["tau"] for r in sel],
                    vals,
                    yerr=yerr,
                    color=color,
                    marker=marker,
                    ls=ls,
                    ms=4,
                    lw=1.3,
                    capsize=2,
                    label=label,
                )
    for ax, (_, title) in zip(axes, panels):
        ax.set(xscale="log", yscale="log", xlabel="temperature tau")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    info = res["problems"][name]
    fig.suptitle(
        f"{name}: {info['description']} (‖g‖ = {info['grad_norm']:.3g}; score-function methods are "
        "unbiased: their bias is Monte Carlo noise; no tau: horizontal lines)",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path)


def plot_demo(res: dict, path: Path) -> None:
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    summary = res["demo"]["summary"]
    methods = list(summary)
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.0, 1.0, 1.2]})
    cats = (("x1", "near x1", "tab:blue"), ("x2", "near x2", "tab:orange"), ("other", "blend / other", "tab:gray"))
    for ax, view, title in (
        (axes[0], "as_trained", "outputs as trained (the method's own forward)"),
        (axes[1], "hard", "outputs of the trained logits sampled discretely"),
    ):
        for j, (key, name, color) in enumerate(cats):
            ax.bar(
                [i + (j - 1) * 0.26 for i in range(len(methods))],
                [summary[m][view][key]["mean"] for m in methods],
                0.26,
                yerr=[summary[m][view][key]["std"] for m in methods],
                color=color,
                label=name,
                capsize=2,
            )
        ax.axhline(0.7, color="tab:blue", ls="--", lw=0.8)
        ax.axhline(0.3, color="tab:orange", ls="--", lw=0.8)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set(ylim=(0, 1.05))
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("fraction of generated outputs")
    axes[0].legend(fontsize=7, loc="upper right")
    grid = [[max(v, 1e-4) for v in summary[m]["proj_hist"]] for m in methods]
    im = axes[2].imshow(
        grid,
        aspect="auto",
        cmap="viridis",
        norm=LogNorm(vmin=1e-4, vmax=1.0),
        extent=(-0.05, 1.05, len(methods) - 0.5, -0.5),
        interpolation="nearest",
    )
    axes[2].set_yticks(range(len(methods)), methods, fontsize=8)
    axes[2].set_xlabel("output projected on the segment x1 (0) → x2 (1)")
    axes[2].set_title("where the as-trained outputs land (data: 0.7 at 0, 0.3 at 1)", fontsize=9)
    fig.colorbar(im, ax=axes[2], label="fraction", fraction=0.05)
    fig.suptitle(
        f"70/30 generator trained with each estimator (tau = {res['demo']['tau']}); mean ± std over seeds", fontsize=9
    )
    fig.tight_layout()
    save_figure(fig, path)
