"""Speed and memory of Gumbel-Softmax implementations (``python -m experiments bench``).

Implementations, timed in one process with the interleaved harness (:mod:`benchmarks.harness`):
``builtin`` (``torch.nn.functional.gumbel_softmax``, the baseline of every ratio), ``eager``
(``gumbelkit.gumbel_softmax``), ``fused`` (``gumbelkit.kernels.gumbel_softmax``), ``softmax`` and
``clone`` (the floors a sampler can approach), and with ``--methods`` any categorical sample method
of the registry through ``gumbelkit.sample`` as ``sample:<label>`` (in its own mode: hard for a
one-hot method). Per shape (B x K, categories last), mode and pass (``fwd``; ``fwdbwd``: forward and
backward of ``(out * w).sum()``): the median time, ``builtin / impl`` and a nominal bandwidth (8
bytes per element forward, 20 forward+backward); then peak memory in B x K float32 buffers, and a
categorical-VAE training step (784-512-256-(30*10), batch 100, Adam) with each sampler.

Four sections run when their option gives shapes: ``--layout-shapes`` (categories at dim=1 beside
the categories-last twin), ``--cost-shapes`` (every registered sample method against the baseline:
the first one-hot method whose backward is the Gumbel-Softmax relaxation's), ``--compile-shape``
(a 1x1 conv -> sampler -> 1x1 conv model, eager and ``torch.compile(fullgraph=True)``) and
``--quantizer-shape`` (``gumbelkit.nn.GumbelQuantizer`` against the layer written by hand). Each
finished shape is a cell; ``--resume`` (off by default: timings are of this moment) reuses them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from experiments.config import Config, Flag, Float, Int, Names, PathText, UserError, option, parse_list
from experiments.runner import Run, resolve_device

import gumbelkit as gk
from experiments import methods as M
from gumbelkit import kernels

from .bench_report import markdown, plot
from .harness import interleaved, measure_memory, run_once

__all__ = ["BenchConfig", "main", "parse_shapes", "sampler"]

IMPLS, MODES, PASSES = ("builtin", "eager", "fused", "softmax", "clone"), ("soft", "hard"), ("fwd", "fwdbwd")
BYTES = {"fwd": 8, "fwdbwd": 20}
PREFIX = "sample:"  # the implementation name of a registry method
PEAK_BUFFERS = 10  # float32 buffers of one shape alive at the worst moment (inputs, gradients, profiler margin)


def parse_shapes(value: Any, flag: str = "--shapes", ndim: int | None = None, single: bool = False) -> str:
    """``"4096x10,100x20x10"`` checked (>= 2 sizes, <= 8, at most 2^31 - 1 elements; ``ndim`` sizes
    each, one shape with ``single``; empty allowed when ``ndim`` is given) and normalised."""
    if ndim is not None and value in ("", None, [], ()):
        return ""
    items = value if isinstance(value, (list, tuple)) else parse_list(value, flag)
    shapes = []
    for item in items:
        try:
            dims = (
                [int(d) for d in item]
                if isinstance(item, (list, tuple))
                else [int(d) for d in str(item).lower().split("x")]
            )
        except ValueError:
            raise UserError(f"expected {flag} like 1024x1000,100x20x10, got {item!r}") from None
        if not 2 <= len(dims) <= 8 or min(dims) < 1 or math.prod(dims) > 2**31 - 1 or len(dims) != (ndim or len(dims)):
            raise UserError(
                f"expected {flag} of {ndim or '2 to 8'} positive sizes, at most 2^31-1 elements, got {item!r}"
            )
        shapes.append("x".join(map(str, dims)))
    if single and len(shapes) != 1:
        raise UserError(f"expected one shape for {flag}, got {value!r}")
    return ",".join(shapes)


def _dims(text: str) -> list[list[int]]:
    return [[int(d) for d in t.split("x")] for t in text.split(",")] if text else []


def _section(what: str, single: bool = False) -> Any:
    check = functools.partial(lambda v, f, s: parse_shapes(v, f, 4, s), s=single)
    return option("", f"B x K x H x W shape(s) of {what} (default none)", check, role="grid")


def _repeats(value: Any, flag: str) -> int:
    v = Int(0, 100_000)(value, flag)
    if v in (1, 2):
        raise UserError(f"expected {flag} 0 (automatic) or >= 3 for a median, got {v}")
    return v


@dataclasses.dataclass(frozen=True)
class BenchConfig(Config):
    """Every option of ``python -m experiments bench``."""

    COMMAND, HELP, RESUME, FIRST = "bench", "speed and memory of Gumbel-Softmax implementations", False, ("shapes",)

    out: str = option("runs/bench", "output folder", PathText(), role="run")
    shapes: str = option("4096x10,100x20x10,1024x1000,256x32000,64x262144",
                         f"B x K (or B x N x K) shapes, categories last; {PEAK_BUFFERS} float32 buffers must fit",
                         parse_shapes, role="grid")  # fmt: skip
    impls: list = option(list(IMPLS), "implementations", Names(IMPLS))
    modes: list = option(list(MODES), "soft, hard or both", Names(MODES))
    methods: list = M.option("categorical", "sample", what="timed as sample:", default=list, none=True, role="setting")
    tau: float = option(1.0, "temperature (speed only)", Float(positive=True))
    repeats: int = option(0, "timing rounds per shape, 0 (automatic: 15, 7 or 5 by size) or >= 3", _repeats)
    min_time: float = option(0.002, "seconds per timed sample (short calls loop)", Float(positive=True, hi=60.0))
    memory: bool = option(True, "measure the peak memory", Flag())
    vae: bool = option(True, "time a categorical-VAE training step", Flag(), role="grid")
    vae_steps: int = option(30, "timed VAE steps per sampler", Int(1, 100_000), role="grid")
    layout_shapes: str = _section("the categories-at-dim=1 section (e.g. 4x8192x32x32,32x512x8x8)")
    cost_shapes: str = _section("the cost table of every registered sample method (e.g. 16x512x8x8)")
    compile_shape: str = _section("the compiled-model section (e.g. 32x512x8x8)", single=True)
    quantizer_shape: str = _section("the quantizer section (e.g. 16x512x16x16)", single=True)
    cold_compile: bool = option(False, "disable Inductor's on-disk caches to time a cold first compile", Flag())
    device: str = option("cpu", "cpu, cuda or auto", lambda v, f: str(resolve_device(str(v))))
    seed: int = option(0, "seed of the random logits and weights", Int(0, 2**63 - 1))

    @classmethod
    def cross_check(cls, values: dict) -> dict:
        shapes = _dims(values["shapes"]) + [d for k in ("layout", "cost") for d in _dims(values[f"{k}_shapes"])]
        shapes += _dims(values["compile_shape"]) + _dims(values["quantizer_shape"])
        big, have = max(math.prod(s) for s in shapes), _available(torch.device(values["device"]))
        if have is not None and PEAK_BUFFERS * 4 * big > have:
            raise UserError(
                f"--shapes of {big} elements need about {PEAK_BUFFERS * 4 * big / 2**30:.1f} GiB "
                f"({PEAK_BUFFERS} float32 buffers) but {have / 2**30:.1f} GiB are available"
            )
        return values

    def key(self, **extra: Any) -> str:
        return super().key(threads=self.threads, **extra)  # timings depend on the threads

    @functools.cached_property
    def impl_list(self) -> list[str]:
        return self.impls + [PREFIX + label for label in self.methods]


def _available(device: torch.device) -> int | None:
    """Bytes that can be allocated now on ``device`` (None when unknown)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, RuntimeError):
        return None


def _method(impl: str) -> M.Method:
    return M.parse(impl[len(PREFIX) :], "categorical", kind="sample")


def sampler(impl: str, mode: str, tau: float):
    """``x -> output`` of one implementation in one mode (a registry method has its own mode)."""
    hard = mode == "hard"
    if impl.startswith(PREFIX):
        m = _method(impl)
        return lambda x: gk.sample(x, m.name, tau, **m.options)
    return {"builtin": lambda x: F.gumbel_softmax(x, tau=tau, hard=hard), "eager": lambda x: gk.gumbel_softmax(x, tau, hard),
            "fused": lambda x: kernels.gumbel_softmax(x, tau, hard), "softmax": lambda x: torch.softmax(x, -1),
            "clone": lambda x: x.clone()}[impl]  # fmt: skip


def _modes(impl: str, modes: list[str]) -> list[str]:
    if impl.startswith(PREFIX):
        return ["hard" if _method(impl).spec.one_hot else "soft"]
    return ["soft"] if impl in ("softmax", "clone") else modes


def _rounds(cfg: BenchConfig, numel: int) -> int:
    return cfg.repeats or (15 if numel < 1_000_000 else 7 if numel < 8_000_000 else 5)


def _inputs(shape: list[int], cfg: BenchConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(*shape, generator=gen).to(device).requires_grad_(True)
    return x, torch.randn(*shape, generator=gen).to(device)


def _time_shape(shape: list[int], cfg: BenchConfig, device, bar) -> dict:
    x, w = _inputs(shape, cfg, device)
    fns = {(i, m): sampler(i, m, cfg.tau) for i in cfg.impl_list for m in _modes(i, cfg.modes)}
    before = dict(kernels.compile_times())
    res = interleaved({(i, m, p): functools.partial(run_once, fn, x, w, p == "fwdbwd") for (i, m), fn in fns.items()
                       for p in PASSES}, _rounds(cfg, x.numel()), cfg.min_time, device, bar)  # fmt: skip
    compiled = [[k[0], v] for k, v in kernels.compile_times().items() if k not in before]
    name, rows = "x".join(map(str, shape)), []
    for (i, m, p), r in res.items():
        base = res.get(("builtin", m if m in cfg.modes else "soft", p), {"median_s": float("nan")})["median_s"]
        rows.append(
            {
                "shape": name,
                "impl": i,
                "mode": m,
                "pass": p,
                "median_ms": r["median_s"] * 1e3,
                "min_ms": r["min_s"] * 1e3,
                "ratio_vs_builtin": base / r["median_s"],
                "gb_per_s": BYTES[p] * x.numel() / r["median_s"] / 1e9,
                "rounds": r["rounds"],
                "calls_per_sample": r["calls"],
            }
        )
    first = [
        {"mode": m, "pass": p, "seconds": r["first_s"], "compiled": compiled if n == 0 else []}
        for n, ((i, m, p), r) in enumerate((k, r) for k, r in res.items() if k[0] == "fused")
    ]
    out = {"shape": name, "numel": x.numel(), "rows": rows, "fused_first_calls": first}
    if cfg.memory:
        out["memory"] = [{"impl": i, "mode": m, **measure_memory(fn, x, w, device)} for (i, m), fn in fns.items()]
    return out


class _TinyVAE(torch.nn.Module):
    """Jang et al.'s categorical VAE: 784-512-256-(N*K) encoder, mirrored decoder, ReLU."""

    def __init__(self, n: int = 30, k: int = 10, d: int = 784):
        super().__init__()
        lin, relu = torch.nn.Linear, torch.nn.ReLU
        self.n, self.k = n, k
        self.enc = torch.nn.Sequential(lin(d, 512), relu(), lin(512, 256), relu(), lin(256, n * k))
        self.dec = torch.nn.Sequential(lin(n * k, 256), relu(), lin(256, 512), relu(), lin(512, d))

    def loss(self, x: torch.Tensor, sample) -> torch.Tensor:
        logits = self.enc(x).view(-1, self.n, self.k)
        recon = F.binary_cross_entropy_with_logits(self.dec(sample(logits).flatten(1)), x, reduction="none").sum(-1)
        kl = (torch.softmax(logits, -1) * (torch.log_softmax(logits, -1) + math.log(self.k))).sum((-2, -1))
        return (recon + kl).mean()


def time_vae_step(cfg: BenchConfig, device, bar) -> dict:
    """Median seconds of one training step (forward, backward, Adam) with each sampler."""
    data = (torch.rand(100, 784, generator=torch.Generator().manual_seed(cfg.seed)) < 0.3).float().to(device)
    variants = [(i, m) for i in cfg.impl_list if i in ("builtin", "eager", "fused") or i.startswith(PREFIX)
                for m in _modes(i, cfg.modes)]  # fmt: skip
    units = {}
    for v in variants:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            model = _TinyVAE().to(device)
        opt, fn = torch.optim.Adam(model.parameters(), lr=1e-3), sampler(v[0], v[1], cfg.tau)

        def step(model=model, opt=opt, fn=fn) -> None:
            opt.zero_grad(set_to_none=True)
            model.loss(data, fn).backward()
            opt.step()

        units[v] = step
    res = interleaved(units, cfg.vae_steps, 0.0, device, bar)
    rows = [{"impl": i, "mode": m, "median_ms": r["median_s"] * 1e3,
             "ratio_vs_builtin": res.get(("builtin", m), {"median_s": float("nan")})["median_s"] / r["median_s"],
             "first_step_s": r["first_s"], "steps": cfg.vae_steps} for (i, m), r in res.items()]  # fmt: skip
    return {"shape": "100x30x10", "model": "784-512-256-(30*10), decoder mirrored, Adam, batch 100", "rows": rows}


def _rows(res: dict, base: Any, names: tuple[str, ...], ratio: str, invert: bool = False) -> list[dict]:
    """One row per unit of an interleaved result: its times and ``ratio`` (and ``ratio``_min) against
    the unit ``base(key)``: base / this, or this / base with ``invert``."""
    out = []
    for key, r in res.items():
        b = res[base(key)]
        q, q_min = b["median_s"] / r["median_s"], b["min_s"] / r["min_s"]
        out.append(
            dict(zip(names, key if isinstance(key, tuple) else (key,)))
            | {
                "median_ms": r["median_s"] * 1e3,
                "min_ms": r["min_s"] * 1e3,
                "first_s": r["first_s"],
                ratio: 1 / q if invert else q,
                f"{ratio}_min": 1 / q_min if invert else q_min,
                "rounds": r["rounds"],
            }
        )
    return out


def time_layouts(cfg: BenchConfig, device, bar) -> list[dict]:
    """Forward+backward at dim=1 of B x K x H x W, against its categories-last twin B x H x W x K."""
    out = []
    for shape in _dims(cfg.layout_shapes):
        x1, w1 = _inputs(shape, cfg, device)
        x2, w2 = x1.detach().permute(0, 2, 3, 1).contiguous().requires_grad_(True), w1.permute(0, 2, 3, 1).contiguous()
        units = {}
        for mode in cfg.modes:
            hard = mode == "hard"
            units[mode, "builtin dim=1"] = lambda h=hard: run_once(
                lambda t: F.gumbel_softmax(t, cfg.tau, h, dim=1), x1, w1, True
            )
            units[mode, "gumbelkit dim=1"] = lambda h=hard: run_once(
                lambda t: gk.gumbel_softmax(t, cfg.tau, h, dim=1), x1, w1, True
            )
            units[mode, "gumbelkit dim=-1 (twin)"] = lambda h=hard: run_once(
                lambda t: gk.gumbel_softmax(t, cfg.tau, h), x2, w2, True
            )
        res = interleaved(units, _rounds(cfg, x1.numel()), cfg.min_time, device, bar)
        for row in _rows(res, lambda k: (k[0], "gumbelkit dim=-1 (twin)"), ("mode", "impl"), "vs_last", invert=True):
            base = res[row["mode"], "builtin dim=1"]["median_s"]
            out.append({"shape": "x".join(map(str, shape)), **row, "vs_builtin": base / (row["median_ms"] / 1e3)})
    return out


def _baseline(one_hot: bool) -> str:
    """The method every cost is divided by: the first (one-hot or not) method whose backward is the relaxation's."""
    return next(s.name for s in gk.estimators.specs("categorical", "sample") if s.relaxed and s.one_hot == one_hot)


def time_costs(cfg: BenchConfig, device, bar) -> list[dict]:
    """Forward+backward time and peak memory along dim=1 of every registered sample method (default options)."""
    out, base_name = [], _baseline(True)
    for shape in _dims(cfg.cost_shapes):
        x, w = _inputs(shape, cfg, device)
        fns = {"builtin (hard)": lambda t: F.gumbel_softmax(t, cfg.tau, True, dim=1)}
        fns |= {n: functools.partial(lambda t, n: gk.sample(t, n, cfg.tau, dim=1), n=n)
                for n in gk.estimators.methods("categorical", "sample")}  # fmt: skip
        res = interleaved({k: functools.partial(run_once, f, x, w, True) for k, f in fns.items()},
                          _rounds(cfg, x.numel()), cfg.min_time, device, bar)  # fmt: skip
        mems = {k: measure_memory(f, x, w, device) for k, f in fns.items()} if cfg.memory else {}
        for row in _rows(res, lambda k: base_name, ("method",), "vs_baseline", invert=True):
            row = {
                "shape": "x".join(map(str, shape)) + ":dim=1",
                **row,
                "vs_builtin": row["median_ms"] / 1e3 / res["builtin (hard)"]["median_s"],
            }
            if row["method"] in mems:
                peak, base_peak = mems[row["method"]]["peak_buffers"], mems[base_name]["peak_buffers"]
                row |= {
                    "peak_buffers": peak,
                    "held_buffers": mems[row["method"]]["held_buffers"],
                    "peak_vs_baseline": peak / base_peak if base_peak else float("nan"),
                }
            out.append(row)
    return out


class _CodeModel(torch.nn.Module):
    """1x1 conv (channels -> K) -> sampler along dim=1 -> 1x1 conv (K -> channels)."""

    def __init__(self, k: int, sample, channels: int = 64):
        super().__init__()
        self.enc, self.dec, self.sample = torch.nn.Conv2d(channels, k, 1), torch.nn.Conv2d(k, channels, 1), sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.sample(self.enc(x)))


class _HandWrittenQuantizer(torch.nn.Module):
    """A Gumbel quantiser as codebases write it (taming-transformers' GumbelQuantize): 1x1 conv,
    ``sampler(logits, tau, hard, dim=1)``, an einsum with the codebook, KL as sum q log(q K + 1e-10)."""

    def __init__(self, channels: int, k: int, sampler, tau: float, hard: bool, kl_weight: float = 5e-4):
        super().__init__()
        self.proj, self.embed = torch.nn.Conv2d(channels, k, 1), torch.nn.Embedding(k, channels)
        self.sampler, self.tau, self.hard, self.k, self.kl_weight = sampler, tau, hard, k, kl_weight

    def forward(self, x: torch.Tensor):
        logits = self.proj(x)
        y = self.sampler(logits, self.tau, self.hard, dim=1)
        q = F.softmax(logits, dim=1)
        loss = self.kl_weight * torch.sum(q * torch.log(q * self.k + 1e-10), dim=1).mean()
        return torch.einsum("bnhw,nd->bdhw", y, self.embed.weight), loss, y.argmax(dim=1)


def _models(cfg: BenchConfig, device, make) -> tuple[torch.Tensor, dict]:
    """Per mode, the models ``make(mode, hard)`` returns (built from one seed), as forward+backward units."""
    b, _, h, wd = _dims(cfg.compile_shape or cfg.quantizer_shape)[0]
    x, units = torch.randn(b, 64, h, wd, generator=torch.Generator().manual_seed(cfg.seed)).to(device), {}
    for mode in cfg.modes:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            for label, model in make(mode, mode == "hard").items():
                units[mode, label] = functools.partial(_loss_backward, model.to(device), x)
    return x, units


def _loss_backward(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Backward of mean(out^2) for a model, of mean(z_q^2) + its loss for a quantiser."""
    out = model(x)
    (out.square().mean() if isinstance(out, torch.Tensor) else out[0].square().mean() + out[1]).backward()


def time_compiled_model(cfg: BenchConfig, device, bar) -> dict | None:
    """A conv -> sampler -> conv model with each sampler, eager and ``torch.compile(fullgraph=True)``."""
    if not cfg.compile_shape:
        return None
    k = _dims(cfg.compile_shape)[0][1]

    def make(mode: str, hard: bool) -> dict:
        fns = {
            "builtin": lambda t: F.gumbel_softmax(t, cfg.tau, hard, dim=1),
            "gumbelkit": lambda t: gk.gumbel_softmax(t, cfg.tau, hard, dim=1),
        }
        models = {f"eager {n}": _CodeModel(k, f) for n, f in fns.items()}
        return models | {f"compiled {n}": torch.compile(_CodeModel(k, f), fullgraph=True) for n, f in fns.items()}

    res = interleaved(_models(cfg, device, make)[1], cfg.repeats or 15, cfg.min_time, device, bar)
    rows = _rows(res, lambda key: (key[0], "eager gumbelkit"), ("mode", "variant"), "vs_eager_gumbelkit", invert=True)
    return {"shape": cfg.compile_shape, "model": "conv1x1(64->K) -> sampler dim=1 -> conv1x1(K->64)", "rows": rows}


def time_quantizer(cfg: BenchConfig, device, bar) -> dict | None:
    """A whole quantiser layer: GumbelQuantizer against the hand-written one with each sampler."""
    if not cfg.quantizer_shape:
        return None
    k, method = _dims(cfg.quantizer_shape)[0][1], {"soft": _baseline(False), "hard": _baseline(True)}

    def make(mode: str, hard: bool) -> dict:
        return {
            "hand-written, built-in sampler": _HandWrittenQuantizer(64, k, F.gumbel_softmax, cfg.tau, hard),
            "hand-written, gumbelkit sampler": _HandWrittenQuantizer(64, k, gk.gumbel_softmax, cfg.tau, hard),
            "GumbelQuantizer": gk.nn.GumbelQuantizer(64, k, 64, method=method[mode], tau=cfg.tau, dim=1),
        }

    res = interleaved(_models(cfg, device, make)[1], cfg.repeats or 15, cfg.min_time, device, bar)
    rows = [
        r | {"method": method[r["mode"]] if r["variant"] == "GumbelQuantizer" else None}
        for r in _rows(res, lambda key: (key[0], "hand-written, built-in sampler"), ("mode", "variant"), "vs_builtin")
    ]
    return {"shape": cfg.quantizer_shape, "model": "B x 64 x H x W -> K codes of size 64, dim=1", "rows": rows}


def main(cfg: BenchConfig) -> dict:
    """Time every shape and section; write the results and the plot; return them."""
    device = torch.device(cfg.device)
    if cfg.cold_compile:  # a fresh, empty Inductor cache and no FX-graph cache: first calls compile everything
        import tempfile

        import torch._inductor.config as inductor_config

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-inductor-")
        inductor_config.fx_graph_cache = False
    sections = _dims(cfg.layout_shapes) + _dims(cfg.cost_shapes)
    units = sum(_rounds(cfg, math.prod(s)) for s in _dims(cfg.shapes) + sections) + cfg.vae_steps * cfg.vae
    with Run(cfg, units + (cfg.repeats or 15) * (bool(cfg.compile_shape) + bool(cfg.quantizer_shape))) as run:
        shapes = [run.store.cell(s, functools.partial(_time_shape, d, cfg, device, run.bar))
                  for s, d in zip(cfg.shapes.split(","), _dims(cfg.shapes))]  # fmt: skip
        results = {"fused_available": kernels.is_available(),
                   "fused_failure": None if kernels.is_available() else "compilation failed; fused rows ran the eager path",
                   "shapes": shapes, "vae": time_vae_step(cfg, device, run.bar) if cfg.vae else None,
                   "layout": time_layouts(cfg, device, run.bar), "cost": time_costs(cfg, device, run.bar),
                   "compiled_model": time_compiled_model(cfg, device, run.bar),
                   "quantizer": time_quantizer(cfg, device, run.bar)}  # fmt: skip
    results |= run.meta(device)
    run.write(results, markdown, [("bench.png", plot)])
    return results
