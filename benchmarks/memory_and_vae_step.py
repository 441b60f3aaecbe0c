"""Peak memory (in B x K float32 buffers) and a categorical-VAE training step, built-in vs gumbelkit.

Memory: the PyTorch profiler's allocation events during one forward + backward of (out * w).sum()
("peak": beyond the inputs, incoming gradient included; "held": kept for the backward besides the
output). VAE: median ms of one Adam step of the 784-512-256-(30*10) model, batch 100, interleaved.
Both use the same code as ``gumbelkit bench``.

    python benchmarks/memory_and_vae_step.py [--shape 512x1000] [--fused]
"""

from __future__ import annotations

import argparse

import torch

from gumbelkit.experiments import bench
from gumbelkit.experiments._common import progress


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="512x1000")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fused", action="store_true", help="include gumbelkit.kernels (compiles on first use)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shape = bench.parse_shapes(args.shape)[0]
    impls = ["builtin", "eager"] + (["fused"] if args.fused else []) + ["softmax", "clone"]
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(*shape)
    print(f"peak memory, shape {args.shape} (buffers of {x.numel() * 4 / 1e6:.1f} MB)")
    for impl in impls:
        for mode in ["soft"] if impl in ("softmax", "clone") else ["soft", "hard"]:
            m = bench.measure_memory(bench.sampler(impl, mode, 1.0), x, w, torch.device("cpu"))
            print(f"  {impl:>8} {mode}: peak {m['peak_buffers']:.2f}  held {m['held_buffers']:.2f}")
    cfg = bench.resolve_config(
        {
            "impls": ",".join(i for i in impls if i in ("builtin", "eager", "fused")),
            "vae_steps": args.steps,
            "threads": args.threads,
        }
    )
    res = bench.time_vae_step(cfg, torch.device("cpu"), progress(args.steps, "vae", enabled=False))
    print(f"VAE training step ({res['model']}), {torch.get_num_threads()} thread(s)")
    for r in res["rows"]:
        print(
            f"  {r['impl']:>8} {r['mode']}: {r['median_ms']:7.2f} ms/step   built-in / this = {r['ratio_vs_builtin']:.2f}x"
        )


if __name__ == "__main__":
    main()
