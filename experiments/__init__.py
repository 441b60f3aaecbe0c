"""The gumbelkit lab: the experiments behind the documentation's reports, run from a checkout.

``python -m experiments <command> [flags]`` (commands: vae, gradients, binary, l0, subsets, sort,
dvae, bench). Each experiment is a module with a typed config (:mod:`experiments.runner`) and a
``main(config)``; every method list comes from gumbelkit's registry by family. This package is
not part of the installed library; it uses only gumbelkit's public API.
"""

__all__: list[str] = []
