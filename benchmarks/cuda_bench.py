"""The GPU measurements of the Triton samplers: speed, bandwidth, host overhead, syncs, graphs, tails, sampling.

One process per stage (``benchmarks/cuda_check.sh`` runs them with a time limit each); every stage
writes ``<out>/bench_<stage>.json`` as it goes, and ``--report`` merges whatever exists into
``<out>/cuda_bench.json`` and the markdown tables of ``<out>/cuda_bench.md`` (also printed).

Stages:

* ``speed``: forward + backward median times (CUDA events, interleaved rounds) of the built-in
  ``F.gumbel_softmax``, ``gk.gumbel_softmax`` (the Triton kernels), gumbelkit's eager path and a
  copy, at 1024x1000, 256x32000, 64x262144 and 32x512x32x32 (dim=1), float32 and bfloat16, soft
  and hard. The backward is ``autograd.grad(y, x, v)`` with a fixed v (no loss op in the timing).
  Effective GB/s = 5 x element size x elements / time (read x, write y; read y and v, write dx);
  the device's copy bandwidth (2 x bytes / time of a 256 MiB copy) is measured in the same run.
* ``compiled``: the same shapes through ``torch.compile`` of the built-in and of ``gk.gumbel_softmax``.
* ``latency``: wall-clock time per forward + backward call at 64x1000 and 100x20x10 (host overhead
  included), built-in against gumbelkit.
* ``syncs``: host synchronisations per call of every public sampler (``torch.cuda.set_sync_debug_mode``
  warnings; on the CPU dry run, ops that read a value to the host).
* ``graphs``: CUDA-graph capture and replay of the forward + backward, ``gumbel_max`` and
  ``gumbel_topk``: fresh noise on every replay, and the replay time.
* ``tails``: a class 19 nats below the top of a 65,536-way softmax must win 3.67e-4 of the draws:
  409,600 draws (expected 150.3) for every path, with the two-sided binomial p-value.
* ``sampling``: one index per row of 256x151936 logits: ``gk.gumbel_max`` against
  ``torch.multinomial(softmax(x), 1)`` and the exponential race ``argmax(softmax(x) / Exp(1))``.

``--dry-run`` runs every stage on the CPU under Triton's interpreter with tiny shapes (the tests
do), so the script is checked without a GPU; its numbers mean nothing.

    python benchmarks/cuda_bench.py --stage speed --out runs/cuda-check [--deadline 110]
    python benchmarks/cuda_bench.py --report --out runs/cuda-check
    python benchmarks/cuda_bench.py --dry-run --stage all --out /tmp/cuda-bench
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

STAGES = ("speed", "compiled", "latency", "syncs", "graphs", "tails", "sampling")


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", default="all", help=f"comma-separated stages of {STAGES}, or all")
    p.add_argument("--out", default=os.environ.get("OUT", "runs/cuda-bench"))
    p.add_argument("--deadline", type=float, default=None, help="seconds for this process: later items are skipped")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per measurement (default: by stage)")
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes: checks the script")
    p.add_argument("--report", action="store_true", help="merge the stage files and print the tables")
    return p.parse_args(argv)


# parsed at import (TRITON_INTERPRET must be set before the kernels are built); imported as a module
# (the doctest collection), it takes the defaults
ARGS = _parse(None if __name__ == "__main__" else [])
if ARGS.dry_run:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are first built

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import gumbelkit as gk  # noqa: E402
from gumbelkit._core import gpu as _triton_ops  # noqa: E402

DRY = ARGS.dry_run
DEV = torch.device("cpu" if DRY else "cuda")
START = time.perf_counter()
if DRY:  # small blocks: the tiny shapes still take the chunked (long-row) kernels
    _triton_ops._CONFIG.update(row_block=32, tile=128)


# --------------------------------------------------------------------------- plumbing


def _left() -> float:
    return math.inf if ARGS.deadline is None else ARGS.deadline - (time.perf_counter() - START)


def _sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _default_path():
    """The default samplers as they run for CUDA tensors (on the CPU dry run: the interpreted kernels)."""
    if DRY:
        with _triton_ops.triton_on_cpu(), gk.validation("device"):
            yield
    else:
        yield


def _time_once(fn) -> float:
    """Seconds of one call: CUDA events around it (the GPU time), perf_counter on the CPU."""
    if DEV.type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _interleaved(fns: dict, rounds: int) -> dict:
    """Median seconds of each function, over rounds that visit every function in a rotated order."""
    if not DRY:  # warm-up: kernels built, allocator primed (the dry run only checks the code)
        for f in fns.values():
            f()
        _sync()
    times: dict = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            times[k].append(_time_once(fns[k]))
    return {k: statistics.median(v) for k, v in times.items()}


class _Stage:
    """One stage's results, written to ``bench_<name>.json`` after every item (a timeout keeps them)."""

    def __init__(self, name: str):
        self.name = name
        self.data: dict = {"stage": name, "items": [], "skipped": [], "dry_run": DRY}
        self.path = Path(ARGS.out) / f"bench_{name}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def add(self, item: dict) -> None:
        self.data["items"].append(item)
        self.write()
        print(f"[{self.name}] {json.dumps(item)}", flush=True)

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"item": what, "why": why})
        self.write()
        print(f"[{self.name}] skipped {what}: {why}", flush=True)

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))


def _env() -> dict:
    import platform

    env: dict[str, object] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(DEV)}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if DEV.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["sms"] = torch.cuda.get_device_properties(0).multi_processor_count
    return env


# --------------------------------------------------------------------------- stages

SHAPES = [((1024, 1000), -1), ((256, 32000), -1), ((64, 262144), -1), ((32, 512, 32, 32), 1)]
DRY_SHAPES = [((4, 24), -1), ((2, 70), -1), ((2, 4, 2, 2), 1)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _fwd_bwd(sampler, x: torch.Tensor, v: torch.Tensor):
    def run():
        y = sampler(x)
        torch.autograd.grad(y, x, v)

    return run


def _copy_bandwidth() -> float:
    n = (64 << 20) if not DRY else (1 << 16)  # 256 MiB of float32
    a = torch.empty(n, device=DEV)
    b = torch.empty_like(a)
    t = _interleaved({"copy": lambda: b.copy_(a)}, 20 if not DRY else 2)["copy"]
    return 2 * a.numel() * a.element_size() / t / 1e9


def _samplers(hard: bool, dim: int, compiled: bool):
    def builtin(x):
        return F.gumbel_softmax(x, 1.0, hard, dim=dim)

    def ours(x):
        return gk.gumbel_softmax(x, 1.0, hard, dim=dim)

    if not compiled:

        def ours_eager(x):
            with _triton_ops.kernels_off():
                return gk.gumbel_softmax(x, 1.0, hard, dim=dim)

        return {"builtin": builtin, "gumbelkit": ours, "gumbelkit eager": ours_eager}
    backend = "aot_eager" if DRY else "inductor"  # Inductor's CPU code cannot call interpreted kernels
    return {
        "builtin compiled": torch.compile(builtin, fullgraph=True, backend=backend),
        "gumbelkit compiled": torch.compile(ours, fullgraph=True, backend=backend),
    }


def stage_speed(compiled: bool = False) -> None:
    st = _Stage("compiled" if compiled else "speed")
    st.data["env"] = _env()
    if not compiled:
        st.data["copy_gbps"] = _copy_bandwidth()
        st.write()
    rounds = ARGS.rounds or (1 if DRY else 15)
    items = [(shape, dim, d, hard) for d in DTYPES for shape, dim in SHAPES for hard in (False, True)]
    if compiled:  # each compiles for seconds: float32 first, hard before soft, as time allows
        items.sort(key=lambda it: (it[2] != "float32", not it[3]))
    if DRY:  # every shape in float32, one in bfloat16, one compiled pair
        items = [(s_, d_, "float32", h) for s_, d_ in DRY_SHAPES for h in (False, True)]
        items += [(DRY_SHAPES[0][0], DRY_SHAPES[0][1], "bfloat16", h) for h in (False, True)]
        items = items[:1] if compiled else items
    for shape, dim, dtype_name, hard in items:
        what = f"{'x'.join(map(str, shape))} dim={dim} {dtype_name} {'hard' if hard else 'soft'}"
        if _left() < 15:
            st.skip(what, "time")
            continue
        gen = torch.Generator(device=DEV).manual_seed(0)
        x = torch.randn(shape, device=DEV, generator=gen).to(DTYPES[dtype_name]).requires_grad_()
        v = torch.randn(shape, device=DEV, generator=gen).to(DTYPES[dtype_name])
        if compiled:
            torch._dynamo.reset()  # every variant compiles afresh: no recompile limit across 16 of them
        fns = {k: _fwd_bwd(f, x, v) for k, f in _samplers(hard, dim, compiled).items()}
        if not compiled:
            out = torch.empty_like(x)
            fns["copy"] = lambda out=out, x=x: out.copy_(x)
        with _default_path():
            try:
                t = _interleaved(fns, rounds)
            except Exception as exc:  # one failing variant must not lose the rest
                st.skip(what, f"{type(exc).__name__}: {exc}"[:300])
                continue
        floor_bytes = 5 * x.element_size() * x.numel()
        st.add(
            {
                "shape": list(shape),
                "dim": dim,
                "dtype": dtype_name,
                "hard": hard,
                "ms": {k: 1e3 * s for k, s in t.items()},
                "gbps": {k: floor_bytes / s / 1e9 for k, s in t.items() if k != "copy"},
            }
        )


def stage_latency() -> None:
    st = _Stage("latency")
    n = 1 if DRY else 300
    for shape in [(4, 10)] if DRY else [(64, 1000), (100, 20, 10)]:
        gen = torch.Generator(device=DEV).manual_seed(0)
        x = torch.randn(shape, device=DEV, generator=gen).requires_grad_()
        v = torch.randn(shape, device=DEV, generator=gen)
        res = {}
        for hard in (False, True):
            for name, f in _samplers(hard, -1, False).items():
                run = _fwd_bwd(f, x, v)
                with _default_path():
                    for _ in range(1 if DRY else 5):
                        run()
                    _sync()
                    t0 = time.perf_counter()
                    for _ in range(n):
                        run()
                    _sync()
                res[f"{name} {'hard' if hard else 'soft'}"] = 1e6 * (time.perf_counter() - t0) / n
        st.add({"shape": list(shape), "us_per_call": res, "calls": n})


def _host_reads(fn) -> int:
    """Host synchronisations of one call: CUDA sync-debug warnings, or host-reading ops on the CPU."""
    if DEV.type == "cuda":
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return sum("synchronizing" in str(w.message) for w in caught)
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::nonzero"}

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func._schema.name in reads:
                Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def _public_calls():
    """name -> call(x, gen) of every public sampler of the CUDA default path (forward + backward)."""

    def backward(out):
        if out.requires_grad:
            out.backward(torch.ones_like(out))
        return out

    torch.manual_seed(0)
    quantizer = gk.nn.GumbelQuantizer(64, n_codes=512 if not DRY else 8, embedding_dim=32, dim=1).to(DEV)
    tau = torch.full((256 if not DRY else 4, 1), 0.5, device=DEV)
    prior = torch.zeros(1000 if not DRY else 64, device=DEV)
    return {
        "gumbel_softmax soft": lambda x, g: backward(gk.gumbel_softmax(x, 0.5, generator=g)),
        "gumbel_softmax hard": lambda x, g: backward(gk.gumbel_softmax(x, 0.5, True, generator=g)),
        "gumbel_softmax tensor tau": lambda x, g: backward(gk.gumbel_softmax(x, tau, True, generator=g)),
        "gumbel_max": lambda x, g: gk.gumbel_max(x.detach(), generator=g),
        "gumbel_topk": lambda x, g: gk.gumbel_topk(x.detach(), 8, generator=g),
        "sample st_gumbel": lambda x, g: backward(gk.sample(x, "st_gumbel", 0.5, generator=g)),
        "sample gumbel_rao": lambda x, g: backward(gk.sample(x, "gumbel_rao", 0.5, generator=g, k=4)),
        "sample decoupled_st_gumbel": lambda x, g: backward(
            gk.sample(x, "decoupled_st_gumbel", 0.5, generator=g, tau_forward=2.0)
        ),
        "sample reinmax": lambda x, g: backward(gk.sample(x, "reinmax", 1.0, generator=g)),
        "kl_categorical": lambda x, g: backward(gk.kl_categorical(x, prior).sum()),
        "nn.GumbelQuantizer": lambda x, g: backward(quantizer(x.detach()[:, :64].reshape(-1, 64, 2, 2)).z_q.sum()),
        "F.gumbel_softmax (built-in)": lambda x, g: backward(F.gumbel_softmax(x, 0.5, True)),
    }


def stage_syncs() -> None:
    st = _Stage("syncs")
    gen = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(*((256, 1000) if not DRY else (4, 64)), device=DEV, generator=gen).requires_grad_()
    for name, call in _public_calls().items():
        counts = {}
        for path, ctx in (("default", _default_path), ("eager", _triton_ops.kernels_off)):
            with ctx():
                if not DRY:
                    call(x, gen)  # warm-up: kernels built
                counts[path] = _host_reads(lambda call=call: call(x, gen))
            x.grad = None
        st.add({"call": name, "syncs": counts})


def stage_graphs() -> None:
    st = _Stage("graphs")
    if DEV.type != "cuda":
        st.skip("capture", "no CUDA device (dry run)")
        return
    x = torch.randn(1024, 1000, device=DEV)
    v = torch.randn(1024, 1000, device=DEV)

    def step():
        leaf = x.detach().requires_grad_()
        y = gk.gumbel_softmax(leaf, 0.5, True)
        (g,) = torch.autograd.grad(y, leaf, v)
        return y, g, gk.gumbel_max(x), gk.gumbel_topk(x, 4)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            outs = step()
    except Exception as exc:
        st.add({"capture": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
        return
    replays = []
    for _ in range(4):
        graph.replay()
        replays.append([o.clone() for o in outs])
    torch.cuda.synchronize()
    fresh = all(not torch.equal(a[i], b[i]) for a, b in itertools.pairwise(replays) for i in (0, 2))
    valid = all(bool((r[0].sum(-1) == 1).all()) and bool(torch.isfinite(r[1]).all()) for r in replays)
    t = _interleaved({"replay": graph.replay, "eager": step}, 20)
    st.add(
        {"capture": True, "fresh_noise_each_replay": fresh, "valid": valid, "ms": {k: 1e3 * s for k, s in t.items()}}
    )


def stage_tails() -> None:
    """409,600 draws of a 65,536-way row with one class at 0 and the rest 19 nats below."""
    from scipy import stats

    st = _Stage("tails")
    V, gap, rows, calls = (65_536, 19.0, 4096, 100) if not DRY else (16, 2.0, 16, 1)
    q = (V - 1) * math.exp(-gap) / (1 + (V - 1) * math.exp(-gap))
    x = torch.full((V,), -gap, device=DEV)
    x[0] = 0.0
    xr = x.expand(rows, V)
    n = rows * calls

    def race(z):
        p = torch.softmax(z.float(), -1)
        return p.div_(torch.empty_like(p).exponential_()).argmax(-1)

    paths = {
        "F.gumbel_softmax float32": lambda z: F.gumbel_softmax(z, 1.0, True).argmax(-1),
        "F.gumbel_softmax bfloat16": lambda z: F.gumbel_softmax(z.bfloat16(), 1.0, True).argmax(-1),
        "multinomial(softmax)": lambda z: torch.multinomial(torch.softmax(z, -1), 1).squeeze(-1),
        "exponential race": race,
        "gk.gumbel_softmax hard (Triton)": lambda z: gk.gumbel_softmax(z, 1.0, True).argmax(-1),
        "gk.gumbel_softmax hard bfloat16 (Triton)": lambda z: gk.gumbel_softmax(z.bfloat16(), 1.0, True).argmax(-1),
        "gk.gumbel_max (Triton)": gk.gumbel_max,
        "gk.gumbel_topk k=1 (Triton)": lambda z: gk.gumbel_topk(z, 1)[:, 0],
        "gk.gumbel_max (eager)": lambda z: _off(gk.gumbel_max, z),
        "gk.gumbel_softmax hard (eager)": lambda z: _off(lambda t: gk.gumbel_softmax(t, 1.0, True).argmax(-1), z),
    }
    torch.manual_seed(2026)
    for name, draw in paths.items():
        if _left() < 5:
            st.skip(name, "time")
            continue
        with _default_path():
            k = sum(int((draw(xr) != 0).sum()) for _ in range(calls))
        st.add({"path": name, "draws": n, "wins": k, "expected": n * q, "pvalue": stats.binomtest(k, n, q).pvalue})


def _off(fn, z):
    with _triton_ops.kernels_off():
        return fn(z)


def stage_sampling() -> None:
    st = _Stage("sampling")
    shape = (256, 151_936) if not DRY else (2, 70)
    rounds = ARGS.rounds or (30 if not DRY else 1)
    for dtype_name, dtype in DTYPES.items() if not DRY else [("float32", torch.float32)]:
        x = torch.randn(shape, device=DEV).to(dtype)

        def race(z=x):
            p = torch.softmax(z, -1, dtype=torch.float32)
            return p.div_(torch.empty_like(p).exponential_()).argmax(-1)

        fns = {
            "gk.gumbel_max": lambda z=x: gk.gumbel_max(z),
            "multinomial(softmax)": lambda z=x: torch.multinomial(torch.softmax(z, -1, dtype=torch.float32), 1),
            "exponential race": race,
        }
        with _default_path():
            t = _interleaved(fns, rounds)
        st.add({"shape": list(shape), "dtype": dtype_name, "ms": {k: 1e3 * s for k, s in t.items()}})


# --------------------------------------------------------------------------- report


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def report(out: Path) -> str:
    parts = {}
    for name in STAGES:
        f = out / f"bench_{name}.json"
        if f.exists():
            parts[name] = json.loads(f.read_text())
    (out / "cuda_bench.json").write_text(json.dumps(parts, indent=1))
    lines = ["# gumbelkit CUDA benchmarks", ""]
    speed = parts.get("speed", {})
    if speed:
        env = speed.get("env", {})
        copy = speed.get("copy_gbps")
        lines += [
            f"{env.get('gpu', env.get('device'))}, torch {env.get('torch')}, triton {env.get('triton')}; "
            f"copy {copy:.0f} GB/s" + (" (dry run: meaningless numbers)" if speed.get("dry_run") else ""),
            "",
            "## Forward + backward (ms; ratio = built-in time / time; GB/s = 5 x element size x elements / time)",
            "",
            "| shape | dtype | mode | built-in | gumbelkit | ratio | GB/s | % of copy | eager | eager ratio |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for it in speed.get("items", []):
            ms, gb = it["ms"], it["gbps"]
            lines.append(
                f"| {'x'.join(map(str, it['shape']))} dim={it['dim']} | {it['dtype']} | {'hard' if it['hard'] else 'soft'} "
                f"| {ms['builtin']:.3f} | {ms['gumbelkit']:.3f} | {_ratio(ms['builtin'], ms['gumbelkit'])} "
                f"| {gb['gumbelkit']:.0f} | {100 * gb['gumbelkit'] / copy:.0f}% | {ms['gumbelkit eager']:.3f} "
                f"| {_ratio(ms['builtin'], ms['gumbelkit eager'])} |"
            )
    comp = parts.get("compiled", {})
    if comp:
        eager = {(tuple(i["shape"]), i["dtype"], i["hard"]): i["ms"] for i in parts.get("speed", {}).get("items", [])}
        lines += [
            "",
            "## torch.compile (ms; ratios against the eager built-in and eager gumbelkit)",
            "",
            "| shape | dtype | mode | built-in compiled | gumbelkit compiled | vs built-in | vs gumbelkit eager |",
            "|---|---|---|---|---|---|---|",
        ]
        for it in comp.get("items", []):
            ms = it["ms"]
            e = eager.get((tuple(it["shape"]), it["dtype"], it["hard"]), {})
            lines.append(
                f"| {'x'.join(map(str, it['shape']))} | {it['dtype']} | {'hard' if it['hard'] else 'soft'} "
                f"| {ms['builtin compiled']:.3f} | {ms['gumbelkit compiled']:.3f} "
                f"| {_ratio(e.get('builtin'), ms['gumbelkit compiled'])} | {_ratio(e.get('gumbelkit'), ms['gumbelkit compiled'])} |"
            )
    lat = parts.get("latency", {})
    if lat:
        lines += ["", "## One call, host overhead included (us per forward + backward)", ""]
        cols = list(lat["items"][0]["us_per_call"]) if lat.get("items") else []
        lines += ["| shape | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for it in lat["items"]:
            lines.append(
                f"| {'x'.join(map(str, it['shape']))} | "
                + " | ".join(f"{v:.0f}" for v in it["us_per_call"].values())
                + " |"
            )
    syn = parts.get("syncs", {})
    if syn:
        lines += ["", "## Host synchronisations per call", "", "| call | default path | eager path |", "|---|---|---|"]
        for it in syn.get("items", []):
            lines.append(f"| {it['call']} | {it['syncs']['default']} | {it['syncs']['eager']} |")
    gr = parts.get("graphs", {})
    if gr:
        lines += ["", "## CUDA graphs", ""]
        for it in gr.get("items", []):
            lines.append(f"- {json.dumps(it)}")
        for it in gr.get("skipped", []):
            lines.append(f"- skipped: {it['item']} ({it['why']})")
    tails = parts.get("tails", {})
    if tails:
        lines += ["", "## Tails: a class 19 nats below the top of a 65,536-way softmax", ""]
        lines += ["| path | wins | expected | p-value |", "|---|---|---|---|"]
        for it in tails.get("items", []):
            lines.append(f"| {it['path']} | {it['wins']} | {it['expected']:.1f} | {it['pvalue']:.2g} |")
    samp = parts.get("sampling", {})
    if samp:
        lines += ["", "## Sampling one index per row (ms)", ""]
        lines += [
            "| shape | dtype | gk.gumbel_max | multinomial(softmax) | exponential race | vs multinomial | vs race |",
            "|---|---|---|---|---|---|---|",
        ]
        for it in samp.get("items", []):
            ms = it["ms"]
            lines.append(
                f"| {'x'.join(map(str, it['shape']))} | {it['dtype']} | {ms['gk.gumbel_max']:.3f} "
                f"| {ms['multinomial(softmax)']:.3f} | {ms['exponential race']:.3f} "
                f"| {_ratio(ms['multinomial(softmax)'], ms['gk.gumbel_max'])} | {_ratio(ms['exponential race'], ms['gk.gumbel_max'])} |"
            )
    skipped = [(n, s) for n, p in parts.items() for s in p.get("skipped", [])]
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- {n}: {s['item']} ({s['why']})" for n, s in skipped]
    text = "\n".join(lines) + "\n"
    (out / "cuda_bench.md").write_text(text)
    return text


def main() -> int:
    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    if ARGS.report:
        print(report(out))
        return 0
    if DEV.type == "cuda" and not torch.cuda.is_available():
        print("cuda_bench: no CUDA device (use --dry-run to check the script on the CPU)", file=sys.stderr)
        return 2
    stages = STAGES if ARGS.stage == "all" else tuple(ARGS.stage.split(","))
    runners = {
        "speed": stage_speed,
        "compiled": lambda: stage_speed(compiled=True),
        "latency": stage_latency,
        "syncs": stage_syncs,
        "graphs": stage_graphs,
        "tails": stage_tails,
        "sampling": stage_sampling,
    }
    for name in stages:
        if name not in runners:
            print(f"cuda_bench: unknown stage {name!r}, expected one of {STAGES}", file=sys.stderr)
            return 2
        runners[name]()
    if DRY:
        print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
