"""Measured experiments built on the public gumbelkit API: vae, gradients, bench.

Each experiment module declares a typed config (a frozen dataclass, :class:`._harness.Config`)
whose fields generate its command-line flags, and exposes ``add_arguments(parser)``,
``config_from_args(args) -> config`` and ``main(config) -> results dict`` (``main`` also takes a
plain mapping, validated the same way); :mod:`gumbelkit.cli` is only the argument-parsing layer.
Methods and their options come from the estimator registry (:mod:`._methods`); the default
method lists are in :mod:`._defaults`.
"""

__all__: list[str] = []  # the experiments are used through their modules (vae, gradients, bench)
