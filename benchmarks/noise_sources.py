"""Cost per element of the noise sources behind each Gumbel-Softmax, as ratios against exponential_.

- ``exponential_``: what ``torch.nn.functional.gumbel_softmax`` draws (then one log);
- ``rand``: ``torch.rand`` (the float64 / non-CPU uniform source of ``gumbelkit.uniform_open``);
- ``random_ int64``: 32-bit words from the torch generator as full-range int64 draws (the CPU
  float32 source below 2^15 words);
- ``sfc64 words``: 32-bit words from NumPy's SFC64 keyed by the torch generator (the CPU float32
  source from 2^15 words on);
- ``uniform_open``: the words turned into uniforms in place (three integer/float passes);
- ``23-bit gumbel``: -log(-log u) from those uniforms, two in-place logs: the previous eager noise,
  whose tail stops at 16.6 (kept here as the "before" of the exact-tail construction);
- ``gumbel_noise``: the eager gumbelkit noise with exact tails: the same body plus a min/max per
  block of 2^16 and, for the rare tail cells, a float64 redraw;
- ``exact words``: the generic exact construction (one bit picks the half of (0, 1), log or log1p)
  that CUDA, float64 and compiled code use, run here on the CPU for comparison;
- ``philox compiled``: ``gumbelkit.kernels.gumbel_noise_philox`` compiled by Inductor (Philox4x32-10 bits,
  the uniform conversion and both logs in one kernel; compiles on first use, tens of seconds).

    python -m benchmarks.noise_sources [--n 1048576] [--threads 1] [--no-philox]
"""

from __future__ import annotations

import argparse
import time

import torch

import gumbelkit
from gumbelkit import kernels
from gumbelkit._core import noise as _noise

from .harness import interleaved

__all__ = ["main"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1 << 20)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-philox", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n
    dev = torch.device(args.device)
    buf = torch.empty(n, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    words = (
        (lambda: _noise._random_words(n, gen, "cpu")) if dev.type == "cpu" else (lambda: _noise._words(n, 32, gen, dev))
    )
    sources = {
        "exponential_": lambda: buf.exponential_(generator=gen),
        "rand": lambda: torch.rand(n, generator=gen, device=dev),
        "random_ int64": lambda: torch.empty((n + 1) // 2, dtype=torch.int64, device=dev).random_(
            -(2**63), None, generator=gen
        ),
        "uniform_open": lambda: gumbelkit.uniform_open((n,), generator=gen),
        # the previous eager noise: 23 (CPU) or 24 (CUDA) random bits per uniform, two logs
        "23-bit gumbel": lambda: gumbelkit.uniform_open((n,), generator=gen).log_().neg_().log_().neg_(),
        "gumbel_noise": lambda: gumbelkit.gumbel_noise((n,), generator=gen),
        "exact words": lambda: _noise.exp_from_words32(words(), log=True).neg_(),
    }
    if dev.type == "cpu":
        sources["sfc64 words"] = lambda: _noise._random_words(max(n, _noise._NUMPY_MIN_WORDS), gen, "cpu")
    if not args.no_philox and dev.type == "cpu":
        compiled = torch.compile(
            lambda k: kernels.gumbel_noise_philox(n, k),
            fullgraph=True,
            dynamic=False,
            options={"realize_opcount_threshold": 20},
        )
        t0 = time.perf_counter()
        compiled(kernels.draw_key(gen, "cpu"))
        print(f"philox compiled: first call {time.perf_counter() - t0:.1f} s (compilation)")
        sources["philox compiled"] = lambda: compiled(kernels.draw_key(gen, "cpu"))
    times = interleaved(sources, args.rounds, 0.0, dev)
    base = times["exponential_"]["median_s"]
    import platform

    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), n = {n}, CPU: {cpu}")
    for k in sources:
        m = times[k]["median_s"]
        print(f"{k:>16}: {m / n * 1e9:8.4f} ns/element   exponential_ / this = {base / m:5.2f}x")


if __name__ == "__main__":
    main()
