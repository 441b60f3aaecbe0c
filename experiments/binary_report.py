"""The binary lab's report: its Markdown tables and its plots (see :mod:`.binary`)."""

from __future__ import annotations

from collections.abc import Callable

from .runner import save_figure, table

__all__ = ["DEFINITIONS", "markdown", "plot"]

DEFINITIONS = {
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
    "final_variance": "variance of single-sample estimates at a seed's final theta (with its trained control, "
    "for a method with one); the median over the seeds",
    "trained_control": "the method's learnable state (spec.new_control), one per seed, trained with theta "
    "through the surrogate's variance term",
}


# --------------------------------------------------------------------------- outputs


def _pm(key: str, digits: int = 4) -> Callable[[dict], str]:
    return lambda r: f"{r[key + '_mean']:.{digits}f} ± {r[key + '_std']:.{digits}f}"


_TOY = [
    ("family", "family"),
    ("method", "method"),
    ("theta", "theta"),
    ("exact", "exact"),
    ("mean", "mean"),
    ("bias", "bias"),
    ("stderr", "stderr"),
    ("z", "z"),
    ("variance", "variance"),
    ("P(wrong sign)", "p_wrong_sign"),
    ("P(0)", "p_zero"),
]
_TRAIN = [
    ("family", "family"),
    ("method", "method"),
    ("final loss (mean ± std)", _pm("final_loss", 6)),
    ("final P(b=1)", "final_p_mean"),
    ("variance at the end (median)", "final_variance_median"),
    ("trained control", lambda r: "yes" if r.get("trained_control") else "-"),
    ("stable right sign: median step", "stable_step_median"),
    ("seeds", lambda r: f"{r['seeds_stable']}/{r['seeds']}"),
]


def markdown(res: dict) -> str:
    cfg = res["config"]
    out = [
        f"# Binary estimators\n\nCommand: `{res['command']}`  \nRuntime: {res['runtime_s']:.1f} s on "
        f"{res['environment']['threads']} thread(s)\n"
    ]
    for t in dict.fromkeys(r["t"] for r in res["toy"]):
        rows = [r for r in res["toy"] if r["t"] == t]
        out.append(f"\n## Bernoulli toy, t = {t:g} ({rows[0]['samples']} single-sample estimates per cell)\n\n")
        out.append(table(rows, _TOY))
    for t in dict.fromkeys(r["t"] for r in res["train"]):
        rows = [r for r in res["train"] if r["t"] == t]
        out.append(
            f"\n## Toy training, t = {t:g} (batch 1, Adam lr {cfg['train_lr']:g}, {rows[0]['steps']} steps, "
            f"{rows[0]['seeds']} seeds; optimum {rows[0]['optimum']:.6f}, start "
            f"{(t**2 + (1 - t) ** 2) / 2:.6f}; a control's learning rate: {cfg['control_lr']:g} x)\n\n"
            + table(rows, _TRAIN)
        )
    if res["poly"]:
        powers = list(dict.fromkeys(r["p"] for r in res["poly"]))
        by = {(r["family"], r["method"], r["p"]): r for r in res["poly"]}
        first = {p: next(r for r in res["poly"] if r["p"] == p) for p in powers}
        rows = [
            {"family": "(optimum)", "method": "", **{p: f"{first[p]['optimum']:.4f}" for p in powers}},
            {"family": "(start)", "method": "", **{p: f"{first[p]['start']:.4f}" for p in powers}},
        ]
        rows += [
            {
                "family": f,
                "method": m,
                **{p: _pm("final_loss")(by[f, m, p]) if (f, m, p) in by else "-" for p in powers},
            }
            for f, m in dict.fromkeys((r["family"], r["method"]) for r in res["poly"])
        ]
        out.append(
            f"\n## Polynomial programming ({cfg['poly_latents']} latents, batch {cfg['poly_batch']}, Adam lr "
            f"{cfg['poly_lr']:g}, {cfg['poly_steps']} steps, {cfg['poly_seeds']} seeds): exact expected loss "
            "after training, mean ± std over seeds\n\n"
        )
        out.append(table(rows, [("family", "family"), ("method", "method")] + [(f"p = {p:g}", p) for p in powers]))
    return "".join(out)


def plot(part: str, key: str, title: str, res: dict, path) -> None:
    """Excess loss (exact expected loss - optimum) against the step, log scale, a panel per value of ``key``."""
    from matplotlib.figure import Figure

    rows = res[part]
    values = list(dict.fromkeys(r[key] for r in rows))
    fig = Figure(figsize=(6 * len(values), 4.5))
    axes = fig.subplots(1, len(values), squeeze=False)[0]
    for ax, v in zip(axes, values):
        for r in (r for r in rows if r[key] == v):
            excess = [max(x - r["optimum"], 1e-12) for x in r["curve_loss"]]
            ax.plot(
                r["curve_steps"],
                excess,
                "-" if r["family"] == "binary" else "--",
                lw=1,
                label=f"{r['method']} ({r['family'][:3]})",
            )
        ax.set(yscale="log", xlabel="step", ylabel="exact expected loss - optimum")
        ax.set_title(f"{title} = {v:g} (mean of the seeds)", fontsize=9)
    axes[-1].legend(fontsize=6, ncol=2)
    save_figure(fig, path)
