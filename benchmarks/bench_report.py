"""The speed benchmark's report: its Markdown tables and its plot (see :mod:`benchmarks.bench`)."""

from __future__ import annotations

from typing import Any

from experiments.runner import save_figure, table

__all__ = ["markdown", "plot"]

PREFIX = "sample:"


_TIMES = [("median ms", "median_ms"), ("min ms", "min_ms")]
_SHAPE = [("shape", "shape"), ("mode", "mode"), ("impl", "impl"), ("median ms", "median_ms")]
_SHAPE += [("vs built-in", "ratio_vs_builtin"), ("GB/s", "gb_per_s")]
_PEAK = [("peak", lambda r: r.get("peak_buffers")), ("peak / baseline", lambda r: r.get("peak_vs_baseline"))]


def _sections(res: dict) -> list[tuple[str, list[dict], list[tuple[str, Any]]]]:
    """Each table of the report: (title, rows, columns); a section without rows is left out."""
    shapes = res["shapes"]
    flat = [dict(r) for s in shapes for r in s["rows"]]
    first = [{"shape": s["shape"], **c} for s in shapes for c in s.get("fused_first_calls", []) if c["compiled"]]
    quant, comp, vae = (
        res["quantizer"] or {"rows": []},
        res["compiled_model"] or {"rows": []},
        res["vae"] or {"rows": []},
    )
    return [
        ("Forward + backward of (out * w).sum()", [r for r in flat if r["pass"] == "fwdbwd"], _SHAPE),
        ("Forward (autograd recording)", [r for r in flat if r["pass"] == "fwd"], _SHAPE),
        ("Peak memory (forward + backward), in B x K float32 buffers beyond the inputs: the worst moment (peak) "
         "and what the graph keeps for the backward besides the output (held)",
         [{"shape": s["shape"], **m} for s in shapes for m in s.get("memory", [])],
         [("shape", "shape"), ("mode", "mode"), ("impl", "impl"), ("peak", "peak_buffers"), ("held", "held_buffers")]),
        ("Fused path: first calls (compilation included)", first,
         [("shape", "shape"), ("mode", "mode"), ("pass", "pass"), ("first call s", "seconds"),
          ("compiled", lambda c: ", ".join(f"{n} {t:.1f} s" for n, t in c["compiled"]))]),
        ("Categories not last: B x K x H x W with dim=1 (vs last: this / the categories-last twin)", res["layout"],
         [("shape", "shape"), ("mode", "mode"), ("impl", "impl"), *_TIMES, ("vs built-in", "vs_builtin"),
          ("vs last", "vs_last"), ("vs last (min)", "vs_last_min")]),
        ("Cost of each method along dim=1 (time and peak memory against the baseline method)", res["cost"],
         [("shape", "shape"), ("method", "method"), *_TIMES, ("time / baseline", "vs_baseline"),
          ("(min)", "vs_baseline_min"), ("time / built-in", "vs_builtin"), *_PEAK]),
        (f"Compiled model ({comp.get('model')}, {comp.get('shape')})", comp["rows"],
         [("mode", "mode"), ("variant", "variant"), *_TIMES, ("time / eager gumbelkit", "vs_eager_gumbelkit"),
          ("(min)", "vs_eager_gumbelkit_min"), ("first call s", "first_s")]),
        (f"Quantizer layer ({quant.get('model')}, {quant.get('shape')}; speed-up: the hand-written built-in layer / "
         "this)", quant["rows"], [("mode", "mode"), ("variant", "variant"), *_TIMES, ("speed-up", "vs_builtin"),
                                  ("(min)", "vs_builtin_min")]),
        (f"Categorical VAE training step ({vae.get('model')})", vae["rows"],
         [("mode", "mode"), ("impl", "impl"), ("median ms/step", "median_ms"), ("vs built-in", "ratio_vs_builtin"),
          ("first step s", "first_step_s")]),
    ]  # fmt: skip


def markdown(res: dict) -> str:
    env = res["environment"]
    head = (f"# Speed and memory\n\nCommand: `{res['command']}`\n\ntorch {env['torch']}, {env['threads']} thread(s), "
            f"device {env['device']}, {env['platform']}. Times are medians over interleaved rounds; vs built-in = "
            "built-in time / this time (higher is faster).\n")  # fmt: skip
    return head + "".join(f"\n## {title}\n\n" + table(rows, cols) for title, rows, cols in _sections(res) if rows)


def plot(res: dict, path: Any) -> None:
    from matplotlib.figure import Figure

    modes, shapes = res["config"]["modes"], res["shapes"]
    impls = [i for i in res["config"]["impls"] if i != "builtin"] + [PREFIX + m for m in res["config"]["methods"]]
    fig = Figure(figsize=(6.5 * len(modes), 4))
    for ax, mode in zip(fig.subplots(1, len(modes), squeeze=False)[0], modes):
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            vals = [next((r["ratio_vs_builtin"] for r in s["rows"] if r["impl"] == impl and r["pass"] == "fwdbwd"
                          and r["mode"] in (mode, "soft")), float("nan")) for s in shapes]  # fmt: skip
            ax.bar([k + j * width for k in range(len(shapes))], vals, width, label=impl)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set(yscale="log", ylabel="speed-up vs F.gumbel_softmax (fwd+bwd)", title=f"{mode}: higher is faster")
        ax.set_xticks(
            [k + 0.4 - width / 2 for k in range(len(shapes))], [s["shape"] for s in shapes], rotation=20, fontsize=8
        )
        ax.legend(fontsize=8)
    save_figure(fig, path)
