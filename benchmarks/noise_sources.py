"""Cost per element of the noise sources behind each Gumbel-Softmax, as ratios against exponential_.

- ``exponential_``: what ``torch.nn.functional.gumbel_softmax`` draws (then one log);
- ``rand``: ``torch.rand`` (the float64 / non-CPU uniform source of ``gumbelkit.uniform_open``);
- ``random_ int64``: 32-bit words from the torch generator as full-range int64 draws (the CPU
  float32 source below 2^15 words);
- ``sfc64 words``: 32-bit words from NumPy's SFC64 keyed by the torch generator (the CPU float32
  source from 2^15 words on);
- ``uniform_open``: the words turned into uniforms in place (three integer/float passes);
- ``gumbel_noise``: the eager gumbelkit noise, uniform_open + two in-place logs;
- ``philox compiled``: ``gumbelkit.kernels.gumbel_noise_philox`` compiled by Inductor (Philox4x32-10 bits,
  the uniform conversion and both logs in one kernel; compiles on first use, tens of seconds).

    python benchmarks/noise_sources.py [--n 1048576] [--threads 1] [--no-philox]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import gumbelkit
from gumbelkit import _noise, kernels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1 << 20)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-philox", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n
    buf = torch.empty(n)
    gen = torch.Generator().manual_seed(0)
    sources = {
        "exponential_": lambda: buf.exponential_(generator=gen),
        "rand": lambda: torch.rand(n, generator=gen),
        "random_ int64": lambda: torch.empty((n + 1) // 2, dtype=torch.int64).random_(-(2**63), None, generator=gen),
        "sfc64 words": lambda: _noise._random_words(max(n, _noise._NUMPY_MIN_WORDS), gen, "cpu"),
        "uniform_open": lambda: gumbelkit.uniform_open((n,), generator=gen),
        "gumbel_noise": lambda: gumbelkit.gumbel_noise((n,), generator=gen),
    }
    if not args.no_philox:
        compiled = torch.compile(lambda k: kernels.gumbel_noise_philox(n, k), fullgraph=True, dynamic=False,
                                 options={"realize_opcount_threshold": 20})
        t0 = time.perf_counter()
        compiled(kernels.draw_key(gen, "cpu"))
        print(f"philox compiled: first call {time.perf_counter() - t0:.1f} s (compilation)")
        sources["philox compiled"] = lambda: compiled(kernels.draw_key(gen, "cpu"))
    for f in sources.values():
        f()
    times = {k: [] for k in sources}
    names = list(sources)
    for r in range(args.rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            sources[k]()
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["exponential_"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), n = {n}")
    for k in names:
        m = statistics.median(times[k])
        print(f"{k:>16}: {m / n * 1e9:6.2f} ns/element   exponential_ / this = {base / m:5.2f}x")


if __name__ == "__main__":
    main()
