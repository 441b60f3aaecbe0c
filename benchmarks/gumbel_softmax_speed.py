"""Forward+backward speed of Gumbel-Softmax implementations, as ratios against the built-in.

Interleaved in one process (every round times every variant, in a rotated order), medians.

    python benchmarks/gumbel_softmax_speed.py                    # eager vs built-in, DESIGN §5 shapes
    python benchmarks/gumbel_softmax_speed.py --fused --threads 2  # add the compiled kernel

Prints one line per shape and mode: median ms of each implementation and built-in / impl.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import gumbelkit
from gumbelkit import kernels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="100x20x10,1024x1000,256x32000,64x262144")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tau", type=float, default=1.0)
    p.add_argument("--fused", action="store_true", help="also time gumbelkit.kernels (compiles on first use)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    impls = {
        "builtin": lambda x, h: F.gumbel_softmax(x, tau=args.tau, hard=h),
        "eager": lambda x, h: gumbelkit.gumbel_softmax(x, args.tau, h),
        "softmax": lambda x, h: torch.softmax(x, -1),
    }
    if args.fused:
        impls["fused"] = lambda x, h: kernels.gumbel_softmax(x, args.tau, h)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), tau={args.tau}, fwd+bwd of (out*w).sum()")
    for spec in args.shapes.split(","):
        shape = [int(s) for s in spec.split("x")]
        x = torch.randn(*shape, requires_grad=True)
        w = torch.randn(*shape)
        for hard in (False, True):

            def run(name):
                out = impls[name](x, hard)
                (out * w).sum().backward()
                x.grad = None

            names = list(impls)
            for n in names:  # warm-up (and compilation)
                run(n)
            inner = max(1, int(0.002 / max(1e-7, _once(run, "builtin"))))
            times = {n: [] for n in names}
            for r in range(args.rounds):
                for n in names[r % len(names) :] + names[: r % len(names)]:
                    t0 = time.perf_counter()
                    for _ in range(inner):
                        run(n)
                    times[n].append((time.perf_counter() - t0) / inner)
            med = {n: statistics.median(v) for n, v in times.items()}
            cells = "  ".join(f"{n} {med[n] * 1e3:8.2f} ms ({med['builtin'] / med[n]:5.2f}x)" for n in names)
            print(f"{spec:>12} {'hard' if hard else 'soft'}  {cells}")


def _once(run, name) -> float:
    t0 = time.perf_counter()
    run(name)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
