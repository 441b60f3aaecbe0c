"""Measured experiments built on the public gumbelkit API: vae, gradients, bench.

Each experiment module exposes ``add_arguments(parser)``, ``config_from_args(args) -> dict`` and
``main(config) -> results dict``; :mod:`gumbelkit.cli` is only the argument-parsing layer.
"""
