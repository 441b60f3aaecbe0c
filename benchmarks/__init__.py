"""Speed benchmarks of gumbelkit, run from a checkout: ``python -m experiments bench`` (the full
benchmark, :mod:`benchmarks.bench`) and ``python -m benchmarks.noise_sources``; one timing harness
(:mod:`benchmarks.harness`)."""

__all__: list[str] = []
