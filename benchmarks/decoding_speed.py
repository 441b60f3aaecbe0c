"""Token sampling speed: gumbelkit.decoding.sample_tokens against the usual ways of sampling, in one process.

Methods, timed interleaved (one call of each in turn, ``--rounds`` times; the median is reported):

- ``ours``: ``gumbelkit.decoding.sample_tokens`` with the configuration's filters;
- ``multinomial``: ``torch.multinomial(softmax(x), 1)`` -- no filter (the cost of plain sampling);
- ``race``: the exponential race ``argmax(softmax(x) / E)``, E ~ Exp(1) -- no filter (vLLM's and
  SGLang's sampler);
- ``transformers``: ``transformers``' warpers (top-k, top-p, min-p as configured) on float32 scores,
  then ``softmax`` and ``torch.multinomial``: what ``generate(do_sample=True)`` does per step.

Rows: ``zipf`` (LLM-like: logits -1.5 log rank, each row in its own random order, plus N(0, 0.1^2)
jitter) and ``flat`` (N(0, 1) logits). Filters: ``none``, ``topk50``, ``topp0.9``,
``topk50_topp0.9``, ``minp0.05``. Ratios are the other method's time over ours (> 1: ours is faster).

    python benchmarks/decoding_speed.py                      # CPU grid (long: see --quick)
    python benchmarks/decoding_speed.py --quick              # 64 x 151936 float32, every filter
    python benchmarks/decoding_speed.py --batch 64 --vocab 151936 --filters topp0.9 --rows zipf
    python benchmarks/decoding_speed.py --device cuda --quick --out $OUT/decoding.json

On CUDA the run also checks that ``sample_tokens`` makes no host synchronisation
(``torch.cuda.set_sync_debug_mode("error")``), that a captured CUDA graph replays with fresh noise,
and counts how often each method draws a class 19 nats below the top of a 65,536-way softmax.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from typing import Any

import torch

from gumbelkit.decoding import sample_tokens

FILTERS = {
    "none": {},
    "topk50": {"top_k": 50},
    "topp0.9": {"top_p": 0.9},
    "topk50_topp0.9": {"top_k": 50, "top_p": 0.9},
    "minp0.05": {"min_p": 0.05},
}
METHODS = ("ours", "multinomial", "race", "transformers")


def make_rows(kind: str, B: int, V: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "zipf":
        base = -1.5 * torch.arange(1, V + 1, dtype=torch.float32).log()
        order = torch.rand(B, V, generator=g).argsort(1)
        x = base[order] + 0.1 * torch.randn(B, V, generator=g)
    else:
        x = torch.randn(B, V, generator=g)
    return x.to(device=device, dtype=dtype)


def _warpers(kw: dict):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if "top_k" in kw:
        procs.append(TopKLogitsWarper(kw["top_k"]))
    if "top_p" in kw:
        procs.append(TopPLogitsWarper(kw["top_p"]))
    if "min_p" in kw:
        procs.append(MinPLogitsWarper(kw["min_p"]))
    return procs


def methods_for(kw: dict, gen: torch.Generator) -> dict:
    procs = None

    def transformers_step(x):
        nonlocal procs
        if procs is None:
            procs = _warpers(kw)
        scores = procs(None, x.float())
        return torch.multinomial(torch.softmax(scores, -1), 1, generator=gen).squeeze(1)

    def race(x):
        p = torch.softmax(x.float(), -1)
        return (p / torch.empty_like(p).exponential_(generator=gen)).argmax(-1)

    return {
        "ours": lambda x: sample_tokens(x, generator=gen, **kw),
        "multinomial": lambda x: torch.multinomial(torch.softmax(x.float(), -1), 1, generator=gen).squeeze(1),
        "race": race,
        "transformers": transformers_step,
    }


def _clock(device: torch.device):
    if device.type == "cuda":

        def run(fn, x):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return run

    def run_cpu(fn, x):
        t0 = time.perf_counter()
        fn(x)
        return (time.perf_counter() - t0) * 1e3

    return run_cpu


def time_config(x, kw, names, rounds: int, device) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    fns = methods_for(kw, gen)
    clock = _clock(device)
    for name in names:  # warm-up (and Triton compilation on CUDA)
        fns[name](x)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for name in names:
            times[name].append(clock(fns[name], x))
    return {n: statistics.median(v) for n, v in times.items()}


def tail_counts(device, n_draws: int, rows: int = 200) -> dict:
    """Draws of a class 19 nats below the top of a 65,536-way softmax, per method (no filter)."""
    V, gap = 65_536, 19.0
    x = torch.full((rows, V), -gap, device=device)
    x[:, 0] = 0.0
    gen = torch.Generator(device=device).manual_seed(1)
    fns = methods_for({}, gen)
    counts = {}
    for name in ("ours", "multinomial", "race"):
        counts[name] = sum(int((fns[name](x) != 0).sum()) for _ in range(n_draws // rows))
    q = (V - 1) * math.exp(-gap) / (1 + (V - 1) * math.exp(-gap))
    return {"draws": n_draws // rows * rows, "expected": n_draws // rows * rows * q, "counts": counts}


def cuda_checks(x: torch.Tensor) -> dict:
    """No host sync in sample_tokens; a captured CUDA graph replays with fresh noise."""
    out: dict = {}
    kw: dict[str, Any] = {"top_k": 50, "top_p": 0.9}
    sample_tokens(x, **kw)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sample_tokens(x, **kw)
        sample_tokens(
            x, seeds=torch.arange(x.shape[0], device=x.device), top_p=torch.full((x.shape[0],), 0.9, device=x.device)
        )
        out["host_syncs"] = 0
    except RuntimeError as exc:
        out["host_syncs"] = f"sync detected: {exc}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    flat = torch.zeros(64, 1000, device=x.device)  # uniform rows: fresh noise shows at once
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        sample_tokens(flat)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens = sample_tokens(flat)
    graph.replay()
    first = tokens.clone()
    graph.replay()
    out["graph_replay_fresh_noise"] = bool((tokens != first).any())
    return out


def markdown(records: list, meta: dict) -> str:
    lines = [
        f"device {meta['device']}, threads {meta['threads']}, torch {meta['torch']}, load {meta['load_before']} -> {meta['load_after']}",
        "",
        "| B | V | dtype | rows | filter | ours ms | multinomial | race | transformers |",
        "|---:|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        ms = r["ms"]

        def cell(name, ms=ms):
            if name not in ms:
                return "-"
            return f"{ms[name]:.2f} ms ({ms[name] / ms['ours']:.1f}x)"

        lines.append(
            f"| {r['B']} | {r['V']} | {r['dtype']} | {r['rows']} | {r['filter']} | {ms['ours']:.2f} | "
            f"{cell('multinomial')} | {cell('race')} | {cell('transformers')} |"
        )
    lines.append("")
    lines.append("(x): the method's time over ours; multinomial and race apply no filter.")
    return "\n".join(lines)


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", default="1,8,64,256", help="comma-separated B values")
    p.add_argument("--vocab", default="32000,151936", help="comma-separated V values")
    p.add_argument("--dtype", default="float32,bfloat16")
    p.add_argument("--filters", default=",".join(FILTERS))
    p.add_argument("--rows", default="zipf,flat")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="CPU: B=64, V=151936, float32; CUDA: B=256, V=151936")
    p.add_argument("--tail-draws", type=int, default=0, help="also count 19-nat tail draws (CUDA default 409600)")
    p.add_argument("--out", default=None, help="write the records as JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.batch = "256" if device.type == "cuda" else "64"
        args.vocab = "151936"
        args.dtype = "float32,bfloat16" if device.type == "cuda" else "float32"
        if device.type == "cuda" and not args.tail_draws:
            args.tail_draws = 409_600
    names = [m for m in args.methods.split(",") if m]
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_before": _load(),
    }
    records = []
    for B in (int(b) for b in args.batch.split(",")):
        for V in (int(v) for v in args.vocab.split(",")):
            for dt in args.dtype.split(","):
                for kind in args.rows.split(","):
                    x = make_rows(kind, B, V, getattr(torch, dt), device)
                    for f in args.filters.split(","):
                        ms = time_config(x, FILTERS[f], names, args.rounds, device)
                        rec = {"B": B, "V": V, "dtype": dt, "rows": kind, "filter": f, "ms": ms}
                        records.append(rec)
                        print(json.dumps(rec), flush=True)
    meta["load_after"] = _load()
    result: dict = {"meta": meta, "records": records}
    if device.type == "cuda":
        result["cuda_checks"] = cuda_checks(make_rows("zipf", 256, 151936, torch.float32, device))
    if args.tail_draws:
        result["tail_19_nats"] = tail_counts(device, args.tail_draws)
    print()
    print(markdown(records, meta))
    for key in ("cuda_checks", "tail_19_nats"):
        if key in result:
            print(f"\n{key}: {json.dumps(result[key])}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
