"""CPU forward+backward speed of gumbelkit.gumbel_softmax against the built-in, with exact tails kept.

The check behind the promise "at least 3x torch.nn.functional.gumbel_softmax on the CPU for every
shape with K >= 1000": each shape (the K >= 1000 shapes of the speed benchmark), mode (soft, hard)
and thread count is timed in one process, the built-in and gumbelkit interleaved (every round
times both, in alternating order, so a slow spell of a shared machine hits both alike). Reported
per cell: median wall ms of each, the ratio of the medians, the median of the per-round ratios
(built-in / gumbelkit of the same round: robust to load that drifts between rounds), and the
minor page faults per call of each (a fresh B x K buffer costs one per 4 KiB page whenever the
allocator has just returned memory to the system; they come and go with the process' history).

    python benchmarks/cpu_speed_check.py                       # 1 and 2 threads, all shapes
    python benchmarks/cpu_speed_check.py --threads 1 --rounds 15 --out cpu_speed.json

Prints a table and writes JSON (``--out``); exit status 1 if a median ratio is below
``--min-ratio`` (default 3), so the one command is also the check.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import gumbelkit

SHAPES = ("1024x1000", "256x32000", "64x262144")


def _load() -> list[str]:
    """The 1, 5 and 15 minute load averages (empty where /proc is missing)."""
    try:
        with open("/proc/loadavg") as fh:
            return fh.read().split()[:3]
    except OSError:
        return []


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(shape: tuple[int, int], hard: bool, tau: float, rounds: int) -> dict:
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(*shape)
    impls = {
        "builtin": lambda: F.gumbel_softmax(x, tau=tau, hard=hard),
        "gumbelkit": lambda: gumbelkit.gumbel_softmax(x, tau, hard),
    }

    def run(name: str) -> tuple[float, int]:
        f0, t0 = _faults(), time.perf_counter()
        (impls[name]() * w).sum().backward()
        x.grad = None
        return time.perf_counter() - t0, _faults() - f0

    for name in impls:  # warm-up
        run(name)
        run(name)
    times: dict[str, list[float]] = {n: [] for n in impls}
    faults: dict[str, list[int]] = {n: [] for n in impls}
    names = list(impls)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t, f = run(name)
            times[name].append(t)
            faults[name].append(f)
    med = {n: statistics.median(v) for n, v in times.items()}
    per_round = [b / g for b, g in zip(times["builtin"], times["gumbelkit"])]
    return {
        "median_ms": {n: 1e3 * v for n, v in med.items()},
        "min_ms": {n: 1e3 * min(v) for n, v in times.items()},
        "ratio_of_medians": med["builtin"] / med["gumbelkit"],
        "median_round_ratio": statistics.median(per_round),
        "faults_per_call": {n: statistics.mean(v) for n, v in faults.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--tau", type=float, default=0.5)
    p.add_argument("--min-ratio", type=float, default=3.0)
    p.add_argument("--out", default="cpu_speed_check.json")
    args = p.parse_args()
    load = _load()
    result = {
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_at_start": load,
        "tau": args.tau,
        "rounds": args.rounds,
        "cells": [],
    }
    print(f"torch {torch.__version__}, {result['cpu_capability']}, load average {' '.join(load)}, tau={args.tau}")
    print(
        f"{'threads':>7} {'shape':>10} {'mode':>4} {'builtin ms':>10} {'gk ms':>8} {'ratio':>6} {'round ratio':>11} {'faults b/gk':>13}"
    )
    worst = float("inf")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for spec in args.shapes.split(","):
            b, k = (int(s) for s in spec.split("x"))
            for hard in (False, True):
                cell = measure((b, k), hard, args.tau, args.rounds)
                cell.update(threads=threads, shape=spec, mode="hard" if hard else "soft")
                result["cells"].append(cell)
                worst = min(worst, cell["ratio_of_medians"])
                m, f = cell["median_ms"], cell["faults_per_call"]
                print(
                    f"{threads:>7} {spec:>10} {cell['mode']:>4} {m['builtin']:>10.2f} {m['gumbelkit']:>8.2f} "
                    f"{cell['ratio_of_medians']:>6.2f} {cell['median_round_ratio']:>11.2f} "
                    f"{f['builtin']:>6.0f}/{f['gumbelkit']:<6.0f}"
                )
    result["load_average_at_end"] = _load()
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"worst ratio {worst:.2f} (wanted >= {args.min_ratio}); JSON in {args.out}")
    return 0 if worst >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
