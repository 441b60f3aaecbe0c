"""The ``gumbelkit`` command line: parse arguments, call an experiment's ``main(config)``.

Errors in the user's input (``UserError``, and the ValueError/OSError an experiment converts
into one) become one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# command -> (module, one-line help). Modules are imported when the parser is built.
COMMANDS = {
    "vae": ("gumbelkit.experiments.vae", "train and evaluate a categorical VAE with each estimator"),
    "gradients": ("gumbelkit.experiments.gradients", "exact bias/variance of every gradient estimator"),
    "bench": ("gumbelkit.experiments.bench", "speed and memory of Gumbel-Softmax implementations"),
}


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The full parser; with ``only``, just that command's module is imported (faster start-up)."""
    parser = argparse.ArgumentParser(
        prog="gumbelkit", description="Gumbel-Softmax estimators: experiments and benchmarks."
    )
    parser.add_argument("--version", action="version", version=f"gumbelkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (modname, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            mod = importlib.import_module(modname)
            mod.add_arguments(p)
            modules[name] = mod
    return parser, modules


def main(argv=None) -> int:
    from .experiments._common import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser, modules = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    mod = modules[args.command]
    try:
        config = mod.config_from_args(args)
        mod.main(config)
    except UserError as exc:
        print(f"gumbelkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gumbelkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
