"""``gumbelkit bench``: speed and memory of Gumbel-Softmax implementations (DESIGN §5).

Implementations, timed in one process, interleaved (every round visits every variant, in a
rotated order, so a slow spell of a shared machine hits them all alike):

- ``builtin``: ``torch.nn.functional.gumbel_softmax`` (the baseline of every ratio);
- ``eager``: ``gumbelkit.gumbel_softmax`` (the default path, no compilation);
- ``fused``: ``gumbelkit.kernels.gumbel_softmax`` (Philox noise inside one compiled kernel);
- ``softmax``: ``torch.softmax`` alone, and ``clone``: a copy -- the floors a sampler can approach.

For each shape (B x K, the last dim the categories), mode (soft, hard) and pass (``fwd``: the
forward with autograd recording; ``fwdbwd``: forward and backward of ``(out * w).sum()``) the
median seconds over the rounds, the ratio ``builtin / impl`` and a nominal bandwidth are reported:
bytes = 8 per element for fwd (read logits, write output) and 20 for fwdbwd (plus read the incoming
gradient and the saved softmax, write the logits' gradient). Peak memory is measured afterwards
with the PyTorch profiler (CPU) or the CUDA allocator statistics: bytes allocated during one
forward+backward beyond the inputs, in units of one B x K float32 buffer ("peak"), and the memory
still held after the forward besides the output itself ("held"). A full categorical-VAE training
step (784-512-256-(30*10) encoder, mirrored decoder, batch 100, Adam) is timed with each sampler.

Outputs in ``--out``: ``bench.json`` (everything), ``bench.md`` (tables), ``bench.png`` (ratios).
Each finished shape is checkpointed to ``checkpoint.json`` (with a SHA-256 checksum); ``--resume``
skips finished shapes, and refuses a checkpoint that is damaged or has no checksum.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gumbelkit
from gumbelkit import kernels

from ._common import (
    MAX_THREADS,
    UserError,
    add_progress_flags,
    atomic_write_json,
    atomic_write_text,
    check_path,
    environment_info,
    markdown_table,
    parse_list,
    prepare_out_dir,
    progress,
    read_checked_json,
    resolve_device,
    save_figure,
    write_checked_json,
)

__all__ = ["DEFAULTS", "IMPLS", "add_arguments", "config_from_args", "main", "parse_shapes", "resolve_config"]

IMPLS = ("builtin", "eager", "fused", "softmax", "clone")
MODES = ("soft", "hard")
PASSES = ("fwd", "fwdbwd")
BYTES_PER_ELEMENT = {"fwd": 8, "fwdbwd": 20}

DEFAULTS = {
    "shapes": "4096x10,100x20x10,1024x1000,256x32000,64x262144",
    "impls": ",".join(IMPLS),
    "modes": ",".join(MODES),
    "tau": 1.0,
    "repeats": 0,  # 0: automatic, 15 rounds below 1M elements, 7 below 8M, 5 above
    "min_time": 0.002,  # seconds per timed sample: tiny shapes repeat the call inside a sample
    "memory": True,
    "vae": True,
    "vae_steps": 30,
    "cold_compile": False,
    # One thread: on a shared 2-core machine two OpenMP threads spin-wait for a descheduled
    # partner (measured several-fold slowdowns of parallel kernels while another process ran).
    "threads": 1,
    "device": "cpu",
    "seed": 0,
    "out": "runs/bench",
    "resume": False,
    "progress": None,
}


# --------------------------------------------------------------------------- configuration


#: Most elements one benchmarked tensor may have (2^31 - 1: beyond it some kernels index with
#: 64-bit offsets and the numbers would not compare like with like).
MAX_NUMEL = 2**31 - 1
MAX_DIMS = 8
#: float32 buffers of one shape alive at the worst moment, inputs and gradients included (the
#: built-in hard path peaks at 5 beyond the inputs x and w; the margin covers the profiler).
PEAK_BUFFERS = 10


def _check_shape(dims, item) -> list:
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise UserError(f"expected --shapes with at least two positive sizes (batch x categories), got {item!r}")
    if len(dims) > MAX_DIMS:
        raise UserError(f"expected --shapes with at most {MAX_DIMS} sizes, got {item!r}")
    numel = math.prod(dims)
    if numel > MAX_NUMEL:
        raise UserError(f"expected --shapes of at most {MAX_NUMEL} elements, got {item!r} ({numel:.3g} elements)")
    return dims


def parse_shapes(text: str) -> list:
    """``"4096x10,100x20x10"`` -> [[4096, 10], [100, 20, 10]]; UserError for anything else,
    including shapes of more than :data:`MAX_NUMEL` elements."""
    shapes = []
    for item in parse_list(text, "--shapes"):
        parts = item.lower().split("x")
        try:
            dims = [int(p) for p in parts]
        except ValueError:
            raise UserError(f"expected --shapes like 1024x1000,100x20x10, got {item!r}") from None
        shapes.append(_check_shape(dims, item))
    return shapes


def _available_memory(device: torch.device) -> int | None:
    """Bytes that can be allocated now on ``device`` (None when unknown)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, RuntimeError, AttributeError):
        return None


def _check_memory(shapes: list, device: torch.device) -> None:
    """UserError when the largest shape cannot be allocated: PEAK_BUFFERS float32 buffers of it."""
    if not shapes:
        return
    big = max(shapes, key=math.prod)
    need = PEAK_BUFFERS * 4 * math.prod(big)
    have = _available_memory(device)
    if have is not None and need > have:
        raise UserError(
            f"--shapes {'x'.join(map(str, big))} needs about {need / 2**30:.1f} GiB ({PEAK_BUFFERS} float32 buffers) "
            f"but {device.type} has {have / 2**30:.1f} GiB available"
        )


def _as_int(value, flag: str, minimum: int, maximum: int | None = None) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        v = int(value)
        if isinstance(value, float) and v != value:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"expected {flag} to be an integer >= {minimum}, got {value!r}") from None
    if v < minimum:
        raise UserError(f"expected {flag} >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise UserError(f"expected {flag} <= {maximum}, got {v}")
    return v


def _as_float(value, flag: str, positive: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"expected {flag} to be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise UserError(f"expected a finite {flag}, got {value!r}")
    if positive and v <= 0:
        raise UserError(f"expected {flag} > 0, got {value!r}")
    return v


def resolve_config(config: dict) -> dict:
    """Defaults filled in and every value validated; UserError (one line) for bad input."""
    unknown = sorted(set(config) - set(DEFAULTS) - {"shape_list"})
    if unknown:
        raise UserError(f"unknown bench option {unknown[0]!r}")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None or k == "progress"}}
    shapes = cfg["shapes"]
    if isinstance(shapes, str):
        cfg["shape_list"] = parse_shapes(shapes)
    else:
        try:
            cfg["shape_list"] = [_check_shape([int(d) for d in s], s) for s in shapes]
        except (TypeError, ValueError):
            raise UserError(f"expected shapes as lists of positive integers, got {shapes!r}") from None
        if not cfg["shape_list"]:
            raise UserError("expected at least one shape in --shapes")
    cfg["shapes"] = ",".join("x".join(str(d) for d in s) for s in cfg["shape_list"])
    for key, flag, allowed in (("impls", "--impls", IMPLS), ("modes", "--modes", MODES)):
        v = cfg[key]
        items = parse_list(v, flag, allowed=allowed) if isinstance(v, str) else list(v)
        bad = [i for i in items if i not in allowed]
        if bad or not items:
            raise UserError(f"unknown {flag} {bad[0] if bad else ''!r}; expected some of {', '.join(allowed)}")
        cfg[key] = ",".join(dict.fromkeys(items))
    cfg["tau"] = _as_float(cfg["tau"], "--tau")
    cfg["repeats"] = _as_int(cfg["repeats"], "--repeats", 0, 100_000)
    if cfg["repeats"] in (1, 2):
        raise UserError(f"expected --repeats 0 (automatic) or >= 3 for a median, got {cfg['repeats']}")
    cfg["min_time"] = _as_float(cfg["min_time"], "--min-time")
    if cfg["min_time"] > 60:
        raise UserError(f"expected --min-time <= 60 seconds, got {cfg['min_time']:g}")
    cfg["vae_steps"] = _as_int(cfg["vae_steps"], "--vae-steps", 1, 100_000)
    cfg["threads"] = _as_int(cfg["threads"], "--threads", 0, MAX_THREADS)
    cfg["seed"] = _as_int(cfg["seed"], "--seed", 0, 2**63 - 1)
    for key in ("memory", "vae", "cold_compile", "resume"):
        cfg[key] = bool(cfg[key])
    device = resolve_device(cfg["device"])
    cfg["device"] = str(device)
    _check_memory(cfg["shape_list"], device)
    cfg["out"] = check_path(cfg["out"], "--out")
    return cfg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gumbelkit bench`` flags (validated in :func:`resolve_config`)."""
    d = DEFAULTS
    a = parser.add_argument
    a("--shapes", default=d["shapes"], help="comma-separated BxK (or BxNxK) shapes, categories last; each at most "
      f"2^31-1 elements and {PEAK_BUFFERS} float32 buffers of it must fit in memory (default {d['shapes']})")
    a("--impls", default=d["impls"], help=f"implementations, from {', '.join(IMPLS)} (default: all)")
    a("--modes", default=d["modes"], help="soft, hard or both (default both)")
    a("--tau", default=d["tau"], help="temperature, any finite tau > 0 (speed only; default 1.0)")
    a("--repeats", default=d["repeats"], help="timing rounds per shape, 3..100000 (default 0: 15, 7 or 5 by size)")
    a("--min-time", default=d["min_time"], help="seconds per timed sample, > 0 and <= 60; small shapes loop inside it (default 0.002)")
    a("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement")
    a("--no-vae", dest="vae", action="store_false", help="skip the categorical-VAE training-step timing")
    a("--vae-steps", default=d["vae_steps"], help="timed VAE steps per sampler, 1..100000 (default 30)")
    a("--cold-compile", action="store_true", help="disable Inductor's on-disk caches to time a cold first compile")
    a("--threads", default=d["threads"], help=f"torch CPU threads, 0..{MAX_THREADS} (default 1; 0 keeps PyTorch's default)")
    a("--device", default=d["device"], help="cpu (default), cuda or auto")
    a("--seed", default=d["seed"], help="seed of the random logits and weights (default 0)")
    a("--out", default=d["out"], help="output folder (default runs/bench)")
    a("--resume", action="store_true", help="reuse the finished shapes in --out/checkpoint.json (refused if it fails its SHA-256 check)")
    add_progress_flags(parser)


def config_from_args(args: argparse.Namespace) -> dict:
    keys = set(DEFAULTS)
    return resolve_config({k: v for k, v in vars(args).items() if k in keys})


def command_line(cfg: dict) -> str:
    parts = ["gumbelkit bench", f"--shapes {cfg['shapes']}"]
    for key in ("impls", "modes"):
        if cfg[key] != DEFAULTS[key]:
            parts.append(f"--{key} {cfg[key]}")
    for key in ("tau", "repeats", "min_time", "vae_steps", "threads", "device", "seed"):
        if cfg[key] != DEFAULTS[key]:
            parts.append(f"--{key.replace('_', '-')} {cfg[key]}")
    for key, flag in (("memory", "--no-memory"), ("vae", "--no-vae")):
        if not cfg[key]:
            parts.append(flag)
    if cfg["cold_compile"]:
        parts.append("--cold-compile")
    parts.append(f"--out {cfg['out']}")
    return " ".join(parts)


# --------------------------------------------------------------------------- the implementations


def sampler(impl: str, mode: str, tau: float):
    """A one-argument function ``x -> output`` for one implementation and mode."""
    hard = mode == "hard"
    if impl == "builtin":
        return lambda x: F.gumbel_softmax(x, tau=tau, hard=hard)
    if impl == "eager":
        return lambda x: gumbelkit.gumbel_softmax(x, tau, hard)
    if impl == "fused":
        return lambda x: kernels.gumbel_softmax(x, tau, hard)
    if impl == "softmax":
        return lambda x: torch.softmax(x, -1)
    if impl == "clone":
        return lambda x: x.clone()
    raise ValueError(f"expected impl in {IMPLS}, got {impl!r}")


def _modes_for(impl: str, modes: list) -> list:
    # softmax and clone have no hard variant: one row each, listed under "soft"
    return ["soft"] if impl in ("softmax", "clone") else modes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_once(fn, x, w, backward: bool):
    out = fn(x)
    if backward:
        (out * w).sum().backward()
        x.grad = None


def _auto_repeats(numel: int) -> int:
    return 15 if numel < 1_000_000 else (7 if numel < 8_000_000 else 5)


def _time_shape(shape, cfg, device, bar) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(cfg["seed"])
    x = torch.randn(*shape, generator=gen).to(device).requires_grad_(True)
    w = torch.randn(*shape, generator=gen).to(device)
    impls = cfg["impls"].split(",")
    modes = cfg["modes"].split(",")
    units = [(i, m, p) for i in impls for m in _modes_for(i, modes) for p in PASSES]
    fns = {(i, m): sampler(i, m, cfg["tau"]) for i in impls for m in _modes_for(i, modes)}
    first_call, inner = {}, {}
    for unit in units:  # warm-up; the fused path compiles here (timed)
        i, m, p = unit
        before = dict(kernels.compile_times())
        _sync(device)
        t0 = time.perf_counter()
        _run_once(fns[i, m], x, w, p == "fwdbwd")
        _sync(device)
        first_call[unit] = time.perf_counter() - t0
        if i == "fused":
            new = {k: v for k, v in kernels.compile_times().items() if k not in before}
            first_call[unit] = {"seconds": first_call[unit], "compiled": [[k[0], v] for k, v in new.items()]}
        t0 = time.perf_counter()
        _run_once(fns[i, m], x, w, p == "fwdbwd")
        _sync(device)
        est = time.perf_counter() - t0
        inner[unit] = max(1, min(1000, int(cfg["min_time"] / max(est, 1e-7))))
    rounds = cfg["repeats"] or _auto_repeats(x.numel())
    samples = {u: [] for u in units}
    for r in range(rounds):
        order = units[r % len(units):] + units[: r % len(units)]
        for unit in order:
            i, m, p = unit
            fn, n = fns[i, m], inner[unit]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                _run_once(fn, x, w, p == "fwdbwd")
            _sync(device)
            samples[unit].append((time.perf_counter() - t0) / n)
        bar.update(1)
    numel = x.numel()
    rows = []
    for unit in units:
        i, m, p = unit
        med = statistics.median(samples[unit])
        base = ("builtin", m if m in modes else "soft", p)
        base_med = statistics.median(samples[base]) if base in samples else float("nan")
        rows.append({
            "shape": "x".join(map(str, shape)),
            "impl": i,
            "mode": m,
            "pass": p,
            "median_ms": med * 1e3,
            "min_ms": min(samples[unit]) * 1e3,
            "ratio_vs_builtin": base_med / med,
            "gb_per_s": BYTES_PER_ELEMENT[p] * numel / med / 1e9,
            "rounds": rounds,
            "calls_per_sample": inner[unit],
        })
    compile_info = [
        {"mode": m, "pass": p, **v} for (i, m, p), v in first_call.items() if i == "fused" and isinstance(v, dict)
    ]
    result = {"shape": "x".join(map(str, shape)), "numel": numel, "rows": rows, "fused_first_calls": compile_info}
    if cfg["memory"]:
        result["memory"] = [
            {"impl": i, "mode": m, **measure_memory(fns[i, m], x, w, device)}
            for i in impls for m in _modes_for(i, modes)
        ]
    return result


# --------------------------------------------------------------------------- memory


def measure_memory(fn, x: torch.Tensor, w: torch.Tensor, device: torch.device) -> dict:
    """Peak bytes allocated during forward + backward of (fn(x) * w).sum(), beyond x and w.

    Returns ``peak_buffers`` (peak / one B x K float32 buffer), ``held_buffers`` (memory alive
    right after the forward minus the output itself: what the autograd graph keeps for the
    backward) and the raw bytes. CPU: from the profiler's allocation events; CUDA: the caching
    allocator's statistics.
    """
    buf = x.numel() * 4
    _run_once(fn, x, w, True)  # warm-up: compilation and caches out of the measurement
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn(x)
        _sync(device)
        held = torch.cuda.memory_allocated(device) - base
        out_bytes = out.numel() * out.element_size()
        (out * w).sum().backward()
        x.grad = None
        del out
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        from torch.profiler import ProfilerActivity, profile, record_function

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            with record_function("gumbelkit_bench_forward"):
                out = fn(x)
            out_bytes = out.numel() * out.element_size()
            (out * w).sum().backward()
            x.grad = None
            del out
        events = list(prof.profiler.kineto_results.events())
        fwd_end = max(e.end_ns() for e in events if e.name() == "gumbelkit_bench_forward")
        mem = sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns())
        cur = peak = 0
        held = None
        for e in mem:
            if held is None and e.start_ns() > fwd_end:
                held = cur
            cur += e.nbytes()
            peak = max(peak, cur)
        held = cur if held is None else held
    held_beyond_output = max(0, held - out_bytes)
    return {
        "peak_bytes": int(peak),
        "peak_buffers": peak / buf,
        "held_bytes": int(held_beyond_output),
        "held_buffers": held_beyond_output / buf,
    }


# --------------------------------------------------------------------------- categorical VAE step


class _TinyVAE(torch.nn.Module):
    """Jang et al.'s categorical VAE: 784-512-256-(N*K) encoder, mirrored decoder, ReLU."""

    def __init__(self, n: int = 30, k: int = 10, d: int = 784):
        super().__init__()
        self.n, self.k = n, k
        self.enc = torch.nn.Sequential(
            torch.nn.Linear(d, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, n * k)
        )
        self.dec = torch.nn.Sequential(
            torch.nn.Linear(n * k, 256), torch.nn.ReLU(), torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, d)
        )

    def loss(self, x: torch.Tensor, sample) -> torch.Tensor:
        logits = self.enc(x).view(-1, self.n, self.k)
        z = sample(logits)
        recon = F.binary_cross_entropy_with_logits(self.dec(z.flatten(1)), x, reduction="none").sum(-1)
        q = torch.softmax(logits, -1)
        kl = (q * (torch.log_softmax(logits, -1) + math.log(self.k))).sum((-2, -1))
        return (recon + kl).mean()


def time_vae_step(cfg: dict, device: torch.device, bar) -> dict:
    """Median seconds of one training step (forward, backward, Adam) with each sampler."""
    impls = [i for i in cfg["impls"].split(",") if i in ("builtin", "eager", "fused")]
    modes = cfg["modes"].split(",")
    gen = torch.Generator().manual_seed(cfg["seed"])
    data = (torch.rand(100, 784, generator=gen) < 0.3).float().to(device)  # speed only: random binary images
    variants = [(i, m) for i in impls for m in modes]
    models, opts = {}, {}
    for v in variants:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg["seed"])
            models[v] = _TinyVAE().to(device)
        opts[v] = torch.optim.Adam(models[v].parameters(), lr=1e-3)
    fns = {v: sampler(v[0], v[1], cfg["tau"]) for v in variants}

    def step(v):
        opts[v].zero_grad(set_to_none=True)
        loss = models[v].loss(data, fns[v])
        loss.backward()
        opts[v].step()

    first = {}
    for v in variants:
        _sync(device)
        t0 = time.perf_counter()
        step(v)
        _sync(device)
        first[v] = time.perf_counter() - t0
        step(v)
    samples = {v: [] for v in variants}
    for r in range(cfg["vae_steps"]):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            _sync(device)
            t0 = time.perf_counter()
            step(v)
            _sync(device)
            samples[v].append(time.perf_counter() - t0)
        bar.update(1)
    rows = []
    for i, m in variants:
        med = statistics.median(samples[i, m])
        base = statistics.median(samples["builtin", m]) if ("builtin", m) in samples else float("nan")
        rows.append({
            "impl": i,
            "mode": m,
            "median_ms": med * 1e3,
            "ratio_vs_builtin": base / med,
            "first_step_s": first[i, m],
            "steps": cfg["vae_steps"],
        })
    return {"shape": "100x30x10", "model": "784-512-256-(30*10), decoder mirrored, Adam, batch 100", "rows": rows}


# --------------------------------------------------------------------------- reports


def _tables(results: dict) -> str:
    env = results["environment"]
    lines = [
        "# gumbelkit bench",
        "",
        f"Command: `{results['command']}`",
        "",
        f"torch {env['torch']}, {env['threads']} thread(s), device {env['device']}, {env['platform']}.",
        "Times are medians over interleaved rounds; ratio = built-in time / this time (higher is faster).",
        "",
    ]
    shapes = results["shapes"]
    for p, title in (("fwdbwd", "Forward + backward of (out * w).sum()"), ("fwd", "Forward (autograd recording)")):
        lines += [f"## {title}", ""]
        headers = ["shape", "mode", "impl", "median ms", "vs built-in", "GB/s"]
        rows = []
        for s in shapes:
            for r in s["rows"]:
                if r["pass"] == p:
                    rows.append([s["shape"], r["mode"], r["impl"], r["median_ms"], r["ratio_vs_builtin"], r["gb_per_s"]])
        lines += [markdown_table(headers, rows), ""]
    if any("memory" in s for s in shapes):
        lines += [
            "## Peak memory (forward + backward), in B x K float32 buffers beyond the inputs",
            "",
            ("peak: everything allocated at the worst moment, incoming gradient and output included; "
             "held: kept by the autograd graph between forward and backward, besides the output."),
            "",
        ]
        rows = []
        for s in shapes:
            for m in s.get("memory", []):
                rows.append([s["shape"], m["mode"], m["impl"], m["peak_buffers"], m["held_buffers"]])
        lines += [markdown_table(["shape", "mode", "impl", "peak", "held"], rows), ""]
    comp = [(s["shape"], c) for s in shapes for c in s.get("fused_first_calls", []) if c["compiled"]]
    if comp:
        lines += ["## Fused path: first calls (compilation included)", ""]
        rows = [[shp, c["mode"], c["pass"], c["seconds"], ", ".join(f"{n} {t:.1f} s" for n, t in c["compiled"])] for shp, c in comp]
        lines += [markdown_table(["shape", "mode", "pass", "first call s", "compiled variants"], rows), ""]
        if not results.get("fused_available", True):
            lines += [f"The fused path was unavailable and fell back to eager: {results.get('fused_failure')}", ""]
    if results.get("vae"):
        v = results["vae"]
        lines += [f"## Categorical VAE training step ({v['model']})", ""]
        rows = [[r["mode"], r["impl"], r["median_ms"], r["ratio_vs_builtin"], r["first_step_s"]] for r in v["rows"]]
        lines += [markdown_table(["mode", "impl", "median ms/step", "vs built-in", "first step s"], rows), ""]
    return "\n".join(lines)


def _figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = results["shapes"]
    modes = results["config"]["modes"].split(",")
    impls = [i for i in results["config"]["impls"].split(",") if i != "builtin"]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            vals = []
            for s in shapes:
                r = [r for r in s["rows"] if r["impl"] == impl and r["pass"] == "fwdbwd" and r["mode"] in (mode, "soft")
                     and (r["mode"] == mode or impl in ("softmax", "clone"))]
                vals.append(r[0]["ratio_vs_builtin"] if r else float("nan"))
            ax.bar([k + j * width for k in range(len(shapes))], vals, width, label=impl)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(shapes))])
        ax.set_xticklabels([s["shape"] for s in shapes], rotation=20, fontsize=8)
        ax.set_ylabel("speed-up vs F.gumbel_softmax (fwd+bwd)")
        ax.set_title(f"{mode}: higher is faster ({results['environment']['threads']} thread(s))")
        ax.legend(fontsize=8)
    save_figure(fig, path)


# --------------------------------------------------------------------------- main

_RESUME_HINT = "delete it or run without --resume"
_ROW_NUMBERS = ("median_ms", "min_ms", "ratio_vs_builtin", "gb_per_s", "rounds", "calls_per_sample")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_checkpoint(ckpt: dict) -> str | None:
    """What is wrong with the layout of a (checksum-verified) bench checkpoint, or None."""
    if not isinstance(ckpt.get("settings"), dict) or not isinstance(ckpt.get("shapes"), list):
        return "it has no settings or shapes"
    for s in ckpt["shapes"]:
        if not isinstance(s, dict) or not isinstance(s.get("shape"), str) or not isinstance(s.get("rows"), list):
            return "a shape entry has no shape name or rows"
        name = s["shape"]
        for r in s["rows"]:
            if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("impl", "mode", "pass")) or not all(
                _num(r.get(k)) for k in _ROW_NUMBERS
            ):
                return f"a row of shape {name} lacks a field it needs"
        if not isinstance(s.get("fused_first_calls", []), list) or not all(
            isinstance(c, dict) and _num(c.get("seconds")) and isinstance(c.get("compiled"), list)
            and isinstance(c.get("mode"), str) and isinstance(c.get("pass"), str)
            and all(isinstance(v, list) and len(v) == 2 and _num(v[1]) for v in c["compiled"])
            for c in s.get("fused_first_calls", [])
        ):
            return f"the fused first calls of shape {name} are malformed"
        for m in s.get("memory", []) if isinstance(s.get("memory", []), list) else [None]:
            if not isinstance(m, dict) or not all(_num(m.get(k)) for k in ("peak_buffers", "held_buffers")) or not all(
                isinstance(m.get(k), str) for k in ("impl", "mode")
            ):
                return f"the memory entry of shape {name} is malformed"
    return None


def main(config: dict) -> dict:
    """Run the benchmark described by ``config`` (see :data:`DEFAULTS`); returns the results dict."""
    cfg = resolve_config(config)
    out = prepare_out_dir(cfg["out"], "--out")
    device = torch.device(cfg["device"])
    ckpt_path = out / "checkpoint.json"
    done = {}
    comparable = {k: v for k, v in cfg.items() if k not in ("shapes", "shape_list", "out", "resume", "progress", "vae", "vae_steps")}
    if cfg["resume"] and ckpt_path.exists():
        ckpt = read_checked_json(ckpt_path, what="checkpoint", hint=_RESUME_HINT)
        why = _check_checkpoint(ckpt)
        if why:
            raise UserError(f"checkpoint {ckpt_path} is unusable: {why}; {_RESUME_HINT}")
        if ckpt["settings"] == comparable:
            done = {s["shape"]: s for s in ckpt["shapes"]}
        else:
            print(f"gumbelkit bench: {ckpt_path} was written with other settings; timing every shape again",
                  file=sys.stderr)
    if cfg["cold_compile"]:
        # A fresh, empty Inductor cache folder (kernels are cached on disk by source hash) and no
        # FX-graph cache: the first calls then include the whole compilation.
        import os
        import tempfile

        import torch._inductor.config as inductor_config

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="gumbelkit-bench-inductor-")
        inductor_config.fx_graph_cache = False
    old_threads = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    try:
        todo = [s for s in cfg["shape_list"] if "x".join(map(str, s)) not in done]
        total = sum(cfg["repeats"] or _auto_repeats(math.prod(s)) for s in todo) + (cfg["vae_steps"] if cfg["vae"] else 0)
        bar = progress(total, "bench", enabled=cfg["progress"])
        shapes = []
        try:
            for shape in cfg["shape_list"]:
                key = "x".join(map(str, shape))
                if key not in done:
                    done[key] = _time_shape(shape, cfg, device, bar)
                    write_checked_json(ckpt_path, {"settings": comparable, "shapes": list(done.values())})
                shapes.append(done[key])
            vae = time_vae_step(cfg, device, bar) if cfg["vae"] else None
        finally:
            bar.close()
        env = environment_info(device)
    finally:
        torch.set_num_threads(old_threads)
    results = {
        "command": command_line(cfg),
        "config": {k: v for k, v in cfg.items() if k != "shape_list"},
        "environment": env,
        "fused_available": kernels.is_available(),
        "fused_failure": None if kernels.is_available() else "compilation failed; fused rows ran the eager path",
        "shapes": shapes,
        "vae": vae,
    }
    atomic_write_json(out / "bench.json", results)
    atomic_write_text(out / "bench.md", _tables(results))
    _figure(results, out / "bench.png")
    print(f"gumbelkit bench: wrote {out / 'bench.json'}, bench.md, bench.png", file=sys.stderr)
    return results
