"""The one timing harness of the benchmarks: interleaved rounds, medians, and peak memory.

Every variant is timed in one process, in rounds that visit every variant in a rotated order, so a
slow spell of a shared machine hits them all alike; the reported time is the median over rounds.
Calls shorter than ``min_time`` are repeated inside one timed sample.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["interleaved", "measure_memory", "run_once"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], Any], device: torch.device, n: int = 1) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved(units: dict, rounds: int, min_time: float, device: torch.device, bar: Any = None) -> dict:
    """Median and minimum seconds of each ``units[label]()`` over interleaved, rotated rounds.

    Each unit is called twice first: the first call (which may compile) is timed on its own
    (``first_s``), the second sets how many calls make one sample (``calls``).
    """
    first, calls = {}, {}
    for label, fn in units.items():
        first[label] = _seconds(fn, device)
        calls[label] = max(1, min(1000, int(min_time / max(_seconds(fn, device), 1e-7))))
    labels = list(units)
    samples: dict[Any, list[float]] = {k: [] for k in labels}
    for r in range(rounds):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            samples[label].append(_seconds(units[label], device, calls[label]) / calls[label])
        if bar is not None:
            bar.update(1)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "first_s": first[k], "rounds": rounds,
                "calls": calls[k]} for k, v in samples.items()}  # fmt: skip


def run_once(fn: Callable, x: torch.Tensor, w: torch.Tensor, backward: bool) -> None:
    """``fn(x)``, and with ``backward`` the backward of ``(fn(x) * w).sum()``."""
    out = fn(x)
    if backward:
        (out * w).sum().backward()
        x.grad = None


def measure_memory(fn: Callable, x: torch.Tensor, w: torch.Tensor, device: torch.device) -> dict:
    """Peak bytes allocated during forward + backward of (fn(x) * w).sum(), beyond x and w.

    ``peak_buffers``: the peak in B x K float32 buffers; ``held_buffers``: memory alive right after
    the forward besides the output (what the graph keeps for the backward). CPU: the profiler's
    allocation events; CUDA: the caching allocator's statistics.
    """
    buf = x.numel() * 4
    run_once(fn, x, w, True)  # warm-up: compilation and caches out of the measurement
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn(x)
        _sync(device)
        held, out_bytes = torch.cuda.memory_allocated(device) - base, out.numel() * out.element_size()
        (out * w).sum().backward()
        x.grad = None
        del out
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        from torch.profiler import ProfilerActivity, profile, record_function

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            with record_function("bench_forward"):
                out = fn(x)
            out_bytes = out.numel() * out.element_size()
            (out * w).sum().backward()
            x.grad = None
            del out
        events = list(prof.profiler.kineto_results.events())
        fwd_end = max(e.end_ns() for e in events if e.name() == "bench_forward")
        cur = peak = 0
        held = None
        for e in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
            if held is None and e.start_ns() > fwd_end:
                held = cur
            cur += e.nbytes()
            peak = max(peak, cur)
        held = cur if held is None else held
    held = max(0, held - out_bytes)
    return {"peak_bytes": int(peak), "peak_buffers": peak / buf, "held_bytes": int(held), "held_buffers": held / buf}
