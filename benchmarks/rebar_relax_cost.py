"""Cost of REBAR, RELAX and I-MLE beside ST-Gumbel and REINFORCE: time per estimate, evaluations of f, memory per row.

Two problems, each a loss f with a small decoder network, one loss per row:

- one-of-K: logits (B, N, K) -> sample -> decoder MLP (N*K -> H -> D, ReLU) -> Bernoulli
  log-likelihood of fixed binary targets (the categorical VAE's decoder);
- Bernoulli: logits (B, M) -> bits -> the same decoder on M inputs.

One estimate = every gradient the method gives from one backward of its objective: the logits'
estimate and, for a trained control, the control's variance gradient. The methods are interleaved
round by round in one process and timed by their median; the table gives milliseconds, the ratio
to ST-Gumbel (straight-through of the Bernoulli problem) and the time in units of one
forward + backward of f, measured in the same rounds, with the number of calls of f per estimate.
Memory: the peak bytes allocated during one estimate beyond the inputs (CPU: the profiler's
allocation events; CUDA: the allocator's peak) at several batches, and their slope, the bytes one
more row costs (kB/row): memory linear in the batch with a per-row cost comparable to
straight-through's, no term that grows faster.

    python benchmarks/rebar_relax_cost.py [--batch 100] [--latent 20x10] [--bits 200] [--rounds 21]
        [--mem-batches 50,200,800] [--device cpu] [--threads 1] [--json rebar_relax_cost.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

import gumbelkit as gk

Objective = Callable[[torch.Tensor], torch.Tensor]


class Counted:
    """A loss that counts its calls."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn, self.calls = fn, 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fn(z)


def decoder_loss(inputs: int, hidden: int, out: int, batch: int, device: torch.device, seed: int):
    """f: (batch, *event) samples -> (batch,) negative Bernoulli log-likelihood of fixed targets."""
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, out)).to(device)
    target = (torch.rand(batch, out, generator=g) < 0.3).float().to(device)

    def f(z: torch.Tensor) -> torch.Tensor:
        logits = net(z.reshape(z.shape[0], -1).float())
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    return f


def categorical_methods(f: Counted, k_shape) -> dict[str, Objective]:
    """label -> objective(logits); every control built from the registry's declaration."""

    def controlled(name: str, **options) -> Objective:
        control = gk.get_spec(name).new_control(k_shape, **options)
        gen = torch.Generator().manual_seed(3)
        return lambda x: gk.surrogate(x, f, name, generator=gen, control=control, **options).sum()

    gen = torch.Generator().manual_seed(1)
    return {
        "st_gumbel": lambda x: f(gk.sample(x, "st_gumbel", 0.5, generator=gen)).sum(),
        "reinforce:n=2": lambda x: gk.surrogate(x, f, "reinforce", generator=gen, n=2).sum(),
        "rebar": lambda x: gk.surrogate(x, f, "rebar", generator=gen).sum(),
        "rebar:noise=independent": lambda x: gk.surrogate(x, f, "rebar", generator=gen, noise="independent").sum(),
        "rebar+control": controlled("rebar"),
        "relax+control": controlled("relax"),
        "imle(k=1)": lambda x: f(gk.subsets.imle(x, 1, generator=gen)).sum(),
    }


def bernoulli_methods(f: Counted, bits: int) -> dict[str, Objective]:
    def controlled(name: str) -> Objective:
        control = gk.binary.METHODS[name].new_control((bits,))
        gen = torch.Generator().manual_seed(3)
        return lambda x: gk.binary.surrogate(x, f, name, generator=gen, control=control).sum()

    gen = torch.Generator().manual_seed(2)
    return {
        "st": lambda x: f(gk.binary.sample(x, "st", 1.0, generator=gen)).sum(),
        "reinforce_loo:n=2": lambda x: gk.binary.surrogate(x, f, "reinforce_loo", generator=gen, n=2).sum(),
        "disarm:n=1": lambda x: gk.binary.surrogate(x, f, "disarm", generator=gen, n=1).sum(),
        "rebar": lambda x: gk.binary.surrogate(x, f, "rebar", generator=gen).sum(),
        "rebar+control": controlled("rebar"),
        "relax+control": controlled("relax"),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(methods: dict[str, Objective], x: torch.Tensor, unit: Objective, rounds: int, device) -> dict:
    """Median ms per estimate of every method and of the unit (f forward + backward), interleaved."""
    runs = {"f fwd+bwd": unit, **methods}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds + 2):  # two warm-up rounds
        for label, objective in runs.items():
            leaf = x.detach().clone().requires_grad_(True)
            sync(device)
            t0 = time.perf_counter()
            objective(leaf).backward()
            sync(device)
            if r >= 2:
                times[label].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


@contextlib.contextmanager
def quiet_stderr():
    """fd 2 to /dev/null: the profiler's C++ side logs two lines per session there."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_bytes(objective: Objective, x: torch.Tensor, device: torch.device) -> int:
    """Peak bytes allocated during one estimate (forward + backward), beyond the inputs."""
    leaf = x.detach().clone().requires_grad_(True)
    objective(leaf).backward()  # warm-up
    leaf.grad = None
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        objective(leaf).backward()
        sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        objective(leaf).backward()
        leaf.grad = None
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return int(peak)


def calls_per_estimate(f: Counted, objective: Objective, x: torch.Tensor) -> int:
    f.calls = 0
    objective(x.detach().clone().requires_grad_(True)).backward()
    return f.calls


def run_problem(name: str, methods_of, make, shape_of, batch: int, mem_batches: list[int], rounds: int, device):
    """Time, calls of f and memory per row of every method of one problem."""
    f = Counted(make(batch))
    x = shape_of(batch)
    methods = methods_of(f)
    onehot = gk.sample(x, "st_gumbel") if name == "one-of-K" else (x > 0).to(x.dtype)

    def unit(leaf: torch.Tensor) -> torch.Tensor:  # one evaluation of f with a backward to its input
        return f(onehot + 0 * leaf).sum()

    ms = time_methods(methods, x, unit, rounds, device)
    rows = []
    base = "st_gumbel" if name == "one-of-K" else "st"
    for label, objective in methods.items():
        rows.append(
            {
                "problem": name,
                "method": label,
                "ms": ms[label],
                "vs_straight_through": ms[label] / ms[base],
                "f_units": ms[label] / ms["f fwd+bwd"],
                "f_calls": calls_per_estimate(f, objective, x),
                "peak_bytes": {},
            }
        )
    for b in mem_batches:
        fb = Counted(make(b))
        xb = shape_of(b)
        for row, objective in zip(rows, methods_of(fb).values()):
            row["peak_bytes"][b] = peak_bytes(objective, xb, device)
    lo, hi = min(mem_batches), max(mem_batches)
    for row in rows:  # the slope: what one more row costs (flat in the batch: the same at every batch)
        row["bytes_per_row"] = (row["peak_bytes"][hi] - row["peak_bytes"][lo]) / max(1, hi - lo)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--latent", default="20x10", help="N x K one-of-K variables per row")
    p.add_argument("--bits", type=int, default=200, help="Bernoulli bits per row")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--out-dim", type=int, default=784)
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--mem-batches", default="50,200,800")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="rebar_relax_cost.json", help="where the results are written")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n, k = (int(v) for v in args.latent.lower().split("x"))
    mem_batches = [int(b) for b in args.mem_batches.split(",") if b]
    g = torch.Generator().manual_seed(0)

    problems = {
        "one-of-K": (
            lambda f: categorical_methods(f, (n, k)),
            lambda b: decoder_loss(n * k, args.hidden, args.out_dim, b, device, 5),
            lambda b: torch.randn(b, n, k, generator=g).to(device),
        ),
        "bernoulli": (
            lambda f: bernoulli_methods(f, args.bits),
            lambda b: decoder_loss(args.bits, args.hidden, args.out_dim, b, device, 6),
            lambda b: torch.randn(b, args.bits, generator=g).to(device),
        ),
    }
    rows = []
    for name, (methods_of, make, shape_of) in problems.items():
        rows += run_problem(name, methods_of, make, shape_of, args.batch, mem_batches, args.rounds, device)
    head = (
        f"{'problem':<10} {'method':<24} {'ms':>8} {'vs ST':>6} {'f units':>8} {'f calls':>7} {'kB/row':>7}  "
        "peak MB at batch " + " / ".join(map(str, mem_batches))
    )
    print(
        f"device {device}, threads {args.threads}, batch {args.batch}, latent {n}x{k}, bits {args.bits}, "
        f"decoder {args.hidden}-{args.out_dim}, median of {args.rounds} interleaved rounds"
    )
    print(head)
    for r in rows:
        mem = " / ".join(f"{r['peak_bytes'][b] / 1e6:.2f}" for b in mem_batches)
        print(
            f"{r['problem']:<10} {r['method']:<24} {r['ms']:>8.3f} {r['vs_straight_through']:>6.2f} "
            f"{r['f_units']:>8.2f} {r['f_calls']:>7} {r['bytes_per_row'] / 1e3:>7.1f}  {mem}"
        )
    meta = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "args": vars(args),
    }
    with open(args.json, "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
