"""``gumbelkit bench``: speed and memory of Gumbel-Softmax implementations (DESIGN §5).

Implementations, timed in one process, interleaved (every round visits every variant, in a
rotated order, so a slow spell of a shared machine hits them all alike):

- ``builtin``: ``torch.nn.functional.gumbel_softmax`` (the baseline of every ratio);
- ``eager``: ``gumbelkit.gumbel_softmax`` (the default path, no compilation);
- ``fused``: ``gumbelkit.kernels.gumbel_softmax`` (Philox noise inside one compiled kernel);
- ``softmax``: ``torch.softmax`` alone, and ``clone``: a copy -- the floors a sampler can approach;
- with ``--methods NAME[:OPTION=VALUE,...]``, any registered sampling method through
  ``gumbelkit.sample`` (plugins included), as the implementation ``sample:<label>`` in its own mode
  (hard for a one-hot method, soft otherwise).

For each shape (B x K, the last dim the categories), mode (soft, hard) and pass (``fwd``: the
forward with autograd recording; ``fwdbwd``: forward and backward of ``(out * w).sum()``) the
median seconds over the rounds, the ratio ``builtin / impl`` and a nominal bandwidth are reported:
bytes = 8 per element for fwd (read logits, write output) and 20 for fwdbwd (plus read the incoming
gradient and the saved softmax, write the logits' gradient). Peak memory is measured afterwards
with the PyTorch profiler (CPU) or the CUDA allocator statistics: bytes allocated during one
forward+backward beyond the inputs, in units of one B x K float32 buffer ("peak"), and the memory
still held after the forward besides the output itself ("held"). A full categorical-VAE training
step (784-512-256-(30*10) encoder, mirrored decoder, batch 100, Adam) is timed with each sampler.

Four more sections, off unless their option gives shapes:

- ``--layout-shapes`` (B x K x H x W): the categories at dim=1, as quantizers call the sampler --
  the built-in and gumbelkit at dim=1 beside gumbelkit on the categories-last twin B x H x W x K;
- ``--cost-shapes`` (B x K x H x W, dim=1): forward+backward time and peak memory of every
  registered sampling method (default options), relative to the baseline method and the built-in;
- ``--compile-shape``: a 1x1 conv -> sampler (each of ``--modes``) -> 1x1 conv model, eager and under
  ``torch.compile(fullgraph=True)``, with the built-in and with gumbelkit; first calls (compilation
  included) reported;
- ``--quantizer-shape``: a whole quantiser layer (projection, sampler, codebook, KL, codes):
  ``gumbelkit.nn.GumbelQuantizer`` against the same layer written by hand with the built-in
  sampler and with gumbelkit's.

Outputs in ``--out``: ``bench.json`` (everything), ``bench.md`` (tables), ``bench.png`` (ratios).
Each finished shape is checkpointed to ``checkpoint.json`` (with a SHA-256 checksum); ``--resume``
skips finished shapes, and refuses a checkpoint that is damaged or has no checksum. The JSON and
Markdown files are written before the figure, which is skipped (with a note) without matplotlib.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

import gumbelkit
from gumbelkit import kernels

from . import _harness as H
from ._common import (
    MAX_THREADS,
    UserError,
    environment_info,
    markdown_table,
    resolve_device,
    save_figure,
    write_checked_json,
)
from ._methods import MethodChoice, describe_methods, parse_method, parse_methods

__all__ = [
    "DEFAULTS",
    "IMPLS",
    "BenchConfig",
    "add_arguments",
    "config_from_args",
    "main",
    "parse_shapes",
    "resolve_config",
]

IMPLS = ("builtin", "eager", "fused", "softmax", "clone")
MODES = ("soft", "hard")
PASSES = ("fwd", "fwdbwd")
BYTES_PER_ELEMENT = {"fwd": 8, "fwdbwd": 20}

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
    for item in H.parse_list(text, "--shapes"):
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


#: Prefix of the implementation name of a registered method (``sample:gumbel_rao:k=10``).
METHOD_PREFIX = "sample:"
_SAMPLE_KIND = ("sample",)


def _check_shapes(value: Any, flag: str) -> str:
    if isinstance(value, str):
        shapes = parse_shapes(value)
    else:
        try:
            shapes = [_check_shape([int(d) for d in s], s) for s in value]
        except (TypeError, ValueError):
            raise UserError(f"expected shapes as lists of positive integers, got {value!r}") from None
        if not shapes:
            raise UserError("expected at least one shape in --shapes")
    return ",".join("x".join(str(d) for d in s) for s in shapes)


def _check_optional_shapes(value: Any, flag: str, ndim: int, single: bool = False) -> str:
    """Empty (the section is skipped) or shapes of exactly ``ndim`` sizes (one with ``single``)."""
    if value in ("", None, [], ()):
        return ""
    text = _check_shapes(value, flag)
    items = text.split(",")
    if any(len(t.split("x")) != ndim for t in items):
        raise UserError(f"expected {flag} with {ndim} sizes each (B x K x H x W), got {value!r}")
    if single and len(items) != 1:
        raise UserError(f"expected one shape for {flag}, got {value!r}")
    return text


def _check_repeats(value: Any, flag: str) -> int:
    v = H.Int(0, 100_000)(value, flag)
    if v in (1, 2):
        raise UserError(f"expected {flag} 0 (automatic) or >= 3 for a median, got {v}")
    return v


def _check_device(value: Any, flag: str) -> str:
    return str(resolve_device(str(value)))


def _check_methods(value: Any, flag: str) -> list[str]:
    if value in ("", [], ()):
        return []
    return [m.label for m in parse_methods(value, flag, kinds=_SAMPLE_KIND)]


def _methods_help() -> str:
    return (
        "registered methods to time as well, through gumbelkit.sample, each as the implementation "
        f"sample:<label>: NAME[:OPTION=VALUE,...] from {describe_methods(_SAMPLE_KIND)}"
    )


@dataclasses.dataclass(frozen=True)
class BenchConfig(H.Config):
    """Everything ``gumbelkit bench`` does, as validated values (see :func:`resolve_config`)."""

    COMMAND: ClassVar[str] = "bench"
    DERIVED: ClassVar[tuple[str, ...]] = ("shape_list",)

    shapes: str = H.setting(
        "4096x10,100x20x10,1024x1000,256x32000,64x262144",
        f"comma-separated BxK (or BxNxK) shapes, categories last; each at most 2^31-1 elements and {PEAK_BUFFERS} "
        "float32 buffers of it must fit in memory",
        H.Custom(_check_shapes),
        fingerprint=False,
    )
    impls: str = H.setting(",".join(IMPLS), "implementations", H.Names(IMPLS, joined=True))
    modes: str = H.setting(",".join(MODES), "soft, hard or both", H.Names(MODES, joined=True))
    methods: list = dataclasses.field(default_factory=list, metadata=H.meta(_methods_help, H.Custom(_check_methods)))
    tau: float = H.setting(1.0, "temperature, any finite tau > 0 (speed only)", H.Float(positive=True))
    repeats: int = H.setting(
        0,
        "timing rounds per shape, 0 (automatic: 15, 7 or 5 by size) or 3..100000",
        H.Custom(_check_repeats, "0 or 3..100000"),
    )
    min_time: float = H.setting(
        0.002, "seconds per timed sample; small shapes loop inside it", H.Float(positive=True, maximum=60.0)
    )
    memory: bool = H.setting(True, "measure the peak memory", H.Flag())
    vae: bool = H.setting(True, "time a categorical-VAE training step", H.Flag(), fingerprint=False)
    vae_steps: int = H.setting(30, "timed VAE steps per sampler", H.Int(1, 100_000), fingerprint=False)
    layout_shapes: str = H.setting(
        "",
        "channels-first B x K x H x W shapes (default none; e.g. 4x8192x32x32,32x512x8x8,16x64x8x8) sampled along dim=1, each timed beside its "
        "categories-last twin B x H x W x K (dim=-1) and the built-in at dim=1",
        H.Custom(lambda v, f: _check_optional_shapes(v, f, 4), "comma-separated BxKxHxW or empty"),
        fingerprint=False,
    )
    cost_shapes: str = H.setting(
        "",
        "channels-first B x K x H x W shapes (default none; e.g. 16x512x8x8,4x512x32x32) for the cost table: forward+backward time and "
        "peak memory of every registered sampling method (default options) along dim=1, against the built-in",
        H.Custom(lambda v, f: _check_optional_shapes(v, f, 4), "comma-separated BxKxHxW or empty"),
        fingerprint=False,
    )
    compile_shape: str = H.setting(
        "",
        "B x K x H x W of the compiled-model section (default none; e.g. 32x512x8x8): 1x1 conv (64 -> K) -> sampler "
        "along dim=1 (each of --modes) -> 1x1 conv (K -> 64), eager and torch.compile(fullgraph=True), built-in and gumbelkit",
        H.Custom(lambda v, f: _check_optional_shapes(v, f, 4, single=True), "BxKxHxW or empty"),
        fingerprint=False,
    )
    quantizer_shape: str = H.setting(
        "",
        "B x K x H x W of the quantizer section (default none; e.g. 16x512x16x16): a 64-channel B x 64 x H x W input "
        "quantised to K codes of size 64 by gumbelkit.nn.GumbelQuantizer and by the same layer written by hand "
        "(1x1 conv, gumbel_softmax along dim=1, codebook product, KL, argmax codes) with the built-in and with "
        "gumbelkit's sampler, for each of --modes",
        H.Custom(lambda v, f: _check_optional_shapes(v, f, 4, single=True), "BxKxHxW or empty"),
        fingerprint=False,
    )
    cold_compile: bool = H.setting(False, "disable Inductor's on-disk caches to time a cold first compile", H.Flag())
    # One thread: on a shared 2-core machine two OpenMP threads spin-wait for a descheduled
    # partner (measured several-fold slowdowns of parallel kernels while another process ran).
    threads: int = H.setting(1, "torch CPU threads (0 keeps PyTorch's default)", H.Int(0, MAX_THREADS))
    device: str = H.setting("cpu", "cpu, cuda or auto", H.Custom(_check_device))
    seed: int = H.setting(0, "seed of the random logits and weights", H.Int(0, 2**63 - 1))
    out: str = H.setting("runs/bench", "output folder", H.Path(), fingerprint=False)
    resume: bool = H.setting(
        False,
        "reuse the finished shapes in --out/checkpoint.json (refused if it fails its SHA-256 check)",
        H.Flag(),
        fingerprint=False,
        in_command=False,
    )
    progress: bool | None = H.progress_setting()
    plots: bool | None = H.setting(
        None,
        "draw bench.png after the results are written (default: when matplotlib "
        "is installed; --plots without it is refused)",
        H.Tri(),
        fingerprint=False,
        in_command=False,
    )

    @classmethod
    def cross_check(cls, values: dict, given: Mapping[str, Any]) -> dict:
        extra = _dims(values["layout_shapes"]) + _dims(values["cost_shapes"]) + _dims(values["compile_shape"])
        extra += _dims(values["quantizer_shape"])
        _check_memory(
            [[int(d) for d in s.split("x")] for s in values["shapes"].split(",")] + extra,
            torch.device(values["device"]),
        )
        return values

    @property
    def shape_list(self) -> list[list[int]]:
        return [[int(d) for d in s.split("x")] for s in self.shapes.split(",")]

    @functools.cached_property
    def method_choices(self) -> list[MethodChoice]:
        return parse_methods(self.methods, kinds=_SAMPLE_KIND) if self.methods else []


#: Every default, as a dict; the config's entry points (see :func:`._harness.command_api`).
DEFAULTS, resolve_config, add_arguments, config_from_args = H.command_api(BenchConfig)


def requirements(cfg: BenchConfig) -> list[H.Requirement]:
    """The optional packages this configuration needs (checked at start)."""
    return H.common_requirements(cfg.progress)


def command_line(cfg: BenchConfig) -> str:
    return H.command_line(cfg, first=("shapes",))


# --------------------------------------------------------------------------- the implementations


def sampler(impl: str, mode: str, tau: float):
    """A one-argument function ``x -> output`` for one implementation and mode (a registered
    method ``sample:<label>`` has its own mode and ignores ``mode``)."""
    hard = mode == "hard"
    if impl.startswith(METHOD_PREFIX):
        choice = parse_method(impl[len(METHOD_PREFIX) :], kinds=_SAMPLE_KIND)
        return lambda x: gumbelkit.sample(x, choice.name, tau, **choice.options)
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


# The floors have no hard variant: one row each, listed under "soft".
_SOFT_ONLY = ("softmax", "clone")


def _modes_for(impl: str, modes: list) -> list:
    if impl.startswith(METHOD_PREFIX):  # a registered method has one mode: its own
        one_hot = parse_method(impl[len(METHOD_PREFIX) :], kinds=_SAMPLE_KIND).one_hot
        return ["hard" if one_hot else "soft"]
    return ["soft"] if impl in _SOFT_ONLY else modes


def _impls(cfg: BenchConfig) -> list[str]:
    """The implementations to time: the chosen ones, then the registered methods asked for."""
    return cfg.impls.split(",") + [METHOD_PREFIX + label for label in cfg.methods]


def _run_once(fn, x, w, backward: bool):
    out = fn(x)
    if backward:
        (out * w).sum().backward()
        x.grad = None


def _auto_repeats(numel: int) -> int:
    return 15 if numel < 1_000_000 else (7 if numel < 8_000_000 else 5)


def _time_shape(shape, cfg: BenchConfig, device: torch.device, bar) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    x = torch.randn(*shape, generator=gen).to(device).requires_grad_(True)
    w = torch.randn(*shape, generator=gen).to(device)
    impls = _impls(cfg)
    modes = cfg.modes.split(",")
    units = [(i, m, p) for i in impls for m in _modes_for(i, modes) for p in PASSES]
    fns = {(i, m): sampler(i, m, cfg.tau) for i in impls for m in _modes_for(i, modes)}
    first_call: dict[tuple, Any] = {}
    inner: dict[tuple, int] = {}
    for unit in units:  # warm-up; the fused path compiles here (timed)
        i, m, p = unit
        before = dict(kernels.compile_times())
        with H.Timer(device) as first:
            _run_once(fns[i, m], x, w, p == "fwdbwd")
        first_call[unit] = first.seconds
        if i == "fused":
            new = {k: v for k, v in kernels.compile_times().items() if k not in before}
            first_call[unit] = {"seconds": first_call[unit], "compiled": [[k[0], v] for k, v in new.items()]}
        with H.Timer(device) as again:
            _run_once(fns[i, m], x, w, p == "fwdbwd")
        inner[unit] = max(1, min(1000, int(cfg.min_time / max(again.seconds, 1e-7))))
    rounds = cfg.repeats or _auto_repeats(x.numel())
    samples: dict[tuple, list[float]] = {u: [] for u in units}
    for r in range(rounds):
        order = units[r % len(units) :] + units[: r % len(units)]
        for unit in order:
            i, m, p = unit
            fn, n = fns[i, m], inner[unit]
            with H.Timer(device) as timer:
                for _ in range(n):
                    _run_once(fn, x, w, p == "fwdbwd")
            samples[unit].append(timer.seconds / n)
        bar.update(1)
    numel = x.numel()
    rows = []
    for unit in units:
        i, m, p = unit
        med = statistics.median(samples[unit])
        base = ("builtin", m if m in modes else "soft", p)
        base_med = statistics.median(samples[base]) if base in samples else float("nan")
        rows.append(
            {
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
            }
        )
    compile_info = [
        {"mode": m, "pass": p, **v} for (i, m, p), v in first_call.items() if i == "fused" and isinstance(v, dict)
    ]
    result = {"shape": "x".join(map(str, shape)), "numel": numel, "rows": rows, "fused_first_calls": compile_info}
    if cfg.memory:
        result["memory"] = [
            {"impl": i, "mode": m, **measure_memory(fns[i, m], x, w, device)}
            for i in impls
            for m in _modes_for(i, modes)
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
        H.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn(x)
        H.synchronize(device)
        held = torch.cuda.memory_allocated(device) - base
        out_bytes = out.numel() * out.element_size()
        (out * w).sum().backward()
        x.grad = None
        del out
        H.synchronize(device)
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
            torch.nn.Linear(d, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 256),
            torch.nn.ReLU(),
            torch.nn.Linear(256, n * k),
        )
        self.dec = torch.nn.Sequential(
            torch.nn.Linear(n * k, 256),
            torch.nn.ReLU(),
            torch.nn.Linear(256, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, d),
        )

    def loss(self, x: torch.Tensor, sample) -> torch.Tensor:
        logits = self.enc(x).view(-1, self.n, self.k)
        z = sample(logits)
        recon = F.binary_cross_entropy_with_logits(self.dec(z.flatten(1)), x, reduction="none").sum(-1)
        q = torch.softmax(logits, -1)
        kl = (q * (torch.log_softmax(logits, -1) + math.log(self.k))).sum((-2, -1))
        return (recon + kl).mean()


def time_vae_step(cfg: BenchConfig, device: torch.device, bar) -> dict:
    """Median seconds of one training step (forward, backward, Adam) with each sampler."""
    modes = cfg.modes.split(",")
    impls = [i for i in _impls(cfg) if i in ("builtin", "eager", "fused") or i.startswith(METHOD_PREFIX)]
    gen = torch.Generator().manual_seed(cfg.seed)
    data = (torch.rand(100, 784, generator=gen) < 0.3).float().to(device)  # speed only: random binary images
    variants = [(i, m) for i in impls for m in _modes_for(i, modes)]
    models, opts = {}, {}
    for v in variants:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            models[v] = _TinyVAE().to(device)
        opts[v] = torch.optim.Adam(models[v].parameters(), lr=1e-3)
    fns = {v: sampler(v[0], v[1], cfg.tau) for v in variants}

    def step(v):
        opts[v].zero_grad(set_to_none=True)
        loss = models[v].loss(data, fns[v])
        loss.backward()
        opts[v].step()

    first = {}
    for v in variants:
        with H.Timer(device) as timer:
            step(v)
        first[v] = timer.seconds
        step(v)
    samples: dict[tuple, list[float]] = {v: [] for v in variants}
    for r in range(cfg.vae_steps):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            with H.Timer(device) as timer:
                step(v)
            samples[v].append(timer.seconds)
        bar.update(1)
    rows = []
    for i, m in variants:
        med = statistics.median(samples[i, m])
        base = statistics.median(samples["builtin", m]) if ("builtin", m) in samples else float("nan")
        rows.append(
            {
                "impl": i,
                "mode": m,
                "median_ms": med * 1e3,
                "ratio_vs_builtin": base / med,
                "first_step_s": first[i, m],
                "steps": cfg.vae_steps,
            }
        )
    return {"shape": "100x30x10", "model": "784-512-256-(30*10), decoder mirrored, Adam, batch 100", "rows": rows}


# --------------------------------------------------------------------------- categories not last, cost, compile


def _dims(text: str) -> list[list[int]]:
    return [[int(d) for d in t.split("x")] for t in text.split(",")] if text else []


def _interleaved(units: dict, rounds: int, min_time: float, device: torch.device, bar=None) -> dict:
    """Median and minimum seconds of each ``units[label]()`` over interleaved, rotated rounds.

    Each unit is warmed up twice first (the first call, which may compile, is timed on its own);
    calls shorter than ``min_time`` are repeated inside one timed sample.
    """
    first, inner = {}, {}
    for label, fn in units.items():
        with H.Timer(device) as t:
            fn()
        first[label] = t.seconds
        with H.Timer(device) as t:
            fn()
        inner[label] = max(1, min(1000, int(min_time / max(t.seconds, 1e-7))))
    labels = list(units)
    samples: dict[str, list[float]] = {k: [] for k in labels}
    for r in range(rounds):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            with H.Timer(device) as t:
                for _ in range(inner[label]):
                    units[label]()
            samples[label].append(t.seconds / inner[label])
        if bar is not None:
            bar.update(1)
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "first_s": first[k], "rounds": rounds}
        for k, v in samples.items()
    }


def _fwdbwd(fn, x: torch.Tensor, w: torch.Tensor):
    return lambda: _run_once(fn, x, w, True)


def time_layouts(cfg: BenchConfig, device: torch.device, bar) -> list[dict]:
    """Forward+backward at dim=1 of B x K x H x W against the same values laid out B x H x W x K (dim=-1).

    Rows per shape and mode: the built-in at dim=1, gumbelkit at dim=1 and gumbelkit on the
    categories-last twin; ``vs_builtin`` = built-in time / this time, ``vs_last`` = this time /
    gumbelkit's categories-last time (1.0 = channels-first costs nothing extra).
    """
    out = []
    for shape in _dims(cfg.layout_shapes):
        gen = torch.Generator().manual_seed(cfg.seed)
        x1 = torch.randn(*shape, generator=gen).to(device).requires_grad_(True)
        w1 = torch.randn(*shape, generator=gen).to(device)
        x2 = x1.detach().permute(0, 2, 3, 1).contiguous().requires_grad_(True)
        w2 = w1.permute(0, 2, 3, 1).contiguous()
        units = {}
        for mode in cfg.modes.split(","):
            hard = mode == "hard"
            units[mode, "builtin dim=1"] = _fwdbwd(lambda t, h=hard: F.gumbel_softmax(t, cfg.tau, h, dim=1), x1, w1)
            units[mode, "gumbelkit dim=1"] = _fwdbwd(
                lambda t, h=hard: gumbelkit.gumbel_softmax(t, cfg.tau, h, dim=1), x1, w1
            )
            units[mode, "gumbelkit dim=-1 (twin)"] = _fwdbwd(
                lambda t, h=hard: gumbelkit.gumbel_softmax(t, cfg.tau, h, dim=-1), x2, w2
            )
        rounds = cfg.repeats or _auto_repeats(x1.numel())
        res = _interleaved({f"{m}|{i}": f for (m, i), f in units.items()}, rounds, cfg.min_time, device, bar)
        name = "x".join(map(str, shape))
        for mode in cfg.modes.split(","):
            base = res[f"{mode}|builtin dim=1"]["median_s"]
            last = res[f"{mode}|gumbelkit dim=-1 (twin)"]["median_s"]
            last_min = res[f"{mode}|gumbelkit dim=-1 (twin)"]["min_s"]
            for impl in ("builtin dim=1", "gumbelkit dim=1", "gumbelkit dim=-1 (twin)"):
                r = res[f"{mode}|{impl}"]
                out.append(
                    {
                        "shape": name,
                        "mode": mode,
                        "impl": impl,
                        "median_ms": r["median_s"] * 1e3,
                        "min_ms": r["min_s"] * 1e3,
                        "vs_builtin": base / r["median_s"],
                        "vs_last": r["median_s"] / last,
                        "vs_last_min": r["min_s"] / last_min,
                        "rounds": r["rounds"],
                    }
                )
    return out


def time_costs(cfg: BenchConfig, device: torch.device, bar) -> list[dict]:
    """Forward+backward time and peak memory of every registered sampling method along dim=1.

    Every method of the registry that :func:`gumbelkit.sample` draws, with its default options,
    plus the built-in (hard) as an implementation; times relative to the baseline method
    (``BENCH_COST_BASELINE``) and to the built-in, peak memory in B x K float32 buffers.
    """
    from gumbelkit.estimators import registered_methods

    from ._defaults import BENCH_COST_BASELINE

    out = []
    names = list(registered_methods("sample"))
    for shape in _dims(cfg.cost_shapes):
        gen = torch.Generator().manual_seed(cfg.seed)
        x = torch.randn(*shape, generator=gen).to(device).requires_grad_(True)
        w = torch.randn(*shape, generator=gen).to(device)
        fns: dict[str, Any] = {"builtin (hard)": lambda t: F.gumbel_softmax(t, cfg.tau, True, dim=1)}
        for n in names:
            fns[n] = lambda t, n=n: gumbelkit.sample(t, n, cfg.tau, dim=1)
        res = _interleaved(
            {k: _fwdbwd(f, x, w) for k, f in fns.items()},
            cfg.repeats or _auto_repeats(x.numel()),
            cfg.min_time,
            device,
            bar,
        )
        base = res[BENCH_COST_BASELINE]["median_s"] if BENCH_COST_BASELINE in res else float("nan")
        base_min = res[BENCH_COST_BASELINE]["min_s"] if BENCH_COST_BASELINE in res else float("nan")
        builtin = res["builtin (hard)"]["median_s"]
        mems = {k: measure_memory(f, x, w, device) for k, f in fns.items()} if cfg.memory else {}
        base_mem = mems.get(BENCH_COST_BASELINE, {}).get("peak_buffers", float("nan"))
        for k in fns:
            r = res[k]
            row = {
                "shape": "x".join(map(str, shape)) + ":dim=1",
                "method": k,
                "median_ms": r["median_s"] * 1e3,
                "min_ms": r["min_s"] * 1e3,
                "vs_baseline": r["median_s"] / base,
                "vs_baseline_min": r["min_s"] / base_min,
                "vs_builtin": r["median_s"] / builtin,
                "rounds": r["rounds"],
            }
            if k in mems:
                row["peak_buffers"] = mems[k]["peak_buffers"]
                row["held_buffers"] = mems[k]["held_buffers"]
                row["peak_vs_baseline"] = mems[k]["peak_buffers"] / base_mem if base_mem else float("nan")
            out.append(row)
    return out


class _CodeModel(torch.nn.Module):
    """1x1 conv (channels -> K) -> sampler along dim=1 -> 1x1 conv (K -> channels): a quantizer's shape."""

    def __init__(self, k: int, sample, channels: int = 64):
        super().__init__()
        self.enc = torch.nn.Conv2d(channels, k, 1)
        self.dec = torch.nn.Conv2d(k, channels, 1)
        self.sample = sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.sample(self.enc(x)))


def time_compiled_model(cfg: BenchConfig, device: torch.device, bar) -> dict | None:
    """Forward+backward of a small model with each sampler, eager and under torch.compile(fullgraph=True).

    One model per mode of ``--modes`` (soft: the default of the quantizers that call
    ``gumbel_softmax(..., hard=False)``; hard: straight-through), all variants interleaved in one
    loop; each row's ratio is to eager gumbelkit in the same mode. The first call of a compiled
    model (compilation included) is reported in ``first_s``.
    """
    if not cfg.compile_shape:
        return None
    b, k, h, wd = _dims(cfg.compile_shape)[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(b, 64, h, wd, generator=gen).to(device)
    modes = cfg.modes.split(",")
    units = {}
    for mode in modes:
        hard = mode == "hard"
        samplers = {
            "builtin": lambda t, hard=hard: F.gumbel_softmax(t, cfg.tau, hard, dim=1),
            "gumbelkit": lambda t, hard=hard: gumbelkit.gumbel_softmax(t, cfg.tau, hard, dim=1),
        }
        for name, fn in samplers.items():
            for compiled in (False, True):
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(cfg.seed)
                    model: Any = _CodeModel(k, fn).to(device)
                if compiled:
                    model = torch.compile(model, fullgraph=True)

                def step(m=model):
                    m(x).square().mean().backward()

                units[mode, ("compiled " if compiled else "eager ") + name] = step
    res = _interleaved(units, cfg.repeats or 15, cfg.min_time, device, bar)
    rows = []
    for (mode, label), r in res.items():
        eager = res[mode, "eager gumbelkit"]
        rows.append(
            {
                "mode": mode,
                "variant": label,
                "median_ms": r["median_s"] * 1e3,
                "min_ms": r["min_s"] * 1e3,
                "first_s": r["first_s"],
                "vs_eager_gumbelkit": r["median_s"] / eager["median_s"],
                "vs_eager_gumbelkit_min": r["min_s"] / eager["min_s"],
                "rounds": r["rounds"],
            }
        )
    return {"shape": cfg.compile_shape, "model": "conv1x1(64->K) -> sampler dim=1 -> conv1x1(K->64)", "rows": rows}


class _HandWrittenQuantizer(torch.nn.Module):
    """A Gumbel quantiser as codebases write it by hand (taming-transformers' ``GumbelQuantize``).

    1x1 conv to K logits, ``sampler(logits, tau, hard, dim=1)``, the codebook product as an einsum,
    the KL to the uniform prior as sum q log(q K + 1e-10), and argmax codes.
    """

    def __init__(self, channels: int, k: int, d: int, sampler, tau: float, hard: bool, kl_weight: float = 5e-4):
        super().__init__()
        self.proj = torch.nn.Conv2d(channels, k, 1)
        self.embed = torch.nn.Embedding(k, d)
        self.sampler, self.tau, self.hard, self.k, self.kl_weight = sampler, tau, hard, k, kl_weight

    def forward(self, x: torch.Tensor):
        logits = self.proj(x)
        y = self.sampler(logits, self.tau, self.hard, dim=1)
        z_q = torch.einsum("bnhw,nd->bdhw", y, self.embed.weight)
        q = F.softmax(logits, dim=1)
        loss = self.kl_weight * torch.sum(q * torch.log(q * self.k + 1e-10), dim=1).mean()
        return z_q, loss, y.argmax(dim=1)


def time_quantizer(cfg: BenchConfig, device: torch.device, bar) -> dict | None:
    """Forward+backward of ``(z_q ** 2).mean() + loss`` through a whole quantiser layer, eager.

    Per mode of ``--modes``: :class:`gumbelkit.nn.GumbelQuantizer` (the mode's method from
    ``BENCH_QUANTIZER_METHODS``) and the hand-written layer with the built-in sampler and with
    ``gumbelkit.gumbel_softmax`` dropped in, all interleaved in one loop; each row's speed-up is the
    hand-written built-in layer's time (same mode) over its own.
    """
    from ._defaults import BENCH_QUANTIZER_METHODS

    if not cfg.quantizer_shape:
        return None
    b, k, h, wd = _dims(cfg.quantizer_shape)[0]
    channels = 64
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(b, channels, h, wd, generator=gen).to(device)
    units = {}
    for mode in cfg.modes.split(","):
        hard = mode == "hard"
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            layers = {
                "hand-written, built-in sampler": _HandWrittenQuantizer(
                    channels, k, channels, F.gumbel_softmax, cfg.tau, hard
                ),
                "hand-written, gumbelkit sampler": _HandWrittenQuantizer(
                    channels, k, channels, gumbelkit.gumbel_softmax, cfg.tau, hard
                ),
                "GumbelQuantizer": gumbelkit.nn.GumbelQuantizer(
                    channels, k, channels, method=BENCH_QUANTIZER_METHODS[mode], tau=cfg.tau, dim=1
                ),
            }
        for label, layer in layers.items():
            layer.to(device)

            def step(m=layer):
                z_q, loss = m(x)[:2]
                (z_q.square().mean() + loss).backward()

            units[mode, label] = step
    res = _interleaved(units, cfg.repeats or 15, cfg.min_time, device, bar)
    rows = []
    for (mode, label), r in res.items():
        base = res[mode, "hand-written, built-in sampler"]
        rows.append(
            {
                "mode": mode,
                "variant": label,
                "method": BENCH_QUANTIZER_METHODS[mode] if label == "GumbelQuantizer" else None,
                "median_ms": r["median_s"] * 1e3,
                "min_ms": r["min_s"] * 1e3,
                "vs_builtin": base["median_s"] / r["median_s"],
                "vs_builtin_min": base["min_s"] / r["min_s"],
                "rounds": r["rounds"],
            }
        )
    model = f"B x {channels} x H x W -> K codes of size {channels}, dim=1"
    return {"shape": cfg.quantizer_shape, "model": model, "rows": rows}


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
                    rows.append(
                        [s["shape"], r["mode"], r["impl"], r["median_ms"], r["ratio_vs_builtin"], r["gb_per_s"]]
                    )
        lines += [markdown_table(headers, rows), ""]
    if any("memory" in s for s in shapes):
        lines += [
            "## Peak memory (forward + backward), in B x K float32 buffers beyond the inputs",
            "",
            (
                "peak: everything allocated at the worst moment, incoming gradient and output included; "
                "held: kept by the autograd graph between forward and backward, besides the output."
            ),
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
        rows = [
            [shp, c["mode"], c["pass"], c["seconds"], ", ".join(f"{n} {t:.1f} s" for n, t in c["compiled"])]
            for shp, c in comp
        ]
        lines += [markdown_table(["shape", "mode", "pass", "first call s", "compiled variants"], rows), ""]
        if not results.get("fused_available", True):
            lines += [f"The fused path was unavailable and fell back to eager: {results.get('fused_failure')}", ""]
    if results.get("layout"):
        lines += [
            "## Categories not last: B x K x H x W with dim=1 (forward + backward)",
            "",
            "vs built-in = built-in time at dim=1 / this time; vs last = this time / gumbelkit's time on the "
            "same values laid out B x H x W x K with dim=-1 (1.00 = dim=1 costs nothing extra), from the medians "
            "and from the minima (the minima are steadier on a shared machine).",
            "",
        ]
        rows = [
            [
                r["shape"],
                r["mode"],
                r["impl"],
                r["median_ms"],
                r["min_ms"],
                r["vs_builtin"],
                r["vs_last"],
                r["vs_last_min"],
            ]
            for r in results["layout"]
        ]
        heads = ["shape", "mode", "impl", "median ms", "min ms", "vs built-in", "vs last", "vs last (min)"]
        lines += [markdown_table(heads, rows), ""]
    if results.get("cost"):
        lines += [
            "## Cost of each method (forward + backward along dim=1)",
            "",
            "Every registered sampling method with its default options; time relative to the baseline method "
            "and to the built-in (hard); peak memory in B x K float32 buffers beyond the inputs.",
            "",
        ]
        rows = [
            [
                r["shape"],
                r["method"],
                r["median_ms"],
                r["min_ms"],
                r["vs_baseline"],
                r["vs_baseline_min"],
                r["vs_builtin"],
                r.get("peak_buffers", float("nan")),
                r.get("peak_vs_baseline", float("nan")),
            ]
            for r in results["cost"]
        ]
        heads = [
            "shape",
            "method",
            "median ms",
            "min ms",
            "time / baseline",
            "(min)",
            "time / built-in",
            "peak",
            "peak / baseline",
        ]
        lines += [markdown_table(heads, rows), ""]
    if results.get("compiled_model"):
        c = results["compiled_model"]
        lines += [f"## Compiled model ({c['model']}, {c['shape']})", ""]
        rows = [
            [
                r["mode"],
                r["variant"],
                r["median_ms"],
                r["min_ms"],
                r["vs_eager_gumbelkit"],
                r["vs_eager_gumbelkit_min"],
                r["first_s"],
            ]
            for r in c["rows"]
        ]
        heads = ["mode", "variant", "median ms", "min ms", "time / eager gumbelkit", "(min)", "first call s"]
        lines += [markdown_table(heads, rows), ""]
    if results.get("quantizer"):
        c = results["quantizer"]
        lines += [
            f"## Quantizer layer ({c['model']}, {c['shape']}; forward + backward)",
            "",
            "speed-up = the hand-written layer with the built-in sampler (same mode) / this time.",
            "",
        ]
        rows = [
            [
                r["mode"],
                r["variant"] + (f" ({r['method']})" if r["method"] else ""),
                r["median_ms"],
                r["min_ms"],
                r["vs_builtin"],
                r["vs_builtin_min"],
            ]
            for r in c["rows"]
        ]
        heads = ["mode", "layer", "median ms", "min ms", "speed-up", "(min)"]
        lines += [markdown_table(heads, rows), ""]
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
    impls += [METHOD_PREFIX + label for label in results["config"].get("methods", [])]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            vals = []
            for s in shapes:
                r = [
                    r
                    for r in s["rows"]
                    if r["impl"] == impl
                    and r["pass"] == "fwdbwd"
                    and r["mode"] in (mode, "soft")
                    and (r["mode"] == mode or impl in _SOFT_ONLY)
                ]
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
            if (
                not isinstance(r, dict)
                or not all(isinstance(r.get(k), str) for k in ("impl", "mode", "pass"))
                or not all(_num(r.get(k)) for k in _ROW_NUMBERS)
            ):
                return f"a row of shape {name} lacks a field it needs"
        if not isinstance(s.get("fused_first_calls", []), list) or not all(
            isinstance(c, dict)
            and _num(c.get("seconds"))
            and isinstance(c.get("compiled"), list)
            and isinstance(c.get("mode"), str)
            and isinstance(c.get("pass"), str)
            and all(isinstance(v, list) and len(v) == 2 and _num(v[1]) for v in c["compiled"])
            for c in s.get("fused_first_calls", [])
        ):
            return f"the fused first calls of shape {name} are malformed"
        for m in s.get("memory", []) if isinstance(s.get("memory", []), list) else [None]:
            if (
                not isinstance(m, dict)
                or not all(_num(m.get(k)) for k in ("peak_buffers", "held_buffers"))
                or not all(isinstance(m.get(k), str) for k in ("impl", "mode"))
            ):
                return f"the memory entry of shape {name} is malformed"
    return None


def main(config: dict | BenchConfig) -> dict:
    """Run the benchmark described by ``config`` (see :class:`BenchConfig`); returns the results dict.

    Phases: check the options and optional packages, load the finished shapes (``--resume``),
    time every shape and the VAE step, write bench.json and bench.md, then bench.png.
    """
    cfg = resolve_config(config)
    H.check_requirements(requirements(cfg))
    plots = H.plots_plan(cfg.plots)
    out = H.prepare_out_dir(cfg.out, "--out")
    device = torch.device(cfg.device)
    ckpt_path = out / "checkpoint.json"
    settings = cfg.fingerprint()
    done = _finished_shapes(cfg, ckpt_path, settings)
    if cfg.cold_compile:
        _cold_inductor_cache()
    with H.compute_settings(cfg.threads):
        todo = [s for s in cfg.shape_list if "x".join(map(str, s)) not in done]
        extra = sum(
            cfg.repeats or _auto_repeats(math.prod(s)) for s in _dims(cfg.layout_shapes) + _dims(cfg.cost_shapes)
        )
        extra += (cfg.repeats or 15) if cfg.compile_shape else 0
        extra += (cfg.repeats or 15) if cfg.quantizer_shape else 0
        total = (
            sum(cfg.repeats or _auto_repeats(math.prod(s)) for s in todo) + (cfg.vae_steps if cfg.vae else 0) + extra
        )
        bar = H.progress(total, "bench", enabled=cfg.progress)
        shapes = []
        try:
            for shape in cfg.shape_list:
                key = "x".join(map(str, shape))
                if key not in done:
                    done[key] = _time_shape(shape, cfg, device, bar)
                    write_checked_json(ckpt_path, {"settings": settings, "shapes": list(done.values())})
                shapes.append(done[key])
            vae = time_vae_step(cfg, device, bar) if cfg.vae else None
            layout = time_layouts(cfg, device, bar)
            cost = time_costs(cfg, device, bar)
            compiled_model = time_compiled_model(cfg, device, bar)
            quantizer = time_quantizer(cfg, device, bar)
        finally:
            bar.close()
        env = environment_info(device)
    results = {
        "command": command_line(cfg),
        "config": cfg.to_dict(),
        "environment": env,
        "fused_available": kernels.is_available(),
        "fused_failure": None if kernels.is_available() else "compilation failed; fused rows ran the eager path",
        "shapes": shapes,
        "vae": vae,
        "layout": layout,
        "cost": cost,
        "compiled_model": compiled_model,
        "quantizer": quantizer,
    }
    enabled, note = plots
    H.write_outputs(
        out,
        results,
        json_name="bench.json",
        md_name="bench.md",
        markdown=_tables,
        plots=[("bench.png", functools.partial(_figure, results))],
        enabled=enabled,
        note=note and f"bench: {note}",
    )
    print(
        f"gumbelkit bench: wrote {out / 'bench.json'}, bench.md" + (", bench.png" if results["plots"] else ""),
        file=sys.stderr,
    )
    return results


def _finished_shapes(cfg: BenchConfig, ckpt_path: Path, settings: dict) -> dict:
    """With --resume, the verified shapes of a checkpoint written with the same settings."""

    def other_settings() -> None:
        print(
            f"gumbelkit bench: {ckpt_path} was written with other settings; timing every shape again", file=sys.stderr
        )

    data = H.load_checked_table(
        ckpt_path,
        use=cfg.resume,
        matches=lambda d: d["settings"] == settings,
        layout=_check_checkpoint,
        hint=_RESUME_HINT,
        on_mismatch=other_settings,
    )
    return {s["shape"]: s for s in data["shapes"]} if data is not None else {}


def _cold_inductor_cache() -> None:
    """A fresh, empty Inductor cache folder (kernels are cached on disk by source hash) and no
    FX-graph cache: the first calls then include the whole compilation."""
    import tempfile

    import torch._inductor.config as inductor_config

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="gumbelkit-bench-inductor-")
    inductor_config.fx_graph_cache = False


if __name__ == "__main__":  # python -m gumbelkit.experiments.bench ... == gumbelkit bench ...
    from gumbelkit.cli import main as _cli_main

    sys.exit(_cli_main(["bench", *sys.argv[1:]]))
